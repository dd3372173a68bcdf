"""I3D's two streams on the demo set: RGB, optical flow and their late fusion side by side.

    python benchmarks/two_stream.py [--videos-per-class 24] [--epochs 15] [--flow farneback]

Generates the demo set, ingests it with optical flow (jobs/ingest.py --flow), trains a tiny
I3D on the RGB and on the flow of the same shards (jobs/train.py [--modality flow]) and
evaluates both, fused, with jobs/evaluate.py --flow-checkpoint. Prints a table of
validation video top-1 (chance is 1/8) and wall times, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from demo_accuracy import run_job

TINY = ("--model", "i3d", "--width", "0.125", "--frames", "16", "--stride", "2", "--size", "64")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", default=".two-stream", help="videos, shards and runs go here")
    p.add_argument("--videos-per-class", type=int, default=24)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--flow", choices=["tvl1", "farneback"], default="farneback")
    args = p.parse_args()
    work = Path(args.work).resolve()
    if not (work / "videos/classInd.txt").exists():
        run_job(
            "make_demo_data.py",
            *("--out", str(work / "videos"), "--videos-per-class", str(args.videos_per_class)),
        )
    start = time.perf_counter()
    run_job(
        "ingest.py",
        *("--source", str(work / "videos"), "--format", "ucf101", "--out", str(work / "shards")),
        *("--short-side", "80", "--flow", args.flow, "--no-progress"),
    )
    seconds = {"ingest": time.perf_counter() - start}
    common = (*TINY, "--epochs", str(args.epochs), "--batch-size", "8", "--lr", "1e-3")
    checkpoints = {}
    for modality in ("rgb", "flow"):
        start = time.perf_counter()
        out = work / "runs" / f"{modality}-{time.strftime('%H%M%S')}"
        trained = run_job(
            "train.py",
            *("--data", str(work / "shards"), "--out", str(out), "--modality", modality),
            *common,
        )
        seconds[modality] = time.perf_counter() - start
        checkpoints[modality] = trained["best_checkpoint"]
    evaluated = run_job(
        "evaluate.py",
        *("--data", str(work / "shards"), "--checkpoint", checkpoints["rgb"]),
        *("--flow-checkpoint", checkpoints["flow"], "--clips", "3", "--crops", "1"),
        *("--out", str(work / "eval")),
    )
    m = evaluated["metrics"]
    print(f"{'stream':8} {'video top-1':>12} {'train s':>8}")
    for stream in ("rgb", "flow", "fused"):
        print(f"{stream:8} {m[f'{stream}_video_top1']:12.3f} {seconds.get(stream, 0):8.0f}")
    print(
        json.dumps(
            {
                "epochs": args.epochs,
                "flow": args.flow,
                "video_top1": {s: m[f"{s}_video_top1"] for s in ("rgb", "flow", "fused")},
                "seconds": {k: round(v, 1) for k, v in seconds.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
