"""The data jobs as a user runs them, chained through their last JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _job(name: str, *args: str, env: dict) -> dict:
    done = subprocess.run(
        [sys.executable, str(REPO / "jobs" / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_demo_data_then_ingest_then_stream_one_epoch(tmp_path, ray_session):
    env = os.environ | {"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    demo = _job(
        "make_demo_data.py",
        *("--out", str(tmp_path / "videos"), "--videos-per-class", "2", "--seed", "4"),
        *("--frames", "10", "--size", "64x48"),
        env=env,
    )
    assert demo["videos"] == 16 and demo["train"] + demo["test"] == 16
    shards = _job(
        "ingest.py",
        *("--source", demo["root"], "--format", "ucf101", "--out", str(tmp_path / "shards")),
        *("--short-side", "48", "--no-progress"),
        env=env,
    )
    assert shards["splits"] == {"train": demo["train"], "val": demo["test"]}
    again = _job(  # the same command again: nothing left to do, and it says so
        "ingest.py",
        *("--source", demo["root"], "--format", "ucf101", "--out", str(tmp_path / "shards")),
        *("--short-side", "48", "--no-progress"),
        env=env,
    )
    assert again["encoded"] == 0 and again["splits"] == shards["splits"]
    stream = _job(
        "stream_clips.py",
        *("--data", str(tmp_path / "shards"), "--frames", "4", "--size", "32"),
        env=env,
    )
    assert stream["clips"] == demo["train"]
    assert stream["clip_shape"] == [4, 32, 32, 3]
    assert stream["clips_per_s"] > 0
