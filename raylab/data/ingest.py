"""Source videos -> re-encoded renditions -> Parquet shards, a manifest and a rejects ledger.

Every listed video ends in exactly one place: a shard row (``SHARDS/<split>/part-*.parquet``)
or a line of ``SHARDS/rejects.jsonl`` with its path, split and a reason a person can act
on. Videos are decoded with PyAV (anything FFmpeg reads) and re-encoded as H.264 at each
rendition's short side with a short, fixed key-frame interval and no B-frames, so that
decoding a clip costs little more than the clip itself.

Renditions hold what a player shows: rotation and mirror tags applied, non-square pixels
stretched to their displayed width, hidden frames (VP9 alt-ref) left out, every shown frame
kept at the shown frames' average rate (see :func:`encode_video`).

Ingest runs one Ray task per video. Shard parts are written atomically (temporary name,
then rename) and rejects are appended as they come, so an interrupted ingest re-run with
the same arguments skips what is recorded and finishes the rest: nothing is encoded twice
and nothing is duplicated.

Only a video's own fault rejects it. A task that fails for any other reason (its worker or
node died, the cluster went away, memory ran out, an error in the encoder) is no verdict on
the video: Ray retries a lost task, and what still fails is listed in
``SHARDS/not_processed.jsonl``, the manifest stays incomplete and :class:`IngestIncomplete`
is raised. A failure of the cluster stops the run at once; the next run retries the rest.
"""

from __future__ import annotations

import functools
import io
import json
import os
import random
import time
from collections.abc import Callable
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
from raylab.data.storage import (
    SCHEMA_VERSION,
    copy_file,
    finished_files,
    flow_column,
    is_uri,
    rendition_column,
    shard_schema,
    staging_dir,
    storage,
    upload_shards,
    write_manifest,
)
from raylab.progress import progress_bar

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


@functools.cache
def x264_asm() -> str:
    """x264's ``asm`` option that holds it to its AVX2 routines on a CPU with AVX-512, else "".

    With its AVX-512 routines x264 now and then encodes the same frames to other bytes (on a
    2-core AMD EPYC, 3-6 of 16 runs of 16 videos in Ray tasks; valgrind sees
    ``x264_encoder_encode`` read uninitialised stack), so a rendition, or a generated video,
    would not be a function of its frames. The AVX2 routines gave the same bytes every run,
    and the bytes the AVX-512 ones give when they agree.
    """
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return ""
    return "asm=avx2" if {"avx2", "avx512f"} <= flags else ""


def x264_options(params: str = "") -> dict[str, str]:
    """libx264's ``x264-params`` option: ``params`` (``key=value:...``) and :func:`x264_asm`;
    empty when both are."""
    joined = ":".join(filter(None, [params, x264_asm()]))
    return {"x264-params": joined} if joined else {}


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
        **x264_options(f"keyint={k}:min-keyint={k}:scenecut=0:bframes=0"),
    }
    stream.codec_context.thread_count = 1
    return buf, out, stream


@dataclass(frozen=True)
class Orientation:
    """How to turn stored pixels into displayed ones: transpose, then flip rows / columns."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    def __bool__(self) -> bool:
        return self.transpose or self.flip_rows or self.flip_cols

    def apply(self, image: np.ndarray) -> np.ndarray:
        """``image`` (rows, columns, ...) as displayed."""
        if self.transpose:
            image = image.swapaxes(0, 1)
        if self.flip_rows:
            image = image[::-1]
        if self.flip_cols:
            image = image[:, ::-1]
        return image


def orientation_of(matrix: np.ndarray | None) -> Orientation:
    """The orientation an FFmpeg display matrix (9 int32, row-major) asks for.

    The matrix maps a stored pixel (x, y) to a displayed one (x', y') with x' = a x + c y,
    y' = b x + d y (y down). Players rotate by any angle; a video frame can only turn by
    quarter turns, so an angle in between is taken to the nearest quarter turn.
    """
    if matrix is None:
        return Orientation()
    a, b, c, d = (float(v) for v in np.asarray(matrix, dtype=np.int64)[[0, 1, 3, 4]])
    if a == b == c == d == 0:  # degenerate: ignore, as players do
        return Orientation()
    if abs(a) + abs(d) >= abs(b) + abs(c):
        return Orientation(flip_cols=a < 0, flip_rows=d < 0)
    # Transposed: x' comes from y (sign of c), y' from x (sign of b).
    return Orientation(transpose=True, flip_rows=b < 0, flip_cols=c < 0)


def _display_matrix(frame: av.VideoFrame) -> np.ndarray | None:
    # Looked up by name: iterating the side data yields the entries in PyAV 18.1.0 but their
    # types from 18.1.1 on; the mapping lookup is the same in both.
    side = frame.side_data.get("DISPLAYMATRIX")
    return None if side is None else np.frombuffer(bytes(side), dtype=np.int32)


def _orient_frame(frame: av.VideoFrame, orientation: Orientation) -> av.VideoFrame:
    """``frame`` (a planar format such as yuv420p) turned plane by plane, without a colour
    conversion."""
    planes = [np.ascontiguousarray(orientation.apply(np.from_dlpack(p))) for p in frame.planes]
    return av.VideoFrame.from_dlpack(planes, format=frame.format.name)


def _retime(video: bytes, frame_rate: Fraction) -> bytes:
    """The MP4 ``video`` with its frames at ``frame_rate``: the same packets, re-stamped."""
    buf = io.BytesIO()
    with av.open(io.BytesIO(video)) as src, av.open(buf, mode="w", format="mp4") as out:
        stream = src.streams.video[0]
        dst = out.add_stream_from_template(stream)
        # No B-frames: decode order is display order, so packet i is frame i.
        for i, packet in enumerate(p for p in src.demux(stream) if p.size):
            packet.pts = packet.dts = i
            packet.duration = 1
            packet.time_base = 1 / frame_rate
            packet.stream = dst
            out.mux(packet)
    return buf.getvalue()


def encode_video(path: Path, params: EncodeParams) -> dict:
    """Decode ``path`` and re-encode it at every rendition, as a player displays it.

    Returns ``num_frames``, ``fps``, ``height``, ``width`` and one bytes value per rendition
    column. Raises :class:`Rejected` with the reason when the file is empty, not a video,
    truncated or undecodable, or has no frames.

    What is stored is what a player shows. A rotation or mirror tag (the display matrix
    phones write beside landscape pixels) is applied to the pixels; non-square pixels
    (a sample aspect ratio other than 1) are stretched to their displayed width; ``height``
    and ``width`` are the displayed size. ``num_frames`` counts the frames the decoder
    outputs: hidden frames (VP9's alt-ref) are no frames, though a container may list them.
    Frames are stored at one constant rate, all of them, in order; ``fps`` is the source's
    average rate over its displayed frames (for a variable-rate video, its mean).
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
        orientation = Orientation()
        n = packets = 0
        height = width = 0
        first_time = last_time = None
        try:
            for packet in container.demux(stream):
                packets += packet.size > 0
                for frame in packet.decode():
                    if not encoders:
                        orientation = orientation_of(_display_matrix(frame))
                        height, width = _displayed_size(stream, frame, orientation)
                        encoders = [
                            (s, *_new_encoder(s, height, width, rate, params))
                            for s in params.short_sides
                        ]
                        if params.flow:
                            flows = [
                                FlowEncoder(params.flow, s, height, width, rate, params)
                                for s in params.short_sides
                            ]
                    if frame.time is not None:
                        first_time = frame.time if first_time is None else first_time
                        last_time = frame.time
                    for i, (_, _, muxer, enc) in enumerate(encoders):
                        # Scale to the rendition's size before turning it: cheaper.
                        w, h = (
                            (enc.height, enc.width)
                            if orientation.transpose
                            else (
                                enc.width,
                                enc.height,
                            )
                        )
                        small = frame.reformat(width=w, height=h, format=params.pix_fmt)
                        if orientation:
                            small = _orient_frame(small, orientation)
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
        # data ends early; tolerate the off-by-a-few counts some muxers write. Packets, not
        # frames: hidden frames are listed and read but never shown.
        if expected and packets < expected - max(2, expected // 20):
            raise Rejected(f"truncated: the container lists {expected} frames, {packets} read")
        shown_rate = _average_rate(n, first_time, last_time)
        result: dict = {"num_frames": n, "height": height, "width": width}
        # The container's rate counts hidden frames and guesses for variable-rate video:
        # when the displayed frames' own rate differs, re-stamp the stored frames with it.
        retime = shown_rate is not None and abs(shown_rate / rate - 1) > 0.005
        final_rate = shown_rate if retime else rate
        result["fps"] = float(final_rate)
        for short_side, buf, out, enc in encoders:
            out.mux(enc.encode())
            out.close()
            video = buf.getvalue()
            result[rendition_column(short_side)] = _retime(video, final_rate) if retime else video
        for short_side, flow in zip(params.short_sides, flows, strict=False):
            video = flow.finish()
            result[flow_column(short_side)] = _retime(video, final_rate) if retime else video
        return result


def _displayed_size(stream, frame: av.VideoFrame, orientation: Orientation) -> tuple[int, int]:
    """(height, width) a player shows: non-square pixels stretched in width, then turned."""
    height, width = frame.height, frame.width
    aspect = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    if aspect and aspect > 0 and aspect != 1:
        width = max(2, round(width * aspect))
    return (width, height) if orientation.transpose else (height, width)


def _average_rate(n: int, first: float | None, last: float | None) -> Fraction | None:
    """Frames per second over ``n`` displayed frames spanning ``first`` .. ``last`` seconds
    (the span from the first frame's start to the last's); None when the timestamps say
    nothing."""
    if n < 2 or first is None or last is None or last <= first:
        return None
    return Fraction((n - 1) / (last - first)).limit_denominator(1001)


class IngestIncomplete(RuntimeError):
    """Some videos were not processed, for reasons that are not theirs; re-run to finish."""

    def __init__(self, summary: IngestSummary, first_error: str) -> None:
        self.summary = summary
        super().__init__(
            f"ingest into {summary.out} stopped: {summary.not_processed} videos not processed "
            f"(first error: {first_error}); they are listed in {summary.not_processed_path}. "
            "Nothing was rejected for it: re-run the same command once the cluster is healthy"
        )


# A task failure that is the infrastructure's (worker, node or cluster lost, memory): Ray has
# already retried the task; the run stops rather than fail every remaining video the same way.
def _cluster_failed(err: BaseException) -> bool:
    import ray.exceptions

    return not isinstance(err, ray.exceptions.RayTaskError)


# Ledgers written before only a video's own fault rejected it: these reasons are retried.
_NOT_A_VERDICT = ("undecodable: the decoder process failed",)


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
    not_processed: int = 0
    not_processed_path: str = ""
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


def _ingests_to_uris(ingest_fn: Callable[..., IngestSummary]) -> Callable[..., IngestSummary]:
    """Lets ``ingest`` write to a URI (s3://, gs://): the shards are written in a local
    staging folder (:func:`staging_dir`), each part uploaded as soon as it is written, and
    the ledger and manifest at the end. The staging folder is what a re-run resumes from; on
    a machine without one it is first filled from the store, so nothing is encoded twice."""
    import functools

    @functools.wraps(ingest_fn)
    def wrapper(source, fmt, out, *args, **kwargs) -> IngestSummary:
        if not is_uri(out):
            return ingest_fn(source, fmt, out, *args, **kwargs)
        import pyarrow.fs

        location = str(out).rstrip("/")
        fs, root = storage(location)
        root = root.rstrip("/")
        local = staging_dir(location)
        if not (local / "manifest.json").exists():
            for name in finished_files(fs, root):
                (local / name).parent.mkdir(parents=True, exist_ok=True)
                copy_file(fs, f"{root}/{name}", pyarrow.fs.LocalFileSystem(), str(local / name))
        also = kwargs.pop("on_part_written", None)

        def upload_part(path: Path) -> None:
            relative = path.relative_to(local).as_posix()
            copy_file(pyarrow.fs.LocalFileSystem(), str(path), fs, f"{root}/{relative}")
            if also is not None:
                also(path)

        def in_store(summary: IngestSummary) -> IngestSummary:
            upload_shards(local, fs, root)  # an incomplete manifest too: readers must not trust it
            listed = f"{root}/not_processed.jsonl"
            all_processed = not (local / "not_processed.jsonl").exists()
            if all_processed and "not_processed.jsonl" in finished_files(fs, root):
                fs.delete_file(listed)  # an earlier run's list, all processed now
            summary.out = location
            summary.manifest = f"{location}/manifest.json"
            summary.rejects = f"{location}/rejects.jsonl"
            summary.not_processed_path = f"{location}/not_processed.jsonl"
            return summary

        try:
            summary = ingest_fn(source, fmt, local, *args, on_part_written=upload_part, **kwargs)
        except IngestIncomplete as err:
            in_store(err.summary)
            raise
        return in_store(summary)

    return wrapper


def _encode_task(source: str, entry: VideoEntry, label: int, params: EncodeParams) -> dict:
    """One video's shard row, or ``{"reject": reason}``; runs as a Ray task."""
    try:
        encoded = encode_video(Path(source) / entry.path, params)
    except Rejected as err:
        return {"reject": str(err)}
    # Any other exception is no verdict on the video: it reaches the driver as a task error.
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
    import ray  # noqa: F401  (before the clock: ``seconds`` times the ingest, not this import)

    start = time.time()
    params = params or EncodeParams()
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise FileNotFoundError(f"video root {source} is not a folder")
    anns: Annotations = read_annotations(fmt, source, annotations, split)
    out.mkdir(parents=True, exist_ok=True)
    manifest = _open_manifest(out, fmt, source, split, anns.classes, params)
    stored, rejected, next_part = _prepare_resume(out)

    summary = IngestSummary(str(out), str(out / "manifest.json"), str(out / "rejects.jsonl"), {}, 0)
    summary.not_processed_path = str(out / "not_processed.jsonl")
    schema = shard_schema(params.short_sides, flow=bool(params.flow))
    parts = _PartWriter(out, schema, rows_per_part, next_part, on_part_written)
    with _RejectLedger(out / "rejects.jsonl", summary) as ledger:
        todo = _videos_to_encode(anns, source, stored, rejected, ledger, summary)
        submit, limit = _start_encoder(todo, source, params, max_in_flight)
        bar = progress_bar(
            total=len(anns.entries),
            initial=len(anns.entries) - len(todo),
            desc=f"ingest {source.name}",
            unit="video",
            disable=not progress,
        )
        with bar:
            unprocessed = _encode_in_order(todo, submit, limit, parts, ledger, bar, summary)

    _record_outcome(out, manifest, summary, unprocessed)
    summary.seconds = round(time.time() - start, 2)
    if unprocessed:
        raise IngestIncomplete(summary, _first_error(unprocessed))
    return summary


def _open_manifest(
    out: Path, fmt: str, source: Path, split: int, classes: list[str], params: EncodeParams
) -> dict:
    """Write this ingest's manifest, marked not complete, and return it.

    Shards already in ``out`` must come from the same encoding, classes and format, or a
    resume would mix incompatible rows: ValueError says so before anything is touched.
    Marking the manifest incomplete first means readers refuse the shards until the run
    finishes.
    """
    encoding = asdict(params) | {"short_sides": sorted(params.short_sides)}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "format": fmt,
        "source": str(source.resolve()),
        "annotation_split": split,
        "classes": classes,
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
    write_manifest(out, manifest)
    return manifest


def _prepare_resume(
    out: Path,
) -> tuple[set[tuple[str, str]], set[tuple[str, str]], dict[str, int]]:
    """What an earlier run into ``out`` already did: (split, video_id) of the stored rows,
    (split, path) of the rejected videos, and the next free part number per split.

    It also tidies what a killed run left: the ledger is rewritten without a half-written
    last line or a reason that is no verdict on the video (:data:`_NOT_A_VERDICT`: those
    videos are tried again), and half-written parts are deleted.
    """
    rejects_path = out / "rejects.jsonl"
    old_rejects = [
        r for r in _read_rejects(rejects_path) if not r["reason"].startswith(_NOT_A_VERDICT)
    ]
    rejects_path.write_text("".join(json.dumps(r) + "\n" for r in old_rejects))
    rejected = {(r["split"], r["path"]) for r in old_rejects}
    for stale in out.glob("*/part-*.parquet.tmp"):
        stale.unlink()
    stored, next_part = _existing_rows(out)
    return stored, rejected, next_part


class _RejectLedger:
    """``rejects.jsonl`` open for appending, one flushed line per rejected video, so a
    killed run keeps every verdict it reached; counts this run's rejects in the summary."""

    def __init__(self, path: Path, summary: IngestSummary) -> None:
        self.file = path.open("a")
        self.summary = summary

    def reject(self, entry: VideoEntry, reason: str) -> None:
        """Record ``entry`` as rejected for ``reason`` (a sentence a person can act on)."""
        self.file.write(json.dumps({"path": entry.path, "split": entry.split, "reason": reason}))
        self.file.write("\n")
        self.file.flush()
        self.summary.rejected += 1
        kind = reason.split(":")[0].split(" (")[0]
        self.summary.reject_reasons[kind] = self.summary.reject_reasons.get(kind, 0) + 1

    def __enter__(self) -> _RejectLedger:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def _videos_to_encode(
    anns: Annotations,
    source: Path,
    stored: set[tuple[str, str]],
    rejected: set[tuple[str, str]],
    ledger: _RejectLedger,
    summary: IngestSummary,
) -> list[tuple[VideoEntry, int]]:
    """The listed videos left to encode, with their class index, in a fixed shuffled order.

    Videos already stored or rejected are skipped (counted in ``summary.skipped``). The
    checks that need no decoding run here, in the driver, and reject a video listed twice,
    of an unknown class, missing, not a regular file or empty; decoding happens in tasks.
    """
    class_index = {c: i for i, c in enumerate(anns.classes)}
    todo: list[tuple[VideoEntry, int]] = []
    seen: set[tuple[str, str]] = set()
    for entry in anns.entries:
        key = (entry.split, video_id_of(entry.path))
        if key in stored or (entry.split, entry.path) in rejected:
            summary.skipped += 1
            continue
        if key in seen:
            ledger.reject(
                entry, f"duplicate: video id {key[1]!r} is already listed in split {key[0]}"
            )
            continue
        seen.add(key)
        file = source / entry.path
        if entry.label_name not in class_index:
            ledger.reject(
                entry, f"unknown class {entry.label_name!r}: not among the dataset's classes"
            )
        elif not file.exists():
            ledger.reject(entry, f"missing file: {file} does not exist")
        elif not file.is_file():
            ledger.reject(entry, f"not a video: {file} is not a regular file")
        elif file.stat().st_size == 0:
            ledger.reject(entry, "empty file (0 bytes)")
        else:
            todo.append((entry, class_index[entry.label_name]))

    # Shards hold their rows in a fixed pseudo-random order, not the list's (UCF101's lists
    # go class by class): per epoch the pipeline only reorders blocks of rows and mixes them
    # in a local buffer, which cannot mix classes that every block lacks.
    random.Random(0).shuffle(todo)
    return todo


def _start_encoder(
    todo: list[tuple[VideoEntry, int]],
    source: Path,
    params: EncodeParams,
    max_in_flight: int | None,
) -> tuple[Callable[[VideoEntry, int], object], int]:
    """How to start one video's encode task, and how many may be in flight at once.

    Ray is started (or joined) only when there is something to encode, so a re-run with
    nothing left to do needs no cluster. By default twice the cluster's CPUs are in
    flight: enough to keep every CPU busy while results travel back.
    """
    import ray

    if todo and not ray.is_initialized():
        ray.init(log_to_driver=False)
    # Ray re-runs a task whose worker or node died; an exception raised by the task itself
    # is not retried (the same bytes give the same error).
    remote = ray.remote(num_cpus=1, max_retries=3)(_encode_task)
    cpus = ray.available_resources().get("CPU", 1) if todo else 1  # no Ray when all is done
    limit = max_in_flight or max(2, 2 * int(cpus))

    def submit(entry: VideoEntry, label: int):
        return remote.remote(str(source), entry, label, params)

    return submit, limit


class _PartWriter:
    """Encoded rows into ``out/<split>/part-NNNNN.parquet``, ``rows_per_part`` at a time.

    Rows are stored in ``todo``'s order whatever order the tasks finish in: a video's
    result waits in ``arrived`` until every earlier one has come back (at most ``limit``
    are in flight), so the same videos make the same parts and row groups, and the epoch
    plan, which walks row groups, draws the same clips from a seed on every ingest of them.
    ``arrived`` maps a video's index in ``todo`` to its (split, row), or None when it made
    no row (rejected, or not processed).
    """

    def __init__(
        self,
        out: Path,
        schema: pa.Schema,
        rows_per_part: int,
        next_part: dict[str, int],
        on_part_written: Callable[[Path], None] | None,
    ) -> None:
        self.out, self.schema, self.rows_per_part = out, schema, rows_per_part
        self.next_part, self.on_part_written = next_part, on_part_written
        self.buffers: dict[str, list[dict]] = {}
        self.arrived: dict[int, tuple[str, dict] | None] = {}
        self.next_row = 0

    def store_in_order(self) -> None:
        """Buffer the rows that are next in order; write a part when one is full."""
        while self.next_row in self.arrived:
            row = self.arrived.pop(self.next_row)
            self.next_row += 1
            if row is not None:
                split_name, result = row
                self.buffers.setdefault(split_name, []).append(result)
                if len(self.buffers[split_name]) >= self.rows_per_part:
                    self.flush(split_name)

    def store_the_rest(self) -> None:
        """Buffer, in order, the rows held behind one that never came back (the run
        stopped)."""
        for index in sorted(self.arrived):
            self.next_row = index
            self.store_in_order()

    def flush(self, split_name: str) -> None:
        """Write the split's buffered rows as its next part: under a temporary name, then
        renamed, so a part on disk is always whole."""
        rows = self.buffers.pop(split_name, [])
        if not rows:
            return
        split_dir = self.out / split_name
        split_dir.mkdir(exist_ok=True)
        number = self.next_part.get(split_name, 0)
        self.next_part[split_name] = number + 1
        path = split_dir / f"part-{number:05d}.parquet"
        table = pa.Table.from_pylist(rows, schema=self.schema)
        # Small row groups let Ray Data read a part in parallel pieces.
        pq.write_table(table, str(path) + ".tmp", row_group_size=16)
        os.replace(str(path) + ".tmp", path)
        if self.on_part_written is not None:
            self.on_part_written(path)

    def flush_all(self) -> None:
        """Write every split's remaining rows."""
        for split_name in list(self.buffers):
            self.flush(split_name)


def _encode_in_order(
    todo: list[tuple[VideoEntry, int]],
    submit: Callable[[VideoEntry, int], object],
    limit: int,
    parts: _PartWriter,
    ledger: _RejectLedger,
    bar,
    summary: IngestSummary,
) -> list[dict]:
    """Encode ``todo`` in Ray tasks, at most ``limit`` at once, and store every row.

    Each result is a row (stored in order by ``parts``) or a reject (to the ledger). A task
    that fails for a reason not the video's own is no verdict: its video is returned as
    not processed. A failure of the cluster stops the run: the tasks in flight and those
    never started are not processed either, and the rows already back are still stored.
    Returns the ``not_processed.jsonl`` lines.
    """
    import ray

    unprocessed: list[dict] = []
    pending: dict = {}
    queue = list(reversed(list(enumerate(todo))))
    stopped = False
    while pending or (queue and not stopped):
        while queue and not stopped and len(pending) < limit:
            index, (entry, label) = queue.pop()
            pending[submit(entry, label)] = (index, entry)
        try:
            ready, _ = ray.wait(list(pending), num_returns=1)
        except Exception as err:  # the driver lost the cluster
            for index, entry in pending.values():
                unprocessed.append(_not_processed(entry, err))
                parts.arrived[index] = None
            pending.clear()
            stopped = True
            continue
        for ref in ready:
            index, entry = pending.pop(ref)
            parts.arrived[index] = None
            try:
                result = ray.get(ref)
            except Exception as err:
                unprocessed.append(_not_processed(entry, err))
                stopped = stopped or _cluster_failed(err)
                continue
            if "reject" in result:
                ledger.reject(entry, result["reject"])
            else:
                parts.arrived[index] = (entry.split, result)
                summary.encoded += 1
            bar.update(1)
        parts.store_in_order()
    parts.store_the_rest()
    for _, (entry, _) in queue:  # never started: the run stopped
        unprocessed.append(
            _not_processed(entry, "not started: the run stopped after a cluster failure")
        )
    parts.flush_all()
    return unprocessed


def _not_processed(entry: VideoEntry, err: BaseException | str) -> dict:
    """The ``not_processed.jsonl`` line of a video left undone: the error's first line,
    cut to 300 characters, or the exception's type when it says nothing."""
    error = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    error = error.strip().splitlines()[0][:300] if error.strip() else type(err).__name__
    return {"path": entry.path, "split": entry.split, "error": error}


def _record_outcome(
    out: Path, manifest: dict, summary: IngestSummary, unprocessed: list[dict]
) -> None:
    """Write what the run left: the list of videos not processed (or remove an earlier
    run's, all processed now), the totals in the summary, and the final manifest, complete
    only when every video is a row or a reject."""
    not_processed_path = Path(summary.not_processed_path)
    summary.not_processed = len(unprocessed)
    if unprocessed:
        not_processed_path.write_text("".join(json.dumps(r) + "\n" for r in unprocessed))
    elif not_processed_path.exists():
        not_processed_path.unlink()

    all_rejects = _read_rejects(out / "rejects.jsonl")
    summary.splits = _count_rows(out)
    summary.rejected_total = len(all_rejects)
    manifest |= {
        "complete": not unprocessed,
        "not_processed": len(unprocessed),
        "splits": summary.splits,
        "rejected": summary.rejected_total,
        "ingested_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_manifest(out, manifest)


def _first_error(unprocessed: list[dict]) -> str:
    """The error to show for a stopped run: the first task's own, not a "not started"."""
    first = next(
        (r for r in unprocessed if not r["error"].startswith("not started")), unprocessed[0]
    )
    return f"{first['path']}: {first['error']}"
