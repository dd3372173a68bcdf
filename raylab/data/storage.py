"""Where shards live and how they are described.

A shard folder (the ``--out`` of an ingest)::

    SHARDS/<split>/part-*.parquet   the rows: a video's metadata and its renditions' bytes
    SHARDS/manifest.json            classes, renditions, encoding, rows per split, complete
    SHARDS/rejects.jsonl            the videos left out, each with its reason

A location is a local folder or a URI (s3://, gs://, file://); either is read and written
through a pyarrow filesystem (:func:`storage`). An ingest into a URI stages its shards in
a local folder (:func:`staging_dir`) and uploads them (:func:`upload_shards`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa

SCHEMA_VERSION = 1


def rendition_column(short_side: int) -> str:
    """The shard column holding the H.264/MP4 bytes of one rendition."""
    return f"video_{short_side}"


def flow_column(short_side: int) -> str:
    """The shard column holding the optical flow of one rendition (see
    :class:`raylab.data.ingest.FlowEncoder`)."""
    return f"flow_{short_side}"


def shard_schema(short_sides: Iterable[int], flow: bool = False) -> pa.Schema:
    """The Parquet schema of a shard: metadata columns then one bytes column per rendition
    (and one per rendition's optical flow when ``flow``)."""
    fields = [
        pa.field("video_id", pa.string()),
        pa.field("label", pa.int32()),
        pa.field("label_name", pa.string()),
        pa.field("num_frames", pa.int32()),
        pa.field("fps", pa.float32()),
        pa.field("height", pa.int32()),
        pa.field("width", pa.int32()),
    ]
    fields += [pa.field(rendition_column(s), pa.binary()) for s in sorted(short_sides)]
    if flow:
        fields += [pa.field(flow_column(s), pa.binary()) for s in sorted(short_sides)]
    return pa.schema(fields)


def storage(location: str | Path):
    """``(pyarrow filesystem, path in it)`` of a local folder or a URI (s3://, gs://, file://),
    so that shards written locally can be read from shared storage on a cluster."""
    import pyarrow.fs

    location = str(location)
    if "://" in location:
        return pyarrow.fs.FileSystem.from_uri(location)
    return pyarrow.fs.LocalFileSystem(), str(Path(location).resolve())


def resolve_location(location: str | Path) -> str:
    """A local folder made absolute; a URI as it is."""
    return str(location) if "://" in str(location) else str(Path(location).resolve())


def load_manifest(shards: str | Path) -> dict:
    """The manifest of a shard folder (local or a URI); a clear error when it is missing or
    unfinished."""
    import pyarrow.fs

    fs, root = storage(shards)
    path = f"{root.rstrip('/')}/manifest.json"
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        raise FileNotFoundError(f"{path} not found: is {shards} the --out folder of an ingest?")
    with fs.open_input_stream(path) as f:
        manifest = json.loads(f.read())
    if not manifest.get("complete"):
        raise ValueError(f"the ingest into {shards} did not finish: re-run it to complete it")
    return manifest


def write_manifest(out: Path, manifest: dict) -> None:
    """Write ``out/manifest.json`` atomically: a reader sees the old manifest or the new."""
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / "manifest.json")


def staging_dir(location: str) -> Path:
    """The local folder in which an ingest into a URI writes, and resumes, its shards before
    they are uploaded: ``$RAYLAB_HOME/staging/<scheme>/<bucket>/<path>`` (``~/raylab``)."""
    home = Path(os.environ.get("RAYLAB_HOME") or Path.home() / "raylab")
    return home / "staging" / location.replace("://", "/", 1).rstrip("/")


def finished_files(fs, root: str) -> dict[str, int]:
    """``{path relative to root: size}`` of the finished files under ``root``."""
    import pyarrow.fs

    root = root.rstrip("/")
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
    return {
        i.path[len(root) :].lstrip("/"): i.size
        for i in infos
        if i.type == pyarrow.fs.FileType.File and not i.path.endswith(".tmp")
    }


def copy_file(src_fs, src: str, dst_fs, dst: str) -> None:
    """Copy ``src`` on one pyarrow filesystem to ``dst`` on another."""
    import pyarrow.fs

    pyarrow.fs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs)


def upload_shards(local: Path, fs, root: str) -> None:
    """Send a staged shard folder up: parts the store lacks, then the ledger, and the
    manifest last, so that a reader never finds a complete manifest without its parts."""
    import pyarrow.fs

    here, there = pyarrow.fs.LocalFileSystem(), finished_files(fs, root)
    last = ("rejects.jsonl", "manifest.json")
    for name, size in sorted(finished_files(here, str(local)).items()):
        if name not in last and there.get(name) != size:
            copy_file(here, f"{local}/{name}", fs, f"{root}/{name}")
    for name in last:
        if (local / name).exists():
            copy_file(here, f"{local}/{name}", fs, f"{root}/{name}")
