"""Ingest of real video files: every listed input ends as one shard row or one reject."""

from __future__ import annotations

import io
import json
import os
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
from videos import counter_frames, noise_frames, write_video

from raylab.data.ingest import EncodeParams, ingest, load_manifest

REPO = Path(__file__).resolve().parents[2]

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
    assert manifest["splits"] == {"train": 9, "val": 2}
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


def test_killed_ingest_resumes_to_the_complete_set(tmp_path, ray_session):
    src = tmp_path / "src"
    lines = ["path,label,split"]
    for i in range(10):
        write_video(src / f"v{i}.mp4", noise_frames(40, 120, 160, seed=i))
        lines.append(f"v{i}.mp4,{'ab'[i % 2]},train")
    (src / "bad.mp4").write_text("junk")
    lines.append("bad.mp4,a,train")
    (src / "list.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "shards"
    cmd = [
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
        "--no-progress",
    ]
    env = os.environ | {"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("train/part-*.parquet")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = _rows(out)
    assert 0 < len(partial) < 10, "the kill must land mid-ingest"

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    rows = _rows(out)
    ids = [r["video_id"] for r in rows]
    assert sorted(ids) == sorted(f"v{i}" for i in range(10))  # complete, no duplicates
    assert [r["path"] for r in _rejects(out)] == ["bad.mp4"]
    assert result["encoded"] == 10 - len(partial)
    assert result["splits"] == {"train": 10}


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
    from raylab.data.ingest import dequantise_flow, encode_video, flow_column

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


def test_ingest_into_s3_stores_the_shards_there_and_resumes_from_them(
    s3_shards, demo_shards, tmp_path, monkeypatch
):
    """An ingest into s3:// (a real S3 endpoint) leaves the shards an ingest into a folder
    does, and a re-run on a machine without its staging folder resumes from the store: the
    folder is filled from it and nothing is encoded again."""
    import pyarrow.fs

    from raylab.data.ingest import staging_dir, storage

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
    for split in ("train", "val"):
        ids = [
            sorted(pq.read_table(f"{shards}/{split}/part-00000.parquet")["video_id"].to_pylist())
            for shards in (s3_shards, demo_shards)
        ]
        assert ids[0] == ids[1]

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
