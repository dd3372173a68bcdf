"""Supervised training: ordinary PyTorch in the per-worker skeleton of
:mod:`raylab.train.epoch`.

``train_loop(run)`` runs in every Ray Train worker. It reads uint8 clips of its rank's part
of each epoch's plan, makes them float and normalised on its own device, trains with DDP
(gloo on CPU, NCCL on GPU), evaluates multi-view video accuracy on the validation split,
and reports metrics and a checkpoint every epoch. An epoch in which no training or
validation video decodes, or more than ``max_decode_failures`` of them fail, raises
:class:`DecodeFailures` instead, which fails the run. A restarted worker group resumes
from the latest checkpoint, mid-epoch ones included. What the run is comes whole as a
:class:`raylab.config.TrainConfig`'s record; see :func:`loop_config`.
"""

from __future__ import annotations

import numpy as np
import torch

from raylab.config import TrainConfig, normalise
from raylab.data.pipeline import error_text
from raylab.metrics import topk_accuracy, video_scores
from raylab.train.checkpoints import read_weights
from raylab.train.epoch import (  # noqa: F401 - the recipe's pieces, imported from here too
    DecodeFailures,
    check_decode_failures,
    loop_config,
    lr_factor,
    make_optimizer,
    run_epochs,
)
from raylab.train.worker import autocast, gather, on_cuda


@torch.no_grad()
def evaluate_views(model, batches, device, mean, std, amp_ctx) -> dict:
    """Clip and video accuracy over multi-view numpy batches, gathered from every worker,
    and ``val_first_error``: why the first video that failed to decode failed ("" if none)."""
    model.eval()
    ids, labels, logits = [], [], []
    failed = 0
    first_error = ""
    for batch in batches:
        ok = batch["label"] >= 0  # placeholder rows of videos that failed to decode
        failed += int((~ok).sum())
        if not first_error and not ok.all():
            first_error = error_text(batch["error"][~ok][0])
        if not ok.any():
            continue
        clip = torch.from_numpy(batch["clip"][ok]).to(device, non_blocking=True)
        with amp_ctx:
            out = model(normalise(clip, mean, std))
        logits.append(out.float().cpu().numpy())
        labels.extend(batch["label"][ok].tolist())
        ids.extend(batch["video_id"][ok])
    logits_np = np.concatenate(logits) if logits else np.zeros((0, 1))
    parts = gather((ids, labels, logits_np, failed, first_error))
    failed = sum(p[3] for p in parts)
    first_error = next((p[4] for p in parts if p[4]), "")
    ids = [v for p in parts for v in p[0]]
    labels = [v for p in parts for v in p[1]]
    logits_np = np.concatenate([p[2] for p in parts if len(p[2])]) if ids else logits_np
    if not ids:
        return {
            "val_clip_acc": float("nan"),
            "val_video_top1": float("nan"),
            "val_video_top5": float("nan"),
            "val_loss": float("nan"),
            "val_videos": 0,
            "val_decode_failures": failed,
            "val_first_error": first_error,
        }
    clip_acc = float((logits_np.argmax(1) == np.asarray(labels)).mean())
    scores, video_labels, _ = video_scores(ids, labels, logits_np)
    return {
        "val_clip_acc": clip_acc,
        "val_video_top1": topk_accuracy(scores, video_labels, 1),
        "val_video_top5": topk_accuracy(scores, video_labels, 5),
        # Cross-entropy of the video scores: unlike top-1, no single video moves it by a step.
        "val_loss": float(
            -np.log(np.maximum(scores[np.arange(len(video_labels)), video_labels], 1e-12)).mean()
        ),
        "val_videos": len(video_labels),
        "val_decode_failures": failed,
        "val_first_error": first_error,
    }


class Classification:
    """The :class:`~raylab.train.epoch.Task` of supervised training: a network of the zoo,
    cross-entropy on the class labels, multi-view video accuracy at validation."""

    unit, accuracy = "clips", "train_clip_acc"

    def __init__(self, config: TrainConfig, rank: int) -> None:
        self.config, self.rank = config, rank

    def build(self, config: TrainConfig, device: torch.device) -> torch.nn.Module:
        from raylab.models import build_model

        model = build_model(config.model, config.num_classes, **config.model_options)
        if config.init_from:
            state = read_weights(config.init_from)
            missing, unexpected = model.load_state_dict(state, strict=False)
            if self.rank == 0:
                print(f"init from {config.init_from}: missing {missing}, unexpected {unexpected}")
        # Only 3D convolutions have a channels_last_3d kernel; TSN and STM fold time into
        # the batch and run 2D convolutions, where the format does not apply.
        self.channels_last = on_cuda(config.channels_last, device) and any(
            isinstance(m, torch.nn.Conv3d) for m in model.modules()
        )
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        self.mean = torch.tensor(config.mean, device=device)
        self.std = torch.tensor(config.std, device=device)
        self.amp, self.device = autocast(config.amp, device), device
        return model

    def parts(self) -> dict:
        return {}

    def forward(self, model, batch: dict[str, torch.Tensor], ids, draw) -> tuple[torch.Tensor, ...]:
        x = normalise(batch["clip"], self.mean, self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with self.amp:
            return model(x), batch["label"]

    def evaluate(self, model: torch.nn.Module, batches) -> dict:
        return evaluate_views(model, batches, self.device, self.mean, self.std, self.amp)

    def saved(self, model: torch.nn.Module) -> dict:
        return {}

    def line(self, metrics: dict, epochs: int) -> str:
        return epoch_line(metrics, epochs)


def train_loop(run: dict) -> None:
    """Train the run's model (``run`` as :func:`loop_config` makes it) on the training split,
    evaluating on the validation split."""
    import ray.train

    config = TrainConfig.from_record(run["config"])
    run_epochs(run, Classification(config, ray.train.get_context().get_world_rank()))


def epoch_line(metrics: dict, epochs: int) -> str:
    """The console line of an epoch: one a person can follow."""
    return (
        f"epoch {metrics['epoch']}/{epochs}  loss {metrics['train_loss']:.3f}  "
        f"train acc {metrics['train_clip_acc']:.3f}  val clip {metrics['val_clip_acc']:.3f}  "
        f"video top1 {metrics['val_video_top1']:.3f} top5 {metrics['val_video_top5']:.3f}  "
        f"{metrics['clips_per_s']:.1f} clips/s  data wait {metrics['data_wait_frac']:.0%}"
    )
