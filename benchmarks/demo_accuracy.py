"""Does time matter? Tiny 3D networks vs a 2D TSN on the temporal-reasoning demo set.

    python benchmarks/demo_accuracy.py [--videos-per-class 96] [--epochs E] [--models ...]

Generates the demo set, ingests it, and trains each model with jobs/train.py (Ray Train,
the real clip pipeline) on the CPU at a tiny width and small clips. Prints a table of
validation video top-1 (chance is 1/8), wall time and the median epoch's training clips/s
per model, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Tiny widths so that a CPU trains each in minutes; C3D with batch norm (no pretrained
# weights here) and the pooled head (its fc head needs 112x112). Clips cover the whole
# 32-frame video: 16 frames at stride 2, or 32 at stride 1 for T3D, whose TTLs need T >= 29.
# I3D and the ResNet families (STM, TSN) shrink the frame 16-32x, so they get 64 px; T3D's
# stem shrinks it 4x, and at 32 px it could not tell the turns apart (8 x 8 cells): 48 px.
# T3D-121 at width 1/8 (growth rate 4) spends its first ~5 epochs near chance, I3D 4-7,
# and both were still climbing at epoch 30: 40 and 45 epochs.
# Per model: build options, frames, stride, crop size, learning rate, epochs.
MODELS = {
    "c3d": ({"width": 0.125, "head": "pooled", "batch_norm": True}, 16, 2, 32, 3e-3, 30),
    "i3d": ({"width": 0.125}, 16, 2, 64, 1e-3, 45),
    "t3d121": ({"width": 0.125}, 32, 1, 48, 1e-3, 40),
    "stm": ({"width": 0.125}, 16, 2, 64, 1e-3, 30),
    "tsn": ({"width": 0.125}, 16, 2, 64, 1e-3, 30),
}
# Training crops from 1 and 7/8 of the short side only: the object is an eighth of the
# frame and crosses it, and TSN's 0.66-0.75 corner crops lose it for part of the clip.
CROP_SCALES = ("1.0", "0.875")


def run_job(script: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(REPO / "jobs" / script), *args],
        capture_output=True,
        text=True,
        env=os.environ | {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")},
    )
    if done.returncode:
        raise SystemExit(f"{script} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", default=".demo-accuracy", help="videos, shards and runs go here")
    p.add_argument("--videos-per-class", type=int, default=96)
    p.add_argument("--epochs", type=int, help="for every model (default: per model, 30-40)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = p.parse_args()
    work = Path(args.work).resolve()
    if not (work / "videos/classInd.txt").exists():
        run_job(
            "make_demo_data.py",
            *("--out", str(work / "videos"), "--videos-per-class", str(args.videos_per_class)),
        )
    run_job(
        "ingest.py",
        *("--source", str(work / "videos"), "--format", "ucf101", "--out", str(work / "shards")),
        *("--short-side", "48", "80", "--no-progress"),
    )
    rows = []
    for name in args.models:
        model_options, frames, stride, size, lr, epochs = MODELS[name]
        run = work / "runs" / name
        shutil.rmtree(run, ignore_errors=True)  # a fresh run: the same folder would resume
        options = [f"{k}={json.dumps(v)}" for k, v in model_options.items() if k != "width"]
        start = time.perf_counter()
        result = run_job(
            "train.py",
            *("--data", str(work / "shards"), "--model", name, "--out", str(run)),
            *("--width", str(model_options["width"]), "--frames", str(frames)),
            *("--stride", str(stride)),
            *("--size", str(size), "--epochs", str(args.epochs or epochs)),
            *("--batch-size", "16", "--lr", str(lr), "--cpus-per-worker", "1"),
            *("--val-clips", "2", "--crop-scales", *CROP_SCALES),
            *(arg for o in options for arg in ("--model-option", o)),
        )
        seconds = time.perf_counter() - start
        best = result["best_metrics"]
        history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
        speeds = sorted(r["clips_per_s"] for r in history if r["event"] == "epoch")
        rows.append(
            {
                "model": name,
                "clip": f"{frames}x{size}x{size}, stride {stride}",
                "epochs": result["metrics"]["epochs"],
                "best_epoch": result["metrics"]["best_epoch"],
                "val_video_top1": best["val_video_top1"],
                "final_val_video_top1": result["metrics"]["val_video_top1"],
                "minutes": seconds / 60,
                # Training throughput of the median epoch (the first pays for start-up).
                "median_clips_per_s": speeds[len(speeds) // 2],
            }
        )
        print(f"{name}: {rows[-1]}", file=sys.stderr, flush=True)
    print(
        "| model | clip | epochs | best val video top-1 | final val video top-1 | minutes "
        "| clips/s (median epoch) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['clip']} | {r['epochs']} | {r['val_video_top1']:.3f} | "
            f"{r['final_val_video_top1']:.3f} | {r['minutes']:.1f} | "
            f"{r['median_clips_per_s']:.1f} |"
        )
    print(json.dumps({"chance": 1 / 8, "rows": rows}))


if __name__ == "__main__":
    main()
