"""Every job given a path that is not there: one line naming the job, the input and the fix,
exit status 1, no traceback, and no Ray started for it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from checkout import REPO

MISSING = "/nonexistent/raylab-input"

# job, its arguments with one input that is not there, what the line must say.
CASES = [
    ("train.py", ["--data", MISSING, "--model", "c3d", "--out", "{tmp}/run"], "an ingest"),
    ("tune_t3d.py", ["--data", MISSING, "--root", "{tmp}"], "an ingest"),
    ("transfer_t3d.py", ["--data", MISSING, "--out", "{tmp}/run"], "an ingest"),
    ("evaluate.py", ["--data", MISSING, "--checkpoint", MISSING], MISSING),
    ("extract_features.py", ["--data", MISSING, "--out", "{tmp}/f", "--model", "c3d"], "ingest"),
    ("stream_clips.py", ["--data", MISSING], "an ingest"),
    ("predict.py", ["--checkpoint", MISSING, "--videos", MISSING, "--out", "{tmp}/p"], MISSING),
    ("ingest.py", ["--source", MISSING, "--format", "ucf101", "--out", "{tmp}/s"], MISSING),
]


@pytest.mark.parametrize(("job", "args", "says"), CASES, ids=[c[0] for c in CASES])
def test_a_missing_input_ends_the_job_in_one_line(job, args, says, tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "jobs" / job), *(a.format(tmp=tmp_path) for a in args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert lines and lines[-1].startswith(job.removesuffix(".py")) and says in lines[-1], lines
    assert MISSING in lines[-1]
    assert not any("Started a local Ray instance" in line for line in lines)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--model", "c3dx"], "unknown model 'c3dx'; valid names: c3d,"),
        (["--model", "c3d", "--frames", "2", "--size", "8"], "is too small; needs T >= 16"),
        (["--model", "c3d", "--model-option", "head"], "--model-option head: "),
        (["--model", "c3d", "--size", "112"], "short side 128 need a rendition of at least"),
    ],
    ids=["unknown-model", "impossible-clip", "malformed-model-option", "no-such-rendition"],
)
def test_a_wrong_model_or_clip_ends_training_in_one_line(args, says, demo_shards, tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "train.py"), "--data", str(demo_shards)]
        + [*args, "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[-1].startswith("train: ") and says in lines[-1], lines
    assert not any("Started a local Ray instance" in line for line in lines)
    assert not (tmp_path / "run").exists()  # nothing started, nothing written
