"""Parameters, GMACs and CPU speed of every model at full width, beside the published figures.

    python benchmarks/models.py [--models c3d i3d ...] [--iters 2] [--no-latency]

Per model, at its paper input (``raylab.models.MODEL_INFO``: frames x size x size, the class
count of the published figure):
  params   counted on the meta device (no memory, no init);
  GMACs    ``torch.utils.flop_counter.FlopCounterMode`` on the meta device, halved (it counts a
           multiply-add as 2 FLOPs; the papers' "GFLOPs" for these models are MACs);
  both beside the published (or computed from the paper's table) figure and the ratio ours / theirs;
  latency  CPU seconds per clip, batch 1, eval mode, no grad, at the paper input;
  train    CPU forward+backward clips/s at a small input (batch 2, train mode), see SMALL.
Timings are the best of ``--iters`` runs after one warm-up: on a machine shared with other
processes the best run is the one least disturbed. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import time

import torch

from raylab.models import MODEL_INFO, MODEL_NAMES, build_model
from raylab.models.common import measure

# A small full-width input per model for the training-speed column (C3D's fc head needs 16x112).
SMALL = {name: (16, 112, 112) for name in MODEL_NAMES} | {
    "densenet3d121": (32, 112, 112),  # DenseNet3D / T3D need >= 29 frames
    "densenet3d169": (32, 112, 112),
    "t3d121": (32, 112, 112),
    "t3d169": (32, 112, 112),
    "t3d201": (32, 112, 112),
    "stm": (8, 112, 112),
    "tsn": (8, 112, 112),
}

# Rows: (label, model name, options). I3D's flow variant has its own published count.
ROWS = [(name, name, {}) for name in MODEL_NAMES]
ROWS.insert(2, ("i3d-flow", "i3d", {"in_channels": 2}))
FLOW_PARAMS_M = 12.68  # layer table [calc]


def count(name: str, options: dict, classes: int, thw: tuple[int, int, int]) -> tuple[int, float]:
    """(parameters, GMACs per clip) of the full-width model, on the meta device."""
    with torch.device("meta"):
        model = build_model(name, classes, **options).eval()
    gmacs, _, _ = measure(model, (1, options.get("in_channels", 3), *thw))
    return sum(p.numel() for p in model.parameters()), gmacs


def latency(name: str, options: dict, classes: int, thw: tuple[int, int, int], iters: int) -> float:
    """Seconds per clip of an eval-mode, no-grad forward at batch 1 on the CPU."""
    model = build_model(name, classes, **options).eval()
    clip = torch.randn(1, options.get("in_channels", 3), *thw)
    times = []
    with torch.no_grad():
        model(clip)  # warm-up: oneDNN picks its kernels on the first call
        for _ in range(iters):
            start = time.perf_counter()
            model(clip)
            times.append(time.perf_counter() - start)
    return min(times)


def train_speed(
    name: str, options: dict, classes: int, thw: tuple[int, int, int], iters: int
) -> float:
    """Clips/s of forward + backward in train mode, batch 2, on the CPU."""
    model = build_model(name, classes, **options).train()
    clip = torch.randn(2, options.get("in_channels", 3), *thw)
    model(clip).sum().backward()  # warm-up
    times = []
    for _ in range(iters):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        model(clip).sum().backward()
        times.append(time.perf_counter() - start)
    return 2 / min(times)


def ratio(ours: float, theirs: float | None) -> str:
    return f"{ours / theirs:.3f}" if theirs else "-"


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="*", default=None, help="labels to run (default: all)")
    p.add_argument("--iters", type=int, default=3, help="timed runs after one warm-up (best)")
    p.add_argument("--no-latency", action="store_true", help="only count params and MACs")
    args = p.parse_args(argv)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    header = (
        f"{'model':<14}{'input':>11}{'cls':>5}{'params M':>10}{'publ. M':>9}{'ratio':>7}"
        f"{'GMACs':>9}{'publ. G':>9}{'ratio':>7}{'s/clip':>9}{'train clip/s':>14}  source"
    )
    print(header)
    print("-" * len(header))
    for label, name, options in ROWS:
        if args.models and label not in args.models:
            continue
        info = MODEL_INFO[name]
        thw = (info.frames, info.size, info.size)
        params, gmacs = count(name, options, info.classes, thw)
        published_m = FLOW_PARAMS_M if label == "i3d-flow" else info.params_m
        if args.no_latency:
            seconds = speed = None
        else:
            seconds = latency(name, options, info.classes, thw, args.iters)
            speed = train_speed(name, options, info.classes, SMALL[name], args.iters)
        small = "x".join(map(str, SMALL[name]))
        print(
            f"{label:<14}{'x'.join(map(str, thw)):>11}{info.classes:>5}{params / 1e6:>10.2f}"
            f"{fmt(published_m, '.2f'):>9}{ratio(params / 1e6, published_m):>7}"
            f"{gmacs:>9.1f}{fmt(info.gmacs, '.1f'):>9}{ratio(gmacs, info.gmacs):>7}"
            f"{fmt(seconds, '.2f'):>9}{fmt(speed, '.2f'):>14}  {info.source}"
            + ("" if speed is None else f"; train at {small}"),
            flush=True,
        )


if __name__ == "__main__":
    main()
