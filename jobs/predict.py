"""Classify videos with a trained checkpoint: per video, the top classes and their scores.

    python jobs/predict.py --checkpoint CKPT --videos DIR_OR_GLOB_OR_CSV --out preds.jsonl \
        [--clips 10 --crops 3] [--top 5] [--gpu]

Reads the source videos themselves (any container FFmpeg reads; no ingest), cuts each into
the checkpoint's own test clips (its frames, stride and crop size; ``--clips`` x ``--crops``
views, scores averaged per video) and runs them through the model as Ray Data batch
inference. Writes one JSON line per video to ``--out``: ``{"video", "views", "top":
[{"class", "score"}, ...], "frames"}``, or ``{"video", "error"}`` for a file that cannot be
decoded; the job goes on past such files. A video shorter than a clip spans is looped to fill
it, as training's clips are, and marked ``"looped": true``. A CSV lists videos in its
``path`` column (else its first), relative to the CSV's folder. The last stdout line is a
JSON object with the counts and the output path.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from raylab.jobs import (
    add_inference_flags,
    inference_resources,
    one_line_errors,
    print_result,
    start_ray,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder of a training run")
    p.add_argument("--videos", required=True, help="a folder, a glob or a CSV of video paths")
    p.add_argument("--out", required=True, help="the JSON-lines file to write")
    p.add_argument("--clips", type=int, default=10, help="clips per video")
    p.add_argument("--crops", type=int, choices=[1, 3], default=3, help="crops per clip")
    p.add_argument("--top", type=int, default=5, help="classes listed per video")
    p.add_argument(
        "--short-side",
        type=int,
        help="short side videos are re-encoded at before cutting clips (default: the "
        "checkpoint's working short side); the rendition training read, for identical clips",
    )
    add_inference_flags(p)
    return p.parse_args(argv)


@one_line_errors("predict")
def main(argv: list[str] | None = None) -> dict:
    from raylab.infer.evaluate import evaluation_clip
    from raylab.infer.predict import find_videos, predict_videos, rgb_clip
    from raylab.progress import progress_bar
    from raylab.train.checkpoints import load_checkpoint

    args = parse_args(argv)
    # Every input is checked before Ray starts: a wrong path costs a second, not a cluster.
    _, config = load_checkpoint(args.checkpoint)
    clip = rgb_clip(evaluation_clip(config, args.clips, args.crops))
    videos = find_videos(args.videos)
    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)

    # The console follows the videos; Ray's own records go to a file beside the output.
    ray_log = start_ray(log_file=out.with_name(out.name + ".ray.log"))
    print(
        f"{len(videos)} videos, {clip.test_views} views each ({clip.frames} frames x stride "
        f"{clip.stride} at {clip.size} px), model {config.model}",
        file=sys.stderr,
    )
    bar = progress_bar(total=len(videos) * clip.test_views, desc="predict", unit="view")
    results = predict_videos(
        videos,
        args.checkpoint,
        clips=args.clips,
        crops=args.crops,
        top=args.top,
        short_side=args.short_side,
        resources=inference_resources(args),
        progress=bar,
    )
    bar.close()
    with out.open("w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"could not classify {r['error']}", file=sys.stderr)
    looped = [r for r in results if r.get("looped")]
    if looped:
        print(
            f"predict: {len(looped)} of {len(results)} videos are shorter than a clip's "
            f"{clip.span} frames (shortest {min(r['frames'] for r in looped)}); each was looped "
            'to fill it ("looped": true in its line)',
            file=sys.stderr,
        )
    summary = {
        "predictions": str(out),
        "videos": len(results),
        "classified": len(results) - len(failed),
        "failed": len(failed),
        "looped": len(looped),
        "checkpoint": str(args.checkpoint),
        "views_per_video": clip.test_views,
        "ray_log": str(ray_log),
    }
    print_result(summary)
    return summary


if __name__ == "__main__":
    main()
