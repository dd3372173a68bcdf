"""T3D's 2D -> 3D supervision transfer on unlabeled shards, with Ray Train.

    python jobs/transfer_t3d.py --data SHARDS --out DIR \
        [--student t3d121|densenet3d121] [--frames 32 --size 32 --width 0.125] \
        [--teacher-frames 4] [--hard-negatives 0.5] \
        [--epochs E --batch-size B --lr LR --optimizer adamw|sgd --schedule cosine|step] \
        [--workers N --gpu] [--teacher-weights FILE]

A frozen 2D DenseNet (``--teacher-weights``: a torchvision ImageNet DenseNet state dict, which
needs ``--width 1``; random and frozen otherwise) sees ``--teacher-frames`` frames of a clip;
the 3D student sees the clip; a head learns "same video and time stamp or not" from pairs the
pipeline builds (labels are not used). ``--hard-negatives`` of the negatives come from another
video of the same scene where the ids name one (UCF101 groups), the rest from any other video.
The student's weights, classifier left out, are saved to ``DIR/student.pt``: ``jobs/train.py
--model STUDENT --init-from DIR/student.pt`` fine-tunes them. DenseNet3D and T3D need clips
of at least 29 frames and 29 x 29 pixels; ``--frames`` defaults to the student's own input
(32).

The last stdout line is a JSON object: ``correspondence_accuracy`` (held-out, best epoch),
``metrics`` (the last epoch's), ``student_weights`` and ``run``. Running the same command
again resumes from the run's latest checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raylab.config import ClipConfig
from raylab.data.storage import Shards
from raylab.jobs import (
    add_config_flags,
    check_clips,
    config_from_flags,
    one_line_errors,
    print_result,
    start_ray,
)
from raylab.models import MODEL_INFO
from raylab.train.transfer import STUDENTS, TransferOptions, transfer_config

RECIPE = transfer_config()
# The settings of the recipe a transfer's flags set.
RECIPE_FLAGS = (
    "epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule", "step_epochs",
    "seed", "checkpoint_every", "workers",
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="shard folder written by jobs/ingest.py")
    p.add_argument("--out", required=True, help="run folder (checkpoints, student.pt, events)")
    p.add_argument(
        "--student", choices=STUDENTS, default=RECIPE.model, help="the 3D network that learns"
    )
    # The student's clips: dense RGB clips (raylab.data.clips.ClipConfig).
    add_config_flags(
        p,
        ClipConfig,
        only=("frames", "stride", "size"),
        defaults={"frames": None},
        notes={"frames": ">= 29; default: the student's", "size": ">= 29"},
    )
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (both nets)")
    p.add_argument(
        "--teacher-frames",
        type=int,
        default=TransferOptions.teacher_frames,
        help="frames the 2D teacher sees",
    )
    p.add_argument("--teacher-weights", help="torchvision DenseNet state dict (ImageNet)")
    p.add_argument(
        "--hard-negatives",
        type=float,
        default=TransferOptions.hard_negatives,
        help="fraction of negatives from another video of the same scene (UCF101 group)",
    )
    # The recipe (raylab.config.TrainConfig), transfer's defaults (transfer_config).
    add_config_flags(
        p,
        RECIPE,
        only=RECIPE_FLAGS,
        defaults={"lr": None, "weight_decay": None},
        notes={
            "batch_size": "each makes a positive and a negative pair",
            "lr": "default: 0.1 for sgd, 1e-3 for adamw",
            "weight_decay": "default: 1e-4 for sgd, 0.05 for adamw",
        },
    )
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--decoders", type=int, help="concurrent decode tasks (default: as CPUs allow)")
    p.add_argument("--val-split", default="val", help="held-out split for the accuracy")
    p.add_argument("--max-failures", type=int, default=1, help="worker-group restarts")
    return p.parse_args(argv)


@one_line_errors("transfer_t3d")
def main(argv: list[str] | None = None) -> dict:
    import torch

    from raylab.train.checkpoints import best_checkpoint, load_state
    from raylab.train.epoch import DataOptions
    from raylab.train.transfer import build_transfer_trainer

    args = parse_args(argv)
    out = Path(args.out).resolve()
    sgd = args.optimizer == "sgd"
    lr = args.lr if args.lr is not None else (0.1 if sgd else 1e-3)
    weight_decay = args.weight_decay if args.weight_decay is not None else (1e-4 if sgd else 0.05)
    # The student's clips, described once: dense RGB clips, the frames its input contract
    # names unless --frames says otherwise. A mistaken --data or clip ends the job before Ray.
    frames = args.frames or MODEL_INFO[args.student].contract.frames
    clip = config_from_flags(ClipConfig, args, frames=frames)
    shards = check_clips("transfer_t3d", Shards.open(args.data), clip, ("train", args.val_split))
    start_ray(log_to_driver=True, log_file=out / "ray-driver.log")
    options = TransferOptions(
        teacher_frames=args.teacher_frames,
        hard_negatives=args.hard_negatives,
        teacher_weights=(
            str(Path(args.teacher_weights).resolve()) if args.teacher_weights else None
        ),
    )
    try:
        config = config_from_flags(
            RECIPE,
            args,
            model=args.student,
            model_options={"width": args.width},
            clip=clip,
            lr=lr,
            weight_decay=weight_decay,
        )
        data = DataOptions(shards=shards, decoders=args.decoders, val_split=args.val_split)
        trainer = build_transfer_trainer(
            config,
            options,
            data,
            storage_path=out.parent,
            name=out.name,
            use_gpu=args.gpu,
            cpus_per_worker=args.cpus_per_worker,
            max_failures=args.max_failures,
        )
    except ValueError as err:
        raise SystemExit(f"transfer_t3d: {err}") from err
    result = trainer.fit()
    if result.error:
        raise SystemExit(f"transfer failed: {result.error}")

    best = best_checkpoint(result, "correspondence_accuracy")
    with best.as_directory() as d:
        state = load_state(d)
    weights = out / "student.pt"
    torch.save(state["student"], weights)  # backbone keys of build_model(student), no classifier
    summary = {
        "correspondence_accuracy": state["metrics"]["correspondence_accuracy"],
        "metrics": result.metrics | {"epochs": result.metrics["epoch"]},
        "best_epoch": state["epoch"] + 1,
        "student_weights": str(weights),
        "run": str(out),
        "best_checkpoint": best.path,
        "student": args.student,
        "model_options": config.model_options,
        "clip": clip.record(),
        "teacher_frames": args.teacher_frames,
        "hard_negatives": args.hard_negatives,
    }
    print(f"best epoch {state['epoch'] + 1}: {state['metrics']}", file=sys.stderr)
    print_result(summary)
    return summary


if __name__ == "__main__":
    main()
