"""Source videos -> re-encoded renditions -> Parquet shards, a manifest and a rejects ledger.

Every listed video ends in exactly one place: a shard row (``SHARDS/<split>/part-*.parquet``)
or a line of ``SHARDS/rejects.jsonl`` with its path, split and a reason a person can act
on. Videos are decoded with PyAV (anything FFmpeg reads) and re-encoded as H.264 at each
rendition's short side with a short, fixed key-frame interval and no B-frames, so that
decoding a clip costs little more than the clip itself.

Ingest runs one Ray task per video. Shard parts are written atomically (temporary name,
then rename) and rejects are appended as they come, so an interrupted ingest re-run with
the same arguments skips what is recorded and finishes the rest: nothing is encoded twice
and nothing is duplicated.
"""

from __future__ import annotations

import io
import json
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from av.video.frame import PictureType

from raylab.data.annotations import Annotations, VideoEntry, read_annotations
from raylab.data.decode import scaled_size
from raylab.progress import progress_bar

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")

# File signatures of video containers, to tell a damaged video from something else.
_CONTAINER_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (4, b"ftyp", "MP4/MOV"),
    (0, b"RIFF", "AVI"),
    (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"),
    (0, b"\x00\x00\x01\xba", "MPEG-PS"),
    (0, b"FLV", "FLV"),
    (0, b"\x30\x26\xb2\x75", "ASF/WMV"),
)


class Rejected(Exception):
    """A video that cannot be ingested; the message is the reason written to the ledger."""


@dataclass(frozen=True)
class EncodeParams:
    """How every rendition is encoded. Stored in the manifest; a resume must match it."""

    short_sides: tuple[int, ...] = (128,)
    keyframe_interval: int = 8
    crf: int = 20
    preset: str = "veryfast"
    codec: str = "libx264"
    pix_fmt: str = "yuv420p"
    flow: str | None = None  # "tvl1" or "farneback": optical flow stored beside each rendition
    flow_crf: int = 10  # flow is finer than pixels: a higher quality than the RGB's

    def __post_init__(self) -> None:
        if self.flow not in FLOW_METHODS:
            raise ValueError(f"flow must be one of {sorted(FLOW_METHODS)} or None, got {self.flow}")
        if not self.short_sides or any(s < 16 or s % 2 for s in self.short_sides):
            raise ValueError(f"short sides must be even and >= 16, got {self.short_sides}")
        if self.keyframe_interval < 1:
            raise ValueError(f"keyframe interval must be >= 1, got {self.keyframe_interval}")


def rendition_column(short_side: int) -> str:
    """The shard column holding the H.264/MP4 bytes of one rendition."""
    return f"video_{short_side}"


def flow_column(short_side: int) -> str:
    """The shard column holding the optical flow of one rendition (see :class:`FlowEncoder`)."""
    return f"flow_{short_side}"


FLOW_METHODS = {None, "tvl1", "farneback"}
FLOW_BOUND = 20.0  # pixels per frame; larger displacements are clipped, as in I3D / TSN


def quantise_flow(flow: np.ndarray) -> np.ndarray:
    """(H, W, 2) float flow clipped to [-20, 20] -> uint8, 0 px at 127.5 (0.157 px a step)."""
    scaled = (np.clip(flow, -FLOW_BOUND, FLOW_BOUND) + FLOW_BOUND) * (255.0 / (2 * FLOW_BOUND))
    return np.round(scaled).astype(np.uint8)


def dequantise_flow(q: np.ndarray) -> np.ndarray:
    """uint8 flow back to pixels per frame (the inverse of :func:`quantise_flow`)."""
    return q.astype(np.float32) * (2 * FLOW_BOUND / 255.0) - FLOW_BOUND


class FlowEncoder:
    """Optical flow between consecutive frames of one rendition, as an H.264 video.

    Flow frame ``i`` is the motion from frame ``i`` to ``i + 1`` (the last repeats the one
    before; a one-frame video has zero flow), so flow and RGB share frame indices and one
    sampler. Each frame stores x and y side by side as grey levels (quantised, see
    :func:`quantise_flow`) in a video twice as wide: the same decoder, key-frame seeking and
    shard layout as the RGB, at a fraction of raw uint8's size (H.264 codes the smooth flow
    fields well; measured in the ingest tests).
    """

    def __init__(self, method: str, short_side: int, height: int, width: int, rate, params):
        import cv2

        self.method, self.rate = method, rate
        self.tvl1 = cv2.optflow.DualTVL1OpticalFlow_create() if method == "tvl1" else None
        h, w = scaled_size(height, width, short_side)
        self.buf, self.out, self.stream = _new_encoder_sized(
            h, 2 * w, rate, params, params.flow_crf
        )
        self.prev: np.ndarray | None = None
        self.last: np.ndarray | None = None
        self.n = 0

    def _flow(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        import cv2

        if self.tvl1 is not None:
            return self.tvl1.calc(a, b, None)
        return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)

    def _write(self, q: np.ndarray) -> None:
        grey = np.concatenate([q[..., 0], q[..., 1]], axis=1)
        frame = av.VideoFrame.from_ndarray(grey, format="gray").reformat(format="yuv420p")
        frame.pts, frame.time_base = self.n, 1 / self.rate
        frame.pict_type = PictureType.NONE
        self.out.mux(self.stream.encode(frame))
        self.n += 1
        self.last = q

    def add(self, grey: np.ndarray) -> None:
        """The next frame of the rendition, as a (H, W) uint8 grey image."""
        if self.prev is not None:
            self._write(quantise_flow(self._flow(self.prev, grey)))
        self.prev = grey

    def finish(self) -> bytes:
        """Close the video (its last frame repeats the one before) and return its bytes."""
        if self.last is None:  # one frame: no motion to measure
            h, w = self.prev.shape
            self.last = np.full((h, w, 2), 128, np.uint8)
        self._write(self.last)
        self.out.mux(self.stream.encode())
        self.out.close()
        return self.buf.getvalue()


def video_id_of(path: str) -> str:
    """The stable id of a video: its path relative to the video root, without extension."""
    return os.path.splitext(path)[0]


def _describe_unreadable(path: Path, err: Exception) -> str:
    head = path.read_bytes()[:16]
    for offset, magic, name in _CONTAINER_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return f"truncated or corrupt {name} file: FFmpeg cannot read it ({err})"
    return f"not a video: FFmpeg recognises no video container in it ({err})"


def _new_encoder(short_side: int, height: int, width: int, rate: Fraction, params: EncodeParams):
    h, w = scaled_size(height, width, short_side)
    return _new_encoder_sized(h, w, rate, params, params.crf)


def _new_encoder_sized(h: int, w: int, rate: Fraction, params: EncodeParams, crf: int):
    buf = io.BytesIO()
    out = av.open(buf, mode="w", format="mp4")
    stream = out.add_stream(params.codec, rate=rate)
    stream.width, stream.height, stream.pix_fmt = w, h, params.pix_fmt
    k = params.keyframe_interval
    # Fixed GOP, no scene-cut key frames, no B-frames: every clip starts at most k-1
    # frames after a key frame, and frame indices map one-to-one to decode order.
    stream.options = {
        "crf": str(crf),
        "preset": params.preset,
        "x264-params": f"keyint={k}:min-keyint={k}:scenecut=0:bframes=0",
    }
    stream.codec_context.thread_count = 1
    return buf, out, stream


def encode_video(path: Path, params: EncodeParams) -> dict:
    """Decode ``path`` and re-encode it at every rendition.

    Returns ``num_frames``, ``fps``, ``height``, ``width`` (of the source) and one bytes
    value per rendition column. Raises :class:`Rejected` with the reason when the file is
    empty, not a video, truncated or undecodable, or has no frames.
    """
    if path.stat().st_size == 0:
        raise Rejected("empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as err:
        raise Rejected(_describe_unreadable(path, err)) from err
    with container:
        # FFmpeg reads a still image as a one-frame video; it is not one.
        if container.format.name.endswith("_pipe") or container.format.name == "image2":
            raise Rejected(
                f"not a video: FFmpeg reads it as a still image ({container.format.name})"
            )
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise Rejected(f"not a video: no video stream (streams found: {', '.join(kinds)})")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        rate = Fraction(rate).limit_denominator(1001)
        expected = stream.frames  # 0 when the container does not say
        encoders: list = []
        flows: list[FlowEncoder] = []
        n = 0
        height = width = 0
        try:
            for frame in container.decode(stream):
                if not encoders:
                    height, width = frame.height, frame.width
                    encoders = [
                        (s, *_new_encoder(s, height, width, rate, params))
                        for s in params.short_sides
                    ]
                    if params.flow:
                        flows = [
                            FlowEncoder(params.flow, s, height, width, rate, params)
                            for s in params.short_sides
                        ]
                for i, (_, _, muxer, enc) in enumerate(encoders):
                    small = frame.reformat(
                        width=enc.width, height=enc.height, format=params.pix_fmt
                    )
                    if params.flow:
                        flows[i].add(small.to_ndarray(format="gray"))
                    # Renumber frames: constant frame rate, whatever the source's timestamps.
                    small.pts, small.time_base = n, 1 / rate
                    # A decoded source key frame would force one here: keep the GOP fixed.
                    small.pict_type = PictureType.NONE
                    muxer.mux(enc.encode(small))
                n += 1
        except (av.FFmpegError, ValueError) as err:
            if n == 0:
                raise Rejected(f"undecodable: no frame could be decoded ({err})") from err
            raise Rejected(
                f"truncated or corrupt: decoding failed after {n} frames ({err})"
            ) from err
        if n == 0:
            raise Rejected("zero frames: the video stream holds no decodable frame")
        # A short read of an indexed container (MP4's sample table, AVI's index) means the
        # data ends early; tolerate the off-by-a-few counts some muxers write.
        if expected and n < expected - max(2, expected // 20):
            raise Rejected(f"truncated: the container lists {expected} frames, {n} decode")
        result: dict = {"num_frames": n, "fps": float(rate), "height": height, "width": width}
        for short_side, buf, out, enc in encoders:
            out.mux(enc.encode())
            out.close()
            result[rendition_column(short_side)] = buf.getvalue()
        for short_side, flow in zip(params.short_sides, flows, strict=False):
            result[flow_column(short_side)] = flow.finish()
        return result


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


@dataclass
class IngestSummary:
    """What an ingest run left on disk; ``encoded``/``rejected`` count this run's work."""

    out: str
    manifest: str
    rejects: str
    splits: dict[str, int]
    rejected_total: int
    encoded: int = 0
    rejected: int = 0
    skipped: int = 0
    seconds: float = 0.0
    reject_reasons: dict[str, int] = field(default_factory=dict)


def _read_rejects(path: Path) -> list[dict]:
    """Valid ledger lines; a line cut short by a killed run is dropped (and re-done)."""
    if not path.exists():
        return []
    good = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and {"path", "split", "reason"} <= rec.keys():
            good.append(rec)
    return good


def _existing_rows(out: Path) -> tuple[set[tuple[str, str]], dict[str, int]]:
    """(split, video_id) of every stored row, and the next free part number per split."""
    done: set[tuple[str, str]] = set()
    next_part: dict[str, int] = {}
    for split_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        parts = sorted(split_dir.glob("part-*.parquet"))
        for part in parts:
            ids = pq.read_table(part, columns=["video_id"]).column("video_id").to_pylist()
            done.update((split_dir.name, v) for v in ids)
        numbers = [int(p.stem.split("-")[1]) for p in parts]
        next_part[split_dir.name] = max(numbers, default=-1) + 1
    return done, next_part


def _count_rows(out: Path) -> dict[str, int]:
    counts = {}
    for split_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        parts = sorted(split_dir.glob("part-*.parquet"))
        if parts:
            counts[split_dir.name] = sum(pq.read_metadata(p).num_rows for p in parts)
    return counts


def _write_manifest(out: Path, manifest: dict) -> None:
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / "manifest.json")


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


def staging_dir(location: str) -> Path:
    """The local folder in which an ingest into a URI writes, and resumes, its shards before
    they are uploaded: ``$RAYLAB_HOME/staging/<scheme>/<bucket>/<path>`` (``~/raylab``)."""
    home = Path(os.environ.get("RAYLAB_HOME") or Path.home() / "raylab")
    return home / "staging" / location.replace("://", "/", 1).rstrip("/")


def _files(fs, root: str) -> dict[str, int]:
    """``{path relative to root: size}`` of the finished files under ``root``."""
    import pyarrow.fs

    root = root.rstrip("/")
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
    return {
        i.path[len(root) :].lstrip("/"): i.size
        for i in infos
        if i.type == pyarrow.fs.FileType.File and not i.path.endswith(".tmp")
    }


def _copy(src_fs, src: str, dst_fs, dst: str) -> None:
    import pyarrow.fs

    pyarrow.fs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs)


def _upload(local: Path, fs, root: str) -> None:
    """Send a staged shard folder up: parts the store lacks, then the ledger, and the
    manifest last, so that a reader never finds a complete manifest without its parts."""
    import pyarrow.fs

    here, there = pyarrow.fs.LocalFileSystem(), _files(fs, root)
    last = ("rejects.jsonl", "manifest.json")
    for name, size in sorted(_files(here, str(local)).items()):
        if name not in last and there.get(name) != size:
            _copy(here, f"{local}/{name}", fs, f"{root}/{name}")
    for name in last:
        if (local / name).exists():
            _copy(here, f"{local}/{name}", fs, f"{root}/{name}")


def _ingests_to_uris(ingest_fn: Callable[..., IngestSummary]) -> Callable[..., IngestSummary]:
    """Lets ``ingest`` write to a URI (s3://, gs://): the shards are written in a local
    staging folder (:func:`staging_dir`), each part uploaded as soon as it is written, and
    the ledger and manifest at the end. The staging folder is what a re-run resumes from; on
    a machine without one it is first filled from the store, so nothing is encoded twice."""
    import functools

    @functools.wraps(ingest_fn)
    def wrapper(source, fmt, out, *args, **kwargs) -> IngestSummary:
        if "://" not in str(out):
            return ingest_fn(source, fmt, out, *args, **kwargs)
        import pyarrow.fs

        location = str(out).rstrip("/")
        fs, root = storage(location)
        root = root.rstrip("/")
        local = staging_dir(location)
        if not (local / "manifest.json").exists():
            for name in _files(fs, root):
                (local / name).parent.mkdir(parents=True, exist_ok=True)
                _copy(fs, f"{root}/{name}", pyarrow.fs.LocalFileSystem(), str(local / name))
        also = kwargs.pop("on_part_written", None)

        def upload_part(path: Path) -> None:
            relative = path.relative_to(local).as_posix()
            _copy(pyarrow.fs.LocalFileSystem(), str(path), fs, f"{root}/{relative}")
            if also is not None:
                also(path)

        summary = ingest_fn(source, fmt, local, *args, on_part_written=upload_part, **kwargs)
        _upload(local, fs, root)
        summary.out = location
        summary.manifest, summary.rejects = f"{location}/manifest.json", f"{location}/rejects.jsonl"
        return summary

    return wrapper


def _encode_task(source: str, entry: VideoEntry, label: int, params: EncodeParams) -> dict:
    """One video's shard row, or ``{"reject": reason}``; runs as a Ray task."""
    try:
        encoded = encode_video(Path(source) / entry.path, params)
    except Rejected as err:
        return {"reject": str(err)}
    except Exception as err:  # a crash must not lose the video: ledger it with the cause
        return {"reject": f"undecodable: {type(err).__name__}: {err}"}
    return {
        "video_id": video_id_of(entry.path),
        "label": label,
        "label_name": entry.label_name,
        **encoded,
    }


@_ingests_to_uris
def ingest(
    source: str | Path,
    fmt: str,
    out: str | Path,
    *,
    annotations: str | Path | None = None,
    split: int = 1,
    params: EncodeParams | None = None,
    rows_per_part: int = 256,
    max_in_flight: int | None = None,
    progress: bool = True,
    on_part_written: Callable[[Path], None] | None = None,
) -> IngestSummary:
    """Ingest every video the annotations list into shards under ``out``.

    Re-running with the same arguments resumes: rows and rejects already recorded are
    skipped. Different encoding parameters for an existing ``out`` raise ValueError.
    Uses the running Ray cluster, or starts a local one.
    """
    import ray

    start = time.time()
    params = params or EncodeParams()
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise FileNotFoundError(f"video root {source} is not a folder")
    anns: Annotations = read_annotations(fmt, source, annotations, split)
    out.mkdir(parents=True, exist_ok=True)

    encoding = asdict(params) | {"short_sides": sorted(params.short_sides)}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "format": fmt,
        "source": str(source.resolve()),
        "annotation_split": split,
        "classes": anns.classes,
        "renditions": sorted(params.short_sides),
        "flow": params.flow,  # the method, or None when the shards hold no flow
        "encoding": encoding,
        "complete": False,
    }
    old_path = out / "manifest.json"
    if old_path.exists():
        old = json.loads(old_path.read_text())
        # Shards from before flow existed have no flow keys: they are the defaults.
        old["encoding"] = {"flow": None, "flow_crf": EncodeParams.flow_crf} | old.get(
            "encoding", {}
        )
        for key in ("encoding", "classes", "format"):
            if old.get(key) != manifest[key]:
                raise ValueError(
                    f"{out} holds shards ingested with another {key} ({old.get(key)} vs "
                    f"{manifest[key]}): use a new --out folder or the original arguments"
                )
    _write_manifest(out, manifest)

    rejects_path = out / "rejects.jsonl"
    old_rejects = _read_rejects(rejects_path)
    # Rewrite the ledger clean: drops a half-written last line of an interrupted run.
    rejects_path.write_text("".join(json.dumps(r) + "\n" for r in old_rejects))
    rejected_keys = {(r["split"], r["path"]) for r in old_rejects}
    for stale in out.glob("*/part-*.parquet.tmp"):  # a part a killed run left half-written
        stale.unlink()
    stored, next_part = _existing_rows(out)

    class_index = {c: i for i, c in enumerate(anns.classes)}
    summary = IngestSummary(str(out), str(old_path), str(rejects_path), {}, 0)
    todo: list[tuple[VideoEntry, int]] = []
    seen: set[tuple[str, str]] = set()
    ledger = rejects_path.open("a")

    def reject(entry: VideoEntry, reason: str) -> None:
        ledger.write(json.dumps({"path": entry.path, "split": entry.split, "reason": reason}))
        ledger.write("\n")
        ledger.flush()
        summary.rejected += 1
        kind = reason.split(":")[0].split(" (")[0]
        summary.reject_reasons[kind] = summary.reject_reasons.get(kind, 0) + 1

    # Cheap checks in the driver; decoding happens in tasks.
    for entry in anns.entries:
        key = (entry.split, video_id_of(entry.path))
        if key in stored or (entry.split, entry.path) in rejected_keys:
            summary.skipped += 1
            continue
        if key in seen:
            reject(entry, f"duplicate: video id {key[1]!r} is already listed in split {key[0]}")
            continue
        seen.add(key)
        file = source / entry.path
        if entry.label_name not in class_index:
            reject(entry, f"unknown class {entry.label_name!r}: not among the dataset's classes")
        elif not file.exists():
            reject(entry, f"missing file: {file} does not exist")
        elif not file.is_file():
            reject(entry, f"not a video: {file} is not a regular file")
        elif file.stat().st_size == 0:
            reject(entry, "empty file (0 bytes)")
        else:
            todo.append((entry, class_index[entry.label_name]))

    # Shards hold their rows in a fixed pseudo-random order, not the list's (UCF101's lists
    # go class by class): per epoch the pipeline only reorders blocks of rows and mixes them
    # in a local buffer, which cannot mix classes that every block lacks.
    random.Random(0).shuffle(todo)
    schema = shard_schema(params.short_sides, flow=bool(params.flow))
    buffers: dict[str, list[dict]] = {}

    def flush(split_name: str) -> None:
        rows = buffers.pop(split_name, [])
        if not rows:
            return
        split_dir = out / split_name
        split_dir.mkdir(exist_ok=True)
        number = next_part.get(split_name, 0)
        next_part[split_name] = number + 1
        path = split_dir / f"part-{number:05d}.parquet"
        table = pa.Table.from_pylist(rows, schema=schema)
        # Small row groups let Ray Data read a part in parallel pieces.
        pq.write_table(table, str(path) + ".tmp", row_group_size=16)
        os.replace(str(path) + ".tmp", path)
        if on_part_written is not None:
            on_part_written(path)

    if todo and not ray.is_initialized():
        ray.init(log_to_driver=False)
    remote = ray.remote(num_cpus=1, max_retries=1)(_encode_task)
    cpus = ray.available_resources().get("CPU", 1) if todo else 1  # no Ray when all is done
    limit = max_in_flight or max(2, 2 * int(cpus))
    bar = progress_bar(
        total=len(anns.entries),
        initial=len(anns.entries) - len(todo),
        desc=f"ingest {source.name}",
        unit="video",
        disable=not progress,
    )
    pending: dict = {}
    queue = list(reversed(todo))
    try:
        while queue or pending:
            while queue and len(pending) < limit:
                entry, label = queue.pop()
                pending[remote.remote(str(source), entry, label, params)] = entry
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                entry = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as err:  # the task's worker died twice: ledger, go on
                    result = {"reject": f"undecodable: the decoder process failed ({err})"}
                if "reject" in result:
                    reject(entry, result["reject"])
                else:
                    buffers.setdefault(entry.split, []).append(result)
                    summary.encoded += 1
                    if len(buffers[entry.split]) >= rows_per_part:
                        flush(entry.split)
                bar.update(1)
        for split_name in list(buffers):
            flush(split_name)
    finally:
        bar.close()
        ledger.close()

    all_rejects = _read_rejects(rejects_path)
    summary.splits = _count_rows(out)
    summary.rejected_total = len(all_rejects)
    manifest |= {
        "complete": True,
        "splits": summary.splits,
        "rejected": summary.rejected_total,
        "ingested_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    _write_manifest(out, manifest)
    summary.seconds = round(time.time() - start, 2)
    return summary
