"""Predictions on source videos: the checkpoint's own test clips, real files, a broken one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from raylab.config import ClipConfig, TrainConfig
from raylab.infer.evaluate import evaluation_clip
from raylab.infer.predict import find_videos, rgb_clip, source_clip_dataset

# A 56 px crop works from a 64 px short side (8/7 of it), the demo shards' one rendition.
CLIPS = ClipConfig(frames=8, stride=2, size=56, scheme="dense")


def test_find_videos_in_a_folder_a_glob_and_a_csv(tmp_path):
    for name in ("a/x.mp4", "a/b/y.MKV", "a/notes.txt", "z.avi"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert find_videos(tmp_path / "a") == [str(tmp_path / "a/b/y.MKV"), str(tmp_path / "a/x.mp4")]
    assert find_videos(str(tmp_path / "**/*.avi")) == [str(tmp_path / "z.avi")]
    (tmp_path / "list.csv").write_text("label,path\nx,a/x.mp4\ny,z.avi\n")
    assert find_videos(tmp_path / "list.csv") == [
        str(tmp_path / "a/x.mp4"),
        str(tmp_path / "z.avi"),
    ]
    (tmp_path / "bare.csv").write_text("z.avi\n")
    assert find_videos(tmp_path / "bare.csv") == [str(tmp_path / "z.avi")]
    with pytest.raises(FileNotFoundError, match="nowhere: no videos there"):
        find_videos("nowhere")


def test_a_flow_checkpoint_is_refused_with_the_way_to_evaluate_it():
    config = TrainConfig(clip=ClipConfig(modality="flow"), model_options={"in_channels": 2})
    with pytest.raises(ValueError, match="--flow"):
        rgb_clip(evaluation_clip(config))


def test_source_videos_give_the_clips_evaluation_cuts_from_shards(demo_shards, ray_session):
    """The checkpoint's recorded clips rebuild the test pipeline: for every validation video,
    the views cut from its source file are the views evaluation cuts from its shard row."""
    from raylab.data.pipeline import clip_dataset

    spec = evaluation_clip(TrainConfig(clip=CLIPS), clips=2, crops=3)
    from_shards = clip_dataset(demo_shards, "val", spec, train=False).take_all()
    videos = demo_shards.parent / "videos"
    ids = sorted({r["video_id"] for r in from_shards})
    from_sources = source_clip_dataset([str(videos / f"{v}.mp4") for v in ids], spec).take_all()

    def views(rows, key):
        out: dict[str, dict[int, np.ndarray]] = {}
        for r in rows:
            out.setdefault(key(r["video_id"]), {})[int(r["view"])] = r["clip"]
        return out

    shard_views = views(from_shards, str)
    source_views = views(from_sources, lambda p: str(Path(p).relative_to(videos).with_suffix("")))
    assert sorted(source_views) == ids and len(ids) == 8
    for vid in ids:
        assert sorted(source_views[vid]) == list(range(6))
        for v, clip in shard_views[vid].items():
            assert clip.shape == (8, 56, 56, 3)
            np.testing.assert_array_equal(source_views[vid][v], clip, err_msg=f"{vid} view {v}")
