"""The one epoch skeleton of every per-worker loop, and the run's random draws.

Supervised training (:mod:`raylab.train.loop`) and supervision transfer
(:mod:`raylab.train.transfer`) differ only in their :class:`Task`: the network, the loss of
a batch and the validation metrics. Everything else is here, once: the epoch's data plan
for this rank (:mod:`raylab.data.plan`), gradient accumulation and clipping, decode-failure
checks, data-wait accounting, mid-epoch checkpoints and exact resumption, and the end of an
epoch (:class:`~raylab.train.worker.EpochReporter`).

What is random in a run comes from ``TrainConfig.seed``: the initialisation (the same on
every rank), the data plan and every clip's draws (``(seed, epoch, video)``), and each
rank's torch generator for dropout and the like, reseeded at each epoch from ``(seed,
epoch, rank)`` so ranks differ and an epoch replays the same whether or not the run
stopped before it. A mid-epoch checkpoint (:class:`MidEpochStore`) holds the weights and
optimiser at a gradient-accumulation boundary, the position in the epoch's plan, each
rank's partial sums and generator state; a restarted worker group trains exactly the
plan's remaining clips, decoding none of the ones before.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from raylab.config import TrainConfig, env_int
from raylab.data.pipeline import (
    ReadAhead,
    clip_dataset,
    decode_ahead,
    error_text,
    planned_batches,
    row_groups,
)
from raylab.data.plan import eval_plan, train_plan
from raylab.data.storage import Shards, exists
from raylab.train.checkpoints import load_state
from raylab.train.worker import (
    EpochReporter,
    StartClock,
    append_history,
    gather,
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


# --------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Where the clips come from
# --------------------------------------------------------------------------------------------


@dataclass
class DataOptions:
    """Where a run's clips come from and how they are decoded; what they are is the run's
    :class:`~raylab.config.ClipConfig`."""

    # A folder or a URI, or the Shards opened from it (its manifest then read only once).
    shards: str | Shards
    val_split: str = "val"
    decoders: int | None = None  # concurrent decode tasks; None = as CPUs allow
    decoder_cpus: float = 1.0
    decoder_resource: str | None = None  # custom resource of decoder nodes, e.g. "decoder"
    # False: the same clips, batched as decode tasks finish through Ray Data's local
    # shuffle buffer (shuffle_buffer clips), as raylab did before its runs were repeatable:
    # another order each run, no mid-epoch checkpoints (no position to resume from). For
    # measuring what the plan's order costs (benchmarks/determinism_cost.py).
    ordered: bool = True
    # Start each pass's pipeline before the trainer asks for it (Lookahead). The same clips
    # in the same order, sooner. False: each pass starts when its first batch is asked for.
    lookahead: bool = True
    # A rank's validation batches are the same every epoch (evaluation views are not
    # random): up to this many bytes of them are kept after the first pass and handed over
    # again, not decoded again, which leaves the decoders to the next training pass.
    # 0: every validation pass decodes. The environment's RAYLAB_VAL_KEEP_BYTES sets it.
    val_keep_bytes: int = field(
        default_factory=lambda: env_int("RAYLAB_VAL_KEEP_BYTES", 512 * 2**20)
    )
    # With lookahead, a fresh run decodes its first validation pass beside its first
    # training pass, so that its second training pass starts as soon as the first's clips
    # have arrived, as every later one does. The environment's RAYLAB_VAL_AHEAD=0 turns it
    # off: the first validation pass then decodes after the first training pass.
    val_ahead: bool = field(default_factory=lambda: env_int("RAYLAB_VAL_AHEAD", 1) != 0)
    # With lookahead, a fresh run's first training pass starts decoding on the driver, as
    # its Train run is being built (decode_ahead): up to this many bytes of its first clips
    # over all ranks, decoded while the run's processes start, in one decoder's worth of
    # CPU. They are kept until the run ends (its config holds them). 0: off; the
    # environment's RAYLAB_HEAD_START_BYTES sets it.
    head_start_bytes: int = field(
        default_factory=lambda: env_int("RAYLAB_HEAD_START_BYTES", 256 * 2**20)
    )


def plan_window(config: TrainConfig) -> int:
    """The videos a training plan shuffles within (``config.shuffle_buffer``, at least 1):
    the plan's and its decode tasks' unit of order."""
    return max(1, config.shuffle_buffer)


def rank_plan(groups: list[dict], config: TrainConfig, epoch: int, rank: int, world: int):
    """Rank ``rank`` of ``world``'s training plan of epoch ``epoch`` over the split's row
    ``groups`` (:func:`raylab.data.plan.train_plan`, shuffled in :func:`plan_window`s)."""
    rows = [g["rows"] for g in groups]
    window = plan_window(config)
    return train_plan(rows, seed=config.seed, epoch=epoch, rank=rank, world=world, window=window)


class EpochData:
    """One rank's clips: each epoch's training pass from any position of its plan, and the
    validation pass."""

    def __init__(
        self,
        data: DataOptions,
        groups: dict,
        config: TrainConfig,
        rank: int,
        world: int,
        head: dict | None = None,
    ) -> None:
        """``groups``: the ``"train"`` and ``"val"`` splits' row groups, read once on the
        driver (:func:`loop_config`). ``head``: the first training pass's first clips,
        decoded as the run started (:func:`head_start`)."""
        self.data, self.config, self.rank, self.world = data, config, rank, world
        self.head = head
        self.shards = Shards.open(data.shards)
        quiet_data_console()
        self.train_groups, self.val_groups = groups["train"], groups["val"]
        self.val_kept: list[dict] | None = None  # the validation pass, once it fits
        self.keep_val = data.val_keep_bytes > 0  # until a pass has not fitted

    def _common(self) -> dict:
        d = self.data
        return {
            "decoders": d.decoders,
            "decoder_cpus": d.decoder_cpus,
            "decoder_resource": d.decoder_resource,
            "window": plan_window(self.config),
            "seed": self.config.seed,
        }

    def train_plan(self, epoch: int) -> list:
        return rank_plan(self.train_groups, self.config, epoch, self.rank, self.world)

    def _batches(
        self, ds, start: int, end: int, views: int = 1, on_delivered=None, ahead=None
    ) -> Iterator[dict]:
        ds.context.enable_progress_bars = False  # a bar per rank would garble the console
        if not self.data.ordered:  # as decoded, through Ray Data's local shuffle buffer
            return ds.iter_batches(
                batch_size=self.config.batch_size,
                batch_format="numpy",
                prefetch_batches=2,
                local_shuffle_buffer_size=self.config.shuffle_buffer or None,
            )
        return planned_batches(
            ds, self.config.batch_size, start, end, views, on_delivered=on_delivered, ahead=ahead
        )

    def train(self, epoch: int, plan: list, start: int, on_delivered=None) -> Iterator[dict]:
        """Epoch ``epoch``'s training batches (numpy) from video ``start`` of ``plan``;
        ``on_delivered()`` once all its clips have arrived (ordered passes only). The
        first pass of a fresh run starts with the clips its start decoded (``head``)."""
        ahead, begin = None, start
        if epoch == 0 and start == 0 and self.head is not None and self.data.ordered:
            ahead, begin = self.head["blocks"][self.rank], self.head["videos"]
            self.head = None  # once: a restarted pass decodes its clips again
        ds = clip_dataset(
            self.shards,
            "train",
            self.config.clip,
            train=True,
            epoch=epoch,
            plan=plan,
            start=begin,
            groups=self.train_groups,
            **self._common(),
        )
        return self._batches(ds, start, len(plan), on_delivered=on_delivered, ahead=ahead)

    def val(self, on_delivered=None) -> Iterator[dict]:
        """This rank's part of the validation videos, the same every time;
        ``on_delivered()`` as in :meth:`train`. Decoded the first time and kept when its
        batches fit ``DataOptions.val_keep_bytes``; then handed over as kept (their
        ``on_delivered()`` at once)."""
        if self.val_kept is not None:
            return _replayed(self.val_kept, on_delivered)
        plan = eval_plan([g["rows"] for g in self.val_groups], rank=self.rank, world=self.world)
        ds = clip_dataset(
            self.shards,
            self.data.val_split,
            self.config.clip,
            train=False,
            plan=plan,
            groups=self.val_groups,
            **self._common(),
        )
        batches = self._batches(
            ds, 0, len(plan), self.config.clip.test_views, on_delivered=on_delivered
        )
        return self._keeping(batches) if self.keep_val else batches

    def _keeping(self, batches: Iterator[dict]) -> Iterator[dict]:
        """``batches``, kept as :attr:`val_kept` once all have passed, if they fit."""
        kept: list[dict] | None = []
        size = 0
        for batch in batches:
            if kept is not None:
                size += sum(v.nbytes for v in batch.values())
                if size <= self.data.val_keep_bytes:
                    kept.append(batch)
                else:  # it never will: later passes are the same
                    kept, self.keep_val = None, False
            yield batch
        if kept is not None:
            self.val_kept = kept


def _replayed(batches: list[dict], on_delivered=None) -> Iterator[dict]:
    if on_delivered is not None:
        on_delivered()
    yield from batches


def quiet_data_console() -> None:
    """Keep Ray Data's per-pass lines ("Starting execution of Dataset ...") out of the
    console of this process: two or three a pass and rank would bury the epoch lines. They
    still go to Ray Data's log file (``ray-data.log`` in the session's logs)."""
    import logging

    import ray.data  # noqa: F401 - configures the "ray.data" logger

    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)


class Lookahead:
    """An epoch's passes, each started before the trainer asks for it
    (``DataOptions.lookahead``): a fresh run's first training pass, and beside it its first
    validation pass (``DataOptions.val_ahead``), while the model is built (:meth:`start_run`);
    the validation pass once the training pass's clips have all arrived; the next epoch's
    training pass once the validation pass's have, while validation computes and the epoch
    is saved (started after both, its first batch came 0.5 s late in every epoch, 4% of a
    demo T3D's epoch on two cores). A validation pass started ahead, or kept from the first
    (:meth:`EpochData.val`), is there at once, so the next training pass starts as soon as
    the training pass's clips have arrived, from the first epoch on (with the first
    validation pass decoded between them, a demo STM's second epoch waited 15% for its
    clips; docs/results.md, "The first validation pass beside the first training pass").
    Each start runs on the thread reading the pass before it, before that pass ends, so the
    trainer finds it when it asks. Passes are kept by epoch, and none is started while the
    trainer has not yet taken the epoch's before it: a pass's clips can all arrive before
    its first batch is taken (its decode units finish out of order, and a tiny pass has
    few), and the chain would run on. Off (or for passes in decoding order,
    ``DataOptions.ordered`` False) a pass starts when asked for. The same clips in the same
    order either way."""

    def __init__(self, data: EpochData, epochs: int) -> None:
        self.data, self.epochs = data, epochs
        self.on = data.data.lookahead and data.data.ordered
        self.started: dict[tuple[str, int], ReadAhead] = {}

    def start_run(self) -> None:
        """A fresh run's first passes: training's, then validation's, whose decode tasks
        queue behind the first training ones, so the first batches still come first. A
        validation split larger than Ray Data decodes ahead of its reader decodes
        the rest when the trainer reads it, as it did before."""
        self.start_training(0)
        if self.on and self.data.data.val_ahead:
            self.started["val", 0] = ReadAhead(self.data.val())

    def start_training(self, epoch: int) -> None:
        if self.on and epoch < self.epochs and ("train", epoch - 1) not in self.started:
            plan = self.data.train_plan(epoch)
            then = functools.partial(self.start_validation, epoch)
            self.started["train", epoch] = ReadAhead(
                self.data.train(epoch, plan, 0, on_delivered=then)
            )

    def start_validation(self, epoch: int) -> None:
        if ("val", epoch) in self.started:  # started beside its training pass
            self.start_training(epoch + 1)
        elif self.on:
            then = functools.partial(self.start_training, epoch + 1)
            self.started["val", epoch] = ReadAhead(self.data.val(on_delivered=then))

    def train(self, epoch: int, plan: list, start: int) -> Iterator[dict]:
        """Epoch ``epoch``'s training batches from video ``start`` of ``plan``."""
        if (started := self.started.pop(("train", epoch), None)) is not None:
            return started
        then = functools.partial(self.start_validation, epoch) if self.on else None
        return self.data.train(epoch, plan, start, on_delivered=then)

    def val(self, epoch: int) -> Iterator[dict]:
        """Epoch ``epoch``'s validation batches."""
        return self.started.pop(("val", epoch), None) or self.data.val()


def to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch's numeric columns as tensors on ``device`` (clips stay uint8); strings stay
    behind (their ids are in the step log)."""
    pin = device.type == "cuda"
    out = {}
    for k, v in batch.items():
        if v.dtype.kind in "biuf" and k not in ("error", "position"):
            t = torch.from_numpy(np.ascontiguousarray(v))
            out[k] = (t.pin_memory() if pin else t).to(device, non_blocking=True)
    return out


# --------------------------------------------------------------------------------------------
# Random draws and what decides the numbers
# --------------------------------------------------------------------------------------------


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch seed of one rank in one epoch: ranks differ (dropout), epochs replay."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def set_numerics(config: TrainConfig, device: torch.device) -> None:
    """How this worker computes. On the CPU, denormal floats flushed to zero when
    ``config.flush_denormal`` (arithmetic on them is many times slower; docs/results.md,
    "Denormal floats", found no effect on the demo's T3D). On CUDA: cuDNN's autotuner for speed,
    or, when ``config.deterministic``, deterministic algorithms where they exist (cuDNN's
    backward of 3D pooling has none: it warns and stays as it is). CPU kernels are
    deterministic at a fixed thread count already."""
    torch.set_flush_denormal(config.flush_denormal)
    if device.type != "cuda":
        return
    deterministic = config.deterministic
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)


def environment(device: torch.device, world: int) -> dict:
    """What besides the config decides a run's numbers: library versions, threads, device,
    the CPU's vector unit."""
    import decord
    import ray

    return {
        "torch": str(torch.__version__),
        "ray": ray.__version__,
        "decord": decord.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "threads_per_worker": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        # The CPU's vector unit picks oneDNN's and ATen's kernels, so the last bits: the same
        # seed on an AVX-512 and an AVX2 machine trains apart (docs/training.md).
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "workers": world,
    }


# --------------------------------------------------------------------------------------------
# Mid-epoch checkpoints
# --------------------------------------------------------------------------------------------


class MidEpochStore:
    """Mid-epoch checkpoints of a run under ``location`` (a folder or a URI beside the run's
    Ray Train checkpoints): ``e{epoch}-s{step}/`` holds ``shared.pt`` (weights, optimiser,
    schedule: rank 0's) and ``rank-{r}.pt`` (each rank's sums and generator), and
    ``latest.json`` names the newest whole one. It is written last, so a worker killed while
    saving leaves the previous checkpoint in force; the one before is then removed.

    These checkpoints are not reported to Ray Train: Tune's iterations, ASHA's rungs and the
    kept-best checkpoints stay whole epochs.
    """

    def __init__(self, location: str) -> None:
        from raylab.data.storage import storage

        self.location = location.rstrip("/")
        self.fs, self.root = storage(self.location)

    def _write(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def _read(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def latest(self) -> dict | None:
        """``{"epoch", "step", "position", "world", "dir"}`` of the newest whole checkpoint."""
        try:
            return json.loads(self._read(f"{self.root}/latest.json"))
        except (FileNotFoundError, OSError):
            return None

    def save_rank(self, name: str, rank: int, state: dict) -> None:
        self.fs.create_dir(f"{self.root}/{name}", recursive=True)
        buf = io.BytesIO()
        torch.save(state, buf)
        self._write(f"{self.root}/{name}/rank-{rank}.pt", buf.getvalue())

    def save_shared(self, name: str, state: dict) -> None:
        self.fs.create_dir(f"{self.root}/{name}", recursive=True)
        buf = io.BytesIO()
        torch.save(state, buf)
        self._write(f"{self.root}/{name}/shared.pt", buf.getvalue())

    def commit(self, marker: dict) -> None:
        """Make ``marker["dir"]`` the checkpoint in force; remove the one it replaces."""
        before = self.latest()
        self._write(f"{self.root}/latest.json.tmp", json.dumps(marker).encode())
        self.fs.move(f"{self.root}/latest.json.tmp", f"{self.root}/latest.json")
        if before and before["dir"] != marker["dir"]:
            self.fs.delete_dir(f"{self.root}/{before['dir']}")

    def load(self, marker: dict, rank: int) -> tuple[dict, dict]:
        """(shared state, this rank's state) of a checkpoint."""

        def read(name: str) -> dict:
            data = io.BytesIO(self._read(f"{self.root}/{marker['dir']}/{name}"))
            return torch.load(data, map_location="cpu", weights_only=True)

        return read("shared.pt"), read(f"rank-{rank}.pt")

    def clear(self) -> None:
        """Remove every mid-epoch checkpoint: an epoch's end supersedes them."""
        from pyarrow.fs import FileType

        if self.fs.get_file_info(self.root).type == FileType.Directory:
            self.fs.delete_dir(self.root)


# --------------------------------------------------------------------------------------------
# The skeleton
# --------------------------------------------------------------------------------------------


class Task(Protocol):
    """What one kind of training adds to the skeleton."""

    unit: str  # what a training example is: "clips" or "pairs" (names the metrics)
    accuracy: str  # the name of the training accuracy metric

    def build(self, config: TrainConfig, device: torch.device) -> torch.nn.Module:
        """The trainable network on ``device``, before DDP."""

    def parts(self) -> dict:
        """Saved and restored besides the trainable network (a frozen teacher...)."""

    def forward(
        self,
        model: torch.nn.Module,
        batch: dict[str, torch.Tensor],
        ids: np.ndarray,
        draw: np.random.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, targets) of a training batch of decoded videos (``ids``: theirs);
        ``draw``: the step's random generator, a function of (seed, epoch, rank, step)."""

    def evaluate(self, model: torch.nn.Module, batches: Iterator[dict]) -> dict:
        """Validation metrics, gathered over ranks; ``val_decode_failures``,
        ``val_first_error`` and ``val_videos`` when videos can fail to decode there."""

    def saved(self, model: torch.nn.Module) -> dict:
        """Extra entries of every epoch checkpoint (the student's weights...)."""

    def line(self, metrics: dict, epochs: int) -> str:
        """The console line of an epoch."""


@dataclass
class Sums:
    """One rank's running sums of an epoch's training: what a mid-epoch checkpoint keeps."""

    loss: float = 0.0
    correct: int = 0
    seen: int = 0  # examples trained on (clips, or pairs)
    videos: int = 0  # videos decoded
    failed: int = 0  # videos that failed to decode
    first_error: str = ""
    wait: float = 0.0
    time: float = 0.0
    position: int = 0  # the next video of the epoch's plan

    def take(self, batch: dict) -> tuple[dict, bool]:
        """Count a delivered batch's videos, decoded and failed, and move past them in the
        plan. Returns the rows to train on (the decoded ones; all rows, to step on nothing,
        when none decoded) and whether any decoded."""
        ok = batch["label"] >= 0  # placeholder rows of videos that failed to decode
        self.failed += int((~ok).sum())
        self.videos += int(ok.sum())
        if not self.first_error and not ok.all():
            self.first_error = error_text(batch["error"][~ok][0])
        self.position = int(batch["position"][-1]) + 1
        if not ok.any():
            return batch, False
        return {k: v[ok] for k, v in batch.items()}, True

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Add a step's mean loss and correct predictions over its ``len(y)`` examples."""
        self.loss += loss.item() * len(y)
        self.correct += (logits.argmax(1) == y).sum().item()
        self.seen += len(y)


def loop_config(
    config: TrainConfig,
    data: DataOptions,
    run_dir: str | None = None,
    extra_metrics: dict | None = None,
    *,
    history_at: str | None = None,
    mid_epoch_dir: str | None = None,
    log_steps: bool = False,
    seed_drawn: bool = False,
    started_at: float | None = None,
    spares: bool = False,
) -> dict:
    """What a per-worker loop is given: the run's config (as plain values, the form every
    checkpoint keeps), where its clips come from and the splits' row groups (their footers
    read here, once), optimiser steps per worker and epoch (for the schedule), the folder
    for its files (rank 0; None: no files), constants reported with every epoch (a search
    trial's cost), where ``history.jsonl`` goes (``history_at``, a folder or a URI; default
    the folder), where mid-epoch checkpoints go, whether each step's
    video ids are logged (``run_dir/steps/rank-N.jsonl``), whether the seed was drawn
    from fresh entropy (recorded) and when the run began (``started_at``, Unix time; now by
    default), which its start-up timings count from (:class:`~raylab.train.worker.StartClock`),
    and whether its workers leave spare processes for the next trial's (``spares``)."""
    shards = Shards.open(data.shards)
    groups = {"train": row_groups(shards, "train")}
    groups["val"] = row_groups(shards, data.val_split)
    videos = sum(g["rows"] for g in groups["train"])
    history_at = history_at or run_dir
    fresh = not (history_at and exists(f"{history_at}/history.jsonl"))  # else it may resume
    return {
        "config": config.record(),
        "data": asdict(replace(data, shards=shards.location)),
        "shards": shards,  # with its manifest: the workers read it from here
        "groups": groups,
        # Every rank takes the same number of steps: its equal part of the plan.
        "steps_per_epoch": max(1, math.ceil(videos / config.workers / config.batch_size)),
        "run_dir": run_dir,
        "history_at": history_at,
        "extra_metrics": dict(extra_metrics or {}),
        "mid_epoch_dir": mid_epoch_dir,
        "log_steps": log_steps,
        "seed_drawn": seed_drawn,
        "started_at": time.time() if started_at is None else started_at,
        "spares": spares,
        "head_start": head_start(config, data, shards, groups["train"]) if fresh else None,
    }


def head_start(
    config: TrainConfig, data: DataOptions, shards: Shards, groups: list[dict]
) -> dict | None:
    """Every rank's first clips of a fresh run's first training pass, decoding from now on
    (:func:`~raylab.data.pipeline.decode_ahead`), while the run's processes start:
    ``{"videos": how many of each rank's plan, "blocks": each rank's refs}``. None when
    ``data.head_start_bytes`` is 0, without look-ahead, or where Ray is not started."""
    import ray

    on = data.lookahead and data.ordered and data.head_start_bytes > 0
    if not (on and ray.is_initialized()):
        return None
    clip, world = config.clip, config.workers
    plans = [rank_plan(groups, config, 0, rank, world) for rank in range(world)]
    clip_bytes = clip.views(True) * clip.frames * clip.size**2 * clip.channels
    videos = min(min(map(len, plans)), data.head_start_bytes // (world * clip_bytes))
    if videos <= 0:
        return None
    blocks = decode_ahead(
        shards,
        clip,
        plans,
        videos=videos,
        groups=groups,
        window=plan_window(config),
        seed=config.seed,
        decoder_cpus=data.decoder_cpus,
        decoder_resource=data.decoder_resource,
    )
    return {"videos": videos, "blocks": blocks}


def quiet_report_records() -> None:
    """Keep Ray Train's INFO record of each report (the whole metrics dict, every epoch) off
    the console, as ``LoggingConfig(log_level="WARNING")`` keeps its others: it logs that one
    under its module file's path, not under ``ray.train``."""
    import logging

    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # moved in another Ray: the record shows again, nothing breaks
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def run_epochs(run: dict, task: Task) -> None:
    """Train ``task`` as ``run`` (see :func:`loop_config`) says, in this Ray Train worker."""
    import ray.train
    import ray.train.torch

    quiet_report_records()
    config = TrainConfig.from_record(run["config"])
    run_dir, history = run["run_dir"], run["history_at"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    clock = StartClock(run.get("started_at"), active=rank == 0)
    clock.mark("loop_entered")
    device = worker_device()
    set_numerics(config, device)

    ordered = run["data"].get("ordered", True)
    store = MidEpochStore(run["mid_epoch_dir"]) if run.get("mid_epoch_dir") and ordered else None
    options = DataOptions(**run["data"] | {"shards": run["shards"]})
    data = EpochData(options, run["groups"], config, rank, world, head=run.get("head_start"))
    passes = Lookahead(data, config.epochs)
    if ray.train.get_checkpoint() is None and not (store and store.latest()):
        passes.start_run()  # decoding while the model is built

    torch.manual_seed(config.seed)  # every rank builds the same initial weights
    model = task.build(config, device)
    model = ray.train.torch.prepare_model(model, move_to_device=device)  # device + DDP
    optimizer, scheduler = optimiser_and_schedule(model, config, run["steps_per_epoch"])
    parts = {"model": unwrap(model), **task.parts(), "optimizer": optimizer}
    parts["scheduler"] = scheduler
    start_epoch, start_step, sums, rng_state, restored = _resume(parts, store, history, rank, world)
    clock.active = clock.active and start_epoch == 0 and start_step == 0  # a fresh run's start
    clock.mark("model_ready")

    env = environment(device, world) | {"seed_drawn": run["seed_drawn"]}
    if rank == 0 and start_epoch == 0 and start_step == 0:
        append_history(history, {"event": "started", "environment": env})
    reporter = EpochReporter(run["config"], run_dir, rank, environment=env, history_at=history)
    if restored is not None:
        # The epoch resumed from, reported again: a search restored after its driver stopped
        # may not have received it before (its report died with the driver), and the
        # search's rules and budget count epochs by their number, so a repeat is harmless.
        import ray.train

        ray.train.report(restored | {"restored": True})
    compiled = torch.compile(model) if config.compile else model
    step_log = _StepLog(run_dir, rank) if run.get("log_steps") else None

    def epoch_state(epoch: int) -> dict:
        return (
            {name: part.state_dict() for name, part in parts.items()}
            | task.saved(model)
            | {"sampler": {"seed": config.seed, "next_epoch": epoch + 1, "workers": world}}
        )

    for epoch in range(start_epoch, config.epochs):
        plan = data.train_plan(epoch)
        step = start_step if epoch == start_epoch else 0
        if epoch == start_epoch and rng_state is not None:
            _set_rng(rng_state)
        else:
            torch.manual_seed(rank_seed(config.seed, epoch, rank))
            sums = Sums()
        model.train()
        write_progress(run_dir, rank, epoch, step)
        optimizer.zero_grad(set_to_none=True)
        began = tick = time.perf_counter()
        batches = passes.train(epoch, plan, sums.position)
        for batch in batches:
            sums.wait += time.perf_counter() - tick
            clock.mark("first_batch")
            rows, decoded = sums.take(batch)
            if step_log is not None:
                step_log.write(epoch, step + 1, batch)
            draw = np.random.default_rng([config.seed, epoch, rank, step])
            logits, y = task.forward(compiled, to_device(rows, device), rows["video_id"], draw)
            y = y.clamp(min=0)
            loss = torch.nn.functional.cross_entropy(
                logits.float(), y, label_smoothing=config.label_smoothing
            )
            if not decoded:  # a batch of nothing else still steps, so DDP stays in step
                loss = loss * 0.0
            step += 1
            learn(loss, step, model, optimizer, scheduler, config)
            clock.mark("first_step")
            if decoded:
                sums.add(loss, logits, y)
            write_progress(run_dir, rank, epoch, step=step)
            now = time.perf_counter()
            sums.time += now - began
            began = now
            every = config.checkpoint_every
            boundary = step % config.grad_accum == 0 and sums.position < len(plan)
            if store and every and step % every == 0 and boundary:
                _save_mid_epoch(store, parts, sums, epoch, step, rank, world, history)
            tick = time.perf_counter()
        if step % config.grad_accum:  # the tail of an accumulation window
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        metrics = _train_metrics(task, sums, epoch, config, optimizer)
        clock.mark("trained")
        model.eval()
        val_began = time.perf_counter()
        val = task.evaluate(unwrap(model), passes.val(epoch))
        metrics["val_s"] = time.perf_counter() - val_began  # the validation pass, in seconds
        clock.mark("validated")
        check_validation_failures(epoch, val, config)
        metrics |= val | run["extra_metrics"]
        reporter.end_epoch(epoch, metrics, task.line(metrics, config.epochs), epoch_state)
        clock.write(history)
        if epoch == start_epoch and run.get("spares"):
            _keep_worker_spares()
        if store and rank == 0:
            store.clear()  # the epoch's checkpoint supersedes its mid-epoch ones
    reporter.close()


def _keep_worker_spares() -> None:
    """Spares for the next trial's workers on this node, asked by its first worker."""
    import ray.train

    from raylab.train.spares import keep_worker_spares

    context = ray.train.get_context()
    if context.get_local_rank() == 0:
        keep_worker_spares(context.get_local_world_size())


def optimiser_and_schedule(model: torch.nn.Module, config: TrainConfig, steps_per_epoch: int):
    """The run's optimiser and its learning-rate schedule, stepped once per update (every
    ``grad_accum`` batches): ``(optimizer, scheduler)``."""
    optimizer = make_optimizer(
        model, config.optimizer, config.lr, config.weight_decay, config.momentum
    )
    updates_per_epoch = max(1, steps_per_epoch // config.grad_accum)
    schedule = {
        "epochs": config.epochs,
        "schedule": config.schedule,
        "warmup_epochs": config.warmup_epochs,
        "step_epochs": config.step_epochs,
    }
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda update: lr_factor(update / updates_per_epoch, **schedule)
    )
    return optimizer, scheduler


def learn(loss: torch.Tensor, step: int, model, optimizer, scheduler, config: TrainConfig) -> None:
    """Backpropagate batch ``step``'s loss; every ``grad_accum`` batches, clip the gradients
    (when asked), update the weights and step the schedule."""
    (loss / config.grad_accum).backward()
    if step % config.grad_accum == 0:
        if config.clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()


def check_validation_failures(epoch: int, val: dict, config: TrainConfig) -> None:
    """Stop the run when more of the validation pass's videos failed to decode than the run
    tolerates (:func:`check_decode_failures`); the pass's first error leaves ``val``."""
    if "val_decode_failures" in val:
        failed = val["val_decode_failures"]
        check_decode_failures(
            epoch + 1,
            "validation",
            failed,
            val["val_videos"] + failed,
            val.pop("val_first_error"),
            config.max_decode_failures,
        )


def _train_metrics(task: Task, sums: Sums, epoch: int, config: TrainConfig, optimizer) -> dict:
    totals = gather(
        (sums.loss, sums.correct, sums.seen, sums.wait, sums.time, sums.failed, sums.videos)
    )
    first_error = next((e for e in gather(sums.first_error) if e), "")
    seen = sum(t[2] for t in totals)
    failed = sum(t[5] for t in totals)
    videos = sum(t[6] for t in totals)
    # Every worker holds the same totals, so all raise together (none waits in a collective).
    check_decode_failures(
        epoch + 1, "training", failed, videos + failed, first_error, config.max_decode_failures
    )
    return {
        "epoch": epoch + 1,
        "train_loss": sum(t[0] for t in totals) / max(1, seen),
        task.accuracy: sum(t[1] for t in totals) / max(1, seen),
        f"train_{task.unit}": seen,
        f"{task.unit}_per_s": seen / max(1e-9, max(t[4] for t in totals)),
        "data_wait_frac": sum(t[3] for t in totals) / max(1e-9, sum(t[4] for t in totals)),
        "train_s": max(t[4] for t in totals),  # the training pass, in seconds
        "lr": optimizer.param_groups[0]["lr"],
        "decode_failures": failed,  # training videos lost this epoch
    }


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_mid_epoch(store, parts, sums, epoch, step, rank, world, history) -> None:
    """Every rank saves its sums and generator, rank 0 the shared state; once all have,
    rank 0 commits the checkpoint."""
    name = f"e{epoch}-s{step}"
    if rank == 0:
        store.save_shared(name, {k: p.state_dict() for k, p in parts.items()})
    store.save_rank(name, rank, {"sums": asdict(sums), "rng": _rng_state()})
    gather(None)  # a barrier: every rank's file is written
    if rank == 0:
        store.commit({"epoch": epoch, "step": step, "workers": world, "dir": name})
        append_history(history, {"event": "mid_epoch_checkpoint", "epoch": epoch + 1, "step": step})


def _resume(parts: dict, store, history: str | None, rank: int, world: int):
    """Restore the run's newest state: a mid-epoch checkpoint newer than the latest epoch
    checkpoint, or that epoch checkpoint, or nothing. Returns (epoch, step, sums, generator
    state) to start from, and the metrics of the latest epoch checkpoint (None: none)."""
    import ray.train

    start_epoch, state = 0, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = load_state(d)
        start_epoch = state["epoch"] + 1
    # A mid-epoch checkpoint holds the whole state: it wins over an older epoch checkpoint,
    # which may also be one that Ray Train had not registered yet when the worker died.
    marker = store.latest() if store else None
    if marker and marker["epoch"] >= start_epoch and marker["workers"] != world:
        # The plan is a function of the number of workers: re-plan the epoch from its start.
        if rank == 0:
            print(
                f"the mid-epoch checkpoint of epoch {marker['epoch'] + 1} was made by "
                f"{marker['workers']} workers, not {world}: epoch {start_epoch + 1} restarts"
            )
        marker = None
    if marker and marker["epoch"] >= start_epoch:
        start_epoch = marker["epoch"]
        shared, own = store.load(marker, rank)
        for name, part in parts.items():
            part.load_state_dict(shared[name])
        if rank == 0:
            print(f"resumed epoch {start_epoch + 1} after step {marker['step']}")
            append_history(
                history, {"event": "resumed", "from_epoch": start_epoch, "step": marker["step"]}
            )
        restored = state["metrics"] if state is not None else None
        return start_epoch, marker["step"], Sums(**own["sums"]), own["rng"], restored
    if state is not None:
        for name, part in parts.items():
            part.load_state_dict(state[name])
        if rank == 0:
            print(f"resumed from the checkpoint of epoch {start_epoch}")
            append_history(history, {"event": "resumed", "from_epoch": start_epoch})
    return start_epoch, 0, Sums(), None, state["metrics"] if state is not None else None


class _StepLog:
    """``run_dir/steps/rank-N.jsonl``: the video ids of every training step, for audits (a
    step done again after a resume is logged again: the last line of a step counts)."""

    def __init__(self, run_dir: str | None, rank: int) -> None:
        self.path = Path(run_dir) / "steps" / f"rank-{rank}.jsonl" if run_dir else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, epoch: int, step: int, batch: dict) -> None:
        if self.path:
            ids = [str(v) for v in batch["video_id"]]
            line = {"epoch": epoch + 1, "step": step, "videos": ids}
            line["positions"] = [int(p) for p in batch["position"]]
            with open(self.path, "a") as f:
                f.write(json.dumps(line) + "\n")
