"""The simulated autoscaling cluster owns Ray on this machine: run these tests alone.

Ray's fake multi-node provider runs ``ray stop --force`` when it starts, which would kill
the session's Ray and any other cluster of the suite, so ``make test`` runs this folder in
its own pytest invocation; mixed with other tests, these are skipped with that advice.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    others = [i for i in items if HERE not in Path(i.fspath).parents]
    if not others:
        return
    skip = pytest.mark.skip(reason="owns Ray on this machine: run alone, pytest tests/cluster")
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(skip)
