"""Evaluate a trained checkpoint with multi-view testing, optionally fused with a flow stream.

    python jobs/evaluate.py --data SHARDS --checkpoint CKPT [--clips 10 --crops 3] \
        [--flow-checkpoint CKPT2] [--split val] [--out DIR]

Runs Ray Data batch inference over predictor actors; scores are averaged over each
video's clips x crops. Writes metrics.json and confusion.png to --out (default: beside
the checkpoint). The last stdout line is a JSON object with the metrics and those paths.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from raylab.data.storage import Shards
from raylab.infer.evaluate import (
    evaluation_clip,
    fuse,
    plot_confusion,
    predict,
    report_metrics,
)
from raylab.jobs import (
    add_inference_flags,
    check_clips,
    inference_resources,
    one_line_errors,
    print_result,
    start_ray,
)
from raylab.train.checkpoints import load_checkpoint


@one_line_errors("evaluate")
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="shard folder written by jobs/ingest.py")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder of a training run")
    p.add_argument("--flow-checkpoint", help="a flow-stream checkpoint to fuse with")
    p.add_argument("--flow-data", help="shards holding flow (default: --data)")
    p.add_argument("--split", default="val")
    p.add_argument("--clips", type=int, default=10, help="clips per video")
    p.add_argument("--crops", type=int, choices=[1, 3], default=3, help="crops per clip")
    add_inference_flags(p)
    p.add_argument(
        "--decoder-resource",
        help="custom resource of the decoder nodes (cluster.yaml: decoder); decoding stays there",
    )
    p.add_argument("--out", help="where metrics.json and confusion.png go")
    args = p.parse_args(argv)
    # The checkpoints and their clips on the data are checked before Ray starts: a wrong
    # path costs a second.
    shards = Shards.open(args.data)
    streams = [(args.checkpoint, shards)]
    if args.flow_checkpoint:
        streams.append((args.flow_checkpoint, Shards.open(args.flow_data or shards)))
    for checkpoint, data in streams:
        check_clips("evaluate", data, evaluation_clip(load_checkpoint(checkpoint)[1]), [args.split])
    classes = list(shards.manifest.classes)

    out = Path(args.out or Path(args.checkpoint).parent / "eval").resolve()
    start_ray(log_file=out / "ray-driver.log")
    resources = inference_resources(args)  # with --decoder-resource
    common = {"split": args.split, "clips": args.clips, "crops": args.crops, "resources": resources}
    rgb = predict(
        shards,
        args.checkpoint,
        progress="evaluate rgb" if args.flow_checkpoint else "evaluate",
        **common,
    )
    metrics = {"rgb": report_metrics(rgb, classes) | {"clip_acc": rgb["clip_acc"]}}
    final = rgb
    if args.flow_checkpoint:
        flow = predict(
            args.flow_data or shards, args.flow_checkpoint, progress="evaluate flow", **common
        )
        final = fuse(rgb, flow)
        metrics["flow"] = report_metrics(flow, classes) | {"clip_acc": flow["clip_acc"]}
        metrics["fused"] = report_metrics(final, classes)
    headline = metrics["fused" if args.flow_checkpoint else "rgb"]
    out.mkdir(parents=True, exist_ok=True)
    png = plot_confusion(headline["confusion"], classes, out / "confusion.png")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    for stream, m in metrics.items():
        print(
            f"{stream}: video top1 {m['video_top1']:.3f} top5 {m['video_top5']:.3f} "
            f"mean class {m['mean_class_acc']:.3f} over {m['videos']} videos",
            file=sys.stderr,
        )
    result = {
        "metrics": {
            "video_top1": headline["video_top1"],
            "video_top5": headline["video_top5"],
            "mean_class_acc": headline["mean_class_acc"],
            "videos": headline["videos"],
            # Counted from the predictions, not the flags: what each video was scored over.
            "views_per_video": rgb["views"] / len(rgb["ids"]),
        }
        | {f"{s}_video_top1": m["video_top1"] for s, m in metrics.items()},
        "metrics_file": str(out / "metrics.json"),
        "confusion_png": str(png),
        "checkpoint": str(args.checkpoint),
    }
    print_result(result)
    return result


if __name__ == "__main__":
    main()
