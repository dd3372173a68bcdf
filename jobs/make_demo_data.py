"""Generate the temporal-reasoning demo dataset: real H.264 videos in UCF101 layout.

    python jobs/make_demo_data.py --out DIR [--videos-per-class 24] [--seed 0]

Eight classes (move left/right/up/down, rotate clockwise/anticlockwise, grow/shrink) that
a single frame cannot tell apart. The last stdout line is a JSON object: the folder, the
classes and the train/test counts.
"""

from __future__ import annotations

import argparse

from raylab.data.synthetic import make_demo_dataset
from raylab.jobs import one_line_errors, print_result


@one_line_errors("make_demo_data")
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="folder to write videos and lists into")
    p.add_argument("--videos-per-class", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--clips-per-group", type=int, default=4, help="videos of a class that share a scene"
    )
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--size", default="160x128", help="WIDTHxHEIGHT, both even")
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    summary = make_demo_dataset(
        args.out,
        videos_per_class=args.videos_per_class,
        seed=args.seed,
        frames=args.frames,
        height=height,
        width=width,
        clips_per_group=args.clips_per_group,
    )
    print_result(summary)
    return summary


if __name__ == "__main__":
    main()
