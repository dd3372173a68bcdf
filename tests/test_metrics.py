import numpy as np
import pytest

from raylab.metrics import TRIAL_STATUSES, topk_accuracy, trial_status, video_scores


def status(**facts) -> str:
    base = {"pruned": False, "failed": False, "ended": True, "epochs": 10, "max_epochs": 10}
    return trial_status(**(base | facts))


def test_a_trial_that_trained_every_epoch_is_done():
    assert status() == "done"
    assert status(max_epochs=None) == "done"  # no limit known: an ended trial is done


def test_a_trial_ended_short_of_its_epochs_was_stopped():
    assert status(epochs=4) == "stopped"
    assert status(epochs=0) == "stopped"  # the time budget ended it before its first epoch


def test_pruning_and_failure_come_before_the_epochs():
    assert status(pruned=True, epochs=0) == "pruned"
    assert status(failed=True, epochs=10) == "error"
    assert status(pruned=True, failed=True) == "pruned"


def test_a_trial_that_has_not_ended_is_running():
    assert status(ended=False, epochs=3) == "running"
    assert status(ended=False, failed=True) == "error"


def test_every_verdict_is_a_known_status():
    facts = [
        {"pruned": p, "failed": f, "ended": e, "epochs": n}
        for p in (False, True)
        for f in (False, True)
        for e in (False, True)
        for n in (0, 5, 10)
    ]
    assert {status(**x) for x in facts} == set(TRIAL_STATUSES) | {"running"}


def test_video_scores_average_views_per_video():
    ids = ["a", "b", "a", "b", "c"]
    labels = [0, 1, 0, 1, 2]
    logits = np.log(
        np.array(
            [[0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]
        )
    )
    scores, vlabels, vids = video_scores(ids, labels, logits)
    assert vids == ["a", "b", "c"]
    np.testing.assert_allclose(scores[0], [0.4, 0.5, 0.1], atol=1e-6)
    np.testing.assert_array_equal(vlabels, [0, 1, 2])
    # Clip-level, "a" is right once in two; video-level it is wrong (0.5 > 0.4).
    assert topk_accuracy(scores, vlabels, 1) == pytest.approx(2 / 3)
    assert topk_accuracy(scores, vlabels, 2) == 1.0


def test_one_trial_row_from_any_source():
    """The search's trials.json and the report's rows rebuilt from trial folders are both
    this row: figures at the best epoch (the later of equal scores, NaN never best), the
    epochs trained, clips/s over the scored epochs, the status."""
    from raylab.metrics import trial_row

    results = [
        {"epoch": 1, "val_video_top1": 0.5, "gmacs": 1.0, "clips_per_s": 10.0},
        {"epoch": 2, "val_video_top1": 0.8, "gmacs": 1.0, "clips_per_s": 20.0},
        {"epoch": 3, "val_video_top1": float("nan"), "clips_per_s": 99.0},
        {"epoch": 4, "val_video_top1": 0.8, "gmacs": 1.0, "clips_per_s": 30.0,
         "checkpoint_path": "/run/checkpoint_3"},
    ]  # fmt: skip
    row = trial_row("t1", "/x", {"family": "t3d"}, results, ended=True, max_epochs=6)
    assert row == {
        "trial_id": "t1", "path": "/x", "family": "t3d", "val_video_top1": 0.8, "gmacs": 1.0,
        "best_epoch": 4, "epochs": 4, "clips_per_s": 20.0,
        "best_checkpoint": "/run/checkpoint_3", "status": "stopped",
    }  # fmt: skip
    pruned = trial_row("t2", "/y", {}, [{"pruned": True}], prune_reason="too long", ended=True,
                       max_epochs=6)  # fmt: skip
    assert pruned == {
        "trial_id": "t2",
        "path": "/y",
        "prune_reason": "too long",
        "status": "pruned",
    }
    running = trial_row("t3", "/z", {}, results[:2], ended=False, max_epochs=6)
    assert running["status"] == "running" and running["best_epoch"] == 2
