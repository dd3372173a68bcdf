"""Build the Ray Train ``TorchTrainer`` that runs :func:`raylab.train.loop.train_loop`.

The driver builds the two clip datasets (random training views, multi-view validation),
sizes the schedule from the manifest, and names the run so that calling ``fit()`` again
with the same ``storage_path``/``name`` resumes from its latest checkpoint.
:func:`torch_trainer` (backend, workers, checkpoints kept) is also what
:func:`raylab.train.transfer.build_transfer_trainer` builds its trainer with.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from raylab.config import ClipConfig
from raylab.data.storage import load_manifest
from raylab.metrics import METRIC
from raylab.train.loop import DEFAULTS, DecodeFailures, train_loop


@dataclass
class DataOptions:
    """Where a run's clips come from and how they are decoded; what they are is ``clip``."""

    shards: str
    clip: ClipConfig
    val_split: str = "val"
    decoders: int | None = None  # concurrent decode tasks; None = as CPUs allow
    decoder_cpus: float = 1.0
    decoder_resource: str | None = None  # custom resource of decoder nodes, e.g. "decoder"


def clip_datasets(data: DataOptions) -> dict:
    """``{"train": ..., "val": ...}`` Ray datasets for a run."""
    from raylab.data.pipeline import clip_dataset

    common = {
        "decoders": data.decoders,
        "decoder_cpus": data.decoder_cpus,
        "decoder_resource": data.decoder_resource,
    }
    return {
        "train": clip_dataset(data.shards, "train", data.clip, train=True, **common),
        "val": clip_dataset(data.shards, data.val_split, data.clip, train=False, **common),
    }


def check_model(config: dict, frames: int, size: int) -> None:
    """Build ``config``'s model on the meta device and pass it one clip of the run's shape.

    A wrong name, option or clip size then fails here, on the driver, with the model's
    own message, instead of in every worker after the cluster has started them.
    """
    import torch

    from raylab.models import build_model

    options = config["model_options"]
    with torch.device("meta"):
        model = build_model(config["model"], config["num_classes"], **options).eval()
        model(torch.empty(1, options.get("in_channels", 3), frames, size, size))


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
    )


def torch_trainer(
    loop: Callable[[dict], None],
    config: dict,
    datasets: dict,
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
    """A ``TorchTrainer`` running ``loop(config)`` in ``workers`` workers, each given its own
    part of every one of ``datasets``; checkpoints as :func:`run_config` keeps them."""
    import ray.train
    import torch
    from ray.train.torch import TorchConfig, TorchTrainer

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
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split="all"),
    )


def build_trainer(
    config: dict,
    data: DataOptions,
    *,
    storage_path: str | Path,
    name: str,
    workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    max_failures: int = 1,
    keep_checkpoints: int = 2,
    callbacks: list | None = None,
):
    """A TorchTrainer for ``config`` (see ``loop.DEFAULTS``) on the shards in ``data``.

    Keeps the best ``keep_checkpoints`` checkpoints by validation video top-1 (the latest
    is always kept too, for resuming); restarts the worker group from the latest
    checkpoint up to ``max_failures`` times.
    """
    manifest = load_manifest(data.shards)
    n_train = manifest["splits"].get("train", 0)
    if n_train == 0:
        raise ValueError(f"{data.shards} holds no training videos")
    config = DEFAULTS | config
    # The clips are what ``data`` trains on, written here and nowhere else.
    config["data"] = data.clip.record()
    config["num_classes"] = config.get("num_classes") or len(manifest["classes"])
    # Saved in every checkpoint, so predictions on new videos name their classes.
    config["classes"] = config.get("classes") or list(manifest["classes"])
    check_model(config, data.clip.frames, data.clip.size)
    config["steps_per_epoch"] = max(1, math.ceil(n_train / workers / config["batch_size"]))
    if not config["run_dir"] and "://" not in str(storage_path):
        # Files beside the checkpoints; a URI (s3://) is no folder to write them in.
        config["run_dir"] = str(Path(storage_path) / name)
    return torch_trainer(
        train_loop,
        config,
        clip_datasets(data),
        storage_path=storage_path,
        name=name,
        workers=workers,
        use_gpu=use_gpu,
        cpus_per_worker=cpus_per_worker,
        max_failures=max_failures,
        keep_checkpoints=keep_checkpoints,
        callbacks=callbacks,
    )
