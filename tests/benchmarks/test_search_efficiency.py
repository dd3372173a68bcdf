"""benchmarks/search_efficiency.py: curves in work (trial-epochs), the recorded table and its
replay, and the chance rules scored on recorded curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import search_efficiency as se

START = 1_700_000_000  # unix seconds at which the made-up search starts


def write_trial(experiment: Path, n: int, lines: list[dict]) -> None:
    folder = experiment / f"run_trial_{n:08x}_{n}_family=t3d"
    folder.mkdir(parents=True)
    # json.dumps writes NaN as Tune does: a bare NaN token.
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in lines))


def epoch(i: int, at: float, top1: float, loss: float = 2.0, config: dict | None = None) -> dict:
    return {
        "val_video_top1": top1,
        "val_loss": loss,
        "train_loss": loss,
        "training_iteration": i,
        "timestamp": START + at,
        "pruned": False,
        "config": config or {"family": "t3d", "depth": 121, "lr": 2e-3},
    }


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    """Trials one at a time: one pruned at the start, a slow climber, one whose second epoch
    is NaN, a late good one, and one cut off before its first epoch."""
    exp = tmp_path / "se-tpe-asha-seed0"
    pruned = {"pruned": True, "training_iteration": 1, se.METRIC: 0.9, "timestamp": START}
    write_trial(exp, 1, [pruned])  # a score on a pruned line must not count
    write_trial(exp, 2, [epoch(1, 20, 0.25), epoch(2, 35, 0.5), epoch(3, 50, 0.45)])
    write_trial(exp, 3, [epoch(1, 70, 0.3), epoch(2, 85, math.nan)])
    write_trial(exp, 4, [epoch(1, 110, 0.6), epoch(2, 130, 0.75)])
    write_trial(exp, 5, [])  # started; the budget ran out before its first epoch
    return exp


def test_points_count_work_in_trial_epochs_not_seconds(experiment):
    assert [len(lines) for lines in se.read_trials(experiment)] == [1, 3, 2, 2, 0]
    points = se.read_points(experiment)
    assert points == [(1, 0.25), (2, 0.5), (3, 0.45), (4, 0.3), (5, 0.6), (6, 0.75)]
    curve = se.best_so_far(points)
    assert curve == [(1, 0.25), (2, 0.5), (5, 0.6), (6, 0.75)]
    assert se.work_to_reach(curve, 0.6) == 5  # an equal value reaches it
    assert se.work_to_reach(curve, 0.8) is None
    assert (se.best_at(curve, 0), se.best_at(curve, 4), se.best_at(curve, 99)) == (None, 0.5, 0.75)
    assert se.read_points(experiment.parent / "none") == []


def test_same_compares_every_figure_but_times_and_ids(experiment, capsys):
    """A run slowed down (other times, speeds, ids and paths) is the same search; one figure
    of one epoch otherwise is not."""
    import shutil

    slowed = experiment.parent / "slowed"
    shutil.copytree(experiment, slowed)
    for result in slowed.glob("*/result.json"):
        lines = [json.loads(line) for line in result.read_text().splitlines()]
        for r in lines:
            r |= {"timestamp": r["timestamp"] * 2, "clips_per_s": 1.0, "trial_id": "other"}
            r |= {"time_this_iter_s": 99.0, "checkpoint_path": "/elsewhere"}
            if "config" in r:  # sized by its driver, as searches are since the sizing moved
                r["config"] = r["config"] | {se.SIZING_KEY: {"batch_size": 8}}
        result.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert se.main(["same", str(experiment), str(slowed)])["same"]
    result = next(slowed.glob("*_4_*/result.json"))
    lines = [json.loads(line) for line in result.read_text().splitlines()]
    lines[1]["train_loss"] += 1e-9
    result.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert not se.main(["same", str(experiment), str(slowed)])["same"]
    assert "4: t3d-121" in capsys.readouterr().out.split("DIFFERENT")[0].splitlines()[-1]


def test_recorded_curves_come_from_several_experiments_each_configuration_once(tmp_path):
    """Trials trained to the last epoch, from every experiment given; a configuration cut
    short is left out, one found again is kept once, from the first experiment."""
    a, b = tmp_path / "record", tmp_path / "se-random-none-seed2"
    t3d = {"family": "t3d", "depth": 121, "lr": 2e-3}
    stm = {"family": "stm", "stm_stages": "24", "lr": 2e-3}
    write_trial(a, 1, [epoch(i, 10 * i, 0.1 * i, config=t3d) for i in (1, 2, 3)])
    write_trial(b, 1, [epoch(i, 10 * i, 0.05 * i, config=t3d) for i in (1, 2, 3)])
    write_trial(b, 2, [epoch(i, 50 + 10 * i, 0.12, config=stm) for i in (1, 2, 3)])
    write_trial(b, 3, [epoch(i, 90 + 10 * i, 0.3, config=stm | {"lr": 1e-3}) for i in (1, 2)])
    table = se.curves_of([a, b], max_epochs=3)
    got = [(c["config"]["family"], [p[se.METRIC] for p in c["curve"]]) for c in table["configs"]]
    assert got == [("t3d", pytest.approx([0.1, 0.2, 0.3])), ("stm", [0.12, 0.12, 0.12])]


def test_median_and_ratio_count_never_as_beyond_the_budget():
    assert se.median_with_missing([10.0, None, 40.0], math.inf) == 40.0
    assert se.median_with_missing([10.0, None], math.inf) is None
    assert se.median_with_missing([0.5, None, 0.7], -math.inf) == 0.5
    assert se.work_ratio(4.0, 10.0, 14) == (0.4, False)
    assert se.work_ratio(4.0, None, 14) == (4.0 / 14, True)
    assert se.work_ratio(None, 10.0, 14) == (None, False)


def table() -> dict:
    """Three recorded configurations of 4 epochs: a learner whose top-1 stays at chance until
    epoch 3 while its loss falls, a flat one, and an early learner."""

    def curve(tops, losses):
        return [
            {se.METRIC: t, "val_loss": loss, "train_loss": loss}
            for t, loss in zip(tops, losses, strict=True)
        ]

    return {
        "max_epochs": 4,
        "configs": [
            {"config": {"family": "t3d", "depth": 121, "lr": 2e-3},
             "curve": curve([0.125, 0.15, 0.5, 0.7], [2.07, 1.95, 1.6, 1.2])},
            {"config": {"family": "stm", "stm_stages": [4, 5], "lr": 2e-3},
             "curve": curve([0.125, 0.13, 0.14, 0.12], [2.15, 2.2, 2.17, 2.14])},
            {"config": {"family": "t3d", "depth": 169, "lr": 1.5e-3},
             "curve": curve([0.3, 0.65, 0.7, 0.8], [1.9, 1.5, 1.2, 1.0])},
        ],
    }  # fmt: skip


def test_the_chance_rules_are_scored_on_the_recorded_curves():
    rules = {
        "alone": se.ChanceRule(8, 2, loss_fraction=None),
        "with loss": se.ChanceRule(8, 2),
    }
    scores = se.rule_scores(table(), rules)
    # Top-1 alone stops the late learner (index 0) after epoch 2; with the loss it goes on.
    assert scores["alone"] == {"stopped": 2, "learners_stopped": [0], "epochs_saved": 4}
    assert scores["with loss"] == {"stopped": 1, "learners_stopped": [], "epochs_saved": 2}


def test_a_replayed_search_is_a_function_of_its_seed_and_spends_exactly_its_budget():
    one = se.replay_search(table(), sampler="tpe", pruner="asha", seed=3, budget=9, rule=None)
    assert one == se.replay_search(
        table(), sampler="tpe", pruner="asha", seed=3, budget=9, rule=None
    )
    assert one and one[-1][0] <= 9 and all(0 < v <= 0.8 for _, v in one)
    # Other seeds draw other configurations in another order.
    others = [
        se.replay_search(table(), sampler="random", pruner="none", seed=s, budget=12, rule=None)
        for s in range(10)
    ]
    assert any(c != others[0] for c in others)


def test_curves_files_join_into_one_table_of_equal_lengths(tmp_path):
    one, other = tmp_path / "one.json", tmp_path / "other.json"
    one.write_text(json.dumps(table()))
    other.write_text(json.dumps(table() | {"configs": table()["configs"][:1]}))
    joined = se.read_tables([str(one), str(other)])
    assert joined["max_epochs"] == 4 and len(joined["configs"]) == 4
    other.write_text(json.dumps(table() | {"max_epochs": 8}))
    with pytest.raises(SystemExit, match="different lengths"):
        se.read_tables([str(one), str(other)])


def test_the_recorded_tables_in_the_repository_keep_every_learner():
    """The search's chance rule, on the curves recorded on two machines (benchmarks/curves):
    no configuration that ended at 0.6 or more is stopped."""
    paths = sorted(str(p) for p in (se.REPO / "benchmarks" / "curves").glob("*.json"))
    tab = se.read_tables(paths)
    rule = se.ChanceRule(se.NUM_CLASSES, se.embedded("stop_at_chance_after"))
    scores = se.rule_scores(tab, {"search": rule})["search"]
    assert len(paths) >= 2 and scores["learners_stopped"] == [] and scores["stopped"] >= 16
