"""The parts of a per-worker Ray Train loop below its epoch skeleton
(:mod:`raylab.train.epoch`): the worker's device and autocast, gathering over ranks, the
progress and history files, and the end of an epoch (:class:`EpochReporter`: the
checkpoint, as :mod:`raylab.train.checkpoints` writes them, Ray Train report, console line,
TensorBoard scalars, ``history.jsonl``). Files are written by rank 0 only, under the run's
``run_dir`` when it has one. The helpers take plain values, not a loop's config.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

from raylab.data.storage import append_text
from raylab.train.checkpoints import plain_config, save_state


def worker_device() -> torch.device:
    """This worker's device as Ray Train assigned it, or the CPU where a granted GPU cannot
    be used (a simulated cluster's fake GPUs, a CPU build of torch): train rather than fail."""
    import ray.train.torch

    device = ray.train.torch.get_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        device = torch.device("cpu")
    return device


def on_cuda(setting: str | bool, device: torch.device) -> bool:
    """A switch that may be ``"auto"``: then on for CUDA devices only."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def autocast(amp: str | bool, device: torch.device) -> AbstractContextManager:
    """bf16 autocast on ``device`` when ``amp`` is on (see :func:`on_cuda`), else a context
    that does nothing. One object, entered around every forward pass."""
    if on_cuda(amp, device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def gather(obj) -> list:
    """Every worker's ``obj`` in a list (one element when not distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def write_progress(run_dir: str | None, rank: int, epoch: int, step: int = 0) -> None:
    """Where each worker is (``run_dir/progress/rank-N``: epoch, step, pid): for people and
    for fault tests, which kill a worker mid-epoch by its pid."""
    if not run_dir:
        return
    d = Path(run_dir) / "progress"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"rank-{rank}").write_text(f"{epoch} {step} {os.getpid()}\n")


def append_history(location: str | None, record: dict) -> None:
    """Append one JSON line to ``location/history.jsonl`` (the run's folder or, for a run
    stored on a URI, its place there): every epoch and every resume."""
    if location:
        append_text(f"{location}/history.jsonl", json.dumps(record) + "\n")


def process_created_at() -> float | None:
    """When this process was created (Unix time, to 10 ms), from Linux's ``/proc``; None
    elsewhere."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


class StartClock:
    """Where a run's start goes: seconds from ``started_at`` (when the driver built the run;
    in a search, when the trial began) to each named point of the first epoch on this
    worker, from the creation of its process on. Rank 0 of a run that starts from scratch
    appends them to ``history.jsonl`` as a ``"startup"`` event once its first epoch is
    reported (``benchmarks/trial_start.py`` reads them); elsewhere the clock does nothing."""

    def __init__(self, started_at: float | None, active: bool) -> None:
        self.started_at, self.active = started_at, active and started_at is not None
        self.points: dict[str, float] = {}
        created = process_created_at()
        if self.active and created is not None:
            self.points["worker_process"] = created - started_at

    def mark(self, point: str) -> None:
        """Record ``point`` the first time it is reached."""
        if self.active and point not in self.points:
            self.points[point] = time.time() - self.started_at

    def write(self, run_dir: str | None) -> None:
        if self.active:
            self.mark("reported")
            record = {"event": "startup", "started_at": self.started_at, "seconds": self.points}
            append_history(run_dir, record)
            self.active = False


class EpochReporter:
    """The end of each epoch, the same in every loop. Rank 0 keeps the run's record: the
    checkpoint, one console line, TensorBoard scalars (``run_dir/tensorboard``) and a line of
    ``run_dir/history.jsonl``; every rank reports the metrics to Ray Train."""

    def __init__(
        self,
        config: dict,
        run_dir: str | None,
        rank: int,
        environment: dict | None = None,
        history_at: str | None = None,
    ) -> None:
        """``config``: the run's settings as plain values, saved in every checkpoint with
        ``environment`` (what else decides the numbers: versions, threads, device);
        ``history_at``: where ``history.jsonl`` goes (default ``run_dir``; a URI for a run
        stored on one, which has no local folder)."""
        self.config, self.run_dir, self.rank = config, run_dir, rank
        self.history_at = history_at or run_dir
        self.environment = environment or {}
        self.writer = None
        if rank == 0 and run_dir:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def end_epoch(self, epoch: int, metrics: dict, line: str, state: Callable[[int], dict]) -> None:
        """Epoch ``epoch`` (from 0) ended with ``metrics`` (the same on every rank). Rank 0
        saves ``state(epoch)`` with the epoch, the config and the metrics as the checkpoint,
        prints ``line`` and writes the scalars; every rank reports; then rank 0 appends the
        metrics to the history."""
        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if self.rank == 0:
                self.save(tmp, epoch, metrics, state)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
                self.log(metrics, line)
            ray.train.report(metrics, checkpoint=checkpoint)
        if self.rank == 0:  # after the report: every worker finished the epoch and it is saved
            append_history(self.history_at, {"event": "epoch"} | metrics | {"at": time.time()})

    def save(
        self, directory: str | Path, epoch: int, metrics: dict, state: Callable[[int], dict]
    ) -> None:
        """Write the checkpoint of ``epoch`` into ``directory``: the loop's ``state(epoch)``,
        the epoch, the config (plain: see :func:`~raylab.train.checkpoints.plain_config`) and
        the metrics."""
        meta = {"epoch": epoch, "config": plain_config(self.config), "metrics": metrics}
        meta["environment"] = plain_config(self.environment)
        save_state(directory, state(epoch) | meta)

    def log(self, metrics: dict, line: str) -> None:
        """Print ``line`` and write the metrics' numbers as TensorBoard scalars at step
        ``metrics["epoch"]``."""
        print(line, flush=True)
        if self.writer is not None:
            for k, v in metrics.items():
                if isinstance(v, int | float) and k != "epoch":
                    self.writer.add_scalar(k, v, metrics["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
