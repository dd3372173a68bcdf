"""Shard folders on a real filesystem: locations, the manifest, and uploading a staged folder."""

from __future__ import annotations

import os

import pyarrow.fs
import pytest

from raylab.data.storage import (
    finished_files,
    load_manifest,
    resolve_location,
    staging_dir,
    storage,
    upload_shards,
    write_manifest,
)


def test_locations_are_absolute_folders_or_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_location("shards") == str(tmp_path / "shards")
    assert resolve_location("s3://bucket/shards") == "s3://bucket/shards"
    fs, root = storage("shards")
    assert isinstance(fs, pyarrow.fs.LocalFileSystem) and root == str(tmp_path / "shards")
    monkeypatch.setenv("RAYLAB_HOME", str(tmp_path / "home"))
    assert staging_dir("s3://bucket/a/b/") == tmp_path / "home" / "staging" / "s3/bucket/a/b"


def test_manifest_of_a_missing_or_unfinished_ingest_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="the --out folder of an ingest"):
        load_manifest(tmp_path)
    write_manifest(tmp_path, {"classes": ["a"], "complete": False})
    with pytest.raises(ValueError, match="did not finish"):
        load_manifest(tmp_path)
    write_manifest(tmp_path, {"classes": ["a"], "complete": True})
    assert load_manifest(tmp_path) == load_manifest(f"file://{tmp_path}")
    assert load_manifest(tmp_path)["classes"] == ["a"]
    assert os.listdir(tmp_path) == ["manifest.json"]  # written atomically: no .tmp left


def test_upload_sends_finished_files_and_skips_parts_already_stored(tmp_path):
    local, store = tmp_path / "staged", tmp_path / "store"
    (local / "train").mkdir(parents=True)
    (local / "train" / "part-00000.parquet").write_bytes(b"new0")
    (local / "train" / "part-00001.parquet").write_bytes(b"new1")
    (local / "train" / "part-00002.parquet.tmp").write_bytes(b"half")  # still being written
    (local / "rejects.jsonl").write_text("")
    write_manifest(local, {"complete": True})
    (store / "train").mkdir(parents=True)
    (store / "train" / "part-00000.parquet").write_bytes(b"old0")  # same size: already sent
    upload_shards(local, pyarrow.fs.LocalFileSystem(), str(store))
    fs = pyarrow.fs.LocalFileSystem()
    assert finished_files(fs, str(store)) == finished_files(fs, str(local))
    assert (store / "train" / "part-00000.parquet").read_bytes() == b"old0"
    assert (store / "train" / "part-00001.parquet").read_bytes() == b"new1"
    assert not (store / "train" / "part-00002.parquet.tmp").exists()
