"""The Ray Data clip pipeline: Parquet shards -> decode tasks -> uint8 clip rows.

A pass is one epoch of one rank's plan (:mod:`raylab.data.plan`): which videos, in which
order. Decode tasks on CPU nodes each take a few units of the plan (a unit: the rows of a
Parquet row group that fall in one shuffle window, :func:`task_spans` says how many units
a task takes), read those rows (only the columns a clip needs, and only the one rendition
it decodes from) and turn the videos into clip rows ``{clip: uint8 [T, H, W, 3], label,
video_id, view, error, position}``; each clip's draws come from ``(seed, epoch, video)``.
Rows arrive as tasks finish, and :func:`planned_batches` puts them back into the plan's
order before batching, so the batches of an epoch are a function of the seed. A Train
worker makes the uint8 clips float and normalises them on its device (a quarter of
float32's traffic through the object store). Evaluation views are not random: every
evaluation pass is the same.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from ray.data._internal.execution.execution_callback import ExecutionCallback
from ray.data.collate_fn import NumpyBatchCollateFn

from raylab.config import env_int
from raylab.data.clips import ClipConfig
from raylab.data.decode import open_flow, open_video, sample_views, scaled_size
from raylab.data.plan import Slot, batches_of, decode_units, eval_plan, train_plan
from raylab.data.sampling import sample_rng
from raylab.data.storage import Shards, flow_column, rendition_column

log = logging.getLogger(__name__)

FAILED = -1  # label and view of the placeholder row of a video that could not be decoded
# The ``error`` column: why a video failed, as UTF-8 bytes zero-padded to a fixed width, so
# that it travels in the tensor batches training reads (which drop string columns).
ERROR_BYTES = 256


def error_row(message: str) -> np.ndarray:
    """``message`` as an ``error`` cell: uint8 [ERROR_BYTES], cut short when longer."""
    data = message.encode("utf-8")[:ERROR_BYTES]
    row = np.zeros(ERROR_BYTES, np.uint8)
    row[: len(data)] = np.frombuffer(data, np.uint8)
    return row


def error_text(row) -> str:
    """The message of an ``error`` cell (a numpy array or a tensor); "" for a decoded row."""
    data = bytes(np.asarray(row.cpu() if hasattr(row, "cpu") else row, np.uint8))
    return data.rstrip(b"\0").decode("utf-8", errors="replace")


def describe_error(video_id: str, err: Exception) -> str:
    """One line naming the video and its decode error (decord's first line, without the
    clock time it starts with)."""
    first = (str(err).strip().splitlines() or [""])[0]
    if first.startswith("[") and "] " in first:
        first = first.split("] ", 1)[1]
    return f"video {video_id}: {type(err).__name__}: {first}"


class ClipTensors(NumpyBatchCollateFn):
    """Collate for ``iter_torch_batches``: the numeric columns as tensors, dtypes kept.

    ``video_id`` is a string column, which tensors cannot hold; training needs none of it
    and evaluation reads it with ``iter_batches``. Returning only tensors lets Ray pin the
    batch and move it to the worker's device on its prefetch thread.
    """

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        # Batches may be read-only views of the object store; tensors must own writable
        # memory, so those are copied (a few MB per batch, next to decoding it).
        return {
            k: torch.from_numpy(np.require(v, requirements="W"))
            for k, v in batch.items()
            if v.dtype.kind in "biuf"
        }


class ClipDecoder:
    """Callable for ``map_batches``: a batch of shard rows -> a batch of clip rows.

    Runs as stateless Ray tasks: their worker processes (with decord and torch already
    imported) are reused from pass to pass, where an actor pool would start new processes
    every epoch. A video that fails to decode (bytes damaged after ingest) costs only itself:
    a warning names its ``video_id`` and it yields one placeholder row (``label`` -1, ``view``
    -1, a black clip, its ``error`` saying why) that consumers drop and count, so the epoch's
    metrics say how many videos were lost; the rest of the batch goes on. Decoded rows have
    an all-zero ``error``.
    """

    def __init__(
        self, clip: ClipConfig, train: bool, column: str, seed: int, epoch: int = 0
    ) -> None:
        self.clip, self.train, self.column = clip, train, column
        self.seed, self.epoch = seed, epoch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        clip = self.clip
        clips, labels, ids, views, errors, positions = [], [], [], [], [], []
        # A video's place in its epoch's plan (see raylab.data.plan), on each of its rows.
        position = batch.get("position", np.full(len(batch["video_id"]), -1, np.int64))
        no_error = np.zeros(ERROR_BYTES, np.uint8)
        for i, video_id in enumerate(batch["video_id"]):
            video_id = str(video_id)
            h, w = scaled_size(
                int(batch["height"][i]), int(batch["width"][i]), clip.working_short_side
            )
            try:
                if clip.modality == "flow":  # x | y side by side: twice as wide
                    reader = open_flow(batch[self.column][i], height=h, width=w)
                else:
                    reader = open_video(batch[self.column][i], height=h, width=w)
                rng = sample_rng(self.seed, self.epoch, video_id)
                out = sample_views(reader, clip, rng, self.train)
            except Exception as err:  # damaged bytes: lose this sample, not the epoch
                log.warning("skipping video %s: cannot decode its clip (%s)", video_id, err)
                blank = np.zeros((clip.frames, clip.size, clip.size, clip.channels), np.uint8)
                out, label, error = [blank], FAILED, error_row(describe_error(video_id, err))
            else:
                label, error = int(batch["label"][i]), no_error
            for v, view in enumerate(out):
                clips.append(view)
                labels.append(label)
                ids.append(video_id)
                views.append(v if label != FAILED else FAILED)
                errors.append(error)
                positions.append(position[i])
        shape = (0, clip.frames, clip.size, clip.size, clip.channels)
        return {
            "clip": np.stack(clips) if clips else np.zeros(shape, np.uint8),
            "label": np.asarray(labels, dtype=np.int64),
            "video_id": np.asarray(ids, dtype=object),
            "view": np.asarray(views, dtype=np.int32),
            "error": np.stack(errors) if errors else np.zeros((0, ERROR_BYTES), np.uint8),
            "position": np.asarray(positions, dtype=np.int64),
        }


def shard_files(shards: str | Path | Shards, split: str) -> list[str]:
    """The Parquet parts of one split, sorted (URIs when ``shards`` is one); a clear error
    when the split is absent (:meth:`~raylab.data.storage.Shards.files`)."""
    return Shards.open(shards).files(split)


def row_groups(shards: str | Path | Shards, split: str) -> list[dict]:
    """``{"file", "row_group", "rows"}`` for every Parquet row group of a split: the unit a
    decode task reads (ingest writes 16 videos a group). Reads only the parts' footers."""
    import pyarrow.parquet as pq

    shards = Shards.open(shards)
    groups = []
    for file in shards.files(split):
        with shards.open_file(file) as f:
            meta = pq.ParquetFile(f).metadata
        groups.extend(
            {"file": file, "row_group": g, "rows": meta.row_group(g).num_rows}
            for g in range(meta.num_row_groups)
        )
    return groups


class UnitDecoder:
    """Callable for ``map_batches``: decode units of a plan (see
    :func:`raylab.data.plan.decode_units`) -> clip rows of their videos, each tagged with
    its video's ``position`` in the plan.

    Reading inside the decode task keeps video bytes out of the object store and leaves no
    separate read tasks to compete with decoding for CPUs; an epoch's first clips wait only
    for one unit's read and decode, however large the split. Only the rows a unit names are
    decoded: a resumed epoch never decodes the clips it trained before it stopped.
    """

    def __init__(self, decoder: ClipDecoder, columns: list[str], shards: Shards) -> None:
        """``shards``: the folder of the units' files (its filesystem, opened once a task)."""
        self.decoder, self.columns, self.shards = decoder, columns, shards

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pyarrow.parquet as pq

        tables, positions = [], []
        units = zip(
            batch["file"], batch["row_group"], batch["rows"], batch["positions"], strict=True
        )
        for file, group, rows, pos in units:
            with self.shards.open_file(str(file)) as f:
                table = pq.ParquetFile(f).read_row_group(int(group), columns=self.columns)
            tables.append(table.take(pa.array(np.asarray(rows, dtype=np.int64))))
            positions.extend(int(p) for p in pos)
        rows = pa.concat_tables(tables)
        videos = {name: rows.column(name).to_numpy() for name in self.columns}
        return self.decoder(videos | {"position": np.asarray(positions, np.int64)})


def unit_decoder(shards: Shards, clip: ClipConfig, train: bool, seed: int, epoch: int):
    """The :class:`UnitDecoder` of ``clip``'s views of epoch ``epoch``: it reads the one
    column a clip decodes from (its rendition's, or its optical flow's)."""
    manifest = shards.manifest
    rendition = clip.rendition(manifest.renditions)
    column = rendition_column(rendition)
    if clip.modality == "flow":
        if not manifest.flow:
            raise ValueError(f"{shards} holds no optical flow: ingest it with --flow tvl1")
        column = flow_column(rendition)
    columns = ["video_id", "label", "height", "width", column]
    return UnitDecoder(ClipDecoder(clip, train, column, seed, epoch), columns, shards)


# A CPU that both want gives a thread at nice 10 about a tenth of the time of one at 0
# (Linux's weights), and an idle one all of it. Decoded at 0 on two cores, a demo STM's
# first epoch (jobs/train.py) ended 0.6-1.4 s later than without the head start; at 10,
# 0-0.4 s later, its first pass no longer waiting for clips.
HEAD_START_NICE = 10


def _decode_in_turn(decoder: UnitDecoder, units: dict, turn: bool | None) -> tuple[dict, bool]:
    """One task of :func:`decode_ahead`: its clip rows, and a token the next task waits on
    (``turn``: the token of the one before, which this task waited on). It decodes on a
    thread of its own, ``HEAD_START_NICE`` nicer (Linux sets it per thread, and the
    decoder's own threads inherit it): on a machine where the run's processes are
    starting, they come first."""
    import threading

    out: list = []

    def decode() -> None:
        if sys.platform == "linux":  # elsewhere it would be the whole process's
            me = threading.get_native_id()
            with contextlib.suppress(OSError):
                nice = os.getpriority(os.PRIO_PROCESS, me) + HEAD_START_NICE
                os.setpriority(os.PRIO_PROCESS, me, min(nice, 19))
        try:
            out.append(decoder(units))
        except BaseException as err:  # noqa: BLE001 - raised in the task
            out.append(err)

    thread = threading.Thread(target=decode)
    thread.start()
    thread.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0], True


def decode_ahead(
    shards: Shards,
    clip: ClipConfig,
    plans: list[list[Slot]],
    *,
    videos: int,
    groups: list[dict],
    window: int,
    seed: int,
    epoch: int = 0,
    decoder_cpus: float = 1.0,
    decoder_resource: str | None = None,
) -> list[list]:
    """The first ``videos`` videos of each of ``plans`` (each rank's training plan of
    epoch ``epoch``) decoded by Ray tasks started now, before any pass is read: for each
    plan, the refs of its clip blocks (:func:`clip_dataset`'s rows, the same clips),
    which :func:`planned_batches` takes before its pass's own.

    The tasks run one after another, each waiting on a token of the one before (a
    dependency whose bytes are nothing), the plans' first tasks first: the run's start
    keeps the other CPUs, and the Train workers the one each reserves, while one decoder's
    worth of CPU decodes. Each task is named ``DecodeAhead(UnitDecoder)``."""
    import ray

    decoder = unit_decoder(shards, clip, True, seed, epoch)
    task = ray.remote(_decode_in_turn).options(
        num_returns=2,
        num_cpus=decoder_cpus,
        resources={decoder_resource: 1} if decoder_resource else None,
        name="DecodeAhead(UnitDecoder)",
        # Not in the caller's placement group (a search trial's holds no CPU): placed as
        # the pass's own decode tasks are.
        scheduling_strategy="DEFAULT",
    )
    most = max(1, task_videos(clip, True) // UNIT_VIDEOS)
    tasks = []  # per plan, the units of each of its tasks
    for plan in plans:
        units = decode_units(plan[:videos], groups, window=window, videos=UNIT_VIDEOS)
        windows = [u["positions"][0] // max(1, window) for u in units]
        tasks.append([units[a:b] for a, b in task_spans(windows, most)])
    blocks: list[list] = [[] for _ in plans]
    turn = None
    for i in range(max((len(t) for t in tasks), default=0)):
        for rank, spans in enumerate(tasks):
            if i < len(spans):
                units = {key: [u[key] for u in spans[i]] for key in spans[i][0]}
                block, turn = task.remote(decoder, units, turn)
                blocks[rank].append(block)
    return blocks


# What one decode task takes on. A task has a fixed cost of some 20 ms of CPU, shared by
# the decode process, Ray Data's bookkeeping in the process that reads the pass (the
# trainer's) and the raylet, and so does each block a task hands on: tasks of one unit
# (8 videos) cost 2.3 ms a clip more than tasks of a window (benchmarks/data_throughput.py).
# Bounded in bytes, because a task holds its clips twice (the rows, then its output
# block), and in videos, which one decoder takes from the others at a pass's end.
TASK_BYTES = 64 * 2**20
TASK_VIDEOS = 64
UNIT_VIDEOS = 8  # videos of one decode unit at most (decode_units)


def task_videos(clip: ClipConfig, train: bool) -> int:
    """The most videos a decode task takes by default: as many whole units as
    ``TASK_BYTES`` of decoded views hold (at least one unit, at most ``TASK_VIDEOS``
    videos); or as many as the environment's ``RAYLAB_TASK_VIDEOS`` says (8 was every
    task's size before)."""
    if fixed := env_int("RAYLAB_TASK_VIDEOS", 0):  # 0 or unset: by the bytes
        return fixed
    video_bytes = clip.views(train) * clip.frames * clip.size**2 * clip.channels
    units = min(TASK_BYTES // (UNIT_VIDEOS * video_bytes), TASK_VIDEOS // UNIT_VIDEOS)
    return UNIT_VIDEOS * max(1, units)


def task_spans(windows: list[int], most: int) -> list[tuple[int, int]]:
    """How a pass's units are cut into decode tasks, as ``[start, end)`` spans of the units
    in plan order, given each unit's shuffle window: a unit a task in the pass's first
    window, so that its first batch waits for little, then a task a window (in equal parts
    when it has more than ``most`` units).

    A task hands on its rows when it ends, and a window's videos are spread over its units
    (each the videos of one row group), so a task that held part of a window would hold
    back rows the trainer needs next (tasks cut across windows made it wait longer than
    tasks of a unit did, docs/results.md); a whole window decodes while the trainer trains
    on the one before.
    """
    spans: list[tuple[int, int]] = []
    start = 0
    while start < len(windows):
        end = start + 1
        while end < len(windows) and windows[end] == windows[start]:
            end += 1
        if windows[start] == windows[0]:
            spans.extend((i, i + 1) for i in range(start, end))
        else:  # the window in equal parts of at most ``most`` units
            parts = -(-(end - start) // max(1, most))
            cuts = [start + (end - start) * k // parts for k in range(parts + 1)]
            spans.extend(zip(cuts[:-1], cuts[1:], strict=True))
        start = end
    return spans


# The shortest step of Ray Data's scheduling loop in a pass's consuming process, once it
# has taken QUICK_STEPS steps in a row that were shorter.
LOOP_STEP_S = 0.02
QUICK_STEPS = 5


class PacedSchedulingLoop(ExecutionCallback):
    """Ray Data's scheduling loop waits on its running tasks, but once a pass's decoding
    has run ahead of a slower trainer (every task done, or done and held back until the
    trainer takes its batches) it does not wait at all and spins, holding the GIL and a
    core that the trainer, in the same process, needs: on two cores the demo search's first
    T3D trained 7 clips/s so, 19-20 paced (docs/results.md, "Ray Data's spinning
    scheduling loop"). Paced, once ``QUICK_STEPS`` steps in a row took less than
    ``LOOP_STEP_S``, a step starts at most every ``LOOP_STEP_S`` until one waits on a task
    again; each step takes every finished task and dispatches what it can. A few quick
    steps are how the loop hands a finished task's slot to the next task: pacing every
    step cost a pass bound by decoding (as a GPU trainer's is) 7% of its clips/s
    (``benchmarks/data_throughput.py``)."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self._quick = 0

    def on_execution_step(self, executor) -> None:
        now = time.monotonic()
        self._quick = self._quick + 1 if now - self._last < LOOP_STEP_S else 0
        if self._quick >= QUICK_STEPS:
            time.sleep(max(0.0, self._last + LOOP_STEP_S - now))
            now = time.monotonic()
        self._last = now


def clip_dataset(
    shards: str | Path | Shards,
    split: str,
    clip: ClipConfig,
    *,
    train: bool = True,
    seed: int = 0,
    epoch: int = 0,
    plan: list[Slot] | None = None,
    start: int = 0,
    window: int = 64,
    groups: list[dict] | None = None,
    decoders: int | None = None,
    decoder_cpus: float = 1.0,
    decoder_resource: str | None = None,
    videos_per_task: int | None = None,
    paced: bool = True,
):
    """A ``ray.data.Dataset`` of ``clip``'s rows of one epoch's pass over one split of an
    ingested shard folder (a location, or the :class:`~raylab.data.storage.Shards` opened
    from it, whose manifest is then not read again), delivered in the order of the decode
    units of its plan.

    ``train=True``: one sampled, scale-jittered view per video, drawn from ``(seed, epoch,
    video)`` (:func:`~raylab.data.sampling.sample_rng`); ``plan`` (see
    :mod:`raylab.data.plan`) says which videos and in which order, from position ``start``;
    by default the whole split for one worker in epoch ``epoch``'s order, shuffled in
    windows of ``window`` videos. ``train=False``: ``clip.test_clips`` x ``clip.test_crops``
    deterministic views per video (``view`` numbers them), by default every video once.
    Each row carries its video's ``position`` in the plan: :func:`planned_batches` puts the
    rows back into plan order. ``groups``: the split's :func:`row_groups`, when the caller
    has read them already. ``decoders`` caps the decode tasks running at once (None: as
    many as free CPUs allow, which on a cluster means every CPU node decodes); each
    reserves ``decoder_cpus``, and one unit of the custom resource ``decoder_resource`` when
    given, which keeps decoding on the nodes that advertise it (cluster.yaml's decoder
    nodes). Ray Data counts a finished task against the cap until it has collected the
    task's output: a cap of one task per core kept ~1.2 running on two cores
    (``benchmarks/data_throughput.py``), so cap above the number meant to run.
    ``videos_per_task``: the most videos a decode task takes, as whole units of up to 8 (at
    least one unit; a pass's first tasks take one, :func:`task_spans`); by default
    :func:`task_videos`. Rows leave a task at a time, in the order tasks finish:
    :func:`planned_rows` puts them in the plan's order. ``paced``: Ray Data's scheduling
    loop is paced while it spins (:class:`PacedSchedulingLoop`); off only to measure what
    that costs.
    """
    import ray

    shards = Shards.open(shards)
    decoder = unit_decoder(shards, clip, train, seed, epoch)
    groups = groups if groups is not None else row_groups(shards, split)
    if plan is None:
        rows = [g["rows"] for g in groups]
        plan = train_plan(rows, seed=seed, epoch=epoch, window=window) if train else eval_plan(rows)
    units = decode_units(plan, groups, start=start, window=window, videos=UNIT_VIDEOS)
    most = max(1, (videos_per_task or task_videos(clip, train)) // UNIT_VIDEOS)
    windows = [u["positions"][0] // max(1, window) for u in units]
    # One block per task, holding whole units; a unit's few bytes are a task's whole input:
    # it reads its videos itself. Made here, with no task: from_arrow asks remote tasks for
    # the blocks' metadata and waits for them, and a pass started while decode tasks hold
    # every CPU of the trial then waited on them while they waited on it.
    if units:
        ds = ray.data.from_blocks(
            [pa.Table.from_pylist(units[a:b]) for a, b in task_spans(windows, most)]
        )
    else:
        ds = ray.data.from_items([])
    # Units leave as their tasks finish; planned_rows puts their rows in the plan's order
    # (Ray Data's preserve_order held every unit behind the slowest earlier one: at two
    # workers on two cores, 25% fewer clips/s; benchmarks/determinism_cost.py).
    decoded = ds.map_batches(
        decoder,
        batch_size=None,  # a block, one task's units, at once
        batch_format="numpy",
        compute=ray.data.TaskPoolStrategy(size=decoders),
        num_cpus=decoder_cpus,
        resources={decoder_resource: 1} if decoder_resource else None,
    )
    if paced:
        decoded.context.custom_execution_callback_classes.append(PacedSchedulingLoop)
    return decoded


def planned_rows(
    blocks, start: int, end: int, views: int = 1, on_delivered: Callable[[], None] | None = None
):
    """The rows of an epoch's pass (numpy batches of :func:`clip_dataset`'s rows, in any
    order), one by one in plan order from video position ``start`` to ``end``: a video's
    ``views`` rows together, in view order (a video that failed to decode has one
    placeholder row), each video held back until every earlier one has been handed over. A
    position that never arrives is an error, not a silent skip. ``on_delivered`` is called
    once a row of every video has arrived (at once when there are none), before the rows
    still held are handed over."""
    held: dict[int, list[dict]] = {}
    nxt = start
    arrived: set[int] = set()
    if on_delivered is not None and end == start:  # nothing to wait for
        on_delivered()
        on_delivered = None

    def whole(pos: int) -> bool:
        rows = held.get(pos, ())
        return len(rows) == views or any(r["view"] == FAILED for r in rows)

    for block in blocks:
        for i, pos in enumerate(block["position"]):
            held.setdefault(int(pos), []).append({k: v[i] for k, v in block.items()})
            arrived.add(int(pos))
        if on_delivered is not None and len(arrived) == end - start:
            on_delivered()
            on_delivered = None
        while whole(nxt):
            yield from sorted(held.pop(nxt), key=lambda r: int(r["view"]))
            nxt += 1
    if nxt != end or held:
        raise RuntimeError(
            f"the epoch's plan stopped at video {nxt} of {end} ({len(held)} videos out of order)"
        )


def planned_batches(
    ds,
    batch_size: int,
    start: int,
    end: int,
    views: int = 1,
    prefetch_blocks: int = 2,
    on_delivered: Callable[[], None] | None = None,
    ahead: list | None = None,
):
    """:func:`clip_dataset`'s pass as numpy batches of ``batch_size`` rows in plan order, from
    video position ``start`` to ``end`` (the last batch may be shorter); ``views`` rows a
    video. ``on_delivered`` is called once every decode task's rows have arrived, before
    the last batches are handed over (the moment to start the next pass's decoding).
    ``ahead``: refs of the pass's blocks decoded before it (:func:`decode_ahead`), taken
    first; ``ds`` then holds the rest of the pass."""
    blocks = ds.iter_batches(
        batch_size=None, batch_format="numpy", prefetch_batches=prefetch_blocks
    )
    if ahead:
        blocks = _after(ahead, blocks, prefetch_blocks)
    return batches_of(planned_rows(blocks, start, end, views, on_delivered), batch_size)


def _after(refs: list, blocks: Iterator[dict], depth: int) -> Iterator[dict]:
    """The blocks of ``refs``, then ``blocks``, whose pass starts now: a thread reads them,
    ``depth`` ahead, while ``refs``' are handed over (Ray Data holds the rest back)."""
    import ray

    rest = ReadAhead(blocks, depth)
    for ref in refs:
        yield ray.get(ref)
    yield from rest


class ReadAhead:
    """An iterator's items, read by a thread from the moment this is made, up to ``depth``
    ahead of the consumer; its errors are raised to the consumer where they arose."""

    _END = object()

    def __init__(self, items: Iterator, depth: int = 2) -> None:
        import queue
        import threading

        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._read, args=(items,), daemon=True)
        self._thread.start()

    def _read(self, items: Iterator) -> None:
        try:
            for item in items:
                self._queue.put(item)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            self._queue.put(err)
            return
        self._queue.put(self._END)

    def __iter__(self) -> Iterator:
        while (item := self._queue.get()) is not self._END:
            if isinstance(item, BaseException):
                raise item
            yield item
