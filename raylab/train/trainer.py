"""Build the Ray Train ``TorchTrainer`` that runs :func:`raylab.train.loop.train_loop`.

The driver checks the model and the clips, reads the splits' row groups once for every
worker's plan, and names the run so that calling ``fit()`` again with the same
``storage_path``/``name`` resumes from its latest checkpoint.
:func:`torch_trainer` (backend, workers, checkpoints kept) is also what
:func:`raylab.train.transfer.build_transfer_trainer` builds its trainer with.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from raylab.config import TrainConfig
from raylab.data.storage import Shards, is_uri, write_text
from raylab.metrics import METRIC
from raylab.train.epoch import DataOptions, DecodeFailures, loop_config
from raylab.train.loop import train_loop

CONFIG_FILE = "config.json"  # a run's TrainConfig record, beside its checkpoints

__all__ = ["DataOptions", "build_trainer", "check_model", "decode_failure", "torch_trainer"]


def check_model(config: TrainConfig) -> None:
    """Build ``config``'s model on the meta device and pass it one clip of the run's shape.

    A wrong name, option or clip size then fails here, on the driver, with the model's
    own message, instead of in every worker after the cluster has started them.
    """
    import torch

    from raylab.models import build_model

    options, clip = config.model_options, config.clip
    with torch.device("meta"):
        model = build_model(config.model, max(1, config.num_classes), **options).eval()
        model(torch.empty(1, options.get("in_channels", 3), clip.frames, clip.size, clip.size))


def decode_failure(error: BaseException) -> DecodeFailures | None:
    """The :class:`DecodeFailures` that stopped a run, found in the error ``fit()`` raised
    (Ray Train wraps each worker's exception), or None when the run failed otherwise."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, DecodeFailures):
            return err
        todo.extend(getattr(err, "worker_failures", {}).values())
        todo.extend([getattr(err, "cause", None), err.__cause__, err.__context__])
    return None


def run_config(
    *,
    storage_path: str | Path,
    name: str,
    max_failures: int = 1,
    keep_checkpoints: int = 2,
    metric: str = METRIC,
    callbacks: list | None = None,
):
    """Where a run's checkpoints go and which are kept: the best ``keep_checkpoints`` by
    ``metric``, validation video top-1 by default (Ray Train keeps the latest too, for
    resuming)."""
    import ray.train

    return ray.train.RunConfig(
        name=name,
        storage_path=str(storage_path),
        failure_config=ray.train.FailureConfig(max_failures=max_failures),
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=keep_checkpoints,
            checkpoint_score_attribute=metric,
            checkpoint_score_order="max",
        ),
        callbacks=callbacks,
        # Ray Train's own INFO records (resources requested, the worker group started, each
        # checkpoint and report) stay in its session log files; the console keeps the run's
        # epoch lines and Ray Train's warnings.
        logging_config=ray.train.LoggingConfig(log_level="WARNING"),
    )


def quick_start() -> bool:
    """Whether runs cut their start-up work (no preemption watcher, the Train controller
    polling its workers every 0.5 s; in a search, Ray Data's statistics actor shared and each
    pass's pipeline started ahead): yes unless the environment says
    ``RAYLAB_QUICK_START=0``, which ``benchmarks/trial_start.py`` sets to measure the
    difference."""
    return os.environ.get("RAYLAB_QUICK_START", "1") != "0"


def torch_trainer(
    loop: Callable[[dict], None],
    config: dict,
    datasets: dict | None = None,
    *,
    storage_path: str | Path,
    name: str,
    workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    max_failures: int = 1,
    keep_checkpoints: int = 2,
    metric: str = METRIC,
    callbacks: list | None = None,
):
    """A ``TorchTrainer`` running ``loop(config)`` in ``workers`` workers; checkpoints as
    :func:`run_config` keeps them. raylab's loops read no ``datasets``: each rank builds its
    own part of each epoch's plan (:mod:`raylab.train.epoch`); given, each worker gets its
    own part of every one of them."""
    import ray.train
    import torch
    from ray.train.torch import TorchConfig, TorchTrainer

    # Ray Train's preemption watcher (an actor more per run, which only relays cloud
    # preemption notices to the workers; a lost node is recovered by max_failures all the
    # same) is off unless the environment turns it on: a search's trials are short runs,
    # each of which would start one. Read from this process when the run starts.
    # Its controller polls the workers every 2 s by default, and a worker's report waits in
    # a one-slot queue until the next poll: short epochs wait on it, and a run's end is seen
    # a poll later (`benchmarks/trial_start.py poll`, docs/results.md).
    # Ray Train's workers send print() to its logger as well as to their stdout, which the
    # driver then shows twice: each epoch line printed once is enough.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if quick_start():
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    resources = {"CPU": cpus_per_worker} | ({"GPU": 1} if use_gpu else {})
    # NCCL when this torch build has it (CUDA builds, even on a CPU-only head); gloo
    # otherwise, e.g. on a simulated cluster whose GPU resources are only advertised.
    backend = "nccl" if use_gpu and torch.distributed.is_nccl_available() else "gloo"
    return TorchTrainer(
        loop,
        train_loop_config=config,
        torch_config=TorchConfig(backend=backend),
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=run_config(
            storage_path=storage_path,
            name=name,
            max_failures=max_failures,
            keep_checkpoints=keep_checkpoints,
            metric=metric,
            callbacks=callbacks,
        ),
        datasets=datasets or None,
        dataset_config=ray.train.DataConfig(datasets_to_split="all") if datasets else None,
    )


def build_trainer(
    config: TrainConfig,
    data: DataOptions,
    *,
    storage_path: str | Path,
    name: str,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    max_failures: int = 1,
    keep_checkpoints: int = 2,
    callbacks: list | None = None,
    extra_metrics: dict | None = None,
    log_steps: bool = False,
    seed_drawn: bool = False,
    started_at: float | None = None,
    spares: bool = False,
    checked: bool = False,
):
    """A TorchTrainer that trains ``config`` on the shards in ``data``, in ``config.workers``
    workers with a GPU each when ``use_gpu``.

    ``config.classes`` empty means the shards' classes; given, they must be the shards'.
    Keeps the best ``keep_checkpoints`` checkpoints by validation video top-1 (the latest
    is always kept too, for resuming); restarts the worker group from the latest
    checkpoint up to ``max_failures`` times. ``extra_metrics`` are reported with every
    epoch. Files (history, TensorBoard, progress, and each step's video ids when
    ``log_steps``) go beside the checkpoints, in ``storage_path/name``, unless that is a
    URI; mid-epoch checkpoints (``config.checkpoint_every``) go to
    ``storage_path/name/mid_epoch``, a URI too; the run's config record goes to
    ``storage_path/name/config.json`` (local folders). ``seed_drawn``: the seed came from fresh
    entropy (it is recorded as such). ``started_at``: when the run began (Unix time; a
    search's trial passes its own start), which its start-up timings count from.
    ``spares``: after the first epoch, each node's first worker starts spare worker
    processes for the next trial's workers (:mod:`raylab.train.spares`). ``checked``: the
    model was already built and run on the run's clip (a search's driver did, sizing the
    trial), so :func:`check_model` is not run again: its meta forward pass imports
    ``torch._dynamo``, a second of the trial's start.
    """
    shards = Shards.open(data.shards)  # read once: the workers are given it
    data = replace(data, shards=shards)
    manifest = shards.manifest
    if manifest.videos("train") == 0:
        raise ValueError(f"{shards} holds no training videos")
    classes = manifest.classes
    if not config.classes:
        config = replace(config, classes=classes)
    elif config.classes != classes:
        raise ValueError(
            f"the config's classes {list(config.classes)} are not those of {shards} {list(classes)}"
        )
    if not checked:
        check_model(config)
    # The run's record (its config, as `jobs/train.py --config` trains it again, and its
    # history) goes where its checkpoints go; its other files (TensorBoard, progress, step
    # logs) need a local folder, which a run stored on a URI (s3://) does not have.
    location = f"{str(storage_path).rstrip('/')}/{name}"
    run_dir = None if is_uri(storage_path) else str(Path(storage_path) / name)
    write_text(f"{location}/{CONFIG_FILE}", json.dumps(config.record(), indent=1) + "\n")
    run = loop_config(
        config,
        data,
        run_dir,
        extra_metrics,
        history_at=location,
        mid_epoch_dir=f"{location}/mid_epoch",
        log_steps=log_steps,
        seed_drawn=seed_drawn,
        started_at=started_at,
        spares=spares,
    )
    return torch_trainer(
        train_loop,
        run,
        storage_path=storage_path,
        name=name,
        workers=config.workers,
        use_gpu=use_gpu,
        cpus_per_worker=cpus_per_worker,
        max_failures=max_failures,
        keep_checkpoints=keep_checkpoints,
        callbacks=callbacks,
    )
