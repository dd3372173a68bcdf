"""The GPU, measured in one run: training speed per model and mode, decode cost per core, and
so the decode cores each GPU needs.

    PYTHONPATH=. python benchmarks/gpu.py [--device cuda] [--models c3d i3d t3d121 stm tsn] \
        [--modes fp32 bf16 compile] [--steps 8] [--max-batch 128] [--decode-procs 16]
    python benchmarks/gpu.py --device cpu --tiny      # the same code, tiny sizes, in seconds

Needs only torch and raylab's models for (a); (b) also needs decord and PyAV (the video
wheels), and is skipped, saying so, where they cannot be imported. No Ray.

(a) Per model at its paper's input (C3D 16x112, I3D 64x224, T3D-121 32x224, STM 16x224,
    TSN 8 segments x 224), the training step (forward, cross-entropy, backward, SGD step)
    in clips/s at the largest power-of-two batch that fits, in three modes: ``fp32`` eager,
    ``bf16`` (bf16 autocast and, for 3D convolutions, ``channels_last_3d``), and ``compile``
    (that plus ``torch.compile``). Model FLOPs utilisation: GMACs per clip (FlopCounterMode)
    x 2 FLOPs x 3 (forward + backward) x clips/s over the GPU's dense bf16 peak.
(b) decord decode cost: clips/s per CPU core, cutting 16-frame test clips (as training's
    decoder does: ``raylab.data.decode``) from H.264 renditions at short sides 128 and 256
    that ``encode_video`` makes of synthetic 320x240 source videos, on ``--decode-procs``
    processes at once.
(c) Decode cores per GPU for each model: (a)'s best clips/s over (b)'s clips/s per core at
    the rendition its crop reads (112 from 128, 224 from 256).

Prints a table per part and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # raylab from the checkout

from raylab.models import build_model  # noqa: E402
from raylab.models.common import measure  # noqa: E402

# name: (build_model name, options, frames, crop) at the papers' inputs.
MODELS = {
    "c3d": ("c3d", {}, 16, 112),
    "i3d": ("i3d", {}, 64, 224),
    "t3d121": ("t3d121", {}, 32, 224),
    "stm": ("stm", {}, 16, 224),
    "tsn": ("tsn", {}, 8, 224),
}
# --tiny: the same models at width 1/8 on small clips, for a CPU in seconds.
TINY = {
    "c3d": ("c3d", {"head": "pooled"}, 16, 32),
    "i3d": ("i3d", {}, 8, 32),
    "t3d121": ("t3d121", {}, 32, 32),
    "stm": ("stm", {}, 4, 32),
    "tsn": ("tsn", {}, 4, 32),
}
MODES = ("fp32", "bf16", "compile")
CLASSES = 400
# Dense bf16 tensor-core peaks (TFLOPS) by device name, from the vendors' data sheets.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10G": 70.0}


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def step_speed(
    name: str, mode: str, batch: int, device: torch.device, steps: int, tiny: bool
) -> float:
    """Training clips/s of ``name`` in ``mode`` at ``batch``; raises on out-of-memory."""
    model_name, options, frames, size = (TINY if tiny else MODELS)[name]
    width = {"width": 0.125} if tiny else {}
    torch.manual_seed(0)
    model = build_model(model_name, CLASSES, **options, **width).to(device).train()
    fast = mode != "fp32"
    three_d = any(isinstance(m, torch.nn.Conv3d) for m in model.modules())
    fmt = torch.channels_last_3d if fast and three_d else torch.contiguous_format
    model = model.to(memory_format=fmt)
    run = torch.compile(model) if mode == "compile" else model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, frames, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, CLASSES, (batch,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast)

    def one_step() -> None:
        with autocast:
            loss = F.cross_entropy(run(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3 if mode == "compile" else 2):  # warm-up (and compilation)
        one_step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    sync(device)
    return batch * steps / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def largest_batch_speed(name, mode, device, steps, max_batch, tiny) -> tuple[int, float]:
    """(batch, clips/s) at the largest power of two up to ``max_batch`` that fits."""
    found = (0, 0.0)
    batch = 1
    while batch <= max_batch:
        try:
            found = (batch, step_speed(name, mode, batch, device, steps, tiny))
        except torch.OutOfMemoryError:
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        batch *= 2
    if found[0] == 0:
        raise RuntimeError(f"{name} ({mode}): not even a batch of 1 fits")
    return found


def train_table(args, device: torch.device) -> dict:
    peak = peak_tflops(device, args.peak_tflops)
    out = {}
    for name in args.models:
        model_name, options, frames, size = (TINY if args.tiny else MODELS)[name]
        width = {"width": 0.125} if args.tiny else {}
        with torch.device("meta"):
            meta = build_model(model_name, CLASSES, **options, **width)
        gmacs = measure(meta, (1, 3, frames, size, size))[0]
        row = {"input": f"{frames}x{size}", "gmacs": round(gmacs, 3)}
        for mode in args.modes:
            if mode == "compile" and "bf16" in row:
                # The same step compiled: its batch, not a recompilation per batch size.
                batch = row["bf16"]["batch"]
                speed = step_speed(name, mode, batch, device, args.steps, args.tiny)
            else:
                batch, speed = largest_batch_speed(
                    name, mode, device, args.steps, args.max_batch, args.tiny
                )
            mfu = gmacs * 1e9 * 2 * 3 * speed / (peak * 1e12) if peak else None
            row[mode] = {"batch": batch, "clips_per_s": round(speed, 2), "mfu": mfu}
            print(
                f"  {name} {mode}: batch {batch}, {speed:.1f} clips/s"
                + (f", MFU {mfu:.1%}" if mfu is not None else ""),
                file=sys.stderr,
                flush=True,
            )
        row["best_mode"] = max(args.modes, key=lambda m: row[m]["clips_per_s"])
        out[name] = row
    return out


def _decode_worker(item: tuple) -> int:
    """Decode every test clip of the given renditions in this process; returns clips cut."""
    import numpy as np

    from raylab.data.clips import ClipConfig
    from raylab.data.decode import open_video, sample_views, scaled_size

    renditions, short_side, size, repeat = item
    spec = ClipConfig(frames=16, stride=1, size=size, short_side=short_side)
    clips = 0
    torch.set_num_threads(1)
    for _ in range(repeat):
        for data, height, width in renditions:
            h, w = scaled_size(height, width, short_side)
            views = sample_views(open_video(data, h, w), spec, np.random.default_rng(0), False)
            clips += len(views)
    return clips


def decode_table(args) -> dict:
    """Clips/s per core at short sides 128 and 256, ``--decode-procs`` processes at once."""
    try:
        import decord  # noqa: F401

        from raylab.data.ingest import EncodeParams, encode_video
        from raylab.data.storage import rendition_column
        from raylab.data.synthetic import make_demo_dataset
    except ImportError as err:
        print(f"(b) skipped: {err}", file=sys.stderr)
        return {"skipped": str(err)}
    with tempfile.TemporaryDirectory() as tmp:
        per_class = max(1, math.ceil(args.decode_videos / 8))
        make_demo_dataset(
            tmp, videos_per_class=max(2, per_class), frames=64, height=240, width=320,
            progress=False,
        )  # fmt: skip
        sources = sorted(Path(tmp).rglob("*.mp4"))[: args.decode_videos]
        params = EncodeParams(short_sides=(128, 256))
        encoded = [encode_video(p, params) for p in sources]
    out = {}
    procs = args.decode_procs or os.cpu_count() or 1
    for short_side, size in ((128, 112), (256, 224)):
        column = rendition_column(short_side)
        renditions = [(e[column], e["height"], e["width"]) for e in encoded]
        work = [(renditions, short_side, size, args.decode_repeat)] * procs
        # Spawned, not forked: a fork of a process whose torch threads ran can deadlock.
        with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_decode_worker, [(renditions[:1], short_side, size, 1)] * procs))
            start = time.perf_counter()
            clips = sum(pool.map(_decode_worker, work))
            seconds = time.perf_counter() - start
        per_core = clips / seconds / procs
        out[f"{short_side}p"] = {"procs": procs, "clips_per_s": clips / seconds,
                                 "clips_per_s_per_core": per_core}  # fmt: skip
        print(f"  {short_side}p: {clips / seconds:.1f} clips/s on {procs} processes, "
              f"{per_core:.1f} per core", file=sys.stderr, flush=True)  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--steps", type=int, default=8, help="timed steps per batch size")
    p.add_argument("--max-batch", type=int, default=128)
    p.add_argument("--peak-tflops", type=float, help="bf16 dense peak (default: by GPU name)")
    p.add_argument("--decode-procs", type=int, help="decoding processes (default: all cores)")
    p.add_argument("--decode-videos", type=int, default=16)
    p.add_argument("--decode-repeat", type=int, default=2, help="passes over the videos")
    p.add_argument("--skip-decode", action="store_true")
    p.add_argument("--tiny", action="store_true", help="width 1/8 on small clips (tests)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"(a) training steps on {name}, torch {torch.__version__}", file=sys.stderr)
    train = train_table(args, device)
    print("(b) decode cost per core", file=sys.stderr)
    decode = {"skipped": "--skip-decode"} if args.skip_decode else decode_table(args)

    cores = {}
    for model, row in train.items():
        crop = (TINY if args.tiny else MODELS)[model][3]
        rendition = "128p" if crop <= 112 else "256p"
        speed = row[row["best_mode"]]["clips_per_s"]
        per_core = decode.get(rendition, {}).get("clips_per_s_per_core")
        cores[model] = round(speed / per_core, 2) if per_core else None

    print(f"\n| model | input | GMACs | {' | '.join(args.modes)} | best | decode cores/GPU |")
    print("|---|---|---|" + "---|" * len(args.modes) + "---|---|")
    for model, row in train.items():
        cells = []
        for mode in args.modes:
            r = row[mode]
            mfu = f", MFU {r['mfu']:.0%}" if r["mfu"] is not None else ""
            cells.append(f"{r['clips_per_s']:.1f} clips/s (batch {r['batch']}{mfu})")
        print(f"| {model} | {row['input']} | {row['gmacs']:.2f} | {' | '.join(cells)} | "
              f"{row['best_mode']} | {cores[model]} |")  # fmt: skip
    result = {"device": name, "torch": torch.__version__, "train": train, "decode": decode,
              "decode_cores_per_gpu": cores}  # fmt: skip
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
