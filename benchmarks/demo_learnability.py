"""How fast does each searched network learn the demo set, apart from Ray's overheads?

    python benchmarks/demo_learnability.py [--runs t3d121-64 stm-8x64 ...] [--epochs 10] \
        [--seeds 0] [--threads 2] [--crop-scales 1.0] [--shards SHARDS [--pipeline-crops]]

Renders the embedded search's demo set (48 videos a class, each in a scene of its own: 288
training and 96 validation videos in unseen scenes, at short side 64) straight into memory,
with no encoding, ingest or Ray, and trains each run in a plain PyTorch loop: AdamW, cosine
schedule with one warm-up epoch, batch 8, training crops from 1 or 7/8 (``--crop-scales``) of the short side at
a random place and time, validation on the centre crop and centre clip. With ``--shards``
the videos are instead decoded (decord) from a demo ingest's smallest rendition at short
side 64 or more, scaled to 64: what the codec and its chroma subsampling cost, with the loop
unchanged; ``--pipeline-crops`` then also cuts them as the clip pipeline does (frames at
73 px, TSN multiscale crops of ``--crop-scales``). Prints val video top-1 per epoch and
seconds per epoch, side by side, then one JSON line. The search's trials add their start-up
and the clip pipeline to these times; the epochs to a given accuracy are what the search's
ASHA rungs and budget must allow.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from raylab.data import synthetic
from raylab.data.clips import default_short_side
from raylab.data.decode import center_crop, multiscale_crop
from raylab.models import build_model

VIDEOS_PER_CLASS = 48
CROP_SCALES = (1.0, 0.875)  # training crop sides / short side, by default
FRAMES, HEIGHT, WIDTH = 32, 128, 160  # the demo videos as make_demo_dataset renders them
SHORT_SIDE = 64  # the embedded search's one rendition
# name: (model, build options, frames, stride, crop size, learning rate); the options may
# also set "width" (default 1/8, the search's) and "optimizer" ("sgd": Nesterov momentum 0.9)
RUNS = {
    "t3d121-48": ("t3d121", {"dropout": 0.0}, 32, 1, 48, 2e-3),
    "t3d121-48-dropout": ("t3d121", {}, 32, 1, 48, 1e-3),
    "t3d121-32": ("t3d121", {"dropout": 0.0}, 32, 1, 32, 3e-3),
    "t3d169-48": ("t3d169", {"dropout": 0.0}, 32, 1, 48, 2e-3),
    "stm-8x48": ("stm", {"dropout": 0.0}, 8, 4, 48, 3e-3),
    "stm-16x48": ("stm", {"dropout": 0.0}, 16, 2, 48, 2e-3),
    "c3d-16x32": ("c3d", {"head": "pooled", "batch_norm": True}, 16, 2, 32, 3e-3),
    # The embedded search's crop since T3D at 48 px proved seed-dependent.
    "t3d121-64": ("t3d121", {"dropout": 0.0}, 32, 1, 64, 2e-3),
    "t3d169-64": ("t3d169", {"dropout": 0.0}, 32, 1, 64, 2e-3),
    "stm-8x64": ("stm", {"dropout": 0.0}, 8, 4, 64, 3e-3),
    # The top of the embedded search's learning-rate range, and above it.
    "t3d121-64-lr2.5e-3": ("t3d121", {"dropout": 0.0}, 32, 1, 64, 2.5e-3),
    "t3d121-64-lr3.5e-3": ("t3d121", {"dropout": 0.0}, 32, 1, 64, 3.5e-3),
    # Below it: does a lower rate leave chance sooner?
    "t3d121-64-lr1e-3": ("t3d121", {"dropout": 0.0}, 32, 1, 64, 1e-3),
    "t3d121-64-lr1.4e-3": ("t3d121", {"dropout": 0.0}, 32, 1, 64, 1.4e-3),
    # Levers tried on the seeds where t3d121-48 was slow: a higher rate, SGD, twice the width.
    "t3d121-48-lr6e-3": ("t3d121", {"dropout": 0.0}, 32, 1, 48, 6e-3),
    "t3d121-48-lr1.2e-2": ("t3d121", {"dropout": 0.0}, 32, 1, 48, 1.2e-2),
    "t3d121-48-sgd": ("t3d121", {"dropout": 0.0, "optimizer": "sgd"}, 32, 1, 48, 5e-2),
    "t3d121-48-w0.25": ("t3d121", {"dropout": 0.0, "width": 0.25}, 32, 1, 48, 2e-3),
    "stm-8x48-lr8e-3": ("stm", {"dropout": 0.0}, 8, 4, 48, 8e-3),
}


def demo_set() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """uint8 videos (N, T, 3, H, W) at short side 64, labels (N,), and which are validation."""
    videos, labels, is_val = [], [], []
    groups = VIDEOS_PER_CLASS  # one video of each class per scene, as the search's demo set
    val_groups = max(1, round(groups * synthetic.TEST_GROUP_FRACTION))
    size = (SHORT_SIDE, round(WIDTH * SHORT_SIDE / HEIGHT))
    for ci, label in enumerate(synthetic.DEMO_CLASSES):
        for group in range(1, groups + 1):
            scene = synthetic.make_scene(np.random.default_rng([0, group]), HEIGHT, WIDTH)
            rng = np.random.default_rng([0, ci, group, 1])
            path = synthetic.sample_trajectory(label, rng, FRAMES, HEIGHT, WIDTH)
            frames = torch.from_numpy(synthetic.render_video(scene, path)).permute(0, 3, 1, 2)
            frames = F.interpolate(frames.float(), size=size, mode="area").round().byte()
            videos.append(frames)
            labels.append(ci)
            is_val.append(group <= val_groups)
    return torch.stack(videos), torch.tensor(labels), np.array(is_val)


def decoded_set(
    shards: str, short_side: int = SHORT_SIDE
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """As :func:`demo_set`, from the H.264 renditions of a demo ingest (``jobs/ingest.py`` or
    the search's own under ``ROOT/demo/shards``), decoded as the clip pipeline decodes them."""
    from pathlib import Path

    import pyarrow.parquet as pq

    from raylab.data.clips import choose_rendition
    from raylab.data.decode import decode_frames, open_video, scaled_size
    from raylab.data.storage import Shards, rendition_column

    renditions = Shards.open(shards).manifest.renditions
    column = rendition_column(choose_rendition(renditions, short_side))
    videos, labels, is_val = [], [], []
    for split in ("train", "val"):
        for part in sorted((Path(shards) / split).glob("*.parquet")):
            for row in pq.read_table(part).to_pylist():
                size = scaled_size(row["height"], row["width"], short_side)
                frames = decode_frames(open_video(row[column], *size), np.arange(FRAMES))
                videos.append(torch.from_numpy(frames).permute(0, 3, 1, 2))
                labels.append(row["label"])
                is_val.append(split == "val")
    return torch.stack(videos), torch.tensor(labels), np.array(is_val)


def train_run(
    name: str,
    videos,
    labels,
    is_val,
    epochs: int,
    seed: int,
    warmup: int = 1,
    pipeline_crops: bool = False,
    crop_scales: tuple[float, ...] = CROP_SCALES,
) -> list[dict]:
    model_name, options, frames, stride, size, lr = RUNS[name]
    options = {"width": 0.125} | options
    sgd = options.pop("optimizer", "adamw") == "sgd"
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(model_name, len(synthetic.DEMO_CLASSES), **options)
    if sgd:
        optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4
        )
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    train_idx, val_idx = np.where(~is_val)[0], np.where(is_val)[0]
    steps = math.ceil(len(train_idx) / 8)

    def factor(step: int) -> float:  # linear warm-up for ``warmup`` epochs, then cosine
        e = step / steps
        if e < warmup:
            return e / warmup + 1e-3
        return 0.5 * (1 + math.cos(math.pi * (e - warmup) / max(1, epochs - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    span = (frames - 1) * stride + 1
    h, w = videos.shape[-2:]

    def clip(i: int, train: bool) -> torch.Tensor:
        t0 = rng.integers(0, FRAMES - span + 1) if train else (FRAMES - span) // 2
        if pipeline_crops:
            # As the clip pipeline cuts them: TSN multiscale crops (aspect jitter, five fixed
            # places) for training, the centre crop for validation, from frames at size x 8/7.
            frames = videos[i, t0 : t0 + span : stride].permute(0, 2, 3, 1).numpy()
            if train:
                view = multiscale_crop(frames, size, rng, crop_scales)
            else:
                view = center_crop(frames, size)
            v = torch.from_numpy(np.ascontiguousarray(view)).permute(0, 3, 1, 2).float() / 255
        else:
            side = int(min(h, w) * (rng.choice(crop_scales) if train else 1.0))
            y0 = rng.integers(0, h - side + 1) if train else (h - side) // 2
            x0 = rng.integers(0, w - side + 1) if train else (w - side) // 2
            v = videos[i, t0 : t0 + span : stride, :, y0 : y0 + side, x0 : x0 + side]
            v = F.interpolate(v.float() / 255, size=(size, size), mode="bilinear", antialias=True)
        return ((v - 0.45) / 0.225).permute(1, 0, 2, 3)

    history = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        order = rng.permutation(train_idx)
        for b in range(0, len(order), 8):
            batch = order[b : b + 8]
            x = torch.stack([clip(i, True) for i in batch])
            loss = F.cross_entropy(model(x), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        with torch.no_grad():
            correct = sum(
                int(
                    (
                        model(torch.stack([clip(i, False) for i in chunk])).argmax(1)
                        == labels[chunk]
                    ).sum()
                )
                for chunk in np.array_split(val_idx, math.ceil(len(val_idx) / 32))
            )
        history.append(
            {"epoch": epoch, "val_top1": correct / len(val_idx), "s": time.perf_counter() - start}
        )
        print(
            f"{name} seed {seed} epoch {epoch}: val top-1 {history[-1]['val_top1']:.3f}", flush=True
        )
    return history


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup-epochs", type=int, default=1, help="linear warm-up before cosine")
    p.add_argument("--shards", help="decode the videos from this demo ingest instead")
    p.add_argument(
        "--pipeline-crops",
        action="store_true",
        help="with --shards: crop as the clip pipeline does (frames at 73, TSN crops)",
    )
    p.add_argument(
        "--crop-scales",
        nargs="+",
        type=float,
        default=list(CROP_SCALES),
        help="training crop sides as fractions of the short side",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.pipeline_crops and not args.shards:
        p.error("--pipeline-crops needs --shards")
    short_side = default_short_side(SHORT_SIDE) if args.pipeline_crops else SHORT_SIDE
    videos, labels, is_val = decoded_set(args.shards, short_side) if args.shards else demo_set()
    results = {}
    for name in args.runs:
        for seed in args.seeds:
            results[f"{name}/{seed}"] = train_run(
                name,
                videos,
                labels,
                is_val,
                args.epochs,
                seed,
                args.warmup_epochs,
                args.pipeline_crops,
                tuple(args.crop_scales),
            )
    print(
        "\n| run | seed | "
        + " | ".join(f"ep {e}" for e in range(1, args.epochs + 1))
        + " | s/epoch |"
    )
    print("|---|---|" + "---|" * (args.epochs + 1))
    for key, history in results.items():
        name, seed = key.split("/")
        cells = " | ".join(f"{h['val_top1']:.3f}" for h in history)
        print(f"| {name} | {seed} | {cells} | {np.median([h['s'] for h in history]):.1f} |")
    print(json.dumps({k: [round(h["val_top1"], 4) for h in v] for k, v in results.items()}))


if __name__ == "__main__":
    main()
