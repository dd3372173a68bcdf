"""The run description: derived values, the checkpoint record, the decoder's view."""

from __future__ import annotations

import json

import pytest
import torch

from raylab.config import FLOW_MEAN, RGB_MEAN, ClipConfig, TrainConfig, normalise


def test_derived_values():
    dense = ClipConfig(frames=16, stride=4, size=112)
    assert dense.span == 61  # frames 0, 4, ..., 60
    assert ClipConfig(frames=8, stride=4, scheme="segments").span == 8
    assert dense.working_short_side == 128 and ClipConfig(size=224).working_short_side == 256
    assert ClipConfig(size=112, short_side=160).working_short_side == 160
    assert dense.rendition([64, 128, 256]) == 128
    with pytest.raises(ValueError, match="re-ingest with --short-side 128"):
        dense.rendition([64])


def test_record_round_trips_through_json_and_refuses_what_it_lacks():
    clip = ClipConfig(frames=8, stride=2, size=56, crop_scales=[1.0, 0.875], test_clips=2)
    back = ClipConfig.from_record(json.loads(json.dumps(clip.record())))
    assert back == clip and back.crop_scales == (1.0, 0.875)
    record = clip.record()
    del record["test_crops"], record["flip"]
    with pytest.raises(ValueError, match="flip, test_crops: it was written by an older"):
        ClipConfig.from_record(record)


def test_one_clip_type_checks_itself_and_counts_its_views():
    """The decoder reads the ClipConfig itself: its checks are the clip's own, raised where
    the clip is described, and a pass's views follow from it and whether it trains."""
    clip = ClipConfig(frames=8, stride=2, size=56, test_clips=2)
    assert clip.views(train=True) == 1 and clip.views(train=False) == 2 == clip.test_views
    assert clip.with_test_views(3, 3).views(train=False) == 9
    assert ClipConfig(size=112).working_short_side == 128
    assert ClipConfig(size=224).working_short_side == 256
    assert ClipConfig(modality="flow").channels == 2 and clip.channels == 3
    for bad, message in [
        ({"test_crops": 2}, "test_crops must be one of 1, 3; got 2"),
        ({"short_side": 100}, "smaller than the crop"),
        ({"crop_scales": ()}, "crop scales must lie in"),
        ({"crop_scales": (0.0,)}, "crop scales must lie in"),
        ({"crop_scales": (1.0, 1.2)}, "crop scales must lie in"),
        ({"modality": "depth"}, "modality must be one of 'rgb', 'flow'; got 'depth'"),
        ({"scheme": "sparse"}, "scheme must be"),
    ]:
        with pytest.raises(ValueError, match=message):
            ClipConfig(size=112, **bad)


def test_a_training_config_round_trips_whole_and_refuses_what_it_lacks():
    config = TrainConfig(
        model="stm",
        model_options={"width": 0.25, "stm_stages": [4, 5]},
        clip=ClipConfig(frames=8, size=56, scheme="segments", test_clips=2),
        classes=("left", "right", "up"),
        optimizer="sgd",
        lr=0.05,
        schedule="step",
        step_epochs=7,
        init_from="/weights/t3d.pt",
    )
    record = json.loads(json.dumps(config.record()))  # what a checkpoint keeps
    assert TrainConfig.from_record(record) == config
    assert record["clip"]["frames"] == 8 and config.num_classes == 3
    del record["schedule"], record["clip"]["stride"]
    with pytest.raises(ValueError, match="its schedule: it was written by an older"):
        TrainConfig.from_record(record)
    record["schedule"] = "step"
    with pytest.raises(ValueError, match="its stride: it was written by an older"):
        TrainConfig.from_record(record)


def test_normalisation_follows_the_modality_and_settings_are_checked():
    assert TrainConfig().mean == RGB_MEAN
    flow = TrainConfig(clip=ClipConfig(modality="flow"))
    assert flow.mean == FLOW_MEAN and len(flow.std) == 2
    assert TrainConfig(mean=[0.5, 0.4, 0.3]).mean == (0.5, 0.4, 0.3)
    with pytest.raises(ValueError, match="optimizer must be one of 'sgd', 'adamw'"):
        TrainConfig(optimizer="lamb")
    with pytest.raises(ValueError, match="schedule must be"):
        TrainConfig(schedule="linear")


def test_normalise_layout_and_values():
    clip = torch.zeros(2, 4, 6, 8, 3, dtype=torch.uint8)
    clip[..., 0] = 255
    mean = torch.tensor([0.5, 0.5, 0.5])
    std = torch.tensor([0.25, 0.5, 1.0])
    x = normalise(clip, mean, std)
    assert x.shape == (2, 3, 4, 6, 8) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0], torch.full_like(x[:, 0], 2.0))
    assert torch.allclose(x[:, 1], torch.full_like(x[:, 1], -1.0))
    assert torch.allclose(x[:, 2], torch.full_like(x[:, 2], -0.5))


def test_environment_numbers_are_read_or_refused_by_name(monkeypatch):
    from raylab.config import env_int
    from raylab.data.pipeline import task_videos
    from raylab.train.epoch import DataOptions

    monkeypatch.delenv("RAYLAB_TASK_VIDEOS", raising=False)
    assert env_int("RAYLAB_TASK_VIDEOS", 7) == 7
    clip = ClipConfig(frames=4, size=32)
    by_bytes = task_videos(clip, train=True)
    monkeypatch.setenv("RAYLAB_TASK_VIDEOS", "16")
    assert task_videos(clip, train=True) == 16 != by_bytes
    monkeypatch.setenv("RAYLAB_TASK_VIDEOS", "0")
    assert task_videos(clip, train=True) == by_bytes
    for bad in ("sixteen", "-8", "1.5"):
        monkeypatch.setenv("RAYLAB_TASK_VIDEOS", bad)
        with pytest.raises(ValueError, match=r"RAYLAB_TASK_VIDEOS=.*whole number"):
            task_videos(clip, train=True)
    monkeypatch.setenv("RAYLAB_VAL_KEEP_BYTES", "0")
    assert DataOptions(shards="x").val_keep_bytes == 0
    monkeypatch.setenv("RAYLAB_VAL_KEEP_BYTES", "lots")
    with pytest.raises(ValueError, match="RAYLAB_VAL_KEEP_BYTES='lots'"):
        DataOptions(shards="x")
