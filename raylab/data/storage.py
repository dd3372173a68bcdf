"""Where shards live and how they are described.

A shard folder (the ``--out`` of an ingest)::

    SHARDS/<split>/part-*.parquet   the rows: a video's metadata and its renditions' bytes
    SHARDS/manifest.json            classes, renditions, encoding, rows per split, complete
    SHARDS/rejects.jsonl            the videos left out, each with its reason

A location is a local folder or a URI (s3://, gs://, file://, :func:`is_uri`); either is
read and written through a pyarrow filesystem (:func:`storage`). :class:`Shards` is a shard
folder opened once: its location, filesystem, manifest and parts. An ingest into a URI
stages its shards in a local folder (:func:`staging_dir`) and uploads them
(:func:`upload_shards`).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
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


def raylab_home() -> Path:
    """raylab's folder on this machine: ``$RAYLAB_HOME``, else ``~/raylab``. It holds the
    demo set, the studies of experiments whose results go to a URI, and the staging
    folders of ingests into a URI."""
    return Path(os.environ.get("RAYLAB_HOME") or Path.home() / "raylab")


def is_uri(location: str | Path) -> bool:
    """Whether ``location`` is a URI (s3://, gs://, file://) rather than a local path."""
    return "://" in str(location)


def storage(location: str | Path):
    """``(pyarrow filesystem, path in it)`` of a local folder or a URI (s3://, gs://, file://),
    so that shards written locally can be read from shared storage on a cluster."""
    import pyarrow.fs

    location = str(location)
    if is_uri(location):
        return pyarrow.fs.FileSystem.from_uri(location)
    return pyarrow.fs.LocalFileSystem(), str(Path(location).resolve())


def write_text(location: str | Path, text: str) -> None:
    """Write ``text`` as the file ``location`` (a local path or a URI), its folder made."""
    fs, path = storage(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def exists(location: str | Path) -> bool:
    """Whether the file or folder ``location`` (a local path or a URI) exists."""
    import pyarrow.fs

    fs, path = storage(location)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def append_text(location: str | Path, text: str) -> None:
    """Append ``text`` to the file ``location``. An object store cannot append: a URI's
    object is read and written again whole, which suits a run's small record files."""

    if not is_uri(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        with open(location, "a") as f:
            f.write(text)
        return
    fs, path = storage(location)
    before = b""
    if exists(location):
        with fs.open_input_stream(path) as f:
            before = f.read()
    with fs.open_output_stream(path) as f:
        f.write(before + text.encode())


def resolve_location(location: str | Path) -> str:
    """A local folder made absolute; a URI as it is."""
    return str(location) if is_uri(location) else str(Path(location).resolve())


@dataclass(frozen=True)
class Manifest:
    """What an ingest recorded in ``manifest.json`` (see :func:`raylab.data.ingest.ingest`)."""

    classes: tuple[str, ...]  # label i is classes[i]
    splits: Mapping[str, int] = field(hash=False)  # videos (rows) per split
    renditions: tuple[int, ...]  # the stored short sides
    flow: str | None  # the optical flow method, None when the shards hold no flow
    format: str | None  # the annotation format of the source (ucf101, hmdb51, ...)
    raw: Mapping = field(hash=False, repr=False)  # the whole record (encoding, source, ...)

    @classmethod
    def from_record(cls, record: dict) -> Manifest:
        return cls(
            classes=tuple(record.get("classes", ())),
            splits=dict(record.get("splits") or {}),
            renditions=tuple(record.get("renditions", ())),
            flow=record.get("flow") or None,  # shards from before flow existed have no key
            format=record.get("format"),
            raw=record,
        )

    def videos(self, split: str) -> int:
        """The videos of ``split`` (0 when the ingest stored none)."""
        return self.splits.get(split, 0)


@dataclass(frozen=True)
class Shards:
    """A shard folder (the ``--out`` of an ingest), local or a URI, opened once.

    ``location`` is resolved: an absolute local folder, or a URI as given. The filesystem
    and the manifest are opened and read on first use, then kept. Pickled (into Ray tasks
    and actors), a Shards keeps its manifest but not its filesystem, which the receiving
    process opens again from the location: a pickled pyarrow S3 filesystem would carry
    credentials given to it, where one opened from the URI takes the receiver's own. Nor
    does it carry the frame counts a job read (:meth:`frame_counts`): one number a video,
    they would ride along with every decode task.
    """

    location: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "location", resolve_location(self.location))

    @classmethod
    def open(cls, location: str | Path | Shards) -> Shards:
        """``location`` as a Shards (itself when it is one already)."""
        return location if isinstance(location, Shards) else cls(location)

    def __str__(self) -> str:
        return self.location

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_storage", "_frame_counts")}

    @property
    def is_uri(self) -> bool:
        return is_uri(self.location)

    @cached_property
    def _storage(self) -> tuple:
        fs, root = storage(self.location)
        return fs, root.rstrip("/")

    @property
    def fs(self):
        """The pyarrow filesystem of the location."""
        return self._storage[0]

    @property
    def root(self) -> str:
        """The location as its filesystem names it (a URI without its scheme)."""
        return self._storage[1]

    def path(self, *parts: str) -> str:
        """``parts`` joined under the root, as the filesystem names them."""
        return "/".join((self.root, *parts))

    @cached_property
    def manifest(self) -> Manifest:
        """The manifest, read once; a clear error when it is missing or unfinished."""
        import pyarrow.fs

        path = self.path("manifest.json")
        if self.fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
            raise FileNotFoundError(f"{path} not found: is {self} the --out folder of an ingest?")
        with self.fs.open_input_stream(path) as f:
            record = json.loads(f.read())
        if not record.get("complete"):
            raise ValueError(f"the ingest into {self} did not finish: re-run it to complete it")
        return Manifest.from_record(record)

    def check(self) -> Shards:
        """Itself, once its manifest is read: a location that holds no finished ingest fails
        here (a job's mistaken --data, before Ray starts)."""
        _ = self.manifest
        return self

    def files(self, split: str) -> list[str]:
        """The Parquet parts of one split, sorted: URIs when the location is one (but
        ``file://``: local paths); a clear error when the split is absent."""
        import pyarrow.fs

        scheme = self.location.split("://")[0] + "://" if self.is_uri else ""
        scheme = "" if scheme == "file://" else scheme  # local paths for the local filesystem
        listing = self.fs.get_file_info(pyarrow.fs.FileSelector(self.root, allow_not_found=True))
        folders = sorted(i.base_name for i in listing if i.type == pyarrow.fs.FileType.Directory)
        selector = pyarrow.fs.FileSelector(self.path(split), allow_not_found=True)
        files = sorted(
            scheme + i.path
            for i in self.fs.get_file_info(selector)
            if i.base_name.startswith("part-") and i.base_name.endswith(".parquet")
        )
        if not files:
            raise FileNotFoundError(
                f"no shards for split {split!r} under {self}: the ingest stored {folders}"
            )
        return files

    def open_file(self, file: str):
        """A random-access pyarrow file of one of :meth:`files`."""
        return self.fs.open_input_file(file.split("://", 1)[1] if is_uri(file) else file)

    def frame_counts(self, split: str) -> list[int]:
        """Every video's ``num_frames`` in one split, in shard order (that column alone read,
        once per split)."""
        import pyarrow.parquet as pq

        cache = self.__dict__.setdefault("_frame_counts", {})
        if split not in cache:
            counts: list[int] = []
            for file in self.files(split):
                with self.open_file(file) as f:
                    counts += pq.read_table(f, columns=["num_frames"]).column(0).to_pylist()
            cache[split] = counts
        return cache[split]


def load_manifest(shards: str | Path | Shards) -> dict:
    """The manifest of a shard folder (local or a URI) as the record it is stored as; a clear
    error when it is missing or unfinished. :attr:`Shards.manifest` is the same, typed."""
    return copy.deepcopy(dict(Shards.open(shards).manifest.raw))


def write_manifest(out: Path, manifest: dict) -> None:
    """Write ``out/manifest.json`` atomically: a reader sees the old manifest or the new."""
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / "manifest.json")


def staging_dir(location: str) -> Path:
    """The local folder in which an ingest into a URI writes, and resumes, its shards before
    they are uploaded: ``$RAYLAB_HOME/staging/<scheme>/<bucket>/<path>`` (``~/raylab``)."""
    return raylab_home() / "staging" / location.replace("://", "/", 1).rstrip("/")


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
