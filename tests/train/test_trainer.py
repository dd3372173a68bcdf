"""Ray Train runs of a tiny network on real demo shards: workers, failures, resuming."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from raylab.config import ClipConfig, TrainConfig
from raylab.data.storage import load_manifest
from raylab.metrics import TIMED
from raylab.train.trainer import DataOptions, build_trainer, check_model

TINY = TrainConfig(
    model="c3d",
    model_options={"width": 0.125, "head": "pooled"},
    clip=ClipConfig(size=32),
    lr=3e-3,
    warmup_epochs=0,
)


def _data(shards: Path, **kw) -> DataOptions:
    return DataOptions(shards=str(shards), decoder_cpus=0.5, **kw)


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def _fit(shards: Path, root: Path, name: str, **config):
    trainer = build_trainer(
        replace(TINY, **config),
        _data(shards),
        storage_path=root,
        name=name,
        cpus_per_worker=0.5,
    )
    return trainer.fit()


def test_a_bad_model_or_clip_fails_on_the_driver(demo_shards):
    with pytest.raises(ValueError, match="needs T >= 16"):
        check_model(replace(TINY, clip=ClipConfig(frames=8, size=32)))
    with pytest.raises(ValueError, match="unknown model 'c4d'"):
        build_trainer(replace(TINY, model="c4d"), _data(demo_shards), storage_path="/tmp", name="x")
    with pytest.raises(ValueError, match="are not those of"):
        wrong = replace(TINY, classes=("a", "b"))
        build_trainer(wrong, _data(demo_shards), storage_path="/tmp", name="x")


def test_a_checked_run_builds_its_trainer_without_torch_dynamo(demo_shards, tmp_path):
    """A search trial's model was run on its clip by the search's driver: its trainer is
    built without the meta pass that would import torch._dynamo (a second of its start)."""
    import subprocess
    import sys

    program = f"""
import sys
from raylab.config import ClipConfig, TrainConfig
from raylab.train.trainer import DataOptions, build_trainer
config = TrainConfig(model="c3d", model_options={{"width": 0.125, "head": "pooled"}}, clip=ClipConfig(size=32))
data = DataOptions(shards={str(demo_shards)!r})
for checked in (True, False):
    build_trainer(config, data, storage_path={str(tmp_path)!r}, name="x", checked=checked)
    print("torch._dynamo" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]


def test_one_builder_sets_backend_workers_and_the_checkpoints_kept(tmp_path):
    """Training and transfer get their trainers from ``torch_trainer``: a CPU build of torch
    uses gloo even where GPUs are asked for (NCCL needs a CUDA build); every worker asks
    for its CPUs and a GPU; the best checkpoints by the given metric are kept."""
    import ray.train

    from raylab.train.trainer import torch_trainer

    def loop(config: dict) -> None:
        pass

    trainer = torch_trainer(
        loop,
        {"lr": 0.1},
        {},
        storage_path=tmp_path,
        name="run",
        workers=2,
        use_gpu=True,
        cpus_per_worker=0.5,
        max_failures=3,
        keep_checkpoints=4,
        metric="correspondence_accuracy",
    )
    assert trainer.train_loop_config == {"lr": 0.1}
    assert trainer.backend_config.backend == (
        "nccl" if torch.distributed.is_nccl_available() else "gloo"
    )
    assert trainer.scaling_config.num_workers == 2 and trainer.scaling_config.use_gpu
    assert trainer.scaling_config.resources_per_worker == {"CPU": 0.5, "GPU": 1}
    run = trainer.run_config
    assert (run.name, run.storage_path) == ("run", str(tmp_path))
    assert run.failure_config.max_failures == 3
    assert run.checkpoint_config == ray.train.CheckpointConfig(
        num_to_keep=4,
        checkpoint_score_attribute="correspondence_accuracy",
        checkpoint_score_order="max",
    )
    cpu = torch_trainer(loop, {}, {}, storage_path=tmp_path, name="cpu", cpus_per_worker=2)
    assert cpu.backend_config.backend == "gloo"
    assert cpu.scaling_config.resources_per_worker == {"CPU": 2}


def _epochs(run: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in TIMED}
        for r in _history(run)
        if r["event"] == "epoch"
    ]


def _steps(run: Path, rank: int = 0) -> dict[tuple[int, int], list[str]]:
    """(epoch, step) -> the video ids it trained on, as the run logged them; a step done
    again after a resume counts as its last line says."""
    lines = (run / "steps" / f"rank-{rank}.jsonl").read_text().splitlines()
    return {(r["epoch"], r["step"]): r["videos"] for r in map(json.loads, lines)}


def _epoch_ids(steps: dict, epoch: int) -> list[str]:
    return [v for (e, _), ids in sorted(steps.items()) if e == epoch for v in ids]


def _plan_ids(
    shards: Path, seed: int, epoch: int, window: int, rank: int = 0, world: int = 1
) -> list[str]:
    """The video ids of rank ``rank``'s plan of an epoch among ``world`` workers, read from
    the shards themselves."""
    import pyarrow.parquet as pq

    from raylab.data.pipeline import row_groups
    from raylab.data.plan import train_plan

    groups = row_groups(shards, "train")
    ids = [
        pq.ParquetFile(g["file"]).read_row_group(g["row_group"], columns=["video_id"])
        for g in groups
    ]
    plan = train_plan(
        [g["rows"] for g in groups], seed=seed, epoch=epoch, rank=rank, world=world, window=window
    )
    return [str(ids[s.group].column(0)[s.row]) for s in plan]


@pytest.fixture(scope="module")
def seeded_runs(demo_shards, ray_session, tmp_path_factory) -> dict:
    """Tiny runs of one recipe: twice with seed 1 (the second killed mid-epoch) and once
    with seed 2, which is then run again for one more epoch; every step's video ids
    logged."""
    root = tmp_path_factory.mktemp("seeded")
    recipe = {"epochs": 2, "batch_size": 2, "seed": 1}

    def fit(name: str, **config):
        trainer = build_trainer(
            replace(TINY, **(recipe | config)),
            _data(demo_shards),
            storage_path=root,
            name=name,
            cpus_per_worker=0.5,
            log_steps=True,
        )
        return trainer.fit()

    runs = {"root": root, "once": fit("once")}
    # The same run again, checkpointing every 3 steps, its worker killed in epoch 2 right
    # after the epoch's first mid-epoch checkpoint: the event the run writes, not a sleep.
    killed: list[dict] = []

    def kill_after_the_checkpoint() -> None:
        marker = root / "killed" / "mid_epoch" / "latest.json"
        progress = root / "killed" / "progress" / "rank-0"
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            try:
                latest = json.loads(marker.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                latest = {}
            if latest.get("epoch") == 1:  # 0-based: the second epoch
                _, step, pid = map(int, progress.read_text().split())
                os.kill(pid, signal.SIGKILL)
                killed.append(latest | {"at_step": step})
            time.sleep(0.002)

    watcher = threading.Thread(target=kill_after_the_checkpoint, daemon=True)
    watcher.start()
    runs["killed"] = fit("killed", checkpoint_every=3)
    watcher.join(timeout=5)
    runs["kills"] = killed
    runs["other_seed"] = fit("other_seed", seed=2)
    runs["other_seed_again"] = fit("other_seed", seed=2, epochs=3)
    return runs


def test_the_same_seed_trains_the_same_run_and_another_seed_another(seeded_runs):
    root = seeded_runs["root"]
    assert seeded_runs["once"].error is None and seeded_runs["other_seed"].error is None
    once, other = _epochs(root / "once"), _epochs(root / "other_seed")[:2]  # then a third
    assert [r["epoch"] for r in once] == [1, 2] == [r["epoch"] for r in other]
    # Every training and validation figure of every epoch, and the clips of every step.
    assert _epochs(root / "killed") == once
    assert _steps(root / "killed") == _steps(root / "once")
    assert [r["train_loss"] for r in other] != [r["train_loss"] for r in once]
    other_steps = {k: v for k, v in _steps(root / "other_seed").items() if k[0] <= 2}
    assert other_steps.keys() == _steps(root / "once").keys()
    assert other_steps != _steps(root / "once")
    # The run records what else decides its numbers.
    started = [r for r in _history(root / "once") if r["event"] == "started"]
    assert len(started) == 1 and started[0]["environment"]["threads_per_worker"] >= 1
    assert started[0]["environment"]["cpu_capability"]  # the vector unit: AVX512, AVX2, ...
    assert started[0]["environment"]["seed_drawn"] is False
    # And where its start went: each point of the first epoch once, in the order reached,
    # the last after the first epoch's line; the killed run's resumption records none.
    startup = [r for r in _history(root / "once") if r["event"] == "startup"]
    assert len(startup) == 1, startup
    points = startup[0]["seconds"]
    order = ["worker_process", "loop_entered", "model_ready", "first_batch", "first_step"]
    order += ["trained", "validated", "reported"]
    assert list(points) == order
    assert [points[p] for p in order] == sorted(points.values()) and points["worker_process"] > 0
    first_epoch = next(r for r in _history(root / "once") if r["event"] == "epoch")
    assert first_epoch["at"] <= startup[0]["started_at"] + points["reported"]
    assert len([r for r in _history(root / "killed") if r["event"] == "startup"]) == 1


def test_a_worker_killed_mid_epoch_trains_exactly_the_clips_it_had_not(seeded_runs, demo_shards):
    root, result = seeded_runs["root"], seeded_runs["killed"]
    assert seeded_runs["kills"], "the worker was never killed after a mid-epoch checkpoint"
    kill = seeded_runs["kills"][0]
    assert result.error is None and result.metrics["epoch"] == 2
    history = _history(root / "killed")
    # It resumed inside epoch 2, after the checkpoint's step, not from the epoch's start.
    resumed = [r for r in history if r["event"] == "resumed"]
    assert resumed == [{"event": "resumed", "from_epoch": 1, "step": kill["step"]}]
    assert kill["at_step"] < 12  # killed before its 12-step epoch ended
    # Whole epochs reported, each once: mid-epoch checkpoints are not epochs.
    assert [r["epoch"] for r in history if r["event"] == "epoch"] == [1, 2]
    # The steps of each epoch, as they counted, trained the plan's clips in the plan's
    # order: none twice, none skipped.
    steps = _steps(root / "killed")
    for epoch in (1, 2):
        trained = _epoch_ids(steps, epoch)
        assert trained == _plan_ids(demo_shards, seed=1, epoch=epoch - 1, window=64)
        assert len(set(trained)) == len(trained)
    # Logged twice: only the steps done between the checkpoint and the kill.
    lines = (root / "killed" / "steps" / "rank-0.jsonl").read_text().splitlines()
    assert 0 <= len(lines) - len(steps) <= kill["at_step"] - kill["step"] + 1


@pytest.fixture(scope="module")
def worker_runs(colour_shards, s3_store, ray_session, tmp_path_factory) -> dict:
    """One recipe that learns (the colour set, batch-normed C3D; the learning rate a tenth
    for the last epoch) on one worker with 8 videos a step and on two with 4 each, 5
    epochs; and the two-worker run again for its first epoch, which a step schedule (unlike
    a cosine over the run's epochs) makes the same epoch: stored on s3://, from a working
    directory of its own, where a run on a URI must write nothing."""
    root = tmp_path_factory.mktemp("workers")
    recipe = replace(
        TINY,
        model_options={"width": 0.125, "head": "pooled", "batch_norm": True, "dropout": 0.0},
        classes=(),
        epochs=5,
        schedule="step",
        step_epochs=4,
        seed=1,
    )

    def fit(name: str, storage_path: str | Path = root, **config):
        trainer = build_trainer(
            replace(recipe, **config),
            _data(colour_shards),
            storage_path=storage_path,
            name=name,
            cpus_per_worker=0.5,
            log_steps=True,
        )
        return trainer.fit()

    runs = {
        "root": root,
        "one": fit("one", batch_size=8),
        "two": fit("two", workers=2, batch_size=4),
        "s3": f"{s3_store}/runs/two_again",
        "cwd": tmp_path_factory.mktemp("cwd"),
        "again_config": replace(recipe, workers=2, batch_size=4, epochs=1),
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(runs["cwd"])  # where a folder named after the URI would appear
        runs["two_again"] = fit("two_again", f"{s3_store}/runs", workers=2, batch_size=4, epochs=1)
    return runs


def _stored_lines(location: str) -> list[dict]:
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(location)
    with fs.open_input_stream(path) as f:
        return [json.loads(line) for line in f.read().decode().splitlines()]


def test_two_workers_take_the_same_clips_every_run(worker_runs, colour_shards):
    root = worker_runs["root"]
    assert worker_runs["two"].error is None and worker_runs["two_again"].error is None
    # The same seed again (stored on s3://): every figure of its epoch.
    history = _stored_lines(f"{worker_runs['s3']}/history.jsonl")
    again = [
        {k: v for k, v in r.items() if k not in TIMED} for r in history if r["event"] == "epoch"
    ]
    assert [r["epoch"] for r in again] == [1] and again == _epochs(root / "two")[:1]
    # Each rank trains its plan, a function of seed, epoch and rank (as DistributedSampler's
    # order is), in the plan's order; together the ranks take every training video once.
    for epoch in range(1, 6):
        ranks = [_epoch_ids(_steps(root / "two", rank), epoch) for rank in (0, 1)]
        for rank, trained in enumerate(ranks):
            assert trained == _plan_ids(colour_shards, 1, epoch - 1, 64, rank, world=2), rank
        assert ranks[0] != ranks[1]
        plan = _plan_ids(colour_shards, seed=1, epoch=epoch - 1, window=64)
        assert sorted(ranks[0] + ranks[1]) == sorted(plan) == sorted(set(plan))


def test_two_workers_learn_like_one(worker_runs, colour_shards):
    """Gradients averaged over two workers of 4 videos train as one worker's batch of 8:
    both runs leave chance (ln 4 = 1.39; top-1 0.25) behind. Measured (deterministic): train
    loss 1.29 -> 0.91 and 1.31 -> 0.72, val top-1 0.69 and 1.0 of 16 test videos."""
    root = worker_runs["root"]
    assert worker_runs["one"].error is None
    chance = math.log(len(load_manifest(colour_shards)["classes"]))
    for name in ("one", "two"):
        epochs = _epochs(root / name)
        losses = [r["train_loss"] for r in epochs]
        assert [r["epoch"] for r in epochs] == [1, 2, 3, 4, 5]
        assert losses[-1] < 0.75 * chance and losses[-1] < losses[0], (name, losses)
        assert epochs[-1]["val_video_top1"] >= 0.625, (name, epochs[-1])
        # The video scores' cross-entropy, which the search's ASHA rungs compare.
        assert epochs[-1]["val_loss"] < min(0.6 * chance, epochs[0]["val_loss"]), (name, epochs)
    # The same number of clips per epoch, split over the workers.
    assert [r["train_clips"] for r in _epochs(root / "one")] == [
        r["train_clips"] for r in _epochs(root / "two")
    ]


def test_the_best_checkpoint_is_kept_and_its_weights_saved(ray_session, tmp_path):
    """Scores 0.5, 0.75, 0.25, 0.4: the best (epoch 2) is neither the latest nor one of
    the latest two, so a run that kept only recent checkpoints, or picked the latest,
    would lose it. The run config of every training run is used as it is."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from raylab.train.checkpoints import save_best_weights
    from raylab.train.trainer import run_config

    def report_scores(config: dict) -> None:
        # Defined here so that it travels to the worker by value. Epoch i reports
        # config["scores"][i] and a checkpoint whose weights are a tensor of i + 1.
        import tempfile

        for epoch, score in enumerate(config["scores"]):
            metrics = {"epoch": epoch + 1, "val_video_top1": score}
            with tempfile.TemporaryDirectory() as d:
                state = {"model": {"w": torch.full((3,), epoch + 1.0)}, "epoch": epoch}
                torch.save(state | {"metrics": metrics}, Path(d) / "state.pt")
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    trainer = TorchTrainer(
        report_scores,
        train_loop_config={"scores": [0.5, 0.75, 0.25, 0.4]},
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
        run_config=run_config(storage_path=tmp_path, name="scores", keep_checkpoints=2),
    )
    result = trainer.fit()
    assert result.error is None
    kept = sorted(
        torch.load(p, weights_only=True)["epoch"] + 1
        for p in (tmp_path / "scores").glob("checkpoint_*/state.pt")
    )
    assert kept == [1, 2, 4]  # the best two by score (0.75, 0.5) and the latest; not 3
    best, state = save_best_weights(result, tmp_path / "weights.pt")
    assert state["epoch"] + 1 == 2 and state["metrics"]["val_video_top1"] == 0.75
    saved = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert set(saved) == {"w"} and torch.equal(saved["w"], torch.full((3,), 2.0))


def test_rerunning_the_same_run_resumes_and_keeps_the_best(seeded_runs, demo_shards):
    """The seed-2 run of two epochs run again with three: it resumes after its second epoch,
    trains the third, and keeps the best epoch's checkpoint, which holds the run whole."""
    root, second = seeded_runs["root"], seeded_runs["other_seed_again"]
    assert second.error is None and second.metrics["epoch"] == 3
    history = _history(root / "other_seed")
    assert [r["epoch"] for r in history if r["event"] == "epoch"] == [1, 2, 3]
    assert {"event": "resumed", "from_epoch": 2} in history
    from raylab.train.checkpoints import best_checkpoint

    best = best_checkpoint(second)
    with best.as_directory() as d:
        state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
    scores = [r["val_video_top1"] for r in history if r["event"] == "epoch"]
    assert state["metrics"]["val_video_top1"] == max(scores)
    assert set(state) >= {"model", "optimizer", "scheduler", "epoch", "sampler", "config"}
    # The checkpoint keeps the run whole: the config it rebuilds is the one trained, and so
    # are the clips evaluation cuts from it.
    from raylab.infer.evaluate import evaluation_clip

    classes = load_manifest(demo_shards)["classes"]
    trained = replace(TINY, epochs=3, batch_size=2, seed=2, classes=classes)
    assert TrainConfig.from_record(state["config"]) == trained
    assert evaluation_clip(TrainConfig.from_record(state["config"])) == trained.clip


def test_a_damaged_video_fails_only_its_sample(damaged_shards, ray_session, tmp_path):
    """Damaged: one training and one validation video's bytes in the shards (after ingest).
    Checked after 2 epochs with 2 workers, tolerating up to 20% lost (one of the 8 validation
    videos is 12.5%, over the default 5%): the run finishes; every epoch counts exactly one
    lost training and one lost validation video in its metrics and trains / evaluates on all
    the others; a decoder's log names the damaged videos."""
    import ray

    shards, damaged = damaged_shards
    splits = load_manifest(shards)["splits"]
    # The session's worker logs already hold earlier tests' lines (the same damaged videos
    # are decoded elsewhere): only what is written from here on counts.
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    start = {p: p.stat().st_size for p in logs.glob("worker-*.err")}
    result = _fit(
        shards, tmp_path, "damaged", workers=2, epochs=2, batch_size=4, max_decode_failures=0.2
    )
    assert result.error is None and result.metrics["epoch"] == 2
    epochs = [r for r in _history(tmp_path / "damaged") if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    for r in epochs:
        assert r["decode_failures"] == 1 and r["val_decode_failures"] == 1
        assert r["train_clips"] == splits["train"] - 1
        assert r["val_videos"] == splits["val"] - 1
    text = "\n".join(new_text(p, start.get(p, 0)) for p in logs.glob("worker-*.err"))
    for video_id in damaged.values():
        assert f"skipping video {video_id}: cannot decode its clip" in text


def test_a_run_stored_on_s3_writes_no_local_files(worker_runs, colour_shards):
    """Checkpoints on s3:// go there through Ray Train, and the run's record beside them
    (config.json, as `jobs/train.py --config` trains it again, and history.jsonl); the
    files that need a local folder (TensorBoard, progress, step logs) are not written,
    rather than written to one named after the URI (``s3:/...``) in the working directory."""
    import pyarrow.fs

    location, result = worker_runs["s3"], worker_runs["two_again"]
    assert result.error is None and result.metrics["epoch"] == 1
    assert result.checkpoint.path.startswith(location.removeprefix("s3://") + "/")
    fs, root = pyarrow.fs.FileSystem.from_uri(location)
    stored = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    assert any(i.base_name == "state.pt" for i in stored), [i.path for i in stored]
    with fs.open_input_stream(f"{root}/config.json") as f:
        assert TrainConfig.from_record(json.loads(f.read())) == replace(
            worker_runs["again_config"], classes=load_manifest(colour_shards)["classes"]
        )
    events = [r["event"] for r in _stored_lines(f"{location}/history.jsonl")]
    assert events == ["started", "epoch", "startup"], events
    assert list(worker_runs["cwd"].iterdir()) == []  # nothing written here


def new_text(path: Path, offset: int) -> str:
    """What was written to ``path`` after its first ``offset`` bytes."""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")
