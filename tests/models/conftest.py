"""Model tests run tiny networks: one intra-op thread each (``one_thread``, tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield
