"""benchmarks/search_efficiency.py: the curves it reads from an experiment folder."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
START = 1_700_000_000  # unix seconds at which the made-up search starts


def load_benchmark():
    """The benchmark module, by path: benchmarks/ is not a package."""
    path = REPO / "benchmarks" / "search_efficiency.py"
    spec = importlib.util.spec_from_file_location("search_efficiency", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


se = load_benchmark()


def write_trial(experiment: Path, name: str, lines: list[dict]) -> None:
    folder = experiment / name
    folder.mkdir(parents=True)
    # json.dumps writes NaN as Tune does: a bare NaN token.
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (folder / "params.json").write_text("{}")


def epoch(trial: str, iteration: int, at: float, started: float, top1: float) -> dict:
    """A result line reported ``at`` seconds after START by a trial that began at ``started``."""
    return {
        "val_video_top1": top1,
        "training_iteration": iteration,
        "timestamp": START + at,
        "time_total_s": at - started,
        "trial_id": trial,
        "pruned": False,
    }


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    """Five trials, one at a time: a pruned one at the start, a slow climber, one whose
    second epoch is NaN, a late good one, and one cut off before its first epoch. The
    search starts at START (the first trial pruned there)."""
    exp = tmp_path / "se-tpe-asha-seed0"
    # A pruned trial trained nothing: even a score on its line must not count.
    pruned = {"pruned": True, "prune_reason": "too few frames", "training_iteration": 1}
    pruned[se.METRIC] = 0.9
    write_trial(exp, "a_pruned", [pruned | {"timestamp": START + 2, "time_total_s": 2.0}])
    write_trial(
        exp,
        "b_climber",
        [epoch("b", 1, 20, 5, 0.25), epoch("b", 2, 35, 5, 0.5), epoch("b", 3, 50, 5, 0.45)],
    )
    write_trial(exp, "c_nan", [epoch("c", 1, 70, 55, 0.3), epoch("c", 2, 85, 55, math.nan)])
    write_trial(exp, "d_late", [epoch("d", 1, 110, 90, 0.6), epoch("d", 2, 130, 90, 0.75)])
    write_trial(exp, "e_unreported", [])  # started; the budget ran out before its first epoch
    (exp / "trials.json").write_text("[]")  # the job's own table, no trial folder
    return exp


def test_every_trial_folder_is_a_trial(experiment):
    trials = se.read_trials(experiment)
    assert [len(lines) for lines in trials] == [1, 3, 2, 2, 0]


def test_points_leave_out_pruned_trials_and_nan(experiment):
    points = se.read_points(experiment)
    assert points == [(20, 0.25), (35, 0.5), (50, 0.45), (70, 0.3), (110, 0.6), (130, 0.75)]


def test_best_so_far_steps_up_only(experiment):
    curve = se.best_so_far(se.read_points(experiment))
    assert curve == [(20, 0.25), (35, 0.5), (110, 0.6), (130, 0.75)]
    assert se.best_at(curve, 10) is None
    assert se.best_at(curve, 60) == 0.5
    assert se.best_at(curve, 110) == 0.6
    assert se.best_at(curve, 300) == 0.75


def test_time_to_reach_counts_an_equal_value(experiment):
    curve = se.best_so_far(se.read_points(experiment))
    assert se.time_to_reach(curve, 0.6) == 110  # 0.6 exactly reaches 0.6
    assert se.time_to_reach(curve, 0.5) == 35
    assert se.time_to_reach(curve, 0.1) == 20
    assert se.time_to_reach(curve, 0.8) is None
    assert se.time_to_reach([], 0.1) is None


def test_start_is_tunes_controller_start_when_recorded(experiment):
    state = {"trial_data": [], "stats": {"start_time": START - 4.5}}
    (experiment / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    later = {"stats": {"start_time": START + 600.0}}  # a resumed session's state
    (experiment / "experiment_state-2026-01-01_01-00-00.json").write_text(json.dumps(later))
    points = se.read_points(experiment)
    assert points[0] == (24.5, 0.25) and points[-1] == (134.5, 0.75)


def test_an_experiment_without_results_has_no_curve(tmp_path):
    assert se.read_points(tmp_path) == []
    assert se.best_so_far([]) == []
    assert se.best_at([], 60) is None


def test_median_counts_not_reached_as_never():
    assert se.median_with_missing([10.0, 30.0], math.inf) == 20.0
    assert se.median_with_missing([10.0, None], math.inf) is None
    assert se.median_with_missing([10.0, None, 40.0], math.inf) == 40.0
    assert se.median_with_missing([None, None], math.inf) is None
    assert se.median_with_missing([0.5, None, 0.7], -math.inf) == 0.5


def test_a_baseline_that_never_reaches_the_threshold_bounds_the_ratio():
    assert se.time_ratio(120.0, 300.0, 390) == (0.4, False)
    # (c) never reached it within 390 s: its time is beyond the budget, so the ratio is below
    # 120 / 390, and said to be a bound.
    assert se.time_ratio(120.0, None, 390) == (120.0 / 390, True)
    assert se.time_ratio(None, 300.0, 390) == (None, False)
    assert se.ratio_text(120.0 / 390, True).startswith("< 0.31")
