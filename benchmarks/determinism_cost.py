"""What the same order costs: training with the plan's ordered delivery vs unordered.

    python benchmarks/determinism_cost.py [--rounds 3] [--workers 1 2] [--epochs 3]

Trains the same run (C3D at width 1/4, 16 x 64 px clips of a generated demo set, one seed)
through ``jobs``' trainer twice per round and worker count, alternating which goes first:
(a) ordered: rows put back into the epoch plan's order before batching (what every run
does: the same batches in the same order every time, exact mid-epoch resumes); (b)
unordered: the same clips of the same plan, batched as decode tasks finish through Ray
Data's local shuffle buffer of the same size as the plan's window (64), as raylab trained
before its runs were repeatable (``DataOptions(ordered=False)``). Both decode exactly the
same clips; what differs is the order and the waiting for it. From each run's ``history.jsonl``, epochs after the first:
training clips/s and the share of training time spent waiting for data. Prints every
round's figures, the median ratio (a)/(b) of clips/s per worker count, and one JSON line.
Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def prepare(work: Path, videos_per_class: int) -> Path:
    """A demo set ingested at short side 74 (64 px crops), kept in ``work`` for later runs."""
    from raylab.data.ingest import EncodeParams, ingest
    from raylab.data.synthetic import make_demo_dataset

    shards = work / "shards"
    if not (shards / "manifest.json").exists():
        make_demo_dataset(
            work / "videos", videos_per_class=videos_per_class, seed=0, progress=False
        )
        ingest(
            work / "videos",
            "ucf101",
            shards,
            params=EncodeParams(short_sides=(74,)),
            progress=False,
        )
    return shards


def one_run(shards: Path, root: Path, name: str, workers: int, ordered: bool, epochs: int) -> dict:
    """Train once; the mean clips/s and data wait of its epochs after the first."""
    from raylab.config import ClipConfig, TrainConfig
    from raylab.train.trainer import DataOptions, build_trainer

    config = TrainConfig(
        model="c3d",
        model_options={"width": 0.25, "head": "pooled"},
        clip=ClipConfig(frames=16, size=64),
        epochs=epochs,
        workers=workers,
        batch_size=8 // workers,
        seed=0,
    )
    data = DataOptions(shards=str(shards), decoder_cpus=0.5, ordered=ordered)
    trainer = build_trainer(
        replace(config), data, storage_path=root, name=name, cpus_per_worker=0.5
    )
    result = trainer.fit()
    if result.error:
        raise SystemExit(f"{name} failed: {result.error}")
    lines = (root / name / "history.jsonl").read_text().splitlines()
    epochs_ = [r for r in map(json.loads, lines) if r["event"] == "epoch"][1:]
    return {
        "clips_per_s": statistics.mean(r["clips_per_s"] for r in epochs_),
        "data_wait_frac": statistics.mean(r["data_wait_frac"] for r in epochs_),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--epochs", type=int, default=3, help="per run; the first is not counted")
    p.add_argument("--videos-per-class", type=int, default=12)
    p.add_argument("--work", help="keep the demo set here and reuse it on later runs")
    args = p.parse_args()

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    work = Path(args.work or tempfile.mkdtemp(prefix="raylab-determinism-"))
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    shards = prepare(work, args.videos_per_class)
    root = work / "runs"
    shutil.rmtree(root, ignore_errors=True)
    rows: dict[int, list[tuple[dict, dict]]] = {w: [] for w in args.workers}
    started = time.time()
    for r in range(args.rounds):
        for workers in args.workers:
            order = [True, False] if r % 2 == 0 else [False, True]
            got = {}
            for ordered in order:
                name = f"r{r}-w{workers}-{'ordered' if ordered else 'unordered'}"
                got[ordered] = one_run(shards, root, name, workers, ordered, args.epochs)
            rows[workers].append((got[True], got[False]))
            a, b = got[True], got[False]
            print(
                f"round {r + 1} workers {workers}: ordered {a['clips_per_s']:.1f} clips/s "
                f"(wait {a['data_wait_frac']:.0%}), unordered {b['clips_per_s']:.1f} clips/s "
                f"(wait {b['data_wait_frac']:.0%}), ratio {a['clips_per_s'] / b['clips_per_s']:.3f}",
                flush=True,
            )
    summary = {"rounds": args.rounds, "minutes": round((time.time() - started) / 60, 1)}
    for workers, pairs in rows.items():
        ratio = statistics.median(a["clips_per_s"] / b["clips_per_s"] for a, b in pairs)
        wait_a = statistics.median(a["data_wait_frac"] for a, _ in pairs)
        wait_b = statistics.median(b["data_wait_frac"] for _, b in pairs)
        print(
            f"{workers} worker(s): ordered / unordered clips/s, median {ratio:.3f}; "
            f"data wait {wait_a:.1%} ordered, {wait_b:.1%} unordered"
        )
        summary[f"workers_{workers}"] = {
            "clips_per_s_ratio": round(ratio, 3),
            "data_wait_ordered": round(wait_a, 4),
            "data_wait_unordered": round(wait_b, 4),
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
