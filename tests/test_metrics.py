from raylab.metrics import TRIAL_STATUSES, trial_status


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
