"""The data jobs as a user runs them, chained through their last JSON line."""

from __future__ import annotations


def test_demo_data_then_ingest_then_stream_one_epoch(tmp_path, run_job):
    demo = run_job(
        "make_demo_data.py",
        *("--out", str(tmp_path / "videos"), "--videos-per-class", "2", "--seed", "4"),
        *("--frames", "10", "--size", "64x48"),
    )
    assert demo["videos"] == 16 and demo["train"] + demo["test"] == 16
    shards = run_job(
        "ingest.py",
        *("--source", demo["root"], "--format", "ucf101", "--out", str(tmp_path / "shards")),
        *("--short-side", "48", "--no-progress"),
    )
    assert shards["splits"] == {"train": demo["train"], "val": demo["test"]}
    again = run_job(  # the same command again: nothing left to do, and it says so
        "ingest.py",
        *("--source", demo["root"], "--format", "ucf101", "--out", str(tmp_path / "shards")),
        *("--short-side", "48", "--no-progress"),
    )
    assert again["encoded"] == 0 and again["splits"] == shards["splits"]
    stream = run_job(
        "stream_clips.py",
        *("--data", str(tmp_path / "shards"), "--frames", "4", "--size", "32"),
    )
    assert stream["clips"] == demo["train"]
    assert stream["clip_shape"] == [4, 32, 32, 3]
    assert stream["clips_per_s"] > 0
