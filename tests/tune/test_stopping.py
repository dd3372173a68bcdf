"""The floor under ASHA: a trial still at chance after its patience stops, others go on."""

from __future__ import annotations

import math

from raylab.tune.stopping import NotLearningStopper


def run(stopper: NotLearningStopper, trial: str, scores: list[float]) -> int | None:
    """The epoch at which ``stopper`` stops a trial reporting ``scores``, or None."""
    for epoch, score in enumerate(scores, start=1):
        if stopper(trial, {"training_iteration": epoch, "val_video_top1": score}):
            return epoch
    return None


def test_a_trial_at_chance_stops_at_its_patience():
    stopper = NotLearningStopper(num_classes=8, patience=4)  # floor 1.5 / 8 = 0.1875
    assert run(stopper, "flat", [0.125, 0.115, 0.146, 0.135, 0.125, 0.5]) == 4
    assert stopper.stopped == {"flat"}


def test_a_trial_that_left_chance_once_goes_on():
    stopper = NotLearningStopper(num_classes=8, patience=4)
    # The best so far counts: one epoch above the floor, then a dip, is learning.
    assert run(stopper, "learner", [0.125, 0.21, 0.15, 0.16, 0.17, 0.3]) is None
    assert run(stopper, "late", [0.125, 0.125, 0.125, 0.19]) is None  # above 0.1875 at 4
    assert stopper.stopped == set()


def test_epochs_without_a_score_are_not_judged():
    stopper = NotLearningStopper(num_classes=4, patience=2)  # floor 0.375
    assert not stopper("t", {"training_iteration": 2, "pruned": True})
    assert not stopper("t", {"training_iteration": 2, "val_video_top1": math.nan})
    assert stopper("t", {"training_iteration": 3, "val_video_top1": 0.3})
    assert not stopper.stop_all()
