"""The per-worker training loop: ordinary PyTorch plus a handful of ``ray.train`` calls.

``train_loop(run)`` runs in every Ray Train worker. It reads uint8 clips from its
shard of the ``train`` dataset, makes them float and normalised on its own device,
trains with DDP (gloo on CPU, NCCL on GPU), evaluates multi-view video accuracy on the
``val`` dataset, and reports metrics and a checkpoint every epoch. An epoch in which no
training or validation video decodes, or more than ``max_decode_failures`` of them fail,
raises :class:`DecodeFailures` instead, which fails the run. A restarted worker group
resumes from the latest checkpoint. What the run is comes whole as a
:class:`raylab.config.TrainConfig`'s record; see :func:`loop_config`.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from raylab.config import TrainConfig
from raylab.data.pipeline import error_text
from raylab.train.worker import (
    EpochReporter,
    autocast,
    gather,
    on_cuda,
    resume,
    train_batches,
    unwrap,
    worker_device,
    write_progress,
)


class DecodeFailures(RuntimeError):
    """Too many videos of an epoch failed to decode; the message is one line with the count
    and the first error."""


def check_decode_failures(
    epoch: int, split: str, failed: int, videos: int, first_error: str, max_fraction: float
) -> None:
    """Raise :class:`DecodeFailures` when no video of ``split`` decoded this epoch or more
    than ``max_fraction`` of its ``videos`` (decoded and failed) did not."""
    if videos - failed > 0 and failed <= max_fraction * videos:
        return
    first = f"; the first: {first_error}" if first_error else ""
    raise DecodeFailures(
        f"epoch {epoch}: {failed} of {videos} {split} videos could not be decoded "
        f"(at most {max_fraction:.0%} may fail){first}"
    )


def loop_config(
    config: TrainConfig,
    steps_per_epoch: int,
    run_dir: str | None = None,
    extra_metrics: dict | None = None,
) -> dict:
    """What :func:`train_loop` is given: the run's config (as plain values, the form every
    checkpoint keeps) and where this run of it stands: optimiser steps per worker and epoch
    (for the schedule), the folder for its files (rank 0; None: no files), and constants
    reported with every epoch (a search trial's cost)."""
    return {
        "config": config.record(),
        "steps_per_epoch": steps_per_epoch,
        "run_dir": run_dir,
        "extra_metrics": dict(extra_metrics or {}),
    }


def normalise(clip: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, H, W, C) on the device -> normalised float (B, C, T, H, W)."""
    x = clip.permute(0, 4, 1, 2, 3).float().div_(255.0)
    return x.sub_(mean.view(1, -1, 1, 1, 1)).div_(std.view(1, -1, 1, 1, 1))


def lr_factor(
    epoch_float: float, *, epochs: int, schedule: str, warmup_epochs: float, step_epochs: int
) -> float:
    """The learning-rate multiplier at a (fractional) epoch: ``"step"`` divides by 10 every
    ``step_epochs``; ``"cosine"`` rises linearly over ``warmup_epochs``, then decays to 0."""
    warmup = warmup_epochs
    if schedule == "step":
        return 0.1 ** int(epoch_float // step_epochs)
    if warmup and epoch_float < warmup:
        return (epoch_float + 1e-3) / warmup
    progress = (epoch_float - warmup) / max(1e-9, epochs - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(
    model: torch.nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """``"sgd"`` (Nesterov momentum) or ``"adamw"``; no weight decay on norms and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {name!r}")


def video_scores(
    ids: list[str], labels: list[int], logits: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Average softmax scores over each video's views -> (scores [V, K], labels [V], ids)."""
    probs = torch.from_numpy(logits).float().softmax(-1).numpy()
    order: dict[str, int] = {}
    for vid in ids:
        order.setdefault(vid, len(order))
    sums = np.zeros((len(order), probs.shape[1]))
    counts = np.zeros(len(order))
    video_labels = np.zeros(len(order), dtype=np.int64)
    for vid, lab, p in zip(ids, labels, probs, strict=True):
        i = order[vid]
        sums[i] += p
        counts[i] += 1
        video_labels[i] = lab
    return sums / counts[:, None], video_labels, list(order)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k highest scores."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


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
        "val_videos": len(video_labels),
        "val_decode_failures": failed,
        "val_first_error": first_error,
    }


def train_loop(run: dict) -> None:
    """Train the run's model (``run`` as :func:`loop_config` makes it) on the ``train``
    dataset shard, evaluating on ``val``."""
    import ray.train
    import ray.train.torch

    from raylab.models import build_model

    config = TrainConfig.from_record(run["config"])
    run_dir = run["run_dir"]
    rank = ray.train.get_context().get_world_rank()
    device = worker_device()
    channels_last = on_cuda(config.channels_last, device)

    torch.manual_seed(config.seed)  # every worker starts from the same weights
    model = build_model(config.model, config.num_classes, **config.model_options)
    if config.init_from:
        state = torch.load(config.init_from, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if rank == 0:
            print(f"init from {config.init_from}: missing {missing}, unexpected {unexpected}")
    # Only 3D convolutions have a channels_last_3d kernel; TSN and STM fold time into the
    # batch and run 2D convolutions, where the format does not apply.
    channels_last = channels_last and any(isinstance(m, torch.nn.Conv3d) for m in model.modules())
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    model = ray.train.torch.prepare_model(model, move_to_device=device)  # device + DDP
    optimizer = make_optimizer(
        model, config.optimizer, config.lr, config.weight_decay, config.momentum
    )
    updates_per_epoch = max(1, run["steps_per_epoch"] // config.grad_accum)
    schedule = {
        "epochs": config.epochs,
        "schedule": config.schedule,
        "warmup_epochs": config.warmup_epochs,
        "step_epochs": config.step_epochs,
    }
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda update: lr_factor(update / updates_per_epoch, **schedule)
    )
    start_epoch = resume(
        run_dir, rank, model=unwrap(model), optimizer=optimizer, scheduler=scheduler
    )

    compiled = torch.compile(model) if config.compile else model
    mean = torch.tensor(config.mean, device=device)
    std = torch.tensor(config.std, device=device)
    amp_ctx = autocast(config.amp, device)
    reporter = EpochReporter(run["config"], run_dir, rank)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")

    def checkpoint(epoch: int) -> dict:
        """What the loop saves of ``epoch``; the reporter adds the epoch, config and metrics."""
        return {
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            # Training clips come from fresh entropy each pass (pipeline.py), so the
            # sampler's whole state is the next epoch to draw.
            "sampler": {"next_epoch": epoch + 1},
        }

    for epoch in range(start_epoch, config.epochs):
        model.train()
        write_progress(run_dir, rank, epoch)
        loss_sum = correct = seen = step = failed = 0
        first_error = ""
        wait = 0.0
        optimizer.zero_grad(set_to_none=True)
        epoch_start = tick = time.perf_counter()
        for batch in train_batches(train_shard, config.batch_size, config.shuffle_buffer, device):
            wait += time.perf_counter() - tick
            clip, y = batch["clip"], batch["label"]
            # Placeholder rows of videos that failed to decode (label -1) are dropped and
            # counted; a batch of nothing else still steps, at zero loss, so DDP stays in step.
            ok = y >= 0
            failed += int((~ok).sum())
            if not first_error and not ok.all():
                first_error = error_text(batch["error"][~ok][0])
            usable = bool(ok.any())
            if usable and not ok.all():
                clip, y = clip[ok], y[ok]
            x = normalise(clip, mean, std)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            with amp_ctx:
                logits = compiled(x)
                loss = F.cross_entropy(
                    logits.float(), y.clamp(min=0), label_smoothing=config.label_smoothing
                )
            if not usable:
                loss = loss * 0.0
            (loss / config.grad_accum).backward()
            step += 1
            if step % config.grad_accum == 0:
                if config.clip_grad:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            if usable:
                loss_sum += loss.item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
                seen += len(y)
            write_progress(run_dir, rank, epoch, step=step)
            tick = time.perf_counter()
        if step % config.grad_accum:  # the tail of an accumulation window
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        train_time = time.perf_counter() - epoch_start
        totals = gather((loss_sum, correct, seen, wait, train_time, failed, first_error))
        all_seen = sum(t[2] for t in totals)
        all_failed = sum(t[5] for t in totals)
        # Every worker holds the same totals, so all raise together (none waits in a collective).
        check_decode_failures(
            epoch + 1,
            "training",
            all_failed,
            all_seen + all_failed,  # one view per training video
            next((t[6] for t in totals if t[6]), ""),
            config.max_decode_failures,
        )
        metrics = {
            "epoch": epoch + 1,
            "train_loss": sum(t[0] for t in totals) / max(1, all_seen),
            "train_clip_acc": sum(t[1] for t in totals) / max(1, all_seen),
            "train_clips": all_seen,
            "clips_per_s": all_seen / max(1e-9, max(t[4] for t in totals)),
            "data_wait_frac": sum(t[3] for t in totals) / max(1e-9, sum(t[4] for t in totals)),
            "lr": optimizer.param_groups[0]["lr"],
            "decode_failures": all_failed,  # training videos lost this epoch
        }
        # Numpy batches: evaluation needs the string video ids, which tensors cannot hold.
        val_batches = val_shard.iter_batches(batch_size=config.batch_size, batch_format="numpy")
        # The bare module: DDP's forward would sync buffers across workers.
        val = evaluate_views(unwrap(model), val_batches, device, mean, std, amp_ctx)
        failed_val = val["val_decode_failures"]
        check_decode_failures(
            epoch + 1,
            "validation",
            failed_val,
            val["val_videos"] + failed_val,
            val.pop("val_first_error"),
            config.max_decode_failures,
        )
        metrics |= val
        metrics |= run["extra_metrics"]
        reporter.end_epoch(epoch, metrics, epoch_line(metrics, config.epochs), checkpoint)
    reporter.close()


def epoch_line(metrics: dict, epochs: int) -> str:
    """The console line of an epoch: one a person can follow."""
    return (
        f"epoch {metrics['epoch']}/{epochs}  loss {metrics['train_loss']:.3f}  "
        f"train acc {metrics['train_clip_acc']:.3f}  val clip {metrics['val_clip_acc']:.3f}  "
        f"video top1 {metrics['val_video_top1']:.3f} top5 {metrics['val_video_top5']:.3f}  "
        f"{metrics['clips_per_s']:.1f} clips/s  data wait {metrics['data_wait_frac']:.0%}"
    )
