"""C3D: shapes for both heads, the too-small and wrong-size errors, batch-norm option."""

from __future__ import annotations

import pytest
import torch

from raylab.models.c3d import C3D, pool5_size


@pytest.mark.parametrize("thw", [(16, 112, 112), (31, 96, 127)])
def test_fc_head_shapes(thw):
    model = C3D(7, width=0.0625).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *thw)).shape == (2, 7)


@pytest.mark.parametrize("t", [16, 19, 32])
@pytest.mark.parametrize("hw", [(16, 16), (23, 40), (64, 48)])
def test_pooled_head_any_size_from_16(t, hw):
    model = C3D(5, width=0.0625, head="pooled", batch_norm=True).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, t, *hw)).shape == (1, 5)


def test_pool5_size_is_the_published_table():
    assert pool5_size(16, 112, 112) == (1, 4, 4)
    assert pool5_size(32, 224, 224) == (2, 8, 8)
    assert pool5_size(8, 112, 112)[0] == 0


def test_fc_head_rejects_other_sizes_with_a_clear_message():
    model = C3D(5, width=0.0625)
    with pytest.raises(ValueError, match=r"head='fc' needs a pool5 output of 1x4x4.*1x5x4"):
        model(torch.randn(1, 3, 16, 128, 112))


@pytest.mark.parametrize("thw", [(15, 112, 112), (16, 15, 112), (16, 112, 8)])
def test_too_small_names_model_shape_and_minimum(thw):
    model = C3D(5, width=0.0625, head="pooled")
    with pytest.raises(ValueError, match=r"c3d: input .* is too small; needs T >= 16, H >= 16"):
        model(torch.randn(1, 3, *thw))


def test_batch_norm_option_adds_bn_after_every_conv_and_fc():
    model = C3D(5, width=0.0625, batch_norm=True)
    bns = [
        n for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]
    assert len(bns) == 8 + 2
    assert model.features.conv1.conv.bias is None  # BN makes a conv bias redundant
    assert C3D(5, width=0.0625).features.conv1.conv.bias is not None


def test_bad_head_is_rejected():
    with pytest.raises(ValueError, match="head must be 'fc' or 'pooled'"):
        C3D(5, head="global")
