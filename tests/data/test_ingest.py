"""Ingest of real video files: every listed input ends as one shard row or one reject."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import decord
import numpy as np
import pyarrow.parquet as pq
import pytest
from checkout import REPO
from processes import raylet_pid, session_workers_running, workers_running
from videos import (
    counter_frames,
    frame_index,
    noise_frames,
    write_video,
    write_vp9_with_hidden_frames,
)

from raylab.data.ingest import EncodeParams, ingest
from raylab.data.storage import load_manifest

# path -> (label, expected outcome: None = stored, else the start of the reject reason)
GOOD = {
    "real/bikes.mp4": "bikes",
    "real/carphone.mp4": "phone",
    "real/bunny.mp4": "bunny",
    "awkward/mpeg4.avi": "bikes",
    "awkward/mjpeg.avi": "phone",
    "awkward/vp9.webm": "bunny",
    "awkward/h264.mkv": "bikes",
    "awkward/hevc.mp4": "phone",
    "awkward/portrait.mp4": "bunny",
    "awkward/odd_size.avi": "bikes",
    "awkward/three_frames.mp4": "phone",
    "awkward/phone_rotated.mp4": "bunny",
}
BAD = {
    "bad/missing.mp4": ("bikes", "missing file"),
    "bad/empty.mp4": ("bikes", "empty file"),
    "bad/text.mp4": ("phone", "not a video"),
    "bad/image.avi": ("phone", "not a video"),
    "bad/truncated.mp4": ("bunny", "truncated or corrupt MP4/MOV"),
    "bad/zero_frames.avi": ("bunny", "zero frames"),
    "bad/audio_only.m4a": ("bikes", "not a video: no video stream"),
}


def _marked_frames(n: int, height: int, width: int) -> np.ndarray:
    """Dark frames with a bright top-left quadrant: which way up they are shows."""
    frames = np.full((n, height, width, 3), 30, np.uint8)
    frames[:, : height // 2, : width // 2] = 220
    return frames


def _bright_quadrant(image: np.ndarray) -> tuple[int, int]:
    """(row, column) of the brightest quadrant of an image, each 0 or 1."""
    h, w = image.shape[:2]
    means = [
        [image[r * h // 2 : (r + 1) * h // 2, c * w // 2 : (c + 1) * w // 2].mean() for c in (0, 1)]
        for r in (0, 1)
    ]
    return divmod(int(np.argmax(means)), 2)


def _build_source(root: Path, real_videos: dict[str, Path]) -> Path:
    (root / "real").mkdir(parents=True)
    shutil.copy(real_videos["bikes"], root / "real/bikes.mp4")
    shutil.copy(real_videos["carphone"], root / "real/carphone.mp4")
    shutil.copy(real_videos["bigbuckbunny"], root / "real/bunny.mp4")
    a = root / "awkward"
    frames = noise_frames(20, 96, 128)
    write_video(a / "mpeg4.avi", frames, codec="mpeg4")
    write_video(a / "mjpeg.avi", frames, codec="mjpeg", pix_fmt="yuvj420p")
    write_video(a / "vp9.webm", frames, codec="libvpx-vp9")
    write_video(a / "h264.mkv", frames, codec="libx264")
    write_video(a / "hevc.mp4", frames, codec="libx265", options={"x265-params": "log-level=0"})
    write_video(a / "portrait.mp4", noise_frames(12, 160, 96))
    write_video(a / "odd_size.avi", noise_frames(10, 75, 101), codec="mjpeg", pix_fmt="yuvj420p")
    write_video(a / "three_frames.mp4", counter_frames(3, 64, 64))
    # A phone's portrait video: landscape pixels tagged "turn 90 degrees clockwise".
    write_video(a / "phone_rotated.mp4", _marked_frames(4, 48, 64), rotation=-90)

    b = root / "bad"
    b.mkdir()
    (b / "empty.mp4").write_bytes(b"")
    (b / "text.mp4").write_text("this is a list of videos, not a video\n")
    # A real PNG image named like a video.
    with av.open(str(b / "image.avi"), "w", format="image2") as out:
        s = out.add_stream("png")
        s.width, s.height, s.pix_fmt = 32, 32, "rgb24"
        out.mux(s.encode(av.VideoFrame.from_ndarray(noise_frames(1, 32, 32)[0], format="rgb24")))
        out.mux(s.encode())
    whole = (root / "real/bunny.mp4").read_bytes()
    (b / "truncated.mp4").write_bytes(whole[: len(whole) // 3])

    # An AVI with a video stream header and no frame in it.
    with av.open(str(b / "zero_frames.avi"), "w") as out:
        s = out.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        out.start_encoding()
    with av.open(str(b / "audio_only.m4a"), "w") as out:
        s = out.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), dtype="float32"), format="fltp", layout="mono"
        )
        frame.sample_rate = 8000
        out.mux(s.encode(frame))
        out.mux(s.encode())

    lines = ["path,label,split"]
    for i, (path, label) in enumerate(GOOD.items()):
        lines.append(f"{path},{label},{'val' if i % 4 == 3 else 'train'}")
    for path, (label, _) in BAD.items():
        lines.append(f"{path},{label},train")
    (root / "list.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def source(tmp_path_factory, real_videos):
    return _build_source(tmp_path_factory.mktemp("src"), real_videos)


PARAMS = EncodeParams(short_sides=(64, 128), keyframe_interval=8)


def _rows(out: Path) -> list[dict]:
    rows = []
    for part in sorted(out.glob("*/part-*.parquet")):
        t = pq.read_table(part, columns=["video_id", "label", "label_name", "num_frames"])
        for r in t.to_pylist():
            rows.append(r | {"split": part.parent.name})
    return rows


def _rejects(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ingested(source, tmp_path_factory, ray_session):
    out = tmp_path_factory.mktemp("shards")
    summary = ingest(
        source, "csv", out, annotations=source / "list.csv", params=PARAMS, progress=False
    )
    return out, summary


def test_every_input_is_a_row_or_a_reject(ingested):
    out, summary = ingested
    rows, rejects = _rows(out), _rejects(out)
    stored = {r["video_id"] for r in rows}
    assert stored == {os.path.splitext(p)[0] for p in GOOD}
    by_path = {r["path"]: r for r in rejects}
    assert set(by_path) == set(BAD)
    for path, (_, reason) in BAD.items():
        assert by_path[path]["reason"].startswith(reason), by_path[path]
        assert by_path[path]["split"] == "train"
    assert summary.encoded == len(GOOD) and summary.rejected == len(BAD)
    assert len(rows) == len(stored)  # no duplicates


def test_manifest_and_schema(ingested):
    out, _ = ingested
    manifest = load_manifest(out)
    assert manifest["classes"] == ["bikes", "bunny", "phone"]
    assert manifest["renditions"] == [64, 128]
    assert manifest["encoding"]["keyframe_interval"] == 8
    assert manifest["splits"] == {"train": 9, "val": 3}
    assert manifest["rejected"] == len(BAD)
    assert manifest["schema_version"] == 1 and manifest["complete"] is True
    part = next(out.glob("train/part-*.parquet"))
    names = pq.read_schema(part).names
    assert names == [
        "video_id",
        "label",
        "label_name",
        "num_frames",
        "fps",
        "height",
        "width",
        "video_64",
        "video_128",
    ]


def test_stored_renditions_decode_with_all_frames(ingested, real_videos):
    out, _ = ingested
    table = pq.read_table(list(out.glob("*/part-*.parquet")))
    rows = {r["video_id"]: r for r in table.to_pylist()}
    bikes = rows["real/bikes"]
    assert (bikes["height"], bikes["width"], bikes["num_frames"]) == (272, 640, 250)
    import io

    for side in (64, 128):
        vr = decord.VideoReader(io.BytesIO(bikes[f"video_{side}"]), num_threads=1)
        assert len(vr) == 250
        assert min(vr[0].shape[:2]) == side
    portrait = rows["awkward/portrait"]
    vr = decord.VideoReader(io.BytesIO(portrait["video_64"]), num_threads=1)
    assert vr[0].shape[:2] == (106, 64)  # portrait kept portrait, short side 64
    assert rows["awkward/three_frames"]["num_frames"] == 3
    phone = rows["awkward/phone_rotated"]
    assert (phone["height"], phone["width"], phone["num_frames"]) == (64, 48, 4)
    vr = decord.VideoReader(io.BytesIO(phone["video_64"]), num_threads=1)
    assert vr[0].shape[:2] == (86, 64) and _bright_quadrant(vr[0].asnumpy()) == (0, 1)
    assert rows["real/carphone"]["fps"] == pytest.approx(29.97, abs=0.01)
    # Fixed key-frame interval: key frames exactly every 8 frames.
    vr = decord.VideoReader(io.BytesIO(bikes["video_128"]), num_threads=1)
    assert list(vr.get_key_indices()) == list(range(0, 250, 8))


def test_rerun_resumes_without_duplicates(ingested, source):
    out, _ = ingested
    before_rows, before_rejects = _rows(out), _rejects(out)
    again = ingest(
        source, "csv", out, annotations=source / "list.csv", params=PARAMS, progress=False
    )
    assert again.encoded == 0 and again.rejected == 0
    assert again.skipped == len(GOOD) + len(BAD)
    assert sorted(map(str, _rows(out))) == sorted(map(str, before_rows))
    assert _rejects(out) == before_rejects


def test_other_encoding_parameters_are_refused(ingested, source):
    out, _ = ingested
    with pytest.raises(ValueError, match="another encoding"):
        ingest(
            source,
            "csv",
            out,
            annotations=source / "list.csv",
            params=EncodeParams(short_sides=(64,)),
            progress=False,
        )


# Ingest stores rows in a fixed shuffled order of its list (random.Random(0) over the 11
# lines below), writing each part once the rows before it are in. The video it takes last
# is long and, with the command's optical flow, takes seconds to encode where the others
# take milliseconds: a kill once the first part is written lands before the last one,
# however loaded the machine (were the order another, the kill would land after the last).
_ORDER = list(range(11))
random.Random(0).shuffle(_ORDER)
SLOW = f"v{next(i for i in reversed(_ORDER) if i < 10)}"


def _ten_videos_and_a_broken_one(src: Path) -> Path:
    lines = ["path,label,split"]
    for i in range(10):
        frames = 300 if f"v{i}" == SLOW else 8
        write_video(src / f"v{i}.mp4", noise_frames(frames, 120, 160, seed=i))
        lines.append(f"v{i}.mp4,{'ab'[i % 2]},train")
    (src / "bad.mp4").write_text("junk")
    lines.append("bad.mp4,a,train")
    (src / "list.csv").write_text("\n".join(lines) + "\n")
    return src


def _ingest_command(src: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        str(REPO / "jobs/ingest.py"),
        "--source",
        str(src),
        "--format",
        "csv",
        "--annotations",
        str(src / "list.csv"),
        "--out",
        str(out),
        "--rows-per-part",
        "2",
        "--flow",
        "farneback",
        "--no-progress",
    ]


def _assert_complete(out: Path) -> None:
    """Every valid video stored once; the only reject is the broken file."""
    assert sorted(r["video_id"] for r in _rows(out)) == sorted(f"v{i}" for i in range(10))
    assert [r["path"] for r in _rejects(out)] == ["bad.mp4"]
    assert load_manifest(out)["complete"]
    assert not (out / "not_processed.jsonl").exists()


def _wait_for_a_part(out: Path, proc: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("train/part-*.parquet")):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)


def test_killed_ingest_resumes_to_the_complete_set(tmp_path, ray_session):
    src = _ten_videos_and_a_broken_one(tmp_path / "src")
    out = tmp_path / "shards"
    cmd = _ingest_command(src, out)
    env = os.environ | {"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_a_part(out, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = _rows(out)
    assert 0 < len(partial) < 10, "the kill must land mid-ingest"

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    _assert_complete(out)
    assert result["encoded"] == 10 - len(partial)
    assert result["splits"] == {"train": 10}


def test_a_lost_cluster_rejects_no_valid_video(tmp_path, ray_session):
    """The cluster dies mid-ingest: the job stops with one line and status 1, the videos it
    could not process are listed as such (not rejected), and a re-run stores them all."""
    from ray.cluster_utils import Cluster

    src = _ten_videos_and_a_broken_one(tmp_path / "src")
    out = tmp_path / "shards"
    cmd = _ingest_command(src, out)
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False}
    )
    try:
        env = os.environ | {"RAY_ADDRESS": cluster.address}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _wait_for_a_part(out, proc)
        # The head's workers frozen first, so that the tasks they hold cannot finish while
        # the head is stopped (gracefully, as Cluster.shutdown does it, its processes one
        # after another: the ingest finished all ten meanwhile in one CI-like run); then
        # killed, as the head's raylet would have them.
        workers = workers_running(raylet_pid(cluster.head_node), "ray::")
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        cluster.remove_node(cluster.head_node)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    finally:
        cluster.shutdown()
    stdout, stderr = (b.decode() for b in proc.communicate(timeout=240))
    assert proc.returncode == 1, stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("ingest into") and "not processed" in line, line
    assert "re-run" in line
    assert all(r["path"] == "bad.mp4" for r in _rejects(out))  # no valid video rejected
    listed = [json.loads(x) for x in (out / "not_processed.jsonl").read_text().splitlines()]
    stored = {r["video_id"] for r in _rows(out)}
    assert listed, "the stop must land mid-ingest"
    assert {os.path.splitext(r["path"])[0] for r in listed}.isdisjoint(stored)
    assert json.loads(stdout.strip().splitlines()[-1])["not_processed"] == len(listed)
    with pytest.raises(ValueError, match="did not finish"):
        load_manifest(out)
    # A ledger line of an older ingest that took a lost task for a verdict is retried too.
    legacy = {"path": listed[0]["path"], "split": "train"}
    legacy["reason"] = "undecodable: the decoder process failed (The task's local raylet died)"
    with (out / "rejects.jsonl").open("a") as ledger:
        ledger.write(json.dumps(legacy) + "\n")

    env = os.environ | {"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    _assert_complete(out)


def test_a_killed_encode_worker_is_retried_not_rejected(tmp_path, ray_session):
    import threading

    src = _ten_videos_and_a_broken_one(tmp_path / "src")
    out = tmp_path / "shards"
    killed: list[int] = []
    finished = threading.Event()

    def kill_one_encoder() -> None:
        while not killed and not finished.is_set():
            for pid in session_workers_running("_encode_task")[:1]:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one_encoder)
    killer.start()
    try:
        summary = ingest(src, "csv", out, annotations=src / "list.csv", progress=False)
    finally:
        finished.set()
        killer.join()
    assert killed, "no encode task's worker was killed"
    assert summary.not_processed == 0 and summary.encoded == 10
    _assert_complete(out)


def test_flow_is_quantised_symmetrically_and_clipped():
    from raylab.data.ingest import dequantise_flow, quantise_flow

    flow = np.array([[[-30.0, -20.0], [0.0, 0.08], [5.0, 20.0], [-5.0, 33.0]]])
    q = quantise_flow(flow)
    assert q.dtype == np.uint8 and q.min() == 0 and q.max() == 255
    back = dequantise_flow(q)
    assert np.abs(back - np.clip(flow, -20, 20)).max() <= 20 / 255 + 1e-6  # half a step
    # Mirroring (as a horizontal flip does) maps x to about -x.
    assert np.abs(dequantise_flow(255 - q) + back).max() <= 2 * 20 / 255 + 1e-6


@pytest.mark.parametrize("method", ["farneback", "tvl1"])
def test_stored_flow_measures_the_motion(tmp_path, method):
    """Texture moving right 1 px a frame: stored flow says x ~ +1, y ~ 0, for every frame,
    in a video far smaller than raw uint8 flow."""
    from raylab.data.decode import FlowFrames, open_video
    from raylab.data.ingest import dequantise_flow, encode_video
    from raylab.data.storage import flow_column

    video = write_video(tmp_path / "right.mp4", noise_frames(12, 64, 96), options={"crf": "10"})
    row = encode_video(video, EncodeParams(short_sides=(64,), flow=method))
    reader = FlowFrames(open_video(row[flow_column(64)]))
    assert len(reader) == row["num_frames"] == 12
    flow = dequantise_flow(reader.get_batch(list(range(12))).asnumpy())
    assert flow.shape == (12, 64, 96, 2)
    inner = flow[:, 12:-12, 12:-12]
    assert 0.5 < inner[..., 0].mean() < 1.5
    assert abs(inner[..., 1].mean()) < 0.25
    assert len(row[flow_column(64)]) < flow.size / 5  # vs 1 byte per value


@pytest.fixture(scope="module")
def flow_ingested(source, tmp_path_factory, ray_session):
    out = tmp_path_factory.mktemp("flow_shards")
    params = EncodeParams(short_sides=(64,), flow="farneback")
    summary = ingest(
        source, "csv", out, annotations=source / "list.csv", params=params, progress=False
    )
    return out, summary, params


def test_flow_ingest_rejects_and_resumes_as_rgb(flow_ingested, ingested, source):
    out, summary, params = flow_ingested
    assert summary.splits == ingested[1].splits
    assert sorted(r["path"] for r in _rejects(out)) == sorted(
        r["path"] for r in _rejects(ingested[0])
    )
    assert load_manifest(out)["flow"] == "farneback"
    table = pq.read_table(list(out.glob("*/part-*.parquet")))
    for row in table.select(["video_id", "num_frames", "flow_64"]).to_pylist():
        reader = decord.VideoReader(io.BytesIO(row["flow_64"]))
        assert len(reader) == row["num_frames"], row["video_id"]
    again = ingest(
        source, "csv", out, annotations=source / "list.csv", params=params, progress=False
    )
    assert again.encoded == 0 and again.splits == summary.splits


def test_shard_rows_mix_classes(demo_shards):
    """UCF101's lists go class by class; the shards must not, or every block of rows the
    pipeline reads is one class and its per-epoch shuffle (block order, local buffer) cannot
    mix them: the rows are written in a fixed pseudo-random order."""
    labels = [r["label"] for r in _rows(demo_shards) if r["split"] == "train"]
    assert len(labels) == 24 and sorted(set(labels)) == list(range(8))
    changes = sum(a != b for a, b in zip(labels[:-1], labels[1:], strict=True))
    assert changes > 15, labels  # 7 in list order, about 20 when shuffled


# Each format's own layout, ingested end to end: expected rows (video_id, class, split) and
# rejects (path: start of the reason). One real tiny H.264 file is copied to every video.
def _hmdb51_tree(root: Path, video: Path) -> dict:
    splits = root / "splits"
    splits.mkdir(parents=True)
    # Real lines end with a space after the tag; tag 0: not in this split.
    (splits / "jump_test_split1.txt").write_text("j1.avi 1 \nj2.avi 2 \nj3.avi 0 \nj1.avi 1 \n")
    (splits / "wave_test_split1.txt").write_text("w1.avi 1 \nw2.avi 2 \n")
    for rel in ("jump/j1.avi", "jump/j2.avi", "jump/j3.avi", "wave/w1.avi", "wave/w2.avi"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(video, root / rel)
    return {
        "annotations": splits,
        "classes": ["jump", "wave"],
        "rows": {
            ("jump/j1", "jump", "train"),
            ("jump/j2", "jump", "val"),
            ("wave/w1", "wave", "train"),
            ("wave/w2", "wave", "val"),
        },
        "rejects": {"jump/j1.avi": "duplicate"},
    }


def _kinetics_tree(root: Path, video: Path) -> dict:
    ann = root / "annotations"
    ann.mkdir(parents=True)
    (ann / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "abseiling,aaa,0,10,train\n"
        '"air drumming",bbb,5,15,train\n'
        "abseiling,aaa,0,10,train\n"  # listed twice
        "yoga,gone,0,10,train\n"  # never downloaded
    )
    (ann / "validate.csv").write_text(
        "label,youtube_id,time_start,time_end,split\nabseiling,ccc,1,11,validate\n"
    )
    # The test set has no labels: not ingested, neither row nor reject.
    (ann / "test.csv").write_text("youtube_id,time_start,time_end,split\nttt,0,10,test\n")
    videos = root / "videos"
    for rel in (
        "train/abseiling/aaa_000000_000010.mp4",
        "train/air drumming/bbb_000005_000015.mkv",
        "val/abseiling/ccc_000001_000011.mp4",
        "test/ttt_000000_000010.mp4",
    ):
        (videos / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(video, videos / rel)
    return {
        "source": videos,
        "annotations": ann,
        "classes": ["abseiling", "air drumming", "yoga"],
        "rows": {
            ("train/abseiling/aaa_000000_000010", "abseiling", "train"),
            ("train/air drumming/bbb_000005_000015", "air drumming", "train"),
            ("val/abseiling/ccc_000001_000011", "abseiling", "val"),
        },
        "rejects": {
            "train/abseiling/aaa_000000_000010.mp4": "duplicate",
            "gone_000000_000010.mp4": "missing file",
        },
    }


def _ssv2_tree(root: Path, video: Path) -> dict:
    push, pull = "Pushing [something]", "Pulling [something]"
    (root / "labels.json").write_text(
        json.dumps({"Pushing something": "0", "Pulling something": "1"})
    )
    (root / "train.json").write_text(
        json.dumps(
            [
                {"id": "1", "template": push},
                {"id": "2", "template": pull},
                {"id": "1", "template": push},
                {"id": "3", "template": "Spinning [something]"},  # not in labels.json
            ]
        )
    )
    (root / "validation.json").write_text(json.dumps([{"id": "4", "template": pull}]))
    (root / "test.json").write_text(json.dumps([{"id": "5"}]))
    for n in range(1, 6):
        shutil.copy(video, root / f"{n}.webm")  # FFmpeg reads the content, not the name
    return {
        "classes": ["Pushing something", "Pulling something"],  # labels.json's order
        "rows": {
            ("1", "Pushing something", "train"),
            ("2", "Pulling something", "train"),
            ("4", "Pulling something", "val"),
        },
        "rejects": {"1.webm": "duplicate", "3.webm": "unknown class"},
    }


def _folders_tree(root: Path, video: Path) -> dict:
    for rel in ("train/run/a.mp4", "train/run/a.avi", "train/sit/b.mp4", "val/sit/c.mp4"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(video, root / rel)
    (root / "train/sit/notes.txt").write_text("not a video")
    return {
        "classes": ["run", "sit"],
        "rows": {("train/run/a", "run", "train"), ("train/sit/b", "sit", "train")}
        | {("val/sit/c", "sit", "val")},
        "rejects": {"train/run/a.mp4": "duplicate", "train/sit/notes.txt": "not a video"},
    }


@pytest.mark.parametrize(
    "fmt, tree",
    [
        ("hmdb51", _hmdb51_tree),
        ("kinetics", _kinetics_tree),
        ("ssv2", _ssv2_tree),
        ("folders", _folders_tree),
    ],
)
def test_each_format_ingests_end_to_end(fmt, tree, tmp_path, ray_session):
    video = tmp_path / "tiny.mp4"
    write_video(video, noise_frames(6, 32, 48))
    root = tmp_path / "src"
    root.mkdir()
    expected = tree(root, video)
    out = tmp_path / "shards"
    summary = ingest(
        expected.get("source", root),
        fmt,
        out,
        annotations=expected.get("annotations"),
        params=EncodeParams(short_sides=(32,)),
        progress=False,
    )
    rows = {(r["video_id"], r["label_name"], r["split"]) for r in _rows(out)}
    assert rows == expected["rows"]
    assert len(_rows(out)) == len(rows)  # no row twice
    rejects = {r["path"]: r["reason"] for r in _rejects(out)}
    assert rejects.keys() == expected["rejects"].keys()
    for path, reason in expected["rejects"].items():
        assert rejects[path].startswith(reason), rejects[path]
    manifest = load_manifest(out)
    assert manifest["classes"] == expected["classes"]
    splits = {s: sum(r[2] == s for r in rows) for s in {r[2] for r in rows}}
    assert manifest["splits"] == splits and manifest["rejected"] == len(rejects)
    assert summary.encoded == len(rows)
    labels = pq.read_table(out / "train", columns=["label", "label_name"]).to_pylist()
    assert all(manifest["classes"][r["label"]] == r["label_name"] for r in labels)


@pytest.mark.parametrize(
    ("rotation", "hflip"), [(90, False), (180, False), (270, False), (0, True), (90, True)]
)
def test_rotation_and_mirror_tags_are_applied(tmp_path, rotation, hflip):
    """A display matrix (degrees counter-clockwise, then a mirror) is stored applied: the
    stored pixels are the picture a player shows, at its displayed height and width."""
    from raylab.data.ingest import encode_video

    frames = _marked_frames(3, 48, 64)
    video = write_video(tmp_path / "tagged.mp4", frames, rotation=rotation, hflip=hflip)
    shown = np.rot90(frames[0], k=rotation // 90)
    shown = shown[:, ::-1] if hflip else shown
    row = encode_video(video, EncodeParams(short_sides=(48,)))
    assert (row["height"], row["width"]) == shown.shape[:2]
    stored = decord.VideoReader(io.BytesIO(row["video_48"]), num_threads=1)
    assert stored[0].shape[:2] == shown.shape[:2]
    assert _bright_quadrant(stored[0].asnumpy()) == _bright_quadrant(shown)
    assert len(stored) == row["num_frames"] == 3


def test_non_square_pixels_are_stored_at_display_width(tmp_path):
    """Pixels twice as wide as high (sample aspect ratio 2:1) are stored stretched: 64 x 48
    stored pixels show as 128 x 48."""
    from fractions import Fraction

    from raylab.data.ingest import encode_video

    frames = _marked_frames(3, 48, 64)
    video = write_video(tmp_path / "anamorphic.mp4", frames, sample_aspect=Fraction(2, 1))
    row = encode_video(video, EncodeParams(short_sides=(48,)))
    assert (row["height"], row["width"]) == (48, 128)
    first = decord.VideoReader(io.BytesIO(row["video_48"]), num_threads=1)[0].asnumpy()
    assert first.shape[:2] == (48, 128) and _bright_quadrant(first) == (0, 0)


def test_hidden_vp9_frames_are_not_counted(tmp_path):
    """VP9 alt-ref frames are decoded but never shown. An MP4 listing them as samples of
    their own (51 listed, 48 shown) is neither called truncated nor stored with them:
    ``num_frames`` is what a player shows and what decord reads from the stored rendition,
    at the shown frames' rate."""
    from raylab.data.ingest import encode_video

    video = tmp_path / "altref.mp4"
    hidden = write_vp9_with_hidden_frames(video, noise_frames(48, 48, 64))
    assert hidden >= 3  # more than the truncation check tolerates
    assert len(decord.VideoReader(str(video), num_threads=1)) == 48 + hidden
    row = encode_video(video, EncodeParams(short_sides=(48,)))
    stored = decord.VideoReader(io.BytesIO(row["video_48"]), num_threads=1)
    assert row["num_frames"] == len(stored) == 48
    assert stored.get_batch(list(range(48))).shape[0] == 48
    assert row["fps"] == 25.0  # not 51 listed frames over 48 frames' time


def test_variable_rate_keeps_every_frame(tmp_path):
    """Irregular timestamps: every frame is stored once, in order, and the rate recorded is
    the average over the frames' span (7 intervals in 0.56 s: 12.5 per second)."""
    from raylab.data.ingest import encode_video

    times_ms = [0, 40, 60, 200, 240, 250, 400, 560]
    video = write_video(tmp_path / "vfr.mp4", counter_frames(8, 48, 64), times_ms=times_ms)
    row = encode_video(video, EncodeParams(short_sides=(48,)))
    stored = decord.VideoReader(io.BytesIO(row["video_48"]), num_threads=1)
    assert row["num_frames"] == len(stored) == 8
    assert [frame_index(f) for f in stored.get_batch(list(range(8))).asnumpy()] == list(range(8))
    assert row["fps"] == pytest.approx(12.5)
    assert stored.get_avg_fps() == pytest.approx(12.5, rel=1e-3)


def test_ingest_into_s3_stores_the_shards_there_and_resumes_from_them(
    s3_shards, demo_shards, tmp_path, monkeypatch
):
    """An ingest into s3:// (a real S3 endpoint) leaves the shards an ingest into a folder
    does, and a re-run on a machine without its staging folder resumes from the store: the
    folder is filled from it and nothing is encoded again."""
    import pyarrow.fs

    from raylab.data.storage import staging_dir, storage

    local, remote = load_manifest(demo_shards), load_manifest(s3_shards)
    for key in ("classes", "splits", "renditions", "encoding", "rejected"):
        assert remote[key] == local[key], key
    fs, root = storage(s3_shards)
    listing = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    stored = {i.path[len(root) + 1 :] for i in listing if i.type == pyarrow.fs.FileType.File}
    assert stored == {
        "manifest.json",
        "rejects.jsonl",
        "train/part-00000.parquet",
        "val/part-00000.parquet",
    }
    # The same rows in the same order, row group by row group, whatever order the encode
    # tasks of each ingest finished in: a seed's epoch plan walks row groups.
    for split in ("train", "val"):
        ids = [
            pq.read_table(f"{shards}/{split}/part-00000.parquet")["video_id"].to_pylist()
            for shards in (s3_shards, demo_shards)
        ]
        assert ids[0] == ids[1] and len(ids[0]) == local["splits"][split]

    monkeypatch.setenv("RAYLAB_HOME", str(tmp_path))  # another machine: no staging folder
    again = ingest(
        demo_shards.parent / "videos",
        "ucf101",
        s3_shards,
        params=EncodeParams(short_sides=(64,)),
        progress=False,
    )
    assert (again.encoded, again.skipped) == (0, sum(local["splits"].values()))
    assert (again.out, again.manifest) == (s3_shards, f"{s3_shards}/manifest.json")
    assert (staging_dir(s3_shards) / "val" / "part-00000.parquet").exists()
    assert load_manifest(s3_shards)["splits"] == local["splits"]


def test_parts_keep_the_videos_order_whatever_order_they_arrive_in(tmp_path):
    """Rows arriving out of order (tasks finish when they finish) are stored in the order of
    the videos; a video that made no row leaves no gap, and one that never came back holds
    the rows behind it until the run ends."""
    from raylab.data.ingest import _PartWriter
    from raylab.data.storage import shard_schema

    written = []
    parts = _PartWriter(tmp_path, shard_schema((32,)), 2, {"train": 3}, written.append)

    def row(i: int) -> tuple[str, dict]:
        fields = {"label": 0, "label_name": "a", "num_frames": 1, "fps": 25.0}
        return "train", {"video_id": f"v{i}", **fields, "height": 32, "width": 32, "video_32": b""}

    for index, arrived in [(2, row(2)), (1, None), (0, row(0)), (5, row(5)), (3, row(3))]:
        parts.arrived[index] = arrived
        parts.store_in_order()
    assert written == [tmp_path / "train/part-00003.parquet"]  # v0, v2; v3 waits for a pair
    parts.store_the_rest()  # video 4 never came back
    parts.flush_all()
    assert written[1:] == [tmp_path / "train/part-00004.parquet"]
    ids = [pq.read_table(p)["video_id"].to_pylist() for p in written]
    assert ids == [["v0", "v2"], ["v3", "v5"]]
