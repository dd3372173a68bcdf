"""STM: CSTM starts as an exact channel shift, CMM is a frame difference, placement options."""

from __future__ import annotations

import pytest
import torch

from raylab.models.stm import CMM, ChannelwiseTemporalConv, STMBlock, stm
from raylab.models.tsn import Bottleneck


def test_cstm_at_init_is_exactly_the_channel_shift():
    conv = ChannelwiseTemporalConv(16)
    x = torch.randn(2, 5, 16, 3, 4)  # (N, T, C, H, W)
    with torch.no_grad():
        y = conv(x)
    q = 16 // 4
    expected = x.clone()
    expected[:, :, :q] = torch.cat([torch.zeros_like(x[:, :1, :q]), x[:, :-1, :q]], 1)  # t <- t-1
    expected[:, :, -q:] = torch.cat([x[:, 1:, -q:], torch.zeros_like(x[:, :1, -q:])], 1)  # t <- t+1
    assert torch.equal(y, expected)


def test_cstm_shift_survives_the_models_initialisation():
    model = stm(4, width=0.125)
    for block in model.modules():
        if isinstance(block, STMBlock):
            w = block.cstm.temporal.weight  # (C, 1, 3)
            c, q = w.shape[0], w.shape[0] // 4
            assert torch.equal(w[:q, 0], torch.tensor([1.0, 0, 0]).expand(q, 3))
            assert torch.equal(w[c - q :, 0], torch.tensor([0, 0, 1.0]).expand(q, 3))
            assert torch.equal(w[q : c - q, 0], torch.tensor([0, 1.0, 0]).expand(c - 2 * q, 3))


@pytest.mark.parametrize("stride", [1, 2])
def test_cmm_is_conv_of_next_frame_minus_this_frame(stride):
    cmm = CMM(32, stride).eval()
    x = torch.randn(2, 4, 32, 7, 7)
    with torch.no_grad():
        out = cmm(x).unflatten(0, (2, 4))
        y = cmm.bn(cmm.reduce(x.flatten(0, 1))).unflatten(0, (2, 4))
        for t in range(3):
            diff = cmm.motion(y[:, t + 1]) - y[:, t]
            torch.testing.assert_close(out[:, t], cmm.pool(cmm.expand(diff)))
    assert torch.equal(out[:, 3], torch.zeros_like(out[:, 3]))  # the last step is zeros
    assert out.shape[-2:] == ((4, 4) if stride == 2 else (7, 7))  # ceil, as the strided 3x3


@pytest.mark.parametrize("t", [1, 2, 8])
@pytest.mark.parametrize("hw", [(1, 1), (7, 9), (33, 32)])
def test_shapes_over_a_grid(t, hw):
    model = stm(4, width=0.125).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, t, *hw)).shape == (2, 4)


def test_stm_mixes_frames_unlike_tsn():
    model = stm(4, width=0.125).eval()
    clip = torch.randn(1, 3, 6, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(model(clip), model(clip.flip(2)), atol=1e-4)


def kinds(model) -> list[str]:
    return [
        f"{stage}:{'S' if isinstance(b, STMBlock) else 'B'}"
        for stage in (1, 2, 3, 4)
        for b in getattr(model, f"layer{stage}")
    ]


def test_placement_every_block_or_one_per_stage():
    every = kinds(stm(4, width=0.0625))
    assert every == [
        f"{s}:S" for s, n in zip((1, 2, 3, 4), (3, 4, 6, 3), strict=True) for _ in range(n)
    ]
    first = stm(4, width=0.0625, stm_blocks="first")
    assert sum(isinstance(b, STMBlock) for b in first.modules()) == 4
    assert all(isinstance(getattr(first, f"layer{s}")[0], STMBlock) for s in (1, 2, 3, 4))
    some = stm(4, width=0.0625, stm_stages=(4, 5))
    assert not any(isinstance(b, STMBlock) for b in [*some.layer1, *some.layer2])
    assert all(isinstance(b, STMBlock) for b in [*some.layer3, *some.layer4])
    assert all(isinstance(b, Bottleneck) for b in [*some.layer1, *some.layer2])


def test_depth_101_and_bad_options():
    model = stm(4, depth=101, width=0.0625)
    assert len(model.layer3) == 23
    with pytest.raises(ValueError, match="stages 2-5"):
        stm(4, stm_stages=(1, 2))
    with pytest.raises(ValueError, match="'all' or 'first'"):
        stm(4, stm_blocks="last")
    with pytest.raises(ValueError, match="depth must be one of"):
        stm(4, depth=18)
