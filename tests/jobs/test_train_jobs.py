"""jobs/train.py then jobs/evaluate.py, chained through their last JSON lines."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jobs import train as train_job
from raylab.data.decode import TSN_SCALES
from raylab.data.storage import load_manifest
from raylab.models import build_model


def test_train_flags_reach_the_clips_it_trains_on():
    """What the job hands the trainer (whose datasets cut ``config.clip``), not the config
    it echoes back."""
    job = train_job
    flags = ["--data", "shards", "--model", "c3d", "--out", "run", "--size", "32"]
    args = job.parse_args([*flags, "--crop-scales", "1.0", "0.875", "--flip", "--workers", "2"])
    config = job.train_config(args)
    assert config.clip.crop_scales == (1.0, 0.875) and config.clip.flip and config.clip.size == 32
    assert config.workers == 2
    assert job.data_options(args).shards == str(Path("shards").resolve())
    assert config.clip.scheme == "dense"  # C3D's own sampling, from its contract
    default = job.train_config(job.parse_args(flags)).clip
    assert default.crop_scales == tuple(TSN_SCALES) and not default.flip
    tsn = job.train_config(job.parse_args([*flags[:3], "tsn", *flags[4:]]))
    assert tsn.clip.scheme == "segments"
    # The seed: an integer by default, "none" for one drawn at the start (see below).
    assert (
        job.train_config(args).seed == 0 and job.parse_args([*flags, "--seed", "none"]).seed is None
    )
    resumable = job.train_config(job.parse_args([*flags, "--checkpoint-every", "5"]))
    assert resumable.checkpoint_every == 5 and not resumable.deterministic


def test_train_then_evaluate_multi_view(s3_shards, job_process, tmp_path):
    """Both jobs read their shards from s3:// (a real S3 endpoint, configured by the
    environment alone); the run's own files stay in its local folder. Evaluated with the
    views its validation used, the best checkpoint scores what the run recorded for it:
    the Train workers' validation and the evaluation job's inference agree video by video.
    The training's console has its epoch lines and the evaluation's its progress bar and
    result; Ray's own records (Ray Train's reports, the dataset's plan, the core worker's
    line about the model's actor pool) are not on them."""
    run = tmp_path / "run"
    done = job_process(
        "train.py",
        *("--data", s3_shards, "--model", "c3d", "--out", str(run)),
        *("--width", "0.125", "--model-option", "head=pooled"),
        *("--frames", "16", "--size", "32", "--epochs", "2", "--batch-size", "8"),
        *("--cpus-per-worker", "0.5", "--crop-scales", "1.0", "0.875", "--seed", "none"),
        *("--val-clips", "2", "--val-crops", "3"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    trained = json.loads(done.stdout.strip().splitlines()[-1])
    # The console: each epoch's line once, none of Ray Train's own records.
    console = done.stdout + done.stderr
    assert [console.count(f"epoch {e}/2  loss") for e in (1, 2)] == [1, 1], console[-3000:]
    for internal in ("Reporting training result", "Started training worker group"):
        assert internal not in console, console[-3000:]
    metrics = trained["metrics"]
    # A seed drawn from fresh entropy is the run's seed, recorded as drawn.
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert history[0]["event"] == "started" and history[0]["environment"]["seed_drawn"]
    best = torch.load(Path(trained["best_checkpoint"]) / "state.pt", weights_only=True)
    assert best["config"]["seed"] == trained["seed"] and isinstance(trained["seed"], int)
    assert metrics["epochs"] == 2
    epochs = [h for h in history if h["event"] == "epoch"]
    assert best["metrics"]["val_video_top1"] == max(e["val_video_top1"] for e in epochs)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    # The plain weights load without pickle and fit the model they name.
    state = torch.load(trained["weights"], map_location="cpu", weights_only=True)
    model = build_model("c3d", 8, width=0.125, head="pooled")
    model.load_state_dict(state)

    done = job_process(
        "evaluate.py",
        *("--data", s3_shards, "--checkpoint", trained["best_checkpoint"]),
        *("--clips", "2", "--crops", "3", "--out", str(tmp_path / "eval")),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    evaluated = json.loads(done.stdout.strip().splitlines()[-1])
    ray_log = (tmp_path / "eval" / "ray-driver.log").read_text()
    for line in ("Starting execution of Dataset", "core_worker.cc"):
        assert line in ray_log and line not in done.stderr, (line, done.stderr[-2000:])
    assert "evaluate: 100%" in done.stderr and "rgb: video top1" in done.stderr
    m = evaluated["metrics"]
    assert m["views_per_video"] == 6  # counted from the predictions: 2 clips x 3 crops
    assert m["videos"] == 8  # every validation video of the demo shards, once
    report = json.loads(Path(evaluated["metrics_file"]).read_text())
    assert set(report) == {"rgb"}
    assert report["rgb"]["video_top1"] == best["metrics"]["val_video_top1"]
    assert report["rgb"]["clip_acc"] == pytest.approx(best["metrics"]["val_clip_acc"])
    assert sum(map(sum, report["rgb"]["confusion"])) == 8
    assert Path(evaluated["confusion_png"]).read_bytes()[:4] == b"\x89PNG"


def test_two_stream_i3d_on_ingested_flow(flow_shards, run_job, tmp_path):
    """I3D on RGB and on flow from the same shards (``jobs/ingest.py --flow``), late fusion."""
    shards = flow_shards
    tiny = ("--model", "i3d", "--width", "0.125", "--frames", "16", "--size", "32")
    tiny += ("--epochs", "1", "--batch-size", "8", "--cpus-per-worker", "0.5")
    rgb = run_job("train.py", "--data", str(shards), "--out", str(tmp_path / "rgb"), *tiny)
    flow = run_job(
        "train.py",
        *("--data", str(shards), "--out", str(tmp_path / "flow"), "--modality", "flow"),
        *tiny,
    )
    state = torch.load(Path(flow["best_checkpoint"]) / "state.pt", weights_only=True)
    assert state["config"]["clip"]["modality"] == "flow"
    assert state["config"]["mean"] == [0.5, 0.5]  # flow levels to [-1, 1]
    assert state["config"]["model_options"]["in_channels"] == 2
    first_conv = next(w for w in state["model"].values() if w.ndim == 5)
    assert first_conv.shape[1] == 2  # x and y

    evaluated = run_job(
        "evaluate.py",
        *("--data", str(shards), "--checkpoint", rgb["best_checkpoint"]),
        *("--flow-checkpoint", flow["best_checkpoint"], "--clips", "2", "--crops", "1"),
        *("--out", str(tmp_path / "eval")),
    )
    report = json.loads(Path(evaluated["metrics_file"]).read_text())
    assert set(report) == {"rgb", "flow", "fused"}
    videos = load_manifest(shards)["splits"]["val"]
    assert report["rgb"]["videos"] == report["flow"]["videos"] == report["fused"]["videos"]
    assert report["fused"]["videos"] == videos > 0


def test_a_run_whose_videos_cannot_be_decoded_stops_with_one_line(
    demo_shards, job_process, tmp_path
):
    """Every training video's stored bytes cut to a third (as an interrupted copy leaves
    them): the job stops in epoch 1 with exit status 1 and one last stderr line that counts
    the lost videos and names the first error; no JSON result, no metrics."""
    shards = tmp_path / "shards"
    shutil.copytree(demo_shards, shards)
    ids = []
    for part in sorted((shards / "train").glob("part-*.parquet")):
        table = pq.read_table(part)
        ids += table["video_id"].to_pylist()
        for i, name in enumerate(table.column_names):
            if name.removeprefix("video_").isdigit():  # every rendition (video_<side>)
                cut = [cell[: len(cell) // 3] for cell in table[name].to_pylist()]
                table = table.set_column(i, table.field(i), pa.array(cut, table[name].type))
        pq.write_table(table, part)
    run = tmp_path / "run"
    done = job_process(
        "train.py",
        *("--data", str(shards), "--model", "c3d", "--out", str(run)),
        *("--width", "0.125", "--model-option", "head=pooled"),
        *("--frames", "16", "--size", "32", "--epochs", "1", "--batch-size", "8"),
        *("--cpus-per-worker", "0.5", "--max-failures", "0"),
    )
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    n = len(ids)
    found = re.fullmatch(
        rf"training failed: epoch 1: {n} of {n} training videos could not be decoded "
        r"\(at most 5% may fail\); the first: video (\S+): \w+: .+",
        last,
    )
    assert found, last
    assert found[1] in ids, last
    assert not done.stdout.strip()  # no JSON result line
    history = (run / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"] for line in history] == ["started"]  # no epoch reported


def test_published_weights_start_a_run_converted_on_the_driver(tmp_path):
    """``--pretrained c3d-sports1m=FILE``: a file in DavideA/c3d-pytorch's key names (written
    here from a 1/8-width C3D, 487 Sports-1M classes) converted into the run's 8-class C3D
    before any worker starts: every convolution and fc6/fc7 as the file has them, the
    classifier (another class count) left at its initialisation; the run starts from it."""
    import torch

    from raylab.config import ClipConfig, TrainConfig

    source = build_model("c3d", 487, width=0.125)
    published = {}
    for key, value in source.state_dict().items():
        name = key.removeprefix("features.").removeprefix("classifier.")
        published[name.replace(".conv.", ".").replace(".fc.", ".")] = value
    assert "conv1.weight" in published and "fc8.weight" in published
    path = tmp_path / "c3d.pickle"
    torch.save(published, path)
    config = TrainConfig(model="c3d", model_options={"width": 0.125}, clip=ClipConfig())
    started = train_job.pretrained_init(config, f"c3d-sports1m={path}", 8, tmp_path / "run")
    assert started.init_from == str(tmp_path / "run" / "pretrained.pt")
    state = torch.load(started.init_from, weights_only=True)
    assert torch.equal(state["features.conv1.conv.weight"], published["conv1.weight"])
    assert torch.equal(state["classifier.fc6.fc.weight"], published["fc6.weight"])
    assert state["classifier.fc8.weight"].shape[0] == 8  # its own head, not the 487-way one
    with pytest.raises(ValueError, match="needs a I3D model"):
        train_job.pretrained_init(config, f"i3d-piergiaj={path}", 8, tmp_path / "x")
    with pytest.raises(ValueError, match="FORMAT one of c3d-sports1m, i3d-piergiaj"):
        train_job.pretrained_init(config, f"vgg={path}", 8, tmp_path / "x")
