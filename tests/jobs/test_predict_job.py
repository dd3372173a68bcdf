"""jobs/predict.py as a user runs it: recorded videos, a broken file, wrong input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from videos import counter_frames, write_video

from raylab.config import ClipConfig, TrainConfig
from raylab.data.synthetic import DEMO_CLASSES
from raylab.models import build_model

CLIPS = ClipConfig(frames=16, stride=2, size=56, scheme="dense")


def write_checkpoint(folder: Path) -> Path:
    """A checkpoint as the training loop writes one: weights and the whole config (random
    weights: these tests are about the clips and the plumbing, not accuracy)."""
    options = {"width": 0.125, "head": "pooled", "batch_norm": True}
    torch.manual_seed(0)
    model = build_model("c3d", len(DEMO_CLASSES), **options)
    config = TrainConfig(
        model="c3d", model_options=options, clip=CLIPS, classes=DEMO_CLASSES
    ).record()
    folder.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "config": config}, folder / "state.pt")
    return folder


def test_predict_job_on_recorded_videos_and_a_broken_file(real_videos, run_job, tmp_path):
    checkpoint = write_checkpoint(tmp_path / "run" / "checkpoint_000001")
    folder = tmp_path / "videos"
    (folder / "street").mkdir(parents=True)
    shutil.copy(real_videos["bikes"], folder / "street" / "bikes.mp4")
    shutil.copy(real_videos["carphone"], folder / "carphone.mp4")
    (folder / "broken.mp4").write_bytes(real_videos["carphone"].read_bytes()[:3000])
    write_video(folder / "short.mp4", counter_frames(12))  # a clip spans 31 frames
    out = tmp_path / "preds.jsonl"
    summary = run_job(
        "predict.py",
        *("--checkpoint", str(checkpoint), "--videos", str(folder), "--out", str(out)),
        *("--clips", "2", "--crops", "3", "--top", "3"),
    )
    assert (summary["videos"], summary["classified"], summary["failed"]) == (4, 3, 1)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    by_name = {Path(r["video"]).name: r for r in lines}
    assert sorted(by_name) == ["bikes.mp4", "broken.mp4", "carphone.mp4", "short.mp4"]
    assert "broken.mp4" in by_name["broken.mp4"]["error"]
    # The short video is classified from looped clips and says so; the long ones do not.
    assert summary["looped"] == 1
    assert by_name["short.mp4"]["frames"] == 12 and by_name["short.mp4"]["looped"] is True
    assert by_name["bikes.mp4"]["frames"] == 250 and "looped" not in by_name["bikes.mp4"]
    for name in ("bikes.mp4", "carphone.mp4", "short.mp4"):
        top = by_name[name]["top"]
        assert by_name[name]["views"] == 6
        assert len(top) == 3 and {t["class"] for t in top} <= set(DEMO_CLASSES)
        scores = [t["score"] for t in top]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001


def test_predict_job_names_a_missing_input(job_process, tmp_path):
    checkpoint = write_checkpoint(tmp_path / "ckpt")
    done = job_process(
        "predict.py",
        *("--checkpoint", str(checkpoint), "--videos", str(tmp_path / "none"), "--out", "p.jsonl"),
    )
    assert done.returncode == 1
    assert (
        done.stderr.strip().splitlines()[-1].startswith(f"predict: {tmp_path / 'none'}: no videos")
    )
    done = job_process(
        "predict.py",
        *("--checkpoint", str(tmp_path / "nockpt"), "--videos", str(tmp_path), "--out", "p.jsonl"),
    )
    assert done.returncode == 1 and "nockpt" in done.stderr.strip().splitlines()[-1]
    # A file of a run that is not a checkpoint (Ray Train's snapshot beside them).
    snapshot = tmp_path / "checkpoint_manager_snapshot.json"
    snapshot.write_text("{}")
    done = job_process(
        "predict.py", "--checkpoint", str(snapshot), "--videos", str(tmp_path), "--out", "p.jsonl"
    )
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and last.startswith(f"predict: {snapshot} is not a checkpoint")


def test_evaluate_job_names_a_checkpoint_it_cannot_read(job_process, tmp_path):
    """jobs/evaluate.py checks its checkpoints as predict does: one line, before Ray starts."""
    done = job_process(
        "evaluate.py", "--data", str(tmp_path), "--checkpoint", str(tmp_path / "nockpt")
    )
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and last.startswith("evaluate: ") and "nockpt" in last
    old = write_checkpoint(tmp_path / "old")  # a config without the clips' scheme and modality
    state = torch.load(old / "state.pt", weights_only=True)
    del state["config"]["clip"]["scheme"], state["config"]["clip"]["modality"]
    torch.save(state, old / "state.pt")
    done = job_process("evaluate.py", "--data", str(tmp_path), "--checkpoint", str(old))
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and "scheme, modality" in last and "train it again" in last
