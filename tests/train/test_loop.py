"""Pieces of the training loop that need no cluster: normalisation, schedules, scores."""

import threading

import numpy as np
import pytest
import torch

from raylab.config import TrainConfig
from raylab.train.epoch import Ahead
from raylab.train.loop import (
    DecodeFailures,
    check_decode_failures,
    lr_factor,
    make_optimizer,
    normalise,
    topk_accuracy,
    video_scores,
)


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


def test_cosine_with_warmup_and_step_schedules():
    cfg = {"epochs": 10, "warmup_epochs": 2, "schedule": "cosine", "step_epochs": 30}
    assert lr_factor(0.0, **cfg) < 0.01
    assert lr_factor(1.0, **cfg) == pytest.approx(0.5, abs=0.01)
    assert lr_factor(2.0, **cfg) == pytest.approx(1.0)
    assert lr_factor(6.0, **cfg) == pytest.approx(0.5)
    assert lr_factor(10.0, **cfg) == pytest.approx(0.0, abs=1e-9)
    step = cfg | {"schedule": "step"}
    assert [lr_factor(e, **step) for e in (0, 29.9, 30, 61)] == pytest.approx([1, 1, 0.1, 0.01])


def test_optimizers_skip_decay_on_norms_and_biases():
    model = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3), torch.nn.BatchNorm3d(4))
    sgd = make_optimizer(model, "sgd", lr=0.1, weight_decay=1e-4)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"]
    decayed = [p.ndim for p in sgd.param_groups[0]["params"]]
    assert decayed == [5] and sgd.param_groups[1]["weight_decay"] == 0.0
    assert isinstance(make_optimizer(model, "adamw", 1e-3, 1e-4), torch.optim.AdamW)
    with pytest.raises(ValueError, match="optimizer must be"):
        make_optimizer(model, "lamb", 1e-3, 1e-4)


def test_video_scores_average_views_per_video():
    ids = ["a", "b", "a", "b", "c"]
    labels = [0, 1, 0, 1, 2]
    logits = np.log(
        np.array(
            [[0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]
        )
    )
    scores, vlabels, vids = video_scores(ids, labels, logits)
    assert vids == ["a", "b", "c"]
    np.testing.assert_allclose(scores[0], [0.4, 0.5, 0.1], atol=1e-6)
    np.testing.assert_array_equal(vlabels, [0, 1, 2])
    # Clip-level, "a" is right once in two; video-level it is wrong (0.5 > 0.4).
    assert topk_accuracy(scores, vlabels, 1) == pytest.approx(2 / 3)
    assert topk_accuracy(scores, vlabels, 2) == 1.0


def test_an_epoch_stops_when_no_video_or_too_many_fail_to_decode():
    assert TrainConfig.max_decode_failures == 0.05
    first = "video a/b: RuntimeError: Error reading 1673 bytes..."
    check_decode_failures(1, "training", 0, 24, "", 0.05)
    check_decode_failures(1, "training", 1, 20, first, 0.05)  # exactly 5%: kept
    with pytest.raises(DecodeFailures) as caught:
        check_decode_failures(3, "validation", 2, 20, first, 0.05)  # 10%
    assert str(caught.value) == (
        "epoch 3: 2 of 20 validation videos could not be decoded (at most 5% may fail); "
        f"the first: {first}"
    )
    # Nothing decoded stops the run whatever the tolerated share, an empty split too.
    with pytest.raises(DecodeFailures, match=r"^epoch 1: 128 of 128 training videos"):
        check_decode_failures(1, "training", 128, 128, first, 1.0)
    with pytest.raises(DecodeFailures, match=r"^epoch 1: 0 of 0 validation videos"):
        check_decode_failures(1, "validation", 0, 0, "", 0.05)


def test_a_pass_read_ahead_starts_before_it_is_asked_and_keeps_its_order_and_errors():
    first_taken = threading.Event()

    def batches():
        first_taken.set()
        yield from range(5)
        raise RuntimeError("epoch 1: 3 of 8 training videos could not be decoded")

    ahead = Ahead(batches(), depth=2)
    assert first_taken.wait(timeout=30)  # reading before anyone iterates
    seen = []
    with pytest.raises(RuntimeError, match="could not be decoded"):
        for item in ahead:
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4]  # every batch before the error, in order
