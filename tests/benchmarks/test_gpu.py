"""benchmarks/gpu.py on the CPU at tiny sizes: the same code the GPU run executes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from checkout import REPO


def test_gpu_benchmark_runs_on_cpu_at_tiny_sizes(tmp_path):
    """As on the GPU machine: from the checkout, by path, with only the checkout on the path;
    every part measured, and (c) is (a)'s best speed over (b)'s speed per core."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [
            sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--device", "cpu", "--tiny",
            "--models", "c3d", "--modes", "fp32", "bf16", "--steps", "1", "--max-batch", "2",
            "--decode-videos", "1", "--decode-procs", "1", "--decode-repeat", "1",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    c3d = result["train"]["c3d"]
    assert c3d["gmacs"] > 0 and c3d["best_mode"] in ("fp32", "bf16")
    for mode in ("fp32", "bf16"):
        assert c3d[mode]["batch"] == 2 and c3d[mode]["clips_per_s"] > 0
        assert c3d[mode]["mfu"] is None  # no peak is known for a CPU
    per_core = result["decode"]["128p"]["clips_per_s_per_core"]
    assert per_core > 0 and result["decode"]["256p"]["clips_per_s_per_core"] > 0
    best = c3d[c3d["best_mode"]]["clips_per_s"]
    assert result["decode_cores_per_gpu"]["c3d"] == round(best / per_core, 2)
    assert "| c3d | 16x32 |" in done.stdout
