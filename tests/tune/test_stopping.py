"""When a trial stops (the chance rule) and when the search does (the work budget)."""

from __future__ import annotations

import json
import math

import pytest

from raylab.tune.stopping import ChanceRule, NotLearningStopper, WorkBudget, epochs_trained

LN8 = math.log(8)

# Curves shaped as the demo search's were: (val top-1, train loss) per epoch.
CURVES = {
    # A network that never learns, as the STMs did: chance on validation, its training loss
    # above the uniform guess's (ln 8 = 2.079) and rising after the first epoch.
    "flat": [(0.125, 2.15), (0.115, 2.20), (0.146, 2.16), (0.135, 2.14)],
    # A late learner, as a T3D-121 of `make demo SEED=2` was: within 1.5x chance on
    # validation until epoch 4 and its training loss at ln 8 for 3 epochs (0.177 and 2.098
    # after 3), 0.58 after 5 and 0.73 after 8.
    "late": [(0.125, 2.09), (0.135, 2.10), (0.177, 2.098), (0.23, 2.0), (0.58, 1.6)],
    # One that hovers at ln 8, then rises away from it, as a T3D-169 did (2.110, 2.115,
    # 2.163): not learning, caught an epoch later.
    "drifting": [(0.125, 2.11), (0.125, 2.115), (0.125, 2.163), (0.125, 2.17)],
    # One that hovers just above ln 8 and never learns, as a T3D-169 of `make demo SEED=1`
    # did on an AVX-512 machine (2.107, 2.130, 2.133, 2.117; at chance for 8 epochs).
    "hovering": [(0.135, 2.107), (0.135, 2.130), (0.146, 2.133), (0.135, 2.117), (0.115, 2.1)],
    # One that passed the floor at epoch 2 and dipped: its best counts.
    "dip": [(0.125, 2.06), (0.21, 1.98), (0.15, 1.95), (0.3, 1.7)],
}


def results(name: str) -> list[dict]:
    return [
        {"training_iteration": i, "val_video_top1": v, "train_loss": loss}
        for i, (v, loss) in enumerate(CURVES[name], start=1)
    ]


def stop_epoch(rule: ChanceRule, name: str) -> int | None:
    """The epoch after which ``rule`` stops the trial ``name``, or None."""
    for epoch in range(1, len(CURVES[name]) + 1):
        if rule.stops(results(name)[:epoch]):
            return epoch
    return None


def test_the_rule_stops_only_what_neither_score_nor_loss_calls_learning():
    rule = ChanceRule(num_classes=8, patience=2)  # floor 0.1875; loss at least 1.03 ln 8
    assert rule.floor == 1.5 / 8
    assert [stop_epoch(rule, name) for name in CURVES] == [2, None, 3, 4, None]
    assert "train loss at least 2.142, 1.03 x ln 8, or from epoch 4 at least 2.079" in rule.why
    assert stop_epoch(ChanceRule(num_classes=8, patience=2, late_patience=5), "hovering") == 5
    # The rule before (after 3 epochs, a loss not below ln 8) stops the late learner too,
    # and top-1 alone stops it on one video's evidence.
    before = ChanceRule(num_classes=8, patience=3, loss_fraction=1.0)
    assert [stop_epoch(before, name) for name in CURVES] == [3, 3, 3, 3, None]
    alone = ChanceRule(num_classes=8, patience=2, loss_fraction=None)
    assert [stop_epoch(alone, name) for name in CURVES] == [2, 2, 2, 2, None]
    # The latest epoch's loss decides: below the bar after a first epoch above it goes on.
    assert not rule.stops([{"val_video_top1": 0.1, "train_loss": 2.3},
                           {"val_video_top1": 0.1, "train_loss": 2.09}])  # fmt: skip


def test_the_stopper_keeps_each_trials_epochs_and_skips_unscored_reports():
    stopper = NotLearningStopper(ChanceRule(num_classes=8, patience=3))
    assert not stopper("p", {"training_iteration": 1, "pruned": True})
    for name in CURVES:
        for result in results(name)[:3]:
            stopped = stopper(name, result)
        assert stopped == (name in ("flat", "drifting"))  # after 3 epochs
    assert stopper.stopped == {"flat", "drifting"} and not stopper.stop_all()
    # A NaN score (no video decoded) is an epoch with no score, judged on its loss.
    nan = NotLearningStopper(ChanceRule(num_classes=4, patience=1))
    assert nan("t", {"training_iteration": 1, "val_video_top1": math.nan, "train_loss": 1.45})


def test_the_work_budget_ends_the_search_at_exactly_its_epochs():
    budget = WorkBudget(5)
    reports = [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2), ("b", 3)]
    ends = []
    for trial, epoch in reports:
        budget(trial, {"training_iteration": epoch, "val_video_top1": 0.1})
        budget("c", {"training_iteration": 1, "pruned": True})  # a pruned trial costs nothing
        ends.append(budget.stop_all())
    assert ends == [False, False, False, False, True, True]
    assert budget.spent == 6
    with pytest.raises(ValueError, match="at least 1 trial-epoch"):
        WorkBudget(0)


def test_a_resumed_search_counts_the_epochs_its_trials_trained_before(tmp_path):
    """The trial folders' result.json lines, as Tune writes them, are the count's start."""
    for trial, epochs in (("aaaa0001", 3), ("aaaa0002", 2)):
        folder = tmp_path / f"run_trial_{trial}_1_family=t3d"
        folder.mkdir()
        lines = [
            {"trial_id": trial, "training_iteration": i, "val_video_top1": 0.2}
            for i in range(1, epochs + 1)
        ]
        (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in lines))
    pruned = tmp_path / "run_trial_aaaa0003_3_family=stm"
    pruned.mkdir()
    (pruned / "result.json").write_text(json.dumps({"trial_id": "aaaa0003", "pruned": True}))
    assert epochs_trained(str(tmp_path)) == {"aaaa0001": 3, "aaaa0002": 2}
    budget = WorkBudget(6, str(tmp_path))
    assert budget.spent == 5 and not budget.stop_all()
    budget("aaaa0002", {"training_iteration": 3, "val_video_top1": 0.3})  # its epoch 3 again
    assert budget.stop_all()
    assert WorkBudget(6, str(tmp_path / "new")).spent == 0


def test_the_budget_counts_the_epoch_another_stopper_ends_a_trial_on():
    """As the search combines them (budget first): Tune's CombinedStopper stops asking at the
    first stopper that says stop, so a budget asked after the chance rule would miss the
    epoch the rule stops a trial on."""
    from ray.tune.stopper import CombinedStopper

    budget = WorkBudget(4)
    combined = CombinedStopper(budget, NotLearningStopper(ChanceRule(num_classes=8, patience=3)))
    stops = [combined("flat", r) for r in results("flat")[:3]]
    assert stops == [False, False, True] and budget.spent == 3
    combined("late", results("late")[0])
    assert combined.stop_all()


def test_a_restored_trial_counts_by_the_epoch_its_run_reports():
    """Tune counts a restored trial's results from 1 again while its Train run goes on from
    its checkpoint: the budget and the rule read the run's own epoch."""
    budget = WorkBudget(10)
    budget("t", {"training_iteration": 1, "epoch": 3, "val_video_top1": 0.2})
    assert budget.spent == 3
    rule = ChanceRule(num_classes=8, patience=3)
    assert rule.stops([{"training_iteration": 1, "epoch": 3, "val_video_top1": 0.1,
                        "train_loss": 2.2}])  # fmt: skip
