"""Does an epoch's start grow with the dataset? Today's pipeline against the row-group one.

    python benchmarks/epoch_start.py [--videos 512 2048 8192] [--passes 5] [--frames 16] \
        [--size 48] [--throughput-videos 288]

Ingests a small demo set once, then builds training splits of each size by repeating its
rows under new video ids (shuffled, 256 rows a part, 16 a row group, as ingest writes
them). For each size and each pipeline, side by side in one Ray session:
  (a) before: ``read_parquet`` -> blocks of 16 rows -> ``randomize_block_order`` -> decode
      tasks: the all-to-all shuffle reads every video's bytes into the object store
      before the first clip is decoded;
  (b) now, ``raylab.data.pipeline.clip_dataset``: the epoch plan's units (row-group
      references and rows) -> decode tasks that read their own rows.
Measured over ``--passes`` passes of one dataset after a warm-up pass (which also starts
the worker processes), as training epochs see them: the median seconds to the first batch
of 8 clips, and the largest peak object store use (sampled from the raylet every 50 ms,
over what the store held before the pass) until 4 batches are out. Then clips/s of
whole passes at the demo set's size (``--throughput-videos``) for both, decode only. Prints
a table with the ratios of largest to smallest split, and one JSON line. Nothing here is a
test.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROWS_PER_PART, ROWS_PER_GROUP = 256, 16  # as raylab.data.ingest writes shards


def build_split(source: Path, out: Path, videos: int) -> Path:
    """Shards at ``out`` whose train split repeats ``source``'s rows to ``videos`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raylab.data.storage import Shards

    table = pq.read_table(sorted((source / "train").glob("part-*.parquet")))
    reps = -(-videos // table.num_rows)
    tables = []
    for r in range(reps):
        ids = pa.array([f"{v}_r{r}" for v in table["video_id"].to_pylist()])
        tables.append(table.set_column(table.schema.get_field_index("video_id"), "video_id", ids))
    big = pa.concat_tables(tables).slice(0, videos)
    big = big.take(np.random.default_rng(0).permutation(videos))
    (out / "train").mkdir(parents=True)
    for n, start in enumerate(range(0, videos, ROWS_PER_PART)):
        part = big.slice(start, ROWS_PER_PART)
        pq.write_table(part, out / "train" / f"part-{n:05d}.parquet", row_group_size=ROWS_PER_GROUP)
    manifest = dict(Shards.open(source).manifest.raw) | {"splits": {"train": videos}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def dataset_before(shards: Path, frames: int, size: int):
    """The pipeline as it was: read_parquet, 16-row blocks, an all-to-all block shuffle."""
    import ray

    from raylab.data.clips import ClipConfig, choose_rendition
    from raylab.data.pipeline import ClipDecoder
    from raylab.data.storage import Shards, rendition_column

    spec = ClipConfig(frames=frames, stride=1, size=size)
    rendition = choose_rendition(Shards.open(shards).manifest.renditions, spec.working_short_side)
    column = rendition_column(rendition)
    ctx = ray.data.DataContext.get_current()
    v2, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    try:
        ds = ray.data.read_parquet(
            sorted(str(p) for p in (shards / "train").glob("part-*.parquet")),
            columns=["video_id", "label", "height", "width", column],
        )
    finally:
        ctx.use_datasource_v2 = v2
    ds = ds.repartition(target_num_rows_per_block=ROWS_PER_GROUP).randomize_block_order()
    return ds.map_batches(
        ClipDecoder(spec, True, column, None),
        batch_size=ROWS_PER_GROUP,
        batch_format="numpy",
        compute=ray.data.TaskPoolStrategy(size=None),
        num_cpus=1.0,
    )


def dataset_now(shards: Path, frames: int, size: int):
    from raylab.config import ClipConfig
    from raylab.data.pipeline import clip_dataset

    return clip_dataset(shards, "train", ClipConfig(frames=frames, size=size), train=True)


class StorePeak:
    """The largest object store use (bytes) the raylet reports while the block runs, over
    what it held when the block began (what earlier passes left)."""

    def __init__(self) -> None:
        import ray
        from ray._private.internal_api import get_state_from_address

        self.state = get_state_from_address(ray.get_runtime_context().gcs_address)
        self.peak = 0
        self._stop = threading.Event()

    def used(self) -> int:
        from ray._private.internal_api import get_memory_info_reply

        return get_memory_info_reply(self.state).store_stats.object_store_bytes_used

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.used())
            time.sleep(0.05)

    def __enter__(self) -> StorePeak:
        self.baseline = self.used()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.used()) - self.baseline


def wait_idle(cpus: float, timeout_s: float = 60.0) -> None:
    """Until the tasks of an abandoned pass have ended and freed their CPUs."""
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and ray.available_resources().get("CPU", 0) < cpus:
        time.sleep(0.1)
    gc.collect()  # drops the references a stopped iterator held
    time.sleep(1.0)  # and the store frees their objects


def epoch_start(ds, passes: int, cpus: float) -> dict:
    """Median first-batch seconds and largest peak store MiB of ``passes`` passes after a
    warm-up pass, each stopped after 4 batches and started on an idle cluster."""
    firsts, peaks = [], []
    for i in range(passes + 1):
        wait_idle(cpus)
        with StorePeak() as store:
            start = time.perf_counter()
            first = None
            for n, _batch in enumerate(ds.iter_batches(batch_size=8, batch_format="numpy")):
                first = first or time.perf_counter() - start
                if n == 3:
                    break
        if i:  # the warm-up pass also starts the worker processes
            firsts.append(first)
            peaks.append(store.peak)
    return {"first_batch_s": statistics.median(firsts), "peak_store_mib": max(peaks) / 2**20}


def clips_per_s(ds, passes: int) -> float:
    """Clips/s of the last of ``passes`` whole passes."""
    for _ in range(passes):
        start, clips = time.perf_counter(), 0
        for batch in ds.iter_batches(batch_size=8, batch_format="numpy"):
            clips += len(batch["label"])
        rate = clips / (time.perf_counter() - start)
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--videos", nargs="+", type=int, default=[512, 2048, 8192])
    p.add_argument("--passes", type=int, default=5, help="measured passes, after a warm-up")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--throughput-videos", type=int, default=288)
    p.add_argument("--cpus", type=int, default=2)
    args = p.parse_args()

    import ray

    from raylab.data.ingest import EncodeParams, ingest
    from raylab.data.synthetic import make_demo_dataset

    work = Path(tempfile.mkdtemp(prefix="epoch_start-"))
    # Its own Ray, even when a head (make demo's) is running: the figures need idle CPUs.
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    pipelines = {"before": dataset_before, "now": dataset_now}
    try:
        make_demo_dataset(
            work / "videos", videos_per_class=8, frames=32, height=128, width=160, progress=False
        )
        ingest(work / "videos", "ucf101", work / "source", params=EncodeParams(short_sides=(64,)))
        rows = []
        for videos in args.videos:
            shards = build_split(work / "source", work / f"split-{videos}", videos)
            for name, make in pipelines.items():
                figures = epoch_start(make(shards, args.frames, args.size), args.passes, args.cpus)
                rows.append({"videos": videos, "pipeline": name} | figures)
                print(
                    f"{videos:>6} videos  {name:<7} first batch {figures['first_batch_s']:6.2f} s"
                    f"  peak object store {figures['peak_store_mib']:8.1f} MiB",
                    flush=True,
                )
        shards = build_split(work / "source", work / "throughput", args.throughput_videos)
        wait_idle(args.cpus)
        rates = {
            name: clips_per_s(make(shards, args.frames, args.size), args.passes)
            for name, make in pipelines.items()
        }
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    lo, hi = min(args.videos), max(args.videos)
    print("\n| pipeline | videos | first batch (s) | peak object store (MiB) |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['pipeline']} | {r['videos']} | {r['first_batch_s']:.2f} "
            f"| {r['peak_store_mib']:.1f} |"
        )
    growth = {}
    for name in pipelines:
        at = {r["videos"]: r for r in rows if r["pipeline"] == name}
        growth[name] = {
            "first_batch": at[hi]["first_batch_s"] / at[lo]["first_batch_s"],
            "peak_store": at[hi]["peak_store_mib"] / max(1e-9, at[lo]["peak_store_mib"]),
        }
        print(
            f"{name}: {hi} vs {lo} videos: first batch x{growth[name]['first_batch']:.2f}, "
            f"peak object store x{growth[name]['peak_store']:.2f}"
        )
    print(
        f"clips/s over whole passes of {args.throughput_videos} videos: "
        + ", ".join(f"{n} {r:.0f}" for n, r in rates.items())
        + f"  (now / before x{rates['now'] / rates['before']:.2f})"
    )
    print(
        json.dumps(
            {
                "rows": rows,
                "growth": growth,
                "clips_per_s": rates,
                "median_first_batch_s": {
                    n: statistics.median(r["first_batch_s"] for r in rows if r["pipeline"] == n)
                    for n in pipelines
                },
            }
        )
    )


if __name__ == "__main__":
    main()
