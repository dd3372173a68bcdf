"""Shard folders on a real filesystem: locations, the manifest, and uploading a staged folder."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pyarrow.fs
import pyarrow.parquet as pq
import pytest

from raylab.data.storage import (
    Manifest,
    Shards,
    finished_files,
    is_uri,
    load_manifest,
    raylab_home,
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
    assert raylab_home() == tmp_path / "home"
    monkeypatch.setenv("RAYLAB_HOME", "")  # set but empty: the default
    assert raylab_home() == Path.home() / "raylab"
    assert is_uri("s3://bucket/shards") and is_uri(f"file://{tmp_path}")
    assert not is_uri("shards") and not is_uri(tmp_path)


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


def test_shards_of_a_folder_and_of_its_file_uri(tiny_shards, monkeypatch):
    """One location resolved once; the manifest typed; the parts of a split as local paths,
    for a folder given relative and for its file:// URI alike."""
    monkeypatch.chdir(tiny_shards.parent)
    shards = Shards.open("tiny")
    assert shards.location == str(tiny_shards) == str(shards) and not shards.is_uri
    assert Shards.open(shards) is shards and Shards.open(tiny_shards) == shards
    assert shards.manifest == Manifest(
        classes=("a", "b", "c"),
        splits={"train": 8, "val": 2},
        renditions=(32,),
        flow=None,
        format="ucf101",
        raw=load_manifest(tiny_shards),
    )
    assert shards.manifest.videos("val") == 2 and shards.manifest.videos("test") == 0
    train = [str(tiny_shards / "train" / f"part-0000{i}.parquet") for i in (0, 1)]
    assert shards.files("train") == train
    assert shards.path("train", "x") == f"{tiny_shards}/train/x"
    uri = Shards.open(f"file://{tiny_shards}")
    assert uri.is_uri and uri.location == f"file://{tiny_shards}"
    assert uri.files("train") == train and uri.manifest == shards.manifest
    with uri.open_file(train[1]) as f:
        assert pq.ParquetFile(f).metadata.num_rows == 3
    with pytest.raises(
        FileNotFoundError, match=r"no shards for split 'test' under .*\['train', 'val'\]"
    ):
        shards.files("test")


def test_shards_read_their_manifest_once_and_travel_with_it(tiny_shards):
    """Pickled (as Ray sends it to tasks), a Shards keeps its manifest, not its filesystem,
    which the receiver opens again from the location."""
    shards = Shards.open(tiny_shards)
    assert shards.check() is shards and shards.fs is shards.fs  # opened once
    (tiny_shards / "manifest.json").unlink()
    assert shards.manifest.classes == ("a", "b", "c")  # not read again
    copy = pickle.loads(pickle.dumps(shards))
    assert "_storage" not in copy.__dict__ and copy == shards
    assert copy.manifest == shards.manifest
    assert copy.files("val") == shards.files("val")  # its filesystem opened again
    with pytest.raises(FileNotFoundError, match="the --out folder of an ingest"):
        Shards.open(tiny_shards).check()  # a new one reads it


def test_frame_counts_are_read_once_per_split(tiny_shards):
    shards = Shards.open(tiny_shards)
    assert shards.frame_counts("train") == [40, 30, 50, 60, 45, 20, 70, 35]
    (tiny_shards / "train" / "part-00001.parquet").unlink()
    assert len(shards.frame_counts("train")) == 8  # not read again
    assert shards.frame_counts("val") == [33, 44]
    # Not sent along when the shards are (to every decode task): a number a video.
    assert "_frame_counts" not in pickle.loads(pickle.dumps(shards)).__dict__


def test_shards_of_a_missing_folder_say_what_is_wrong(tmp_path):
    missing = Shards.open(tmp_path / "nothing")  # opening reads nothing yet
    with pytest.raises(FileNotFoundError) as err:
        missing.manifest  # noqa: B018
    assert str(err.value) == (
        f"{tmp_path}/nothing/manifest.json not found: is {tmp_path}/nothing the --out folder "
        "of an ingest?"
    )
    with pytest.raises(
        FileNotFoundError, match=r"no shards for split 'train' .*: the ingest stored \[\]"
    ):
        missing.files("train")


def test_shards_on_s3_name_their_parts_by_uri(tiny_shards, s3_store):
    """The folder uploaded to the S3 endpoint: parts listed as s3:// URIs and read through
    the filesystem opened from the location, before and after a pickle."""
    store, root = storage(f"{s3_store}/tiny")
    upload_shards(tiny_shards, store, root)
    shards = Shards.open(f"{s3_store}/tiny/")
    assert shards.manifest.raw == load_manifest(tiny_shards)
    assert shards.files("val") == [f"{s3_store}/tiny/val/part-00000.parquet"]
    copy = pickle.loads(pickle.dumps(shards))
    with copy.open_file(copy.files("train")[0]) as f:
        assert pq.ParquetFile(f).metadata.num_row_groups == 3
