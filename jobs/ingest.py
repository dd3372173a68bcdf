"""Ingest a video dataset into Parquet shards.

    python jobs/ingest.py --source VIDEO_ROOT --format ucf101 --out SHARDS \
        [--annotations DIR] [--split 1] [--short-side 128 256] [--keyframe-interval 8] \
        [--flow tvl1|farneback]

Re-running the same command resumes an interrupted ingest. The last stdout line is a JSON
object with the counts per split, the rejects and the paths of the manifest and ledger.
Videos that a failure of the cluster (not their own fault) left unprocessed are listed in
SHARDS/not_processed.jsonl; the job then exits with status 1 and the next run retries them.
"""

from __future__ import annotations

import argparse
import sys

from raylab.data.annotations import FORMATS
from raylab.data.ingest import EncodeParams, IngestIncomplete, ingest
from raylab.jobs import one_line_errors, print_result


@one_line_errors("ingest")
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--source", required=True, help="root folder of the source videos")
    p.add_argument("--format", required=True, choices=FORMATS, help="annotation format")
    p.add_argument("--out", required=True, help="shard folder to write (or resume)")
    p.add_argument("--annotations", help="folder or file of the lists (default: --source)")
    p.add_argument("--split", type=int, default=1, help="UCF101/HMDB51 split number")
    p.add_argument("--short-side", type=int, nargs="+", default=[128], help="renditions")
    p.add_argument("--keyframe-interval", type=int, default=EncodeParams.keyframe_interval)
    p.add_argument("--crf", type=int, default=EncodeParams.crf, help="x264 quality")
    p.add_argument(
        "--flow",
        choices=["tvl1", "farneback"],
        help="also store optical flow between consecutive frames of every rendition",
    )
    p.add_argument("--rows-per-part", type=int, default=256, help="videos per Parquet part")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    params = EncodeParams(
        short_sides=tuple(args.short_side),
        keyframe_interval=args.keyframe_interval,
        crf=args.crf,
        flow=args.flow,
    )
    try:
        summary = ingest(
            args.source,
            args.format,
            args.out,
            annotations=args.annotations,
            split=args.split,
            params=params,
            rows_per_part=args.rows_per_part,
            progress=not args.no_progress,
        )
    except IngestIncomplete as err:
        print_result(vars(err.summary) | {"error": str(err)})
        raise SystemExit(str(err)) from err
    result = vars(summary)
    print(
        f"ingested {summary.encoded} videos, rejected {summary.rejected}, skipped "
        f"{summary.skipped} already done, in {summary.seconds}s -> {summary.out}",
        file=sys.stderr,
    )
    print_result(result)
    return result


if __name__ == "__main__":
    main()
