"""Steps/s of a training step inside a Ray Train worker vs the same step in bare PyTorch.

    python benchmarks/train_overhead.py [--model c3d --width 0.25 --frames 16 --size 64]

Both run the same model from the same seed on the same in-memory uint8 batches (no data
pipeline: this isolates what Ray Train adds — the worker process, prepare_model, a
report per epoch), with the same number of torch threads, one after the other in one run.
The bare loop runs twice: before Ray starts, and again with the local Ray up and idle, so
that what the Train worker itself costs is told apart from the CPU that Ray's daemons
(raylet, GCS, the Train controller's polling) take from a machine with few cores. The three
run back to back in each of ``--rounds`` rounds (Ray started and stopped in each), and the
ratios are taken per round, then their median: a machine's speed drifts between runs by
more than the difference measured. Prints the rates and the ratios Ray / bare. Nothing here
is a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def make_batches(n: int, batch: int, frames: int, size: int) -> list[tuple]:
    g = torch.Generator().manual_seed(0)
    return [
        (
            torch.randint(0, 256, (batch, frames, size, size, 3), dtype=torch.uint8, generator=g),
            torch.randint(0, 8, (batch,), generator=g),
        )
        for _ in range(n)
    ]


def run_steps(config: dict, report=None) -> float:
    """Train ``config["steps"]`` steps (after ``config["warmup"]``); returns steps/s."""
    from raylab.config import normalise
    from raylab.models import build_model
    from raylab.train.loop import make_optimizer

    torch.set_num_threads(config["threads"])
    torch.manual_seed(0)
    model = build_model(config["model"], 8, **config["model_options"])
    if report is not None:
        import ray.train.torch

        model = ray.train.torch.prepare_model(model)
    optimizer = make_optimizer(model, "adamw", lr=1e-3, weight_decay=1e-4)
    batches = make_batches(
        config["batches"], config["batch_size"], config["frames"], config["size"]
    )
    mean = torch.tensor([0.45] * 3)
    std = torch.tensor([0.225] * 3)
    start = None
    total = config["warmup"] + config["steps"]
    for step in range(total):
        if step == config["warmup"]:
            start = time.perf_counter()
        clip, label = batches[step % len(batches)]
        loss = F.cross_entropy(model(normalise(clip, mean, std)), label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if report is not None and (step + 1) % config["steps_per_epoch"] == 0:
            report({"step": step + 1, "loss": loss.item()})
    return config["steps"] / (time.perf_counter() - start)


def ray_worker(config: dict) -> None:
    import ray.train

    rate = run_steps(config, report=ray.train.report)
    # Train V2 keeps metrics only beside checkpoints; a file is the plain way back.
    Path(config["result_file"]).write_text(json.dumps({"steps_per_s": rate}))


def one_round(config: dict, threads: int) -> dict:
    """Steps/s of the bare loop, the bare loop beside an idle local Ray, and a Train worker."""
    import tempfile

    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    bare = run_steps(config)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=threads + 1, include_dashboard=False, log_to_driver=False)
    bare_ray_up = run_steps(config)
    config = config | {"result_file": str(Path(tempfile.mkdtemp()) / "rate.json")}
    trainer = TorchTrainer(
        ray_worker,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=1, resources_per_worker={"CPU": threads}
        ),
        run_config=ray.train.RunConfig(storage_path=tempfile.mkdtemp(), name="overhead"),
    )
    trainer.fit()
    in_ray = json.loads(Path(config["result_file"]).read_text())["steps_per_s"]
    ray.shutdown()
    return {"bare": bare, "bare_ray_up": bare_ray_up, "ray": in_ray}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="c3d")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    options = {"width": args.width} | ({"head": "pooled"} if args.model == "c3d" else {})
    config = {
        "model": args.model,
        "model_options": options,
        "frames": args.frames,
        "size": args.size,
        "batch_size": args.batch_size,
        "batches": 8,
        "warmup": 5,
        "steps": args.steps,
        "steps_per_epoch": 20,
        "threads": args.threads,
    }
    rounds = [one_round(config, args.threads) for _ in range(args.rounds)]
    ratio = statistics.median(r["ray"] / r["bare"] for r in rounds)
    ratio_ray_up = statistics.median(r["ray"] / r["bare_ray_up"] for r in rounds)

    print(
        f"{args.model} width {args.width}, {args.batch_size} x {args.frames}x{args.size}^2 "
        f"clips, {args.threads} torch threads, {args.steps} timed steps each, "
        f"{args.rounds} rounds (steps/s per round)"
    )
    for name, key in [
        ("bare PyTorch loop              ", "bare"),
        ("bare PyTorch loop, Ray up, idle", "bare_ray_up"),
        ("Ray Train worker               ", "ray"),
    ]:
        print(f"{name} " + " ".join(f"{r[key]:7.2f}" for r in rounds))
    print(f"median ratio Ray / bare = {ratio:.3f}  (Ray / bare with Ray up = {ratio_ray_up:.3f})")
    print(json.dumps({"rounds": rounds, "ratio": ratio, "ratio_ray_up": ratio_ray_up}))


if __name__ == "__main__":
    main()
