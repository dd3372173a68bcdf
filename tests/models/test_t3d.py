"""DenseNet3D and T3D: shapes, the minimum input, TTL temporal depths and widths."""

from __future__ import annotations

import pytest
import torch

from raylab.models import build_model
from raylab.models.t3d import DenseNet3D, TemporalTransition, densenet3d, min_size, t3d


@pytest.mark.parametrize("name", ["densenet3d121", "t3d121"])
@pytest.mark.parametrize("thw", [(29, 29, 29), (32, 32, 40), (40, 45, 33)])
def test_shapes_over_a_grid(name, thw):
    model = build_model(name, 5, width=0.125).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *thw)).shape == (1, 5)


@pytest.mark.parametrize("name", ["densenet3d169", "t3d169", "t3d201"])
def test_deeper_variants_run(name):
    model = build_model(name, 5, width=0.0625).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32, 32)).shape == (1, 5)


@pytest.mark.parametrize("name", ["densenet3d121", "t3d121"])
@pytest.mark.parametrize("thw", [(28, 32, 32), (32, 28, 32), (32, 32, 16)])
def test_too_small_names_model_shape_and_minimum(name, thw):
    model = build_model(name, 5, width=0.125)
    with pytest.raises(ValueError, match=rf"{name}: input .* too small; needs T >= 29, H >= 29"):
        model(torch.randn(1, 3, *thw))


def test_temporal_sizes_follow_the_table():
    # 32 frames: conv0 16, pool0 8, then 4, 2, 1 after the three transitions (or TTLs).
    for model in (densenet3d(5, width=0.125), t3d(5, width=0.125)):
        x, times = torch.randn(1, 3, 32, 32, 32), []
        with torch.no_grad():
            for name, block in model.eval().features.named_children():
                x = block(x)
                if name in ("conv0", "pool0") or name.startswith(("transition", "ttl")):
                    times.append(x.shape[2])
        assert times == [16, 8, 4, 2, 1]


def test_ttl_branches_have_the_requested_depths_and_keep_time():
    model = t3d(5, width=0.125, ttl_depths=((1, 3, 6), (1, 3, 4), (2, 5)))
    ttls = [m for m in model.modules() if isinstance(m, TemporalTransition)]
    assert [t.depths for t in ttls] == [(1, 3, 6), (1, 3, 4), (2, 5)]
    kernels = [b.conv.kernel_size for b in ttls[2].branches]
    assert kernels == [(2, 3, 3), (5, 3, 3)]
    x = torch.randn(1, ttls[0].branches[0].norm.num_features, 7, 6, 6)
    for branch in ttls[0].branches:  # "same" padding, even for even depths
        assert branch(x).shape[2:] == (7, 6, 6)


def test_ttl_defaults_and_widths():
    ttls = [m for m in t3d(5).modules() if isinstance(m, TemporalTransition)]
    assert [t.depths for t in ttls] == [(1, 3, 4)] * 3
    assert all(b.conv.out_channels == 128 for t in ttls for b in t.branches)
    # By default the compression keeps DenseNet's widths (so 2D DenseNets inflate into it).
    assert [t.transition.conv.out_channels for t in ttls] == [128, 256, 512]
    authors = [m for m in t3d(5, ttl_out=384).modules() if isinstance(m, TemporalTransition)]
    assert [t.transition.conv.out_channels for t in authors] == [384] * 3


def test_bad_ttl_depths_and_depth_are_rejected():
    with pytest.raises(ValueError, match="ttl_depths"):
        t3d(5, ttl_depths=((1, 3), (1, 3)))
    with pytest.raises(ValueError, match="ttl_depths"):
        t3d(5, ttl_depths=(0, 3))
    with pytest.raises(ValueError, match="depth must be one of"):
        densenet3d(5, depth=122)


def test_minimum_follows_the_number_of_transitions():
    assert [min_size(n) for n in (0, 1, 2, 3)] == [1, 5, 13, 29]
    model = DenseNet3D(3, (1, 1), width=0.125).eval()  # one transition: 5 is enough
    with torch.no_grad():
        assert model(torch.randn(1, 3, 5, 5, 5)).shape == (1, 3)
    with pytest.raises(ValueError, match=r"needs T >= 5, H >= 5, W >= 5"):
        model(torch.randn(1, 3, 4, 5, 5))
