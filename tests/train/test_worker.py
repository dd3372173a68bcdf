"""The per-worker scaffold both training loops share, without a cluster: what rank 0 writes at
the end of an epoch, what a resume reads back, the progress files, wrappers and autocast."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from tensorboardX.proto.event_pb2 import Event

from raylab.config import TrainConfig
from raylab.train.checkpoints import load_state
from raylab.train.worker import (
    EpochReporter,
    append_history,
    autocast,
    on_cuda,
    unwrap,
    write_progress,
)


def scalars(folder: Path) -> dict[tuple[str, int], float]:
    """(tag, step) -> value of every scalar in the TensorBoard event files of ``folder``
    (TFRecord: length, its CRC, the event, its CRC)."""
    out = {}
    for path in folder.glob("events.out.tfevents.*"):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = Event.FromString(data[i + 12 : i + 12 + n])
            i += 12 + n + 4
            for value in event.summary.value:
                out[value.tag, event.step] = value.simple_value
    return out


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_rank_0_logs_an_epoch_as_a_line_and_scalars_at_its_epoch(tmp_path, capsys):
    run = tmp_path / "run"
    reporter = EpochReporter(TrainConfig().record(), str(run), rank=0)
    metrics = {"epoch": 2, "train_loss": 0.5, "train_clips": 24, "lr": 1e-3, "note": "text"}
    reporter.log(metrics, "epoch 2/3  loss 0.500")
    reporter.close()
    assert capsys.readouterr().out == "epoch 2/3  loss 0.500\n"
    # Every number but the epoch (the step), nothing else.
    assert scalars(run / "tensorboard") == pytest.approx(
        {("train_loss", 2): 0.5, ("train_clips", 2): 24.0, ("lr", 2): 1e-3}
    )
    # Other ranks and runs without a folder open no writer.
    assert EpochReporter(TrainConfig().record(), str(run), rank=1).writer is None
    assert EpochReporter(TrainConfig().record(), None, rank=0).writer is None


def test_a_saved_epoch_holds_every_part_and_its_record(tmp_path):
    run = tmp_path / "run"
    # A Path and tuples in the config: the checkpoint keeps them as text and lists, which
    # torch.load(weights_only=True) can read back.
    config = {"init_from": tmp_path / "w.pt", "mean": (0.45, 0.45, 0.45), "epochs": 6}
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    metrics = {"epoch": 5, "train_loss": 0.25}

    def state(epoch: int) -> dict:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "sampler": {"next_epoch": epoch + 1},
        }

    environment = {"torch": "2.13.0", "threads_per_worker": 1}
    EpochReporter(config, str(run), rank=0, environment=environment).save(
        tmp_path, 4, metrics, state
    )
    saved = load_state(tmp_path)
    assert saved["environment"] == environment
    assert saved["epoch"] == 4 and saved["metrics"] == metrics
    assert saved["sampler"] == {"next_epoch": 5}
    assert saved["config"]["init_from"] == str(tmp_path / "w.pt")
    assert saved["config"]["mean"] == [0.45, 0.45, 0.45]

    # The state loads back into fresh parts: weights, the optimiser's moments, the schedule.
    fresh = torch.nn.Linear(3, 2)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    fresh_scheduler = torch.optim.lr_scheduler.LambdaLR(fresh_optimizer, lambda step: 0.5**step)
    parts = {"model": fresh, "optimizer": fresh_optimizer, "scheduler": fresh_scheduler}
    for name, part in parts.items():
        part.load_state_dict(saved[name])
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)
    moment = optimizer.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(fresh_optimizer.state_dict()["state"][0]["exp_avg"], moment)
    assert fresh_scheduler.last_epoch == 1 and fresh_optimizer.param_groups[0]["lr"] == 0.05


def test_history_appends_a_line_per_record_only_with_a_run_folder(tmp_path):
    run = tmp_path / "new" / "run"  # made on the first record
    append_history(str(run), {"event": "epoch", "epoch": 1})
    append_history(str(run), {"event": "epoch", "epoch": 2})
    assert history(run) == [{"event": "epoch", "epoch": 1}, {"event": "epoch", "epoch": 2}]
    append_history(None, {"event": "epoch", "epoch": 3})  # nowhere, no error


def test_progress_file_holds_epoch_step_and_pid_of_its_rank(tmp_path):
    write_progress(str(tmp_path), 1, 3)
    write_progress(str(tmp_path), 1, 3, step=7)
    write_progress(str(tmp_path), 0, 2)
    assert (tmp_path / "progress" / "rank-1").read_text() == f"3 7 {os.getpid()}\n"
    assert (tmp_path / "progress" / "rank-0").read_text() == f"2 0 {os.getpid()}\n"
    write_progress(None, 0, 1)


# torch.compile's import warns about TorchScript, which it does not use here.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_unwrap_finds_the_module_inside_data_parallel_and_compile():
    model = torch.nn.Linear(2, 2)
    assert unwrap(model) is model
    assert unwrap(torch.compile(model)) is model
    assert unwrap(torch.compile(torch.nn.DataParallel(model))) is model


def test_amp_auto_is_bf16_on_cuda_only():
    cpu = torch.device("cpu")
    assert not on_cuda("auto", cpu) and on_cuda("auto", torch.device("cuda"))
    assert on_cuda(True, cpu) and not on_cuda(False, torch.device("cuda"))
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with autocast("auto", cpu):
        assert layer(x).dtype == torch.float32
    with autocast(True, cpu):
        assert layer(x).dtype == torch.bfloat16
