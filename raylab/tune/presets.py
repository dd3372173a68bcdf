"""The embedded search: its preset and its demo set, as data.

``make demo`` and ``python jobs/tune_t3d.py`` with no ``--data`` and no GPU search
:data:`CPU_DEFAULT` on the demo set :func:`demo_shards` makes; benchmarks and tests import
both from here. A search records the options it ran with in its ``options.json``. Why each
setting is what it is, with the measurements behind it: docs/search.md ("Why these
choices") and docs/results.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

# A network that learns the demo set in a few minutes on two cores: tiny widths, T3D on
# 32-frame and STM on 8- or 16-frame 64 px clips of the whole short side, a trial at chance
# stopped after 2 epochs when its loss is above a uniform guess's (after 4 when it is at
# it), ASHA at epoch 4, 24 trial-epochs in all.
CPU_DEFAULT = {
    "depth": [121, 169],
    "frames": [32],
    "stm_frames": [8, 16],
    "size": [64],
    "stride": [1, 2, 4],
    "lr": [1.5e-3, 2.5e-3],
    "weight_decay": [1e-5, 1e-3],
    "width": 0.125,
    "dropout": 0.0,
    "num_samples": 20,
    "max_epochs": 8,
    "grace_period": 4,
    "reduction_factor": 2,
    "batch_size": 8,
    "crop_scales": (1.0,),
    "stop_at_chance_after": 2,
    "budget_epochs": 24,
}

# The demo set: 48 videos a class, each in a scene of its own (the 8 classes share it), one
# rendition at short side 80 in full chroma (the moving bar differs from its background
# mostly in colour texture, which 4:2:0 halves).
DEMO_VIDEOS_PER_CLASS = 48
DEMO_CLIPS_PER_GROUP = 1
DEMO_SHORT_SIDES = (80,)
DEMO_PIX_FMT = "yuv444p"


def demo_shards(root: Path) -> Path:
    """The demo set under ``root/demo``, generated and ingested on first use."""
    from raylab.data.ingest import EncodeParams, ingest
    from raylab.data.synthetic import make_demo_dataset

    videos, shards = root / "demo" / "videos", root / "demo" / "shards"
    if not (videos / "classInd.txt").exists():
        print(f"generating the demo set in {videos}", file=sys.stderr)
        make_demo_dataset(
            videos, videos_per_class=DEMO_VIDEOS_PER_CLASS, clips_per_group=DEMO_CLIPS_PER_GROUP
        )
    if not (shards / "manifest.json").exists():
        print(f"ingesting it into {shards}", file=sys.stderr)
    # Resumes (a no-op when complete), so an interrupted first run heals itself.
    params = EncodeParams(short_sides=DEMO_SHORT_SIDES, pix_fmt=DEMO_PIX_FMT)
    ingest(videos, "ucf101", shards, params=params)
    return shards
