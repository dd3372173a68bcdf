"""The Ray Data clip pipeline on a real local Ray, reading real shards of real H.264 videos."""

from __future__ import annotations

import itertools
import os
import pickle
import signal
import sys
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from processes import session_workers_running

from raylab.config import ClipConfig
from raylab.data.clips import choose_rendition
from raylab.data.decode import open_video, sample_views, scaled_size
from raylab.data.pipeline import (
    LOOP_STEP_S,
    QUICK_STEPS,
    TASK_BYTES,
    TASK_VIDEOS,
    UNIT_VIDEOS,
    ClipTensors,
    PacedSchedulingLoop,
    ReadAhead,
    UnitDecoder,
    clip_dataset,
    planned_batches,
    planned_rows,
    row_groups,
    task_spans,
    task_videos,
)
from raylab.data.plan import decode_units, eval_plan
from raylab.data.sampling import sample_rng
from raylab.data.storage import Shards, load_manifest, rendition_column


def _collect(ds) -> dict[str, np.ndarray]:
    batches = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _as_read(rows: dict) -> dict:
    return rows


def test_decode_units_read_their_rows_through_the_shards_filesystem(tiny_shards):
    """Without Ray: the row groups of a split (a file:// URI: local paths), and a decode task's
    read of its units (sent pickled, as Ray sends it) hands the decoder the rows they name,
    each with its place in the plan."""
    shards = Shards.open(f"file://{tiny_shards}")
    groups = row_groups(shards, "train")
    assert [(g["file"][-12:], g["row_group"], g["rows"]) for g in groups] == [
        ("0000.parquet", 0, 2),
        ("0000.parquet", 1, 2),
        ("0000.parquet", 2, 1),
        ("0001.parquet", 0, 3),
    ]
    assert groups == row_groups(tiny_shards, "train")
    units = decode_units(eval_plan([g["rows"] for g in groups]), groups, start=0, window=8)
    batch = {k: np.empty(len(units), dtype=object) for k in units[0]}
    for i, unit in enumerate(units):  # as Ray Data hands a task its units: object columns
        for k, v in unit.items():
            batch[k][i] = v
    task = pickle.loads(pickle.dumps(UnitDecoder(_as_read, ["video_id", "label"], shards)))
    rows = task(batch)
    assert sorted(rows["video_id"]) == [f"train{i}" for i in range(8)]
    assert list(rows["position"]) == sorted(rows["position"]) == list(range(8))
    assert [int(v[5:]) % 3 for v in rows["video_id"]] == list(rows["label"])


def test_train_rows_shapes_dtypes_and_one_view_per_video(demo_shards, ray_session):
    manifest = load_manifest(demo_shards)
    ds = clip_dataset(demo_shards, "train", ClipConfig(frames=8, stride=2, size=56), train=True)
    rows = _collect(ds)
    n = manifest["splits"]["train"]
    assert rows["clip"].shape == (n, 8, 56, 56, 3)
    assert rows["clip"].dtype == np.uint8
    assert rows["label"].dtype == np.int64
    assert set(rows["view"]) == {0}
    assert len(set(rows["video_id"])) == n
    truth = pq.read_table(list((demo_shards / "train").glob("*.parquet")))
    labels = dict(zip(truth["video_id"].to_pylist(), truth["label"].to_pylist(), strict=True))
    assert all(labels[v] == lab for v, lab in zip(rows["video_id"], rows["label"], strict=True))


def test_each_epoch_resamples_training_clips(demo_shards, ray_session):
    clip = ClipConfig(frames=8, size=56)
    first = _collect(clip_dataset(demo_shards, "train", clip, train=True, seed=0, epoch=0))
    second = _collect(clip_dataset(demo_shards, "train", clip, train=True, seed=0, epoch=1))
    a = dict(zip(first["video_id"], first["clip"], strict=True))
    b = dict(zip(second["video_id"], second["clip"], strict=True))
    assert a.keys() == b.keys()
    differ = sum(not np.array_equal(a[k], b[k]) for k in a)
    assert differ >= len(a) // 2


def test_epochs_visit_row_groups_in_a_new_order(demo_shards, tmp_path, ray_session):
    """The train split rewritten 2 videos a row group: every group is read (each video once
    an epoch) and each epoch starts from a different group; rows come in plan order."""
    import shutil

    shutil.copy(demo_shards / "manifest.json", tmp_path / "manifest.json")
    (tmp_path / "train").mkdir()
    table = pq.read_table(sorted((demo_shards / "train").glob("*.parquet")))
    pq.write_table(table, tmp_path / "train" / "part-00000.parquet", row_group_size=2)
    groups = row_groups(tmp_path, "train")
    assert [g["row_group"] for g in groups] == list(range(-(-table.num_rows // 2)))
    assert sum(g["rows"] for g in groups) == table.num_rows

    def epoch(n: int) -> tuple[str, ...]:
        ds = clip_dataset(
            tmp_path, "train", ClipConfig(frames=4, size=32), epoch=n, videos_per_task=2
        )
        rows = list(planned_rows(ds.iter_batches(batch_size=None), 0, table.num_rows))
        assert [int(r["position"]) for r in rows] == list(range(table.num_rows))
        return tuple(str(r["video_id"]) for r in rows)

    orders = [epoch(n) for n in range(3)]
    assert all(sorted(o) == sorted(table["video_id"].to_pylist()) for o in orders)
    assert len({o[:2] for o in orders}) > 1


def test_decode_tasks_take_whole_units_up_to_their_bytes():
    small = ClipConfig(frames=4, size=32)
    assert task_videos(small, train=True) == TASK_VIDEOS  # few bytes: the most videos
    for clip in (ClipConfig(frames=16, size=112), ClipConfig(frames=64, size=224)):
        for train in (True, False):
            n = task_videos(clip, train)
            assert n % UNIT_VIDEOS == 0 and UNIT_VIDEOS <= n <= TASK_VIDEOS
            view = clip.frames * clip.size**2 * clip.channels
            assert n == UNIT_VIDEOS or n * clip.views(train) * view <= TASK_BYTES
    big = ClipConfig(frames=32, size=112, test_clips=2, test_crops=3)  # six views a video
    assert task_videos(big, train=False) == UNIT_VIDEOS < task_videos(big, train=True)


def test_tasks_take_a_unit_in_the_first_window_then_a_window():
    assert task_spans([], 8) == []
    assert task_spans([0, 0, 0, 1, 1, 1, 1, 2], 8) == [(0, 1), (1, 2), (2, 3), (3, 7), (7, 8)]
    assert task_spans([0, 0, 1, 1, 1, 2], 2) == [(0, 1), (1, 2), (2, 3), (3, 5), (5, 6)]
    assert task_spans([0] + [1] * 8, 6) == [(0, 1), (1, 5), (5, 9)]  # 8 units: 4 and 4
    assert task_spans([3, 4, 4], 1) == [(0, 1), (1, 2), (2, 3)]  # a resumed pass


def test_a_pass_decodes_a_window_a_task_after_its_first(demo_shards, tmp_path, ray_session):
    """The train split six times over, 8 videos a row group (units of 8, windows of 64
    videos): by default the first window decodes a unit a task and each later one in one
    task; at one unit a task, a task a unit. Every video comes back as often as it is
    listed."""
    import re
    import shutil
    from collections import Counter

    import pyarrow as pa

    shutil.copy(demo_shards / "manifest.json", tmp_path / "manifest.json")
    (tmp_path / "train").mkdir()
    table = pq.read_table(sorted((demo_shards / "train").glob("*.parquet")))
    table = pa.concat_tables([table] * 6)
    pq.write_table(table, tmp_path / "train" / "part-00000.parquet", row_group_size=8)
    clip = ClipConfig(frames=4, size=32)
    assert task_videos(clip, train=False) == 64  # a window a task
    units = len(row_groups(tmp_path, "train"))
    assert units == table.num_rows // 8 > 8

    def tasks_and_blocks(videos_per_task: int | None) -> tuple[int, list[int]]:
        ds = clip_dataset(tmp_path, "train", clip, train=False, videos_per_task=videos_per_task)
        out = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
        videos = np.concatenate([b["video_id"] for b in out])
        assert Counter(videos) == Counter(table["video_id"].to_pylist())
        tasks = re.search(r"MapBatches\(UnitDecoder\): (\d+) tasks executed", ds.stats())
        return int(tasks.group(1)), sorted(len(b["label"]) for b in out)

    later = [64] * (table.num_rows // 64 - 1) + (
        [table.num_rows % 64] if table.num_rows % 64 else []
    )
    assert tasks_and_blocks(None) == (8 + len(later), sorted([8] * 8 + later))
    assert tasks_and_blocks(UNIT_VIDEOS) == (units, [8] * units)


def test_a_pass_is_made_while_every_cpu_is_held(demo_shards, ray_session):
    """A trial starts its next pass while its decode tasks hold every CPU it has: making the
    pass must not wait for a CPU (from_arrow's metadata tasks did, and a search hung)."""
    import threading

    from ray.util.placement_group import placement_group, remove_placement_group

    group = placement_group([{"CPU": ray_session.cluster_resources()["CPU"]}])
    ray_session.get(group.ready())
    made = threading.Event()

    def make() -> None:
        clip_dataset(demo_shards, "train", ClipConfig(frames=4, size=32), epoch=1)
        made.set()

    try:
        threading.Thread(target=make, daemon=True).start()
        assert made.wait(timeout=60), "making a pass waited for a CPU"
    finally:
        remove_placement_group(group)


def test_a_seeded_epoch_replays_exactly_in_the_same_order(demo_shards, ray_session):
    def run():
        ds = clip_dataset(
            demo_shards, "train", ClipConfig(frames=8, size=56), train=True, seed=3, epoch=1
        )
        return list(planned_batches(ds, 4, 0, load_manifest(demo_shards)["splits"]["train"]))

    a, b = run(), run()
    assert [list(x["video_id"]) for x in a] == [list(x["video_id"]) for x in b]
    assert all(np.array_equal(x["clip"], y["clip"]) for x, y in zip(a, b, strict=True))
    # Told once every decode task's rows have arrived, before the last batch is handed on
    # (when a run starts its next pass); the batches are the same.
    ds = clip_dataset(
        demo_shards, "train", ClipConfig(frames=8, size=56), train=True, seed=3, epoch=1
    )
    handed: list[int] = []
    told: list[int] = []
    end = load_manifest(demo_shards)["splits"]["train"]
    for batch in planned_batches(ds, 4, 0, end, on_delivered=lambda: told.append(len(handed))):
        handed.append(len(batch["video_id"]))
    assert len(told) == 1 and told[0] < len(handed) == len(a), (told, handed)


def test_crop_scales_reach_the_decoder(demo_shards, ray_session):
    ds = clip_dataset(
        demo_shards,
        "train",
        ClipConfig(frames=8, size=56, crop_scales=(1.0,)),
        train=True,
        seed=3,
        epoch=1,
    )
    rows = _collect(ds)
    got = dict(zip(rows["video_id"], rows["clip"], strict=True))
    # The same views made directly from the shard bytes with the same draws.
    spec = ClipConfig(frames=8, stride=1, size=56, crop_scales=(1.0,))
    column = rendition_column(
        choose_rendition(load_manifest(demo_shards)["renditions"], spec.working_short_side)
    )
    table = pq.read_table(sorted((demo_shards / "train").glob("*.parquet"))).to_pylist()
    for row in table[:3]:
        h, w = scaled_size(row["height"], row["width"], spec.working_short_side)
        reader = open_video(row[column], height=h, width=w)
        (want,) = sample_views(reader, spec, sample_rng(3, 1, row["video_id"]), train=True)
        np.testing.assert_array_equal(got[row["video_id"]], want)


def test_multi_view_rows_for_evaluation(demo_shards, ray_session):
    n = load_manifest(demo_shards)["splits"]["val"]
    ds = clip_dataset(
        demo_shards, "val", ClipConfig(frames=8, size=56, test_clips=2, test_crops=3), train=False
    )
    rows = _collect(ds)
    assert rows["clip"].shape == (n * 6, 8, 56, 56, 3)
    for vid in set(rows["video_id"]):
        assert sorted(rows["view"][rows["video_id"] == vid]) == list(range(6))


def test_torch_batches_keep_uint8_and_drop_string_ids(demo_shards, ray_session):
    import torch

    ds = clip_dataset(demo_shards, "val", ClipConfig(frames=4, size=56), train=False)
    batch = next(iter(ds.iter_torch_batches(batch_size=4, collate_fn=ClipTensors())))
    # video_id (strings) is dropped; why a video failed travels as bytes, zeros when it decoded
    assert set(batch) == {"clip", "label", "view", "error", "position"}
    assert batch["error"].dtype == torch.uint8 and not batch["error"].any()
    assert batch["clip"].dtype == torch.uint8
    assert tuple(batch["clip"].shape[1:]) == (4, 56, 56, 3)
    assert batch["label"].dtype == torch.int64


def test_clear_errors_for_bad_requests(demo_shards, ray_session):
    with pytest.raises(ValueError, match="rendition of at least"):
        clip_dataset(demo_shards, "train", ClipConfig(size=112))
    with pytest.raises(FileNotFoundError, match="no shards for split 'test'"):
        clip_dataset(demo_shards, "test", ClipConfig(size=56))


def test_a_damaged_video_costs_only_itself(damaged_shards, ray_session):
    shards, damaged = damaged_shards
    n = load_manifest(shards)["splits"]["val"]
    rows = _collect(
        clip_dataset(shards, "val", ClipConfig(frames=8, size=32, test_clips=2), train=False)
    )
    failed = rows["label"] < 0
    # The damaged video yields one placeholder row (label -1, view -1); every other video
    # its two views, labels intact.
    assert list(rows["video_id"][failed]) == [damaged["val"]]
    assert list(rows["view"][failed]) == [-1]
    assert not rows["clip"][failed].any()
    good = rows["video_id"][~failed]
    assert len(good) == 2 * (n - 1) and len(set(good)) == n - 1
    assert set(rows["view"][~failed]) == {0, 1}


def test_a_killed_decode_worker_is_retried_and_the_pass_sees_every_view(demo_shards, ray_session):
    """Killed: the worker process of the first decode task (``MapBatches(UnitDecoder)``)
    as soon as it is seen running that task, mid-pass (Ray names a busy worker after its
    task, an idle one ``ray::IDLE``; killed later, a short task may already have ended). Checked afterwards: the process
    is gone, so the task it ran never finished there, and the pass completed all the same
    (Ray Data ran the task again) with every view of every video exactly once."""
    n = load_manifest(demo_shards)["splits"]["train"]
    killed: list[int] = []

    def kill_first_decoder() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for pid in session_workers_running("MapBatches(UnitDecoder)"):
                os.kill(pid, signal.SIGKILL)  # decoding now: cut its task
                killed.append(pid)
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=kill_first_decoder, daemon=True)
    watcher.start()
    # 12 views of 16 frames per video: a decode task of 16 videos runs for seconds.
    ds = clip_dataset(
        demo_shards,
        "train",
        ClipConfig(frames=16, size=48, test_clips=4, test_crops=3),
        train=False,
    )
    rows = _collect(ds)
    watcher.join(timeout=5)
    assert killed, "no decode task was caught running"
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)  # the process that ran the task is gone
    pairs = list(zip(rows["video_id"], rows["view"], strict=True))
    assert len(pairs) == len(set(pairs)) == n * 12
    assert (rows["label"] >= 0).all()


def test_shards_are_read_from_s3(s3_shards, demo_shards, ray_session):
    """Shards ingested into s3:// (a real S3 endpoint) read as those ingested into a folder;
    a file:// URI names the local files."""
    from raylab.data.pipeline import shard_files

    local = load_manifest(demo_shards)
    assert {k: v for k, v in load_manifest(s3_shards).items() if k != "ingested_at"} == {
        k: v for k, v in local.items() if k != "ingested_at"
    }
    assert shard_files(s3_shards, "val") == [f"{s3_shards}/val/part-00000.parquet"]
    assert shard_files(f"file://{demo_shards}", "val") == shard_files(demo_shards, "val")
    rows = _collect(clip_dataset(s3_shards, "val", ClipConfig(frames=4, size=32), train=False))
    stored = pq.read_table(shard_files(demo_shards, "val")[0], columns=["video_id", "label"])
    assert sorted(zip(rows["video_id"], rows["label"], strict=True)) == sorted(
        zip(stored["video_id"].to_pylist(), stored["label"].to_pylist(), strict=True)
    )
    assert rows["clip"].shape == (len(stored), 4, 32, 32, 3)
    with pytest.raises(FileNotFoundError, match="no shards for split 'test'"):
        shard_files(s3_shards, "test")


def test_flow_clips_have_two_channels(flow_shards, ray_session):
    rows = _collect(
        clip_dataset(
            flow_shards, "val", ClipConfig(frames=8, size=32, modality="flow"), train=False
        )
    )
    n = load_manifest(flow_shards)["splits"]["val"]
    assert rows["clip"].shape == (n, 8, 32, 32, 2) and rows["clip"].dtype == np.uint8
    train = _collect(
        clip_dataset(
            flow_shards, "train", ClipConfig(frames=8, size=32, modality="flow", flip=True)
        )
    )
    assert train["clip"].shape[-1] == 2


def test_flow_from_shards_without_flow_is_a_clear_error(demo_shards, ray_session):
    with pytest.raises(ValueError, match="holds no optical flow: ingest it with --flow"):
        clip_dataset(
            demo_shards, "val", ClipConfig(frames=8, size=32, modality="flow"), train=False
        )


def _loop_step_gaps(ray_session, callbacks: list) -> list[float]:
    """The gaps between the starts of Ray Data's scheduling-loop steps over a pass whose
    consumer waits a second after its first batch: the few tiny tasks finish meanwhile and
    their batches wait for it."""
    from ray.data._internal.execution.execution_callback import ExecutionCallback

    steps: list[float] = []

    class CountSteps(ExecutionCallback):
        def on_execution_step(self, executor) -> None:
            steps.append(time.monotonic())

    ds = ray_session.data.range(4, override_num_blocks=4).map_batches(lambda b: b)
    ds.context.custom_execution_callback_classes.extend([*callbacks, CountSteps])
    batches = iter(ds.iter_batches(batch_size=1, prefetch_batches=0))
    next(batches)
    time.sleep(1.0)
    assert len(list(batches)) == 3
    return [b - a for a, b in itertools.pairwise(steps)]


def test_the_scheduling_loop_is_paced_while_the_consumer_waits(ray_session, demo_shards):
    """Once its tasks are done (or done and held back for a slow consumer) Ray Data's
    scheduling loop does not wait and spins beside the consumer (926 steps in a second,
    measured, without a pace); the callbacks clip_dataset's passes carry let no more than
    QUICK_STEPS steps in a row start sooner than LOOP_STEP_S after the one before."""
    ds = clip_dataset(demo_shards, "train", ClipConfig(frames=4, size=32))
    callbacks = ds.context.custom_execution_callback_classes
    assert PacedSchedulingLoop in callbacks
    gaps = _loop_step_gaps(ray_session, list(callbacks))
    quick_runs = "".join("q" if gap < 0.9 * LOOP_STEP_S else "." for gap in gaps).split(".")
    longest = max(map(len, quick_runs))
    assert len(gaps) > 5 and longest <= QUICK_STEPS, f"{len(gaps)} steps, {longest} quick in a row"
    # benchmarks/data_throughput.py's unpaced passes: a pass's own, not every later one's
    unpaced = clip_dataset(demo_shards, "train", ClipConfig(frames=4, size=32), paced=False)
    assert PacedSchedulingLoop not in unpaced.context.custom_execution_callback_classes
    assert (
        PacedSchedulingLoop
        in clip_dataset(
            demo_shards, "train", ClipConfig(frames=4, size=32)
        ).context.custom_execution_callback_classes
    )


def test_a_pass_read_ahead_starts_before_it_is_asked_and_keeps_its_order_and_errors():
    first_taken = threading.Event()

    def batches():
        first_taken.set()
        yield from range(5)
        raise RuntimeError("epoch 1: 3 of 8 training videos could not be decoded")

    ahead = ReadAhead(batches(), depth=2)
    assert first_taken.wait(timeout=30)  # reading before anyone iterates
    seen = []
    with pytest.raises(RuntimeError, match="could not be decoded"):
        for item in ahead:
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4]  # every batch before the error, in order


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's nice is Linux's")
def test_a_head_start_task_decodes_at_a_lower_priority_on_a_thread_of_its_own():
    """A task of decode_ahead decodes HEAD_START_NICE nicer (so that a run's starting
    processes come first), on its own thread: the task's process keeps its priority for the
    tasks it runs next. Its errors are the task's."""
    from raylab.data.pipeline import HEAD_START_NICE, _decode_in_turn

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = nice()
    rows, token = _decode_in_turn(lambda units: {"nice": nice()}, {}, None)
    assert (rows, token) == ({"nice": min(before + HEAD_START_NICE, 19)}, True)
    assert nice() == before

    def broken(units):
        raise OSError("shard part-0 unreadable")

    with pytest.raises(OSError, match="unreadable"):
        _decode_in_turn(broken, {}, None)
