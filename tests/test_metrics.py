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
