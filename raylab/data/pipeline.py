"""The Ray Data clip pipeline: Parquet shards -> decode tasks -> uint8 clip rows.

Decode tasks on CPU nodes each read a Parquet row group of shard rows (only the columns a
clip needs, and only the one rendition it decodes from) and turn its videos into clip rows
``{clip: uint8 [T, H, W, 3], label, video_id, view, error}``. In a Train worker,
``ray.train.get_dataset_shard("train").iter_torch_batches(collate_fn=ClipTensors(),
device=...)`` delivers them as uint8 tensors; the worker makes them float and normalises
them on its device (a quarter of float32's traffic through the object store).

Every pass over the dataset re-runs read + decode, so training clips are re-sampled each
epoch, and training visits the row groups in a new random order (ingest shuffled the videos
into them; the Train loop's local shuffle buffer mixes further). Give ``seed`` to replay
one exact pass instead (evaluation views are always the same: they are not random).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from raylab.data.decode import (
    ClipSpec,
    open_flow,
    open_video,
    sample_views,
    scaled_size,
)
from raylab.data.sampling import sample_rng
from raylab.data.storage import flow_column, load_manifest, rendition_column, storage

if TYPE_CHECKING:
    from raylab.config import ClipConfig

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

    def __init__(self, spec: ClipSpec, column: str, seed: int | None, epoch: int = 0) -> None:
        self.spec, self.column, self.seed, self.epoch = spec, column, seed, epoch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.spec
        # Without a seed every call draws from fresh OS entropy: each pass samples anew.
        fresh = np.random.default_rng() if self.seed is None else None
        clips, labels, ids, views, errors = [], [], [], [], []
        no_error = np.zeros(ERROR_BYTES, np.uint8)
        for i, video_id in enumerate(batch["video_id"]):
            video_id = str(video_id)
            h, w = scaled_size(
                int(batch["height"][i]), int(batch["width"][i]), spec.working_short_side
            )
            try:
                if spec.modality == "flow":  # x | y side by side: twice as wide
                    reader = open_flow(batch[self.column][i], height=h, width=w)
                else:
                    reader = open_video(batch[self.column][i], height=h, width=w)
                rng = fresh or sample_rng(self.seed, self.epoch, video_id)
                out = sample_views(reader, spec, rng)
            except Exception as err:  # damaged bytes: lose this sample, not the epoch
                log.warning("skipping video %s: cannot decode its clip (%s)", video_id, err)
                blank = np.zeros((spec.frames, spec.size, spec.size, spec.channels), np.uint8)
                out, label, error = [blank], FAILED, error_row(describe_error(video_id, err))
            else:
                label, error = int(batch["label"][i]), no_error
            for v, clip in enumerate(out):
                clips.append(clip)
                labels.append(label)
                ids.append(video_id)
                views.append(v if label != FAILED else FAILED)
                errors.append(error)
        shape = (0, spec.frames, spec.size, spec.size, spec.channels)
        return {
            "clip": np.stack(clips) if clips else np.zeros(shape, np.uint8),
            "label": np.asarray(labels, dtype=np.int64),
            "video_id": np.asarray(ids, dtype=object),
            "view": np.asarray(views, dtype=np.int32),
            "error": np.stack(errors) if errors else np.zeros((0, ERROR_BYTES), np.uint8),
        }


def shard_files(shards: str | Path, split: str) -> list[str]:
    """The Parquet parts of one split, sorted (URIs when ``shards`` is one); a clear error
    when the split is absent."""
    import pyarrow.fs

    fs, root = storage(shards)
    scheme = str(shards).split("://")[0] + "://" if "://" in str(shards) else ""
    scheme = "" if scheme == "file://" else scheme  # local paths for the local filesystem
    listing = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    folders = sorted(i.base_name for i in listing if i.type == pyarrow.fs.FileType.Directory)
    parts = fs.get_file_info(pyarrow.fs.FileSelector(f"{root}/{split}", allow_not_found=True))
    files = sorted(
        scheme + i.path
        for i in parts
        if i.base_name.startswith("part-") and i.base_name.endswith(".parquet")
    )
    if not files:
        raise FileNotFoundError(
            f"no shards for split {split!r} under {shards}: the ingest stored {folders}"
        )
    return files


def _filesystem(path: str):
    """The pyarrow filesystem for ``path`` (local unless it has a scheme such as s3://)."""
    import pyarrow.fs

    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)[0]
    return pyarrow.fs.LocalFileSystem()


def _in_filesystem(path: str) -> str:
    """``path`` as its filesystem names it: a URI without its scheme."""
    return path.split("://", 1)[1] if "://" in path else path


def row_groups(shards: str | Path, split: str) -> list[dict]:
    """``{"file", "row_group", "rows"}`` for every Parquet row group of a split: the unit a
    decode task reads (ingest writes 16 videos a group). Reads only the parts' footers."""
    import pyarrow.parquet as pq

    files = shard_files(shards, split)
    fs = _filesystem(files[0])  # one for all parts: inferring it costs a lookup
    groups = []
    for file in files:
        with fs.open_input_file(_in_filesystem(file)) as f:
            meta = pq.ParquetFile(f).metadata
        groups.extend(
            {"file": file, "row_group": g, "rows": meta.row_group(g).num_rows}
            for g in range(meta.num_row_groups)
        )
    return groups


class RowGroupDecoder:
    """Callable for ``map_batches``: row-group references -> clip rows of their videos.

    Reading inside the decode task keeps video bytes out of the object store and leaves no
    separate read tasks to compete with decoding for CPUs; an epoch's first clips wait only
    for one group's read and decode, however large the split.
    """

    def __init__(self, decoder: ClipDecoder, columns: list[str]) -> None:
        self.decoder, self.columns = decoder, columns
        self._fs = None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        for file, group in zip(batch["file"], batch["row_group"], strict=True):
            self._fs = self._fs or _filesystem(str(file))
            with self._fs.open_input_file(_in_filesystem(str(file))) as f:
                tables.append(pq.ParquetFile(f).read_row_group(int(group), columns=self.columns))
        rows = pa.concat_tables(tables)
        return self.decoder({name: rows.column(name).to_numpy() for name in self.columns})


def _in_one_bundle(ds):
    """``ds`` (a ``from_items`` dataset) as one whose source hands its blocks on as a single
    bundle.

    The streaming executor moves a bundle into ``randomize_block_order`` one scheduling step
    at a time (~0.2 ms each on a 2-core VM), and the shuffle waits for all of them before
    the first decode task: one bundle per row group made an epoch's first batch grow with
    the split (+0.11 s at 512 groups). One bundle arrives in one step; the shuffle still
    passes each block on as a bundle of its own, so a decode task still gets its row groups
    alone. Ray Data has no public way to build such a source: this uses its internals
    (Ray 2.60), as ``Dataset.materialize`` does.
    """
    from ray.data._internal.execution.interfaces import RefBundle
    from ray.data._internal.logical.interfaces import LogicalPlan
    from ray.data._internal.logical.operators import InputData
    from ray.data._internal.stats import DatasetStats
    from ray.data.dataset import Dataset

    bundle = RefBundle.merge_ref_bundles(ds._logical_plan.dag.output_data())
    plan = LogicalPlan(InputData(input_data=[bundle]), ds.context)
    return Dataset(plan, ds.context, DatasetStats(metadata={}, parent=None))


def clip_dataset(
    shards: str | Path,
    split: str,
    clip: ClipConfig,
    *,
    train: bool = True,
    seed: int | None = None,
    epoch: int = 0,
    decoders: int | None = None,
    decoder_cpus: float = 1.0,
    decoder_resource: str | None = None,
    videos_per_batch: int = 16,
):
    """A ``ray.data.Dataset`` of ``clip``'s rows from one split of an ingested shard folder.

    ``train=True``: one randomly sampled, scale-jittered view per video, row groups in
    random order (combine with ``local_shuffle_buffer_size`` when iterating). ``train=False``:
    ``clip.test_clips`` x ``clip.test_crops`` deterministic views per video (``view`` numbers
    them) for multi-view testing. ``decoders`` caps the decode tasks running at once (None:
    as many as free CPUs allow, which on a cluster means every CPU node decodes); each
    reserves ``decoder_cpus``, and one unit of the custom resource ``decoder_resource`` when
    given, which keeps decoding on the nodes that advertise it (cluster.yaml's decoder
    nodes). Ray Data counts a finished task against the cap until it has collected the
    task's output: a cap of one task per core kept ~1.2 running on two cores
    (``benchmarks/data_throughput.py``), so cap above the number meant to run.
    ``videos_per_batch``: videos a decode task takes, as whole row groups (at least one).
    """
    import ray

    manifest = load_manifest(shards)
    spec = clip.spec(train=train)
    rendition = clip.rendition(manifest["renditions"])
    column = rendition_column(rendition)
    if clip.modality == "flow":
        if not manifest.get("flow"):
            raise ValueError(f"{shards} holds no optical flow: ingest it with --flow tvl1")
        column = flow_column(rendition)
    # The split as references to its row groups, in a random order each pass when
    # training: shuffling these few bytes a group is cheap at any size, where shuffling
    # the videos' blocks read every byte of the split before the first clip.
    groups = row_groups(shards, split)
    ds = ray.data.from_items(groups, override_num_blocks=len(groups))
    if train:
        ds = _in_one_bundle(ds).randomize_block_order(seed=seed)
    columns = ["video_id", "label", "height", "width", column]
    return ds.map_batches(
        RowGroupDecoder(ClipDecoder(spec, column, seed, epoch), columns),
        batch_size=max(1, videos_per_batch // max(1, groups[0]["rows"])),  # groups per task
        batch_format="numpy",
        compute=ray.data.TaskPoolStrategy(size=decoders),
        num_cpus=decoder_cpus,
        resources={decoder_resource: 1} if decoder_resource else None,
    )
