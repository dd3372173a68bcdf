"""Checkpoints, one home: how a training run saves its state, how it is read back (a local
folder, a folder on storage such as s3://, a plain weights file), and which checkpoint of a
run is its best.

Every checkpoint is a folder holding one file, :data:`STATE_FILE`: the loop's parts (``model``,
``optimizer``, ...), the ``epoch`` (from 0), the run's ``config`` (plain values: see
:func:`plain_config`) and its ``metrics``. Checkpoints are ranked by one rule,
:func:`pick_best`, whether they come from a Ray Train result (:func:`best_checkpoint`) or are
read from storage (:func:`best_checkpoint_in`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import torch

from raylab.config import TrainConfig
from raylab.metrics import METRIC

STATE_FILE = "state.pt"  # the one file of every checkpoint

T = TypeVar("T")


def plain_config(config: dict) -> dict:
    """A copy of the config that ``torch.load(weights_only=True)`` can read back: tuples as
    lists, anything but plain values (a Path, ...) as its text."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out[k] = plain_config(v)
        elif isinstance(v, tuple):
            out[k] = list(v)
        elif v is None or isinstance(v, str | int | float | bool | list):
            out[k] = v
        else:
            out[k] = str(v)
    return out


def save_state(directory: str | Path, state: dict) -> None:
    """Write a checkpoint's state into ``directory`` (as :func:`load_state` reads it)."""
    torch.save(state, Path(directory) / STATE_FILE)


def load_state(directory: str | Path) -> dict:
    """The state a checkpoint directory holds, on the CPU."""
    return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)


def _load_file(fs, path: str) -> dict:
    """The state in the file ``path`` of the pyarrow filesystem ``fs``, on the CPU."""
    import io

    with fs.open_input_file(path) as f:
        return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)


def read_state(location: str | Path) -> dict:
    """The state of the checkpoint folder ``location``, a local path or a URI (s3://,
    file://, ...), on the CPU."""
    from raylab.data.storage import storage

    fs, root = storage(location)
    return _load_file(fs, f"{root.rstrip('/')}/{STATE_FILE}")


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain state dict from ``path`` (loaded with ``weights_only=True``). A training
    checkpoint's ``state.pt`` (``{"model": ...}``), ``{"state_dict": ...}`` and DataParallel's
    ``module.`` prefix are unwrapped."""
    from raylab.models import checkpoints as published

    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    return published.read_state(state)


def pick_best(candidates: Iterable[tuple[float | None, int, T]]) -> T:
    """The rule every checkpoint ranking follows: of ``(score, epoch, item)`` candidates, the
    item with the highest score, the later epoch on ties; a score of None or NaN (an epoch
    that was not scored) counts as -1, below any accuracy. ValueError when there is none."""

    def rank(candidate: tuple) -> tuple[float, int]:
        score, epoch = candidate[0], candidate[1]
        return (-1.0 if score is None or math.isnan(score) else score, epoch)

    return max(candidates, key=rank)[2]


def best_checkpoint(result, metric: str = METRIC):
    """The checkpoint with the highest ``metric`` of a Train result (latest on ties)."""
    ranked = [
        (m.get(metric, float("-inf")), m.get("epoch", 0), c)
        for c, m in (result.best_checkpoints or [])
    ]
    if not ranked:
        if result.checkpoint is None:
            raise ValueError(f"the run at {result.path} reported no checkpoint")
        return result.checkpoint
    return pick_best(ranked)


def best_checkpoint_in(run_dir: str | Path, epoch: int | None = None) -> tuple[str, dict]:
    """The checkpoint of a Train run (a folder or a URI such as s3://) with the highest
    validation video top-1, the later epoch on ties, or the one of ``epoch`` (1-based, as runs
    report it): ``(its location, its state)``, read from the checkpoints themselves."""
    import pyarrow.fs

    from raylab.data.storage import storage

    fs, root = storage(run_dir)
    listing = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    ranked = []
    for info in listing:
        if not info.base_name.startswith("checkpoint_"):
            continue
        file = f"{info.path}/{STATE_FILE}"
        if fs.get_file_info(file).type != pyarrow.fs.FileType.File:
            continue
        state = _load_file(fs, file)
        if epoch is not None and state["epoch"] + 1 != epoch:  # a state counts from 0
            continue
        location = f"{str(run_dir).rstrip('/')}/{info.base_name}"
        ranked.append((state["metrics"].get(METRIC), state["epoch"], (location, state)))
    if not ranked:
        of = f" of epoch {epoch}" if epoch is not None else ""
        raise FileNotFoundError(f"no checkpoint{of} in the Train run {run_dir}")
    return pick_best(ranked)


def save_best_weights(result, path: str | Path, metric: str = METRIC):
    """Save the model weights of ``result``'s best checkpoint (:func:`best_checkpoint`) to
    ``path`` as a plain state dict; returns ``(that checkpoint, its whole state)``."""
    best = best_checkpoint(result, metric)
    with best.as_directory() as d:
        state = load_state(d)
    torch.save(state["model"], path)
    return best, state


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, TrainConfig]:
    """The model and config of a checkpoint folder written by the training loop."""
    from raylab.models import build_model

    file = Path(path) / STATE_FILE if Path(path).is_dir() else Path(path)
    if not file.exists():
        raise FileNotFoundError(f"{file} not found: pass a checkpoint folder of a training run")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        config = state["config"]
    except Exception as err:  # a JSON file, a plain state dict, a truncated save...
        raise ValueError(
            f"{path} is not a checkpoint of a training run (state.pt with its config): pass a "
            f"checkpoint folder such as RUN/checkpoint_... ({type(err).__name__})"
        ) from err
    config = TrainConfig.from_record(config)
    model = build_model(config.model, config.num_classes, **config.model_options)
    model.load_state_dict(state["model"])
    return model.eval(), config
