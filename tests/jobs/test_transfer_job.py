"""jobs/transfer_t3d.py, then jobs/train.py fine-tuning the transferred student."""

from __future__ import annotations

import json
import math

import pytest
import torch

from raylab.models import build_model


def test_transfer_then_fine_tune(demo_shards, run_job, tmp_path):
    run = tmp_path / "transfer"
    tiny = ("--frames", "32", "--size", "32", "--width", "0.0625", "--cpus-per-worker", "0.5")
    out = run_job(
        "transfer_t3d.py",
        *("--data", str(demo_shards), "--out", str(run), "--student", "t3d121"),
        *("--epochs", "1", "--batch-size", "8", "--optimizer", "adamw", "--teacher-frames", "4"),
        *("--workers", "2", *tiny),  # DDP, as on a cluster
    )
    metrics = out["metrics"]
    assert metrics["epochs"] == 1 and metrics["val_positive_fraction"] == 0.5
    # Per kind of pair: the 8 held-out videos are one scene (one group), so every negative
    # is of that scene and there is no other-scene pair to score; the overall accuracy is
    # the two kinds' in their shares (half of the pairs positive), counted in whole pairs.
    assert math.isnan(metrics["accuracy_other_scene"])
    overall = 0.5 * metrics["accuracy_positive"] + 0.5 * metrics["accuracy_same_scene"]
    assert out["correspondence_accuracy"] == pytest.approx(overall)
    pairs = metrics["val_pairs"]
    assert pairs > 0 and round(overall * pairs) == pytest.approx(overall * pairs)
    assert out["run"] == str(run)
    lines = (run / "history.jsonl").read_text().splitlines()
    history = [h for h in map(json.loads, lines) if h["event"] == "epoch"]
    assert [h["epoch"] for h in history] == [1]
    assert all(h["train_loss"] > 0 for h in history)

    state = torch.load(out["student_weights"], map_location="cpu", weights_only=True)
    model = build_model("t3d121", 8, width=0.0625)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert set(missing) == {"classifier.weight", "classifier.bias"} and not unexpected

    # One epoch at learning rate 0: every weight the run saves is the one it started from.
    tuned = run_job(
        "train.py",
        *("--data", str(demo_shards), "--model", "t3d121", "--out", str(tmp_path / "tune")),
        *("--init-from", out["student_weights"], "--epochs", "1", "--batch-size", "8"),
        *("--lr", "0", *tiny),
    )
    assert tuned["metrics"]["epochs"] == 1
    fine = torch.load(tuned["weights"], map_location="cpu", weights_only=True)
    assert set(fine) == set(state) | {"classifier.weight", "classifier.bias"}
    # Without --init-from the run starts from the seed's initialisation (seed 0, as the
    # loop builds it), which differs from the student's in every learned layer.
    torch.manual_seed(0)
    initial = build_model("t3d121", 8, width=0.0625)
    learned = [k for k, _ in initial.named_parameters() if k in state]
    assert len(learned) > 100  # every convolution and norm of the DenseNet trunk
    for key in learned:
        assert torch.equal(fine[key], state[key]), key  # the student's weight arrived
    differ = [k for k in learned if not torch.equal(state[k], initial.state_dict()[k])]
    assert len(differ) > len(learned) // 2, "the student is mostly the fresh initialisation"
    # The classifier, absent from the student, keeps the seed's initialisation.
    for key in ("classifier.weight", "classifier.bias"):
        assert torch.equal(fine[key], initial.state_dict()[key]), key
