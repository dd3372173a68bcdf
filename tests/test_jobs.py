"""raylab.jobs: flags made from the config dataclasses, and back."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field, fields

import pytest

from jobs import train as train_job
from raylab.config import ClipConfig, TrainConfig
from raylab.infer.batch import InferenceResources
from raylab.jobs import (
    add_config_flags,
    add_inference_flags,
    config_from_flags,
    flag_kind,
    inference_resources,
)


@dataclass(frozen=True)
class Inner:
    x: int = 1


@dataclass(frozen=True)
class Settings:
    count: int = 3
    rate: float = field(default=0.5, metadata={"help": "how fast, in %"})
    mode: str = field(default="a", metadata={"help": "the mode", "choices": ("a", "b")})
    limit: int | None = None
    on: bool = False
    kept: bool = True
    scales: tuple[float, ...] = (1.0, 0.5)
    auto: str | bool = "auto"
    extra: dict = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)
    names: tuple[str, ...] = ()


def parser_for(config, **kw) -> tuple[argparse.ArgumentParser, dict]:
    p = argparse.ArgumentParser()
    return p, add_config_flags(p, config, **kw)


def test_a_flag_per_field_by_its_type():
    p, flags = parser_for(Settings)
    # What no flag can say is left out: a dict, a nested dataclass, words.
    assert list(flags) == ["count", "rate", "mode", "limit", "on", "kept", "scales", "auto"]
    assert config_from_flags(Settings, p.parse_args([])) == Settings()
    args = p.parse_args(
        ["--count", "4", "--rate", "0.25", "--mode", "b", "--limit", "7", "--on", "--no-kept"]
        + ["--scales", "1", "0.75", "0.5", "--auto", "false"]
    )
    back = config_from_flags(Settings, args, names=("z",))
    assert back == Settings(4, 0.25, "b", 7, True, False, (1.0, 0.75, 0.5), False, names=("z",))
    for bad in (["--mode", "c"], ["--auto", "maybe"], ["--count", "x"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)
    text = p.format_help()
    assert "how fast, in % (default: 0.5)" in text and "the mode (default: a)" in text


def test_renamed_chosen_and_defaulted_flags():
    p, flags = parser_for(
        Settings(count=9),  # an instance: its values are the defaults
        only=("scales", "count", "names"),
        names={"count": "--n"},
        defaults={"scales": None},
        notes={"scales": "default: none"},
    )
    assert flags == {"scales": "--scales", "count": "--n", "names": "--names"}
    args = p.parse_args(["--names", "p", "q"])
    assert (args.count, args.scales, args.names) == (9, None, ["p", "q"])
    assert config_from_flags(Settings(rate=0.1), args).names == ("p", "q")
    assert config_from_flags(Settings(rate=0.1), args).rate == 0.1
    with pytest.raises(TypeError, match="Settings.extra"):
        parser_for(Settings, only=("extra",))
    with pytest.raises(ValueError, match="no setting nope"):
        parser_for(Settings, skip=("nope",))
    assert flag_kind(dict) is None and flag_kind(bool | None) is None


@dataclass(frozen=True)
class WiderClip(ClipConfig):
    jitter: float = field(default=0.0, metadata={"help": "colour jitter strength"})


@dataclass(frozen=True)
class WiderRun(TrainConfig):
    ema: float = field(default=0.0, metadata={"help": "weight EMA decay; 0: none"})


def test_a_new_setting_is_a_flag_of_the_train_job(monkeypatch, tmp_path, capsys):
    """A field added to ClipConfig or TrainConfig is a flag of jobs/train.py, refused with
    --config and carried into the run's config, with no edit to the job."""
    monkeypatch.setattr(train_job, "ClipConfig", WiderClip)
    monkeypatch.setattr(train_job, "TrainConfig", WiderRun)
    with pytest.raises(SystemExit):
        train_job.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--jitter JITTER" in text and "colour jitter strength (default: 0.0)" in text
    assert "--ema EMA" in text and "weight EMA decay; 0: none" in text
    flags = ["--data", "d", "--model", "c3d", "--out", "o"]
    args = train_job.parse_args([*flags, "--jitter", "0.3", "--ema", "0.99", "--val-clips", "2"])
    config = train_job.train_config(args)
    assert isinstance(config, WiderRun) and isinstance(config.clip, WiderClip)
    assert (config.ema, config.clip.jitter, config.clip.test_clips) == (0.99, 0.3, 2)
    default = train_job.train_config(train_job.parse_args(flags))
    assert (default.ema, default.clip.jitter) == (0.0, 0.0)
    record = tmp_path / "config.json"
    record.write_text(json.dumps(TrainConfig().record()))
    for flag in (["--ema", "0.5"], ["--jitter", "0.5"], ["--val-crops", "3"], ["--lr", "1"]):
        with pytest.raises(SystemExit):
            train_job.parse_args(["--data", "d", "--out", "o", "--config", str(record), *flag])
    assert f"leave out {flag[0]}" in capsys.readouterr().err


@pytest.mark.parametrize("cls", [ClipConfig, TrainConfig, InferenceResources])
def test_every_setting_says_what_it_is(cls):
    """The help of a setting is its field's metadata: every field has one."""
    assert [f.name for f in fields(cls) if not f.metadata.get("help")] == []


def test_inference_flags_make_the_resources():
    p = argparse.ArgumentParser()
    add_inference_flags(p)
    p.add_argument("--batch-size", type=int, default=4)
    assert inference_resources(p.parse_args([])) == InferenceResources(
        batch_size=4, decoder_cpus=0.5, predictor_cpus=0.5
    )
    args = p.parse_args(["--gpu", "--predictors", "2", "--decoder-cpus", "2"])
    assert inference_resources(args) == InferenceResources(
        predictors=2, use_gpu=True, batch_size=4, decoder_cpus=2, predictor_cpus=0.5
    )


def test_a_jobs_result_line_comes_after_ray_is_shut_down(ray_session, tmp_path):
    """print_result shuts down the Ray a job joined before it prints the job's JSON line, so
    no message of Ray's can follow it."""
    import subprocess
    import sys

    script = tmp_path / "job.py"
    script.write_text(
        "import ray\n"
        "from raylab.jobs import print_result, start_ray\n"
        "start_ray()\n"
        "print_result({'ray_up_before': ray.is_initialized()})\n"
        "print('ray up after:', ray.is_initialized())\n"
    )
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert json.loads(lines[-2]) == {"ray_up_before": True}
    assert lines[-1] == "ray up after: False"


def test_clips_longer_than_some_videos_are_said_and_a_missing_rendition_ends_the_job(
    tiny_shards, capsys
):
    """Videos shorter than a clip are looped by the sampler: the job says how many, per
    split; frames larger than every stored rendition end it, before Ray starts."""
    from raylab.data.clips import ClipConfig
    from raylab.data.storage import Shards
    from raylab.jobs import check_clips

    shards = Shards.open(tiny_shards)  # train: 20-70 frames; val: 33 and 44; rendition 32
    fits = ClipConfig(frames=20, size=16)
    assert check_clips("train", shards, fits, ["train", "val", "train"]) is shards
    assert capsys.readouterr().err == ""
    check_clips("train", shards, ClipConfig(frames=12, stride=4, size=16), ["train", "val"])
    assert capsys.readouterr().err.splitlines() == [
        "train: 4 of 8 'train' videos are shorter than a clip's 45 frames (longest 70); "
        "each of those is looped to fill it",
        "train: 2 of 2 'val' videos are shorter than a clip's 45 frames (longest 44); "
        "each of those is looped to fill it",
    ]
    with pytest.raises(ValueError, match="short side 37 need a rendition of at least"):
        check_clips("train", shards, ClipConfig(frames=8, size=32), ["train"])


def test_ray_notices_go_to_the_log_file_not_the_console(tmp_path):
    """A driver started with start_ray (Ray's logs routed, progress bars off, a node that
    keeps CPUs + SPARE_IDLE_WORKERS idle processes) runs a dataset with its map on an actor
    pool (as evaluation's): Ray's INFO lines, the progress-bar notice and the core worker's
    own line about the pool's actor (C++, written to the process's stderr) are in the file
    only; the driver's own stderr lines and its warnings reach the console."""
    import subprocess
    import sys

    from raylab.jobs import IDLE_WORKERS_SETTING, SPARE_IDLE_WORKERS

    log = tmp_path / "driver.log"
    script = f"""
import ray
from raylab.jobs import start_ray
start_ray(log_file={str(log)!r}, address="local", num_cpus=1, include_dashboard=False)
raylet = ray._private.worker.global_worker.node.all_processes["raylet"][0].process.pid
with open(f"/proc/{{raylet}}/environ", "rb") as f:
    print(*sorted(v.decode() for v in f.read().split(b"\\0") if v.startswith(b"RAY_num")))
class Same:
    def __call__(self, batch):
        return batch
pool = ray.data.ActorPoolStrategy(size=1)
print(ray.data.range(10).map_batches(Same, compute=pool).count())
import logging, sys
print("the driver's own line", file=sys.stderr)
logging.getLogger("ray.data").warning("a warning of Ray's")
"""
    # The node start_ray starts keeps CPUs + SPARE_IDLE_WORKERS idle processes (this
    # session's own setting left out of the job's environment).
    env = {k: v for k, v in os.environ.items() if k != IDLE_WORKERS_SETTING}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    spare = os.cpu_count() + SPARE_IDLE_WORKERS
    assert done.stdout.split() == [f"{IDLE_WORKERS_SETTING}={spare}", "10"]
    text = log.read_text()
    in_file = ("Starting execution of Dataset", "Progress bars disabled", "core_worker.cc")
    for line in in_file:
        assert line in text and line not in done.stderr, (line, done.stderr[-2000:])
    for line in ("the driver's own line", "WARNING", "a warning of Ray's"):
        assert line in done.stderr, (line, done.stderr[-2000:])


def test_a_ray_node_a_job_starts_keeps_idle_workers_beyond_its_cpus(monkeypatch):
    """A node start_ray starts keeps CPUs + SPARE_IDLE_WORKERS idle worker processes (a run's
    head-start decoder among them); a setting the environment already has is kept."""
    from raylab.jobs import IDLE_WORKERS_SETTING, SPARE_IDLE_WORKERS, ray_node_environment

    monkeypatch.delenv(IDLE_WORKERS_SETTING, raising=False)
    ray_node_environment()
    assert int(os.environ[IDLE_WORKERS_SETTING]) == os.cpu_count() + SPARE_IDLE_WORKERS
    monkeypatch.setenv(IDLE_WORKERS_SETTING, "3")
    ray_node_environment()
    assert os.environ[IDLE_WORKERS_SETTING] == "3"
