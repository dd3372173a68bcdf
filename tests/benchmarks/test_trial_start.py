"""benchmarks/trial_start.py's checkouts of earlier commits, which its --baseline runs."""

from __future__ import annotations

import subprocess

from checkout import REPO

from benchmarks import trial_start


def test_a_baseline_is_the_commits_files_outside_the_repository(tmp_path):
    first = subprocess.run(
        ["git", "-C", str(REPO), "rev-list", "--max-parents=0", "HEAD"],
        capture_output=True, text=True, check=True,
    ).stdout.split()[0]  # fmt: skip
    path = trial_start.checkout_at(first, tmp_path)
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-tree", "-r", "--name-only", first],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) == sorted(
        listed
    )
    shown = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{first}:{listed[0]}"], capture_output=True, check=True
    ).stdout
    assert (path / listed[0]).read_bytes() == shown
    assert trial_start.checkout_at(first[:8], tmp_path) == path  # the same commit, once
