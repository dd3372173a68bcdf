"""Checkpoints without a cluster: the ranking rule, the best checkpoint of a run read from
storage or of a Train result, and reading checkpoints and weights back."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from raylab.config import ClipConfig, TrainConfig
from raylab.train.checkpoints import (
    STATE_FILE,
    best_checkpoint,
    best_checkpoint_in,
    load_checkpoint,
    load_state,
    pick_best,
    read_state,
    read_weights,
    save_best_weights,
    save_state,
)

TINY = TrainConfig(
    model="c3d",
    model_options={"width": 0.125, "head": "pooled"},
    clip=ClipConfig(size=32),
    classes=("a", "b", "c"),
)


def test_the_rule_picks_the_highest_score_the_later_epoch_on_ties_and_unscored_last():
    nan = float("nan")
    assert pick_best([(0.5, 0, "a"), (0.75, 1, "b"), (0.25, 2, "c")]) == "b"
    # Ties: the later epoch, wherever it stands in the list.
    assert pick_best([(0.75, 3, "late"), (0.75, 1, "early"), (0.5, 4, "x")]) == "late"
    assert pick_best([(0.75, 1, "early"), (0.75, 3, "late")]) == "late"
    # An epoch not scored (NaN, None) is below any score, a zero and a later epoch too...
    assert pick_best([(0.0, 0, "zero"), (nan, 5, "nan"), (None, 6, "none")]) == "zero"
    # ... and the later of unscored epochs when no epoch was scored.
    assert pick_best([(nan, 0, "first"), (None, 1, "second")]) == "second"
    with pytest.raises(ValueError):
        pick_best([])


def test_best_checkpoint_is_read_from_the_checkpoints(tmp_path):
    for i, score in enumerate([0.5, 0.75, 0.75, float("nan")]):
        d = tmp_path / f"checkpoint_{i}"
        d.mkdir()
        torch.save({"epoch": i, "metrics": {"val_video_top1": score}}, d / "state.pt")
    location, state = best_checkpoint_in(tmp_path)
    assert Path(location).name == "checkpoint_2" and state["epoch"] == 2  # the later tie
    # The same through a URI, as for results on s3://.
    assert best_checkpoint_in(f"file://{tmp_path}")[0] == f"file://{tmp_path}/checkpoint_2"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        best_checkpoint_in(tmp_path / "none")
    # The epoch Tune recorded as best, even where a later one scored higher: a trial the
    # budget stopped may or may not have saved its next epoch, as timing has it.
    # Epochs as runs report them, from 1; a checkpoint's state counts from 0.
    location, state = best_checkpoint_in(tmp_path, epoch=2)
    assert Path(location).name == "checkpoint_1" and state["epoch"] == 1
    with pytest.raises(FileNotFoundError, match="no checkpoint of epoch 7"):
        best_checkpoint_in(tmp_path, epoch=7)


class Folder:
    """A stand-in for a Ray Train checkpoint: a local folder."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    @contextmanager
    def as_directory(self):
        yield self.path


def test_the_best_checkpoint_of_a_train_result_and_its_weights(tmp_path):
    kept = []
    for epoch, score in enumerate([0.5, 0.75, 0.75, float("nan")]):
        d = tmp_path / f"checkpoint_{epoch}"
        d.mkdir()
        save_state(d, {"model": {"w": torch.full((2,), epoch + 1.0)}, "epoch": epoch})
        kept.append((Folder(d), {"epoch": epoch + 1, "val_video_top1": score}))
    result = SimpleNamespace(best_checkpoints=kept, checkpoint=kept[-1][0], path=str(tmp_path))
    assert best_checkpoint(result).path.endswith("checkpoint_2")  # the later tie
    best, state = save_best_weights(result, tmp_path / "weights.pt")
    assert best is kept[2][0] and state["epoch"] == 2
    assert torch.equal(
        torch.load(tmp_path / "weights.pt", weights_only=True)["w"], torch.full((2,), 3.0)
    )
    # Another metric; none ranked: the latest checkpoint; none at all: a clear error.
    assert best_checkpoint(result, "epoch") is kept[3][0]
    assert best_checkpoint(SimpleNamespace(best_checkpoints=[], checkpoint="c", path="p")) == "c"
    with pytest.raises(ValueError, match="the run at p reported no checkpoint"):
        best_checkpoint(SimpleNamespace(best_checkpoints=None, checkpoint=None, path="p"))


def test_a_checkpoint_reads_back_as_model_and_config_or_says_what_it_is_not(tmp_path):
    from raylab.models import build_model

    torch.manual_seed(0)
    model = build_model(TINY.model, TINY.num_classes, **TINY.model_options)
    folder = tmp_path / "checkpoint_000001"
    folder.mkdir()
    save_state(folder, {"model": model.state_dict(), "config": TINY.record(), "epoch": 0})
    assert set(load_state(folder)) == {"model", "config", "epoch"}
    assert read_state(folder)["epoch"] == 0 and read_state(f"file://{folder}")["epoch"] == 0
    for path in (folder, folder / STATE_FILE):
        loaded, config = load_checkpoint(path)
        assert config == TINY and not loaded.training
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    with pytest.raises(FileNotFoundError, match="pass a checkpoint folder of a training run"):
        load_checkpoint(tmp_path / "none")
    torch.save(model.state_dict(), tmp_path / "weights.pt")  # weights only: no config
    with pytest.raises(ValueError, match=r"weights.pt is not a checkpoint of a training run"):
        load_checkpoint(tmp_path / "weights.pt")


def test_weights_read_as_a_plain_state_dict(tmp_path):
    w = torch.ones(2)
    for name, saved in {
        "plain": {"fc.weight": w},
        "state": {"model": {"fc.weight": w}, "epoch": 3},  # a training checkpoint's state.pt
        "wrapped": {"state_dict": {"module.fc.weight": w}},  # DataParallel's, wrapped
    }.items():
        torch.save(saved, tmp_path / f"{name}.pt")
        assert list(read_weights(tmp_path / f"{name}.pt")) == ["fc.weight"], name
