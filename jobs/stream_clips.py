"""Stream one epoch of clips from shards through the Ray Data pipeline and report clips/s.

    python jobs/stream_clips.py --data SHARDS [--split train] [--frames 16 --stride 1 --size 112]

The last stdout line is a JSON object: clips, seconds, clips_per_s and the clip shape.
"""

from __future__ import annotations

import argparse
import sys
import time

from tqdm import tqdm

from raylab.config import ClipConfig
from raylab.data.pipeline import ClipTensors, clip_dataset
from raylab.data.storage import Shards, raylab_home
from raylab.jobs import (
    add_config_flags,
    check_clips,
    config_from_flags,
    one_line_errors,
    print_result,
    start_ray,
)


@one_line_errors("stream_clips")
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="shard folder written by jobs/ingest.py")
    p.add_argument(
        "--split",
        default="train",
        help="the split to stream (train: training clips, else test views)",
    )
    add_config_flags(p.add_argument_group("clips (raylab.data.clips.ClipConfig)"), ClipConfig)
    p.add_argument(
        "--decoders",
        type=int,
        default=None,
        help="concurrent decode tasks (default: as CPUs allow)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="clips per batch")
    args = p.parse_args(argv)
    clip = config_from_flags(ClipConfig, args)
    shards = check_clips("stream_clips", Shards.open(args.data), clip, [args.split])
    total = shards.manifest.videos(args.split)

    start_ray(log_file=raylab_home() / "logs" / time.strftime("stream_clips-%Y%m%d-%H%M%S.log"))
    ds = clip_dataset(
        shards,
        args.split,
        clip,
        train=args.split == "train",
        decoders=args.decoders,
    )
    start, clips, failed, shape = time.perf_counter(), 0, 0, None
    with tqdm(total=total, unit="clip", desc=f"stream {args.split}", file=sys.stderr) as bar:
        for batch in ds.iter_torch_batches(batch_size=args.batch_size, collate_fn=ClipTensors()):
            ok = int((batch["label"] >= 0).sum())  # label -1: a video that failed to decode
            clips += ok
            failed += len(batch["label"]) - ok
            shape = list(batch["clip"].shape[1:])
            bar.update(len(batch["label"]))
    seconds = time.perf_counter() - start
    result = {
        "data": args.data,
        "split": args.split,
        "clips": clips,
        "decode_failures": failed,
        "clip_shape": shape,
        "seconds": round(seconds, 2),
        "clips_per_s": round(clips / seconds, 1),
    }
    print(f"{clips} clips in {seconds:.1f}s: {clips / seconds:.1f} clips/s", file=sys.stderr)
    print_result(result)
    return result


if __name__ == "__main__":
    main()
