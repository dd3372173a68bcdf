"""Sizing of an experiment on its cluster: trials at once and each worker's memory."""

from __future__ import annotations

import pytest

from raylab.tune.options import TuneOptions
from raylab.tune.resources import memory_budget, trial_concurrency


def options(**kw) -> TuneOptions:
    return TuneOptions(shards="/data/shards", storage_path="/tmp/results", name="x", **kw)


@pytest.mark.parametrize(
    "kw, resources, expected",
    [
        ({}, {"CPU": 2}, 1),  # one worker CPU + one decoder CPU
        ({}, {"CPU": 16}, 8),
        ({"workers": 2}, {"CPU": 16}, 5),
        ({"use_gpu": True}, {"CPU": 64, "GPU": 8}, 8),
        ({"use_gpu": True, "workers": 4}, {"CPU": 64, "GPU": 8}, 2),
        ({"use_gpu": True}, {"CPU": 64}, 1),  # never zero: Tune would wait forever
        ({"concurrency": 3}, {"CPU": 2}, 3),
    ],
)
def test_concurrency_leaves_every_trial_its_workers_and_a_decoder(kw, resources, expected):
    assert trial_concurrency(options(**kw), resources) == expected


def test_memory_budget_follows_the_accelerator():
    gpu = options(use_gpu=True)
    assert memory_budget(gpu, {"accelerator_type:H100": 1}, 1) == pytest.approx(72)
    assert memory_budget(gpu, {}, 1) == pytest.approx(14.4)
    assert memory_budget(options(memory_gib=3.0), {}, 4) == 3.0
    assert 0 < memory_budget(options(), {}, 2) < memory_budget(options(), {}, 1)
