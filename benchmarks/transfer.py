"""Does T3D's supervision transfer help? Fine-tuning from the transferred student vs from scratch.

    python benchmarks/transfer.py [--videos-per-class 96] [--transfer-epochs 20] [--epochs 20]

Generates the demo set and ingests it (as benchmarks/demo_accuracy.py), runs
jobs/transfer_t3d.py on the training split (labels unused; the held-out split measures the
correspondence accuracy), then trains the same student with jobs/train.py twice, with the same
seed and recipe: from random initialisation and ``--init-from`` the transferred weights. Prints
the correspondence curve, both validation curves, the first epoch at which each reaches the
``--target`` accuracies, writes ``transfer_curves.png`` and ends with one JSON line.

T3D-121 at width 1/8 on 32-frame 32 x 32 clips, on the CPU. The random 2D teacher stands in
for ImageNet weights, which are not downloaded here (``--teacher-weights`` takes them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from demo_accuracy import run_job

TINY = ("--frames", "32", "--size", "32", "--width", "0.125", "--cpus-per-worker", "1")


def history(run: Path) -> list[dict]:
    """The epoch records of a run's history.jsonl, in order."""
    lines = (run / "history.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == "epoch"]


def first_epoch_reaching(curve: list[float], target: float) -> int | None:
    """1-based epoch at which ``curve`` first reaches ``target``; None if it never does."""
    return next((i + 1 for i, v in enumerate(curve) if v >= target), None)


def plot(path: Path, correspondence: list[float], curves: dict[str, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(range(1, len(correspondence) + 1), correspondence, marker="o")
    left.axhline(0.5, color="grey", linestyle="--", label="chance")
    left.set(title="supervision transfer", xlabel="epoch", ylabel="held-out correspondence acc")
    left.legend()
    for name, curve in curves.items():
        right.plot(range(1, len(curve) + 1), curve, marker="o", label=name)
    right.axhline(1 / 8, color="grey", linestyle="--", label="chance")
    right.set(title="fine-tuning on the demo labels", xlabel="epoch", ylabel="val video top-1")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", default=".transfer-benchmark", help="videos, shards and runs")
    p.add_argument("--videos-per-class", type=int, default=96)
    p.add_argument("--transfer-epochs", type=int, default=20)
    p.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs of each run")
    p.add_argument("--hard-negatives", type=float, default=0.5)
    p.add_argument("--target", type=float, nargs="+", default=[0.5, 0.7, 0.8])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    work = Path(args.work).resolve()
    if not (work / "videos/classInd.txt").exists():
        run_job(
            "make_demo_data.py",
            *("--out", str(work / "videos"), "--videos-per-class", str(args.videos_per_class)),
        )
    shards = work / "shards"
    run_job(
        "ingest.py",
        *("--source", str(work / "videos"), "--format", "ucf101", "--out", str(shards)),
        *("--short-side", "48", "--no-progress"),
    )
    runs = work / "runs"
    shutil.rmtree(runs, ignore_errors=True)  # fresh runs: the same folders would resume
    transfer = run_job(
        "transfer_t3d.py",
        *("--data", str(shards), "--out", str(runs / "transfer"), "--student", "t3d121"),
        *("--epochs", str(args.transfer_epochs), "--batch-size", "16"),
        *("--hard-negatives", str(args.hard_negatives), "--seed", str(args.seed), *TINY),
    )
    transfer_history = history(runs / "transfer")
    correspondence = [h["correspondence_accuracy"] for h in transfer_history]
    print(f"transfer: {transfer['correspondence_accuracy']:.3f}", file=sys.stderr, flush=True)

    curves = {}
    for name, init in (
        ("random init", ()),
        ("transferred", ("--init-from", transfer["student_weights"])),
    ):
        run = runs / name.split()[0]
        run_job(
            "train.py",
            *("--data", str(shards), "--model", "t3d121", "--out", str(run), *init),
            *("--epochs", str(args.epochs), "--batch-size", "16", "--lr", "1e-3"),
            *("--weight-decay", "0.05", "--seed", str(args.seed), *TINY),
        )
        curves[name] = [h["val_video_top1"] for h in history(run)]
        print(f"{name}: {curves[name]}", file=sys.stderr, flush=True)

    image = work / "transfer_curves.png"
    plot(image, correspondence, curves)
    last = transfer_history[-1]
    print("| transfer epoch | " + " | ".join(str(i + 1) for i in range(len(correspondence))) + " |")
    print("|---" * (len(correspondence) + 1) + "|")
    print("| correspondence | " + " | ".join(f"{v:.3f}" for v in correspondence) + " |")
    print()
    print("| fine-tuning epoch | " + " | ".join(str(i + 1) for i in range(args.epochs)) + " |")
    print("|---" * (args.epochs + 1) + "|")
    for name, curve in curves.items():
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in curve) + " |")
    reach = {
        str(t): {name: first_epoch_reaching(c, t) for name, c in curves.items()}
        for t in args.target
    }
    print()
    for t, by in reach.items():
        print(f"first epoch at val top-1 >= {t}: " + ", ".join(f"{n} {e}" for n, e in by.items()))
    print(
        json.dumps(
            {
                "correspondence_accuracy": transfer["correspondence_accuracy"],
                "correspondence_by_kind": {
                    k: last[f"accuracy_{k}"] for k in ("positive", "other_scene", "same_scene")
                },
                "correspondence_curve": correspondence,
                "fine_tune_curves": curves,
                "first_epoch_reaching": reach,
                "plot": str(image),
                "student_weights": transfer["student_weights"],
            }
        )
    )


if __name__ == "__main__":
    main()
