"""TSN: a 2D ResNet per frame, logits averaged; shapes and the ResNet-101 option."""

from __future__ import annotations

import pytest
import torch

from raylab.models.tsn import Bottleneck, tsn


@pytest.mark.parametrize("t", [1, 3, 8])
@pytest.mark.parametrize("hw", [(1, 1), (7, 9), (33, 32)])
def test_shapes_over_a_grid(t, hw):
    model = tsn(4, width=0.125).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, t, *hw)).shape == (2, 4)


def test_logits_are_the_mean_of_per_frame_logits():
    model = tsn(4, width=0.125).eval()
    clip = torch.randn(2, 3, 5, 32, 32)
    with torch.no_grad():
        per_frame = torch.stack([model(clip[:, :, t : t + 1]) for t in range(5)], 1)
        torch.testing.assert_close(model(clip), per_frame.mean(1), rtol=1e-5, atol=1e-6)


def test_frame_order_does_not_matter():
    model = tsn(4, width=0.125).eval()
    clip = torch.randn(1, 3, 6, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(clip), model(clip.flip(2)), rtol=1e-5, atol=1e-6)


def test_depth_101_has_23_blocks_in_layer3():
    model = tsn(4, depth=101, width=0.0625)
    assert len(model.layer3) == 23 and all(isinstance(b, Bottleneck) for b in model.layer3)
    with pytest.raises(ValueError, match="depth must be one of"):
        tsn(4, depth=34)
