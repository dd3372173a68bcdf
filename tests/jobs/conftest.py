"""Run a job of jobs/ as a user would, against the session's Ray, and read its JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from checkout import REPO


@pytest.fixture
def job_process(ray_session):
    """``job_process("train.py", *args) -> CompletedProcess``: the job run as a user would,
    joined to the session's Ray through RAY_ADDRESS, its output captured as text."""
    env = os.environ | {"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}

    def run(name: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(REPO / "jobs" / name), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )

    return run


@pytest.fixture
def run_job(job_process):
    """``run_job("train.py", *args) -> dict``: the job's last stdout line, parsed; the job
    must exit 0."""

    def run(name: str, *args: str) -> dict:
        done = job_process(name, *args)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    return run
