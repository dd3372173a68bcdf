"""Use a network as a generic video descriptor: features per video, a linear SVM, PCA, t-SNE.

    python jobs/extract_features.py --data SHARDS --out DIR \
        (--checkpoint CKPT | --model NAME [--weights STATE_DICT.pt] [--width W]) \
        [--layer fc6] [--frames 16 --size 112 --stride 1] [--clips 10 --crops 1] \
        [--predictors 1] [--gpu]

As the C3D paper: the layer's activations (default: C3D's fc6, for other models the pooled
input of the final classifier) for --clips clips of every video, averaged per video,
L2-normalised; a linear SVM trained on the train split and scored on the test split (val when
there is none); its accuracy after PCA to 2, 4, 8, ... dimensions; a t-SNE plot. Writes
DIR/features.parquet, DIR/features.json, DIR/compactness.png and DIR/tsne.png. The last stdout
line is a JSON object with the SVM accuracy, the metrics and those paths.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from raylab.config import ClipConfig
from raylab.data.storage import Shards
from raylab.infer.analysis import analyse
from raylab.infer.features import ModelSource, extract_features, write_features
from raylab.jobs import (
    add_config_flags,
    add_inference_flags,
    check_clips,
    inference_resources,
    model_option_flags,
    one_line_errors,
    print_result,
    start_ray,
)
from raylab.models import MODEL_INFO, MODEL_NAMES, input_contract


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="shard folder written by jobs/ingest.py")
    p.add_argument("--out", required=True, help="folder for the features, plots and JSON")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint folder of a training run")
    src.add_argument("--model", help="a name from raylab.models.MODEL_NAMES")
    p.add_argument("--weights", help="with --model: a plain state dict (e.g. RUN/weights.pt)")
    p.add_argument("--width", type=float, help="with --model: channel multiplier (default 1)")
    p.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --model: extra build_model option, e.g. head=pooled",
    )
    p.add_argument(
        "--layer",
        help="a name of model.named_modules() (e.g. fc6, classifier.fc6, features.pool5), "
        "optionally NAME:input and/or :pool; default: fc6 for C3D, else the pooled input "
        "of the final classifier",
    )
    # Clip settings (raylab.data.clips.ClipConfig) left unset are the checkpoint's.
    add_config_flags(
        p,
        ClipConfig,
        only=("frames", "stride", "size", "scheme"),
        defaults=dict.fromkeys(("frames", "stride", "size", "scheme")),
        notes={
            "frames": "default: the checkpoint's, or the model's paper input",
            "stride": "default: the checkpoint's, or 1",
            "size": "default: the checkpoint's, or the model's paper input",
            "scheme": "default: the checkpoint's, or by model family",
        },
    )
    p.add_argument("--clips", type=int, default=10, help="clips per video, averaged")
    p.add_argument("--crops", type=int, choices=[1, 3], default=1, help="crops per clip")
    p.add_argument("--splits", nargs="+", help="default: every split of the manifest")
    add_inference_flags(p)  # the model's actors extract the features
    p.add_argument("--batch-size", type=int, default=16, help="clips per forward pass")
    p.add_argument(
        "--decoder-resource",
        help="custom resource of the decoder nodes (cluster.yaml: decoder); decoding stays there",
    )
    p.add_argument("--seed", type=int, default=0, help="CV folds, PCA and t-SNE")
    args = p.parse_args(argv)
    if args.checkpoint and (args.weights or args.width is not None or args.model_option):
        p.error("--weights, --width and --model-option go with --model; a checkpoint fixes them")
    return args


def model_options(args: argparse.Namespace, frames: int, size: int) -> dict:
    """build_model options from the flags. C3D's fc head takes only clips near its published
    16 x 112 x 112 (its input contract); at others C3D gets its pooled head unless
    --model-option says otherwise."""
    opts = {"width": 1.0 if args.width is None else args.width}
    opts |= model_option_flags(args.model_option)
    if args.model == "c3d" and "head" not in opts and input_contract("c3d").refusal(frames, size):
        opts["head"] = "pooled"
        print(f"c3d at {frames}x{size}x{size}: using its pooled head (no fc6)", file=sys.stderr)
    return opts


@one_line_errors("extract_features")
def main(argv: list[str] | None = None) -> dict:
    from raylab.train.checkpoints import load_checkpoint

    args = parse_args(argv)
    shards = Shards.open(args.data)
    classes = list(shards.manifest.classes)  # a mistaken --data ends the job before Ray
    out = Path(args.out).resolve()

    if args.checkpoint:
        try:
            config = load_checkpoint(args.checkpoint)[1]
        except ValueError as err:
            raise SystemExit(f"extract_features: {args.checkpoint}: {err}") from None
        recorded = config.clip
        source = ModelSource(checkpoint=str(Path(args.checkpoint).resolve()))
        name = config.model
    else:
        recorded, name = None, args.model
    contract = MODEL_INFO[name].contract if name in MODEL_INFO else None
    if contract is None:
        raise SystemExit(f"extract_features: unknown model {name!r}; valid: {MODEL_NAMES}")
    # Unset flags take the checkpoint's clips, else the model's own input (its paper's).
    base = recorded or ClipConfig(
        frames=contract.frames, size=contract.size, scheme=contract.scheme
    )
    clip = replace(
        base,
        frames=args.frames or base.frames,
        stride=args.stride or base.stride,
        size=args.size or base.size,
        scheme=args.scheme or base.scheme,
        test_clips=args.clips,
        test_crops=args.crops,
    )
    if not args.checkpoint:
        source = ModelSource(
            model=args.model,
            options=model_options(args, clip.frames, clip.size),
            num_classes=len(classes),
            weights=str(Path(args.weights).resolve()) if args.weights else None,
        )
    check_clips("extract_features", shards, clip, args.splits or shards.manifest.splits)
    start_ray(log_file=out / "ray-driver.log")
    features = extract_features(
        shards,
        source,
        clip,
        layer=args.layer,
        splits=args.splits,
        resources=inference_resources(args),  # with --batch-size, --decoder-resource
    )
    failures = sum(len(v) for v in features.decode_failures.values())
    print(
        f"{features.layer}: {features.dim}-d features of {features.counts()} videos "
        f"({args.clips * args.crops} views each; {failures} could not be decoded)",
        file=sys.stderr,
    )
    meta = source.describe() | {
        "model": name,
        "shards": shards.location,
        "clip": clip.record(),
    }
    parquet = write_features(features, out, meta)
    analysis = analyse(features, classes, out, seed=args.seed)
    record = json.loads((out / "features.json").read_text()) | {"analysis": analysis}
    (out / "features.json").write_text(json.dumps(record, indent=2, default=str))
    print(
        f"linear SVM (C={analysis['svm_C']}) on {analysis['test_split']}: "
        f"{analysis['svm_accuracy']:.3f}; by PCA dimensions: {analysis['compactness']}",
        file=sys.stderr,
    )
    result = {
        "svm_accuracy": analysis["svm_accuracy"],
        "metrics": {
            "svm_accuracy": analysis["svm_accuracy"],
            "svm_C": analysis["svm_C"],
            "compactness": analysis["compactness"],
            "videos": features.counts(),
            "decode_failures": failures,
            "test_split": analysis["test_split"],
        },
        "features": str(parquet),
        "features_json": str(out / "features.json"),
        "compactness_plot": analysis["compactness_plot"],
        "tsne_plot": analysis["tsne_plot"],
        "layer": features.layer,
        "dim": features.dim,
    }
    print_result(result)
    return result


if __name__ == "__main__":
    main()
