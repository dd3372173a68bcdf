"""jobs/train.py then jobs/evaluate.py, chained through their last JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from raylab.models import build_model


def test_train_then_evaluate_multi_view_and_fused(demo_shards, run_job, tmp_path):
    run = tmp_path / "run"
    trained = run_job(
        "train.py",
        *("--data", str(demo_shards), "--model", "c3d", "--out", str(run)),
        *("--width", "0.125", "--model-option", 'head="pooled"'),
        *("--frames", "16", "--size", "32", "--epochs", "2", "--batch-size", "8"),
        *("--cpus-per-worker", "0.5"),
    )
    metrics = trained["metrics"]
    assert metrics["epochs"] == 2
    for key in ("val_video_top1", "val_video_top5", "val_clip_acc"):
        assert 0.0 <= metrics[key] <= 1.0
    assert (run / "history.jsonl").exists()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    # The plain weights load without pickle and fit the model they name.
    state = torch.load(trained["weights"], map_location="cpu", weights_only=True)
    model = build_model("c3d", 8, width=0.125, head="pooled")
    model.load_state_dict(state)

    evaluated = run_job(
        "evaluate.py",
        *("--data", str(demo_shards), "--checkpoint", trained["best_checkpoint"]),
        *("--clips", "2", "--crops", "3", "--out", str(tmp_path / "eval")),
        *("--flow-checkpoint", trained["best_checkpoint"]),  # fusing a stream with itself
    )
    m = evaluated["metrics"]
    assert m["views_per_video"] == 6
    assert m["videos"] == 8  # every validation video of the demo shards, once
    assert m["fused_video_top1"] == m["rgb_video_top1"] == m["flow_video_top1"]
    report = json.loads(Path(evaluated["metrics_file"]).read_text())
    assert set(report) == {"rgb", "flow", "fused"}
    assert len(report["rgb"]["confusion"]) == 8
    assert sum(map(sum, report["rgb"]["confusion"])) == 8
    assert Path(evaluated["confusion_png"]).read_bytes()[:4] == b"\x89PNG"
