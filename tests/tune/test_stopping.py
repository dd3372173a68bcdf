"""When a trial stops (the chance rule) and when the search does (the work budget)."""

from __future__ import annotations

import json
import math

import pytest

from raylab.tune.stopping import ChanceRule, NotLearningStopper, WorkBudget, epochs_trained

LN8 = math.log(8)

# Curves shaped as the demo search's were, epochs 1-4: (val top-1, train loss).
CURVES = {
    # A network that never learns: chance on validation, the loss of a uniform guess.
    "flat": [(0.125, 2.21), (0.115, 2.14), (0.146, 2.09), (0.135, 2.08)],
    # A learner whose validation top-1 is still within 1.5x chance at epoch 3 (one video
    # more and it would not be), and whose training loss is just below ln 8 (2.079), as a
    # T3D-121 of the demo search was (0.219 and 2.045 after 3 epochs, 0.81 after 8).
    "late": [(0.125, 2.10), (0.115, 2.11), (0.177, 2.045), (0.48, 1.78)],
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
    rule = ChanceRule(num_classes=8, patience=3)  # floor 0.1875; loss not below ln 8
    assert rule.floor == 1.5 / 8
    assert [stop_epoch(rule, name) for name in CURVES] == [3, None, None]
    # Top-1 alone (the rule before) stops the late learner on one video's evidence.
    alone = ChanceRule(num_classes=8, patience=3, loss_fraction=None)
    assert [stop_epoch(alone, name) for name in CURVES] == [3, 3, None]
    assert "train loss not below 2.079, ln 8" in rule.why


def test_the_stopper_keeps_each_trials_epochs_and_skips_unscored_reports():
    stopper = NotLearningStopper(ChanceRule(num_classes=8, patience=3))
    assert not stopper("p", {"training_iteration": 1, "pruned": True})
    for name in CURVES:
        for result in results(name)[:3]:
            stopped = stopper(name, result)
        assert stopped == (name == "flat")
    assert stopper.stopped == {"flat"} and not stopper.stop_all()
    # A NaN score (no video decoded) is an epoch with no score, judged on its loss.
    nan = NotLearningStopper(ChanceRule(num_classes=4, patience=1))
    assert nan("t", {"training_iteration": 1, "val_video_top1": math.nan, "train_loss": 1.39})


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
