"""The search's console lines, from real Tune Trial objects (no Ray cluster)."""

from __future__ import annotations

import io

from ray.tune.experiment import Trial

from raylab.tune.console import TrialConsole, describe
from raylab.tune.stopping import ChanceRule, NotLearningStopper

STM = {"family": "stm", "stm_stages": "45", "stm_blocks": "all", "frames": 8, "size": 48,
       "stride": 4, "stride_8f": 4, "lr": 3e-3, "weight_decay": 1e-4}  # fmt: skip
T3D = {"family": "t3d", "depth": 121, "t3d_frames": 32, "frames": 32, "size": 48, "stride": 1,
       "lr": 2e-3, "weight_decay": 1e-5}  # fmt: skip


def trial(trial_id: str, config: dict, status: str, last: dict) -> Trial:
    t = Trial("run_trial", config=config, trial_id=trial_id, stub=True)
    t.set_status(status)
    t.update_last_result(last)  # as Tune does with each result
    return t


def test_describe_names_the_architecture_and_clip_by_their_plain_names():
    assert describe(STM) == "stm 45/all 8x48 s4 lr 3.0e-03 wd 1.0e-04"
    assert describe(T3D) == "t3d-121 32x48 s1 lr 2.0e-03 wd 1.0e-05"


def test_one_line_per_event_and_a_table_at_the_end():
    out = io.StringIO()
    stopper = NotLearningStopper(ChanceRule(num_classes=8, patience=4))

    def refusal(config: dict) -> str | None:  # as the data refuses a crop it cannot give
        return "no rendition for 128" if config["size"] == 128 else None

    console = TrialConsole(max_epochs=12, stopper=stopper, out=out, refusal=refusal)
    good = trial("aaaa0001", STM, "TERMINATED", {"training_iteration": 12})
    flat = trial("aaaa0002", T3D, "TERMINATED", {"training_iteration": 4})
    cut = trial("aaaa0003", STM, "TERMINATED", {"training_iteration": 2})
    pruned = trial("aaaa0004", STM, "TERMINATED", {"pruned": True, "prune_reason": "too big"})
    crop = {"pruned": True, "prune_reason": "no rendition for 128"}
    refused = trial("aaaa0005", STM | {"size": 128}, "TERMINATED", crop)
    for t in (good, flat, cut, pruned, refused):
        console.on_trial_start(0, [], t)
    for epoch, score in enumerate([0.2, 0.9], start=1):
        result = {"training_iteration": epoch, "val_video_top1": score, "train_loss": 1.0}
        console.on_trial_result(0, [], good, result)
    for epoch in range(1, 5):
        result = {"training_iteration": epoch, "val_video_top1": 0.125, "train_loss": 2.2}
        stopper(flat.trial_id, result)
        console.on_trial_result(0, [], flat, result)
    console.on_trial_result(0, [], cut, {"training_iteration": 2, "val_video_top1": 0.4})
    console.on_trial_result(0, [], cut, {"training_iteration": 2, "val_video_top1": float("nan")})
    console.on_trial_result(0, [], pruned, pruned.last_result)
    console.on_trial_result(0, [], refused, refused.last_result)
    for t in (good, flat, cut, pruned, refused):
        console.on_trial_complete(0, [], t)
    console.on_experiment_end([good, flat, cut, pruned, refused])
    lines = out.getvalue().splitlines()
    assert "trial aaaa0001 started: stm 45/all 8x48 s4 lr 3.0e-03 wd 1.0e-04" in lines
    assert sum(": val top-1 " in line for line in lines) == 2 + 4 + 1  # NaN is not an epoch
    assert "trial aaaa0001 finished 12 epochs, best val top-1 0.900" in lines
    assert any(
        line.startswith("trial aaaa0002 stopped after epoch 4: not learning") for line in lines
    )
    assert "trial aaaa0003 stopped early after epoch 2, best val top-1 0.400" in lines
    assert "trial aaaa0004 pruned before it started: too big" in lines
    # A crop the data cannot give is told when the trial starts, once, and never as started.
    told = [line for line in lines if line.startswith("trial aaaa0005")]
    assert told == ["trial aaaa0005 pruned before it started: no rendition for 128"], told
    table = lines[lines.index(next(x for x in lines if x.startswith("trial  "))) :]
    # Best first; every trial once, with its status.
    order = ["aaaa0001", "aaaa0003", "aaaa0002", "aaaa0004", "aaaa0005"]
    assert [row.split()[0] for row in table[2:]] == order
    assert [row.split()[1] for row in table[2:]] == [
        "done",
        "stopped",
        "stopped",
        "pruned",
        "pruned",
    ]


def test_trials_running_when_the_search_ends_say_so():
    """Tune stops the trials still running at the time budget without a completion event."""
    out = io.StringIO()
    console = TrialConsole(max_epochs=10, out=out)
    finished = trial("bbbb0001", STM, "TERMINATED", {"training_iteration": 10})
    running = trial("bbbb0002", T3D, "TERMINATED", {"training_iteration": 8})
    unstarted = trial("bbbb0003", T3D, "TERMINATED", {})
    pending = trial("bbbb0004", T3D, "PENDING", {})  # created, never started
    for t in (finished, running, unstarted):
        console.on_trial_start(0, [], t)
    console.on_trial_result(0, [], running, {"training_iteration": 8, "val_video_top1": 0.885})
    console.on_trial_complete(0, [], finished)
    console.on_experiment_end([finished, running, unstarted, pending])
    lines = out.getvalue().splitlines()
    assert (
        "trial bbbb0002 was running when the search ended: after epoch 8, best val top-1 0.885"
        in lines
    )
    assert "trial bbbb0003 was running when the search ended: before its first epoch" in lines
    assert not any(line.startswith(("trial bbbb0001 was", "trial bbbb0004 was")) for line in lines)
