"""I3D: SAME padding, shapes over a grid (any size works), the head's temporal averaging."""

from __future__ import annotations

import pytest
import torch

from raylab.models.i3d import I3D, same_padding


def test_same_padding_is_tensorflows():
    # Conv3d_1a on 64x224x224: total max(7 - 2, 0) = 5 -> 2 in front, 3 behind, in each dim.
    assert same_padding((64, 224, 224), (7, 7, 7), (2, 2, 2)) == (2, 3, 2, 3, 2, 3)
    # Odd size with stride 2: total max(k - s % st, 0) = 3 - 1 = 2.
    assert same_padding((7,), (3,), (2,)) == (1, 1)
    # 1x1 kernels never pad.
    assert same_padding((5, 5, 5), (1, 1, 1), (1, 1, 1)) == (0,) * 6


@pytest.mark.parametrize("t", [1, 5, 16])
@pytest.mark.parametrize("hw", [(1, 1), (17, 17), (32, 45)])
def test_shapes_over_a_grid(t, hw):
    model = I3D(6, width=0.0625).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, t, *hw)).shape == (2, 6)


def test_endpoint_shapes_follow_the_table():
    # Spatial sizes at 224 are 112, 56, 56, 56, 28, 28, 28, 14, ... 7; times 32 ... 8 at 64 frames.
    # Checked at 64 frames and 64x64 (spatial /32 -> 2), which has the same temporal table.
    model = I3D(6, width=0.0625).eval()
    x = torch.randn(1, 3, 64, 64, 64)
    times = {}
    with torch.no_grad():
        for name, block in model.features.named_children():
            x = block(x)
            times[name] = x.shape[2:]
    assert times["Conv3d_1a_7x7"] == (32, 32, 32)
    assert times["MaxPool3d_2a_3x3"] == (32, 16, 16)  # no temporal pooling
    assert times["MaxPool3d_3a_3x3"] == (32, 8, 8)  # no temporal pooling
    assert times["MaxPool3d_4a_3x3"] == (16, 4, 4)
    assert times["Mixed_5c"] == (8, 2, 2)
    assert x.shape[1] == model.logits.in_channels


def test_head_is_two_frame_pool_then_mean_over_time():
    model = I3D(4, width=0.0625).eval()
    clip = torch.randn(1, 3, 64, 32, 32)
    with torch.no_grad():
        feats = model.features(clip)  # (1, C, 8, 1, 1)
        pooled = (feats[:, :, 1:] + feats[:, :, :-1]) / 2  # 2x1x1 windows, stride 1: 7 steps
        expected = model.logits(pooled).flatten(2).mean(2)
        torch.testing.assert_close(model(clip), expected)


def test_flow_variant_takes_two_channels():
    model = I3D(4, in_channels=2, width=0.0625).eval()
    assert model.features.Conv3d_1a_7x7.conv3d.weight.shape[1] == 2
    with torch.no_grad():
        assert model(torch.randn(1, 2, 8, 32, 32)).shape == (1, 4)
    with pytest.raises(ValueError, match=r"i3d: expected 2 input channels"):
        model(torch.randn(1, 3, 8, 32, 32))
