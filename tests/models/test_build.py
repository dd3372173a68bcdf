"""The registry and the options every model shares; full-width parameter counts against counts
derived here from the papers' layer tables (not from our modules), and the published figures."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from raylab.models import MODEL_INFO, MODEL_NAMES, build_model, input_contract, parse_option
from raylab.models.t3d import densenet3d

# The smallest-cost input each model takes, for tiny-width runs.
SMALL = {
    "c3d": (16, 112, 112),  # the fc head needs the published size
    "i3d": (8, 32, 32),
    "densenet3d121": (32, 32, 32),
    "densenet3d169": (32, 32, 32),
    "t3d121": (32, 32, 32),
    "t3d169": (32, 32, 32),
    "t3d201": (32, 32, 32),
    "stm": (4, 32, 32),
    "tsn": (4, 32, 32),
}


def test_model_names():
    assert MODEL_NAMES == (
        "c3d",
        "i3d",
        "densenet3d121",
        "densenet3d169",
        "t3d121",
        "t3d169",
        "t3d201",
        "stm",
        "tsn",
    )


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"unknown model 'r3d'; valid names: c3d, i3d, .*tsn"):
        build_model("r3d", 10)


def test_unknown_option_and_bad_values_name_the_model():
    with pytest.raises(ValueError, match=r"i3d: .*unexpected keyword argument 'head'"):
        build_model("i3d", 10, head="pooled")
    for bad in ({"width": 0}, {"dropout": 1.0}, {"in_channels": 0}):
        with pytest.raises(ValueError, match="stm: "):
            build_model("stm", 10, **bad)
    with pytest.raises(ValueError, match="t3d121: num_classes"):
        build_model("t3d121", 0)
    with pytest.raises(ValueError, match="densenet3d121: the depth is part of the name"):
        build_model("densenet3d121", 10, depth=201)
    assert len(build_model("stm", 10, depth=101, width=0.0625).layer3) == 23


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_training_starts_at_the_uniform_guess(name):
    # A freshly built classifier should be unsure: loss near ln(classes). A classifier
    # initialised like a hidden conv starts with logits of several units and trains badly.
    torch.manual_seed(0)
    model = build_model(name, 8, width=0.0625).train()  # batch statistics, as in training
    thw = (32, 64, 64) if "densenet" in name or "t3d" in name else SMALL[name]
    with torch.no_grad():
        logits = model(torch.randn(4, 3, *thw))
    loss = nn.functional.cross_entropy(logits, torch.arange(4))
    assert abs(loss.item() - math.log(8)) < 0.3, loss.item()
    assert logits.abs().max() < 1.0


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    model = build_model(name, 3, width=0.0625).train()
    # A train-mode BN over a handful of values per channel can cut the gradient exactly (with
    # two it outputs +-1 whatever its input): give DenseNet's last block 2x2 positions, not 1.
    thw = (32, 64, 64) if "densenet" in name or "t3d" in name else SMALL[name]
    clip = torch.randn(2, 3, *thw)
    logits = model(clip)
    assert logits.shape == (2, 3)
    (logits * torch.randn_like(logits)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_flow_input_and_wrong_inputs(name):
    model = build_model(name, 3, in_channels=2, width=0.0625).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 2, *SMALL[name])).shape == (1, 3)
    with pytest.raises(ValueError, match=rf"{name}: expected 2 input channels"):
        model(torch.randn(1, 3, *SMALL[name]))
    with pytest.raises(ValueError, match=rf"{name}: expected a clip of shape \(B, C, T, H, W\)"):
        model(torch.randn(2, *SMALL[name]))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_dropout_option(name):
    model = build_model(name, 3, width=0.0625, dropout=0.2)
    ps = {m.p for m in model.modules() if isinstance(m, nn.Dropout)}
    assert ps == {0.2}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_paper_input_at_full_width_on_meta(name):
    # Shapes only: a meta-device forward costs nothing.
    info = MODEL_INFO[name]
    with torch.device("meta"):
        model = build_model(name, info.classes).eval()
        clip = torch.empty(1, 3, info.frames, info.size, info.size)
        assert model(clip).shape == (1, info.classes)


# ---------------------------------------------------------------- parameter counts


def bn(c: int) -> int:
    return 2 * c  # BatchNorm's affine weight and bias


def c3d_params(k: int) -> int:
    convs = [
        (3, 64),
        (64, 128),
        (128, 256),
        (256, 256),
        (256, 512),
        (512, 512),
        (512, 512),
        (512, 512),
    ]
    n = sum(i * o * 27 + o for i, o in convs)  # 3x3x3 with bias
    return n + (8192 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * k + k)


MIXED = [
    (64, 96, 128, 16, 32, 32),
    (128, 128, 192, 32, 96, 64),
    (192, 96, 208, 16, 48, 64),
    (160, 112, 224, 24, 64, 64),
    (128, 128, 256, 24, 64, 64),
    (112, 144, 288, 32, 64, 64),
    (256, 160, 320, 32, 128, 128),
    (256, 160, 320, 32, 128, 128),
    (384, 192, 384, 48, 128, 128),
]


def i3d_params(k: int, cin: int = 3) -> int:
    def unit(i: int, o: int, ks: int = 1) -> int:
        return i * o * ks**3 + bn(o)  # conv without bias + BN

    n, ch = unit(cin, 64, 7) + unit(64, 64) + unit(64, 192, 3), 192
    for b0, b1a, b1b, b2a, b2b, b3 in MIXED:
        n += unit(ch, b0) + unit(ch, b1a) + unit(b1a, b1b, 3) + unit(ch, b2a) + unit(b2a, b2b, 3)
        n += unit(ch, b3)
        ch = b0 + b1b + b2b + b3
    return n + ch * k + k  # 1x1x1 logits conv with bias


def densenet3d_params(blocks, k: int, ttl_kernels=None, ttl_out=None) -> int:
    """ttl_kernels: one (T, H, W) kernel per TTL branch (128 channels each), or None."""
    n, ch = 3 * 64 * 3 * 7 * 7 + bn(64), 64
    for i, layers in enumerate(blocks):
        for _ in range(layers):
            n += bn(ch) + ch * 128 + bn(128) + 128 * 32 * 27
            ch += 32
        if i == len(blocks) - 1:
            break
        out = ch // 2 if ttl_out is None else ttl_out
        if ttl_kernels is None:
            n += bn(ch) + ch * out
        else:
            n += sum(bn(ch) + ch * 128 * t * h * w for t, h, w in ttl_kernels)
            n += bn(128 * len(ttl_kernels)) + 128 * len(ttl_kernels) * out
        ch = out
    return n + bn(ch) + ch * k + k


def resnet_params(layers, k: int, stm: bool = False) -> int:
    n, ch = 3 * 64 * 49 + bn(64), 64
    for blocks, p in zip(layers, (64, 128, 256, 512), strict=True):
        for j in range(blocks):
            n += ch * p + bn(p) + p * p * 9 + bn(p) + p * 4 * p + bn(4 * p)
            if j == 0:
                n += ch * 4 * p + bn(4 * p)  # projection shortcut
            if stm:
                r = p // 16  # temporal kernel, CMM reduce + BN, 3x3 depthwise, expand
                n += p * 3 + p * r + bn(r) + r * 9 + r * p
            ch = 4 * p
    return n + ch * k + k


R50, R101 = (3, 4, 6, 3), (3, 4, 23, 3)
D121, D169, D201 = (6, 12, 24, 16), (6, 12, 32, 32), (6, 12, 48, 32)
TTL = [(1, 3, 3), (3, 3, 3), (4, 3, 3)]

# name, options, classes, count from the layer table, the published figure (millions, 2
# decimals; None where none is published: then the table's count is the whole check)
COUNTS = [
    ("c3d", {}, 487, c3d_params(487), 79.99),
    ("c3d", {}, 101, c3d_params(101), 78.41),  # C3D with a 101-way classifier: ~78.4M
    ("i3d", {}, 400, i3d_params(400), 12.70),
    ("i3d", {"in_channels": 2}, 400, i3d_params(400, 2), 12.68),
    ("densenet3d121", {}, 400, densenet3d_params(D121, 400), 11.66),
    ("densenet3d169", {}, 400, densenet3d_params(D169, 400), 19.21),
    ("stm", {}, 174, resnet_params(R50, 174, stm=True), 24.04),  # paper: 24.0M
    ("tsn", {}, 174, resnet_params(R50, 174), 23.86),
    # No published T3D figure at these widths (DenseNet widths after each TTL); the authors'
    # code's is checked below.
    ("t3d121", {}, 400, densenet3d_params(D121, 400, TTL), None),
    ("t3d169", {}, 400, densenet3d_params(D169, 400, TTL), None),
    ("t3d201", {}, 400, densenet3d_params(D201, 400, TTL), None),
    ("t3d121", {"ttl_out": 384}, 400, densenet3d_params(D121, 400, TTL, 384), None),
    ("densenet3d201", {}, 400, densenet3d_params(D201, 400), 26.11),
    ("stm", {"depth": 101}, 174, resnet_params(R101, 174, stm=True), 43.18),
    ("tsn", {"depth": 101}, 174, resnet_params(R101, 174), 42.86),
]


@pytest.mark.parametrize(("name", "options", "classes", "expected", "figure"), COUNTS)
def test_full_width_parameter_counts(name, options, classes, expected, figure):
    with torch.device("meta"):
        if name == "densenet3d201":  # a builder option, not one of MODEL_NAMES
            model = densenet3d(classes, depth=201)
        else:
            model = build_model(name, classes, **options)
    assert sum(p.numel() for p in model.parameters()) == expected
    if figure is not None:
        assert round(expected / 1e6, 2) == figure


def test_authors_t3d_count_differs_from_ours_by_the_depth1_branch_kernel():
    # The ~29.7M quoted for T3D-121 is the authors' code: 384 channels after every TTL and a
    # 1x1x1 depth-1 branch. Ours with ttl_out=384 has a 1x3x3 one (the paper's TTL: 3x3
    # spatial for every depth), which adds ch * 128 * 8 weights per TTL.
    authors = densenet3d_params(D121, 400, [(1, 1, 1), (3, 3, 3), (4, 3, 3)], 384)
    assert round(authors / 1e6, 1) == 29.7
    ttl_inputs = [64 + 6 * 32, 384 + 12 * 32, 384 + 24 * 32]
    ours = densenet3d_params(D121, 400, TTL, 384)
    assert ours - authors == sum(ch * 128 * 8 for ch in ttl_inputs)


def test_info_published_figures_are_within_5_percent_of_ours():
    for name, info in MODEL_INFO.items():
        if info.params_m is None:
            continue
        with torch.device("meta"):
            n = sum(p.numel() for p in build_model(name, info.classes).parameters())
        assert abs(n / 1e6 / info.params_m - 1) < 0.05, name


def _takes(name: str, options: dict, frames: int, size: int) -> bool:
    """Whether the model runs a frames x size x size clip (on the meta device)."""
    with torch.device("meta"):
        model = build_model(name, 8, width=0.125, **options).eval()
        try:
            model(torch.empty(1, 3, frames, size, size))
        except ValueError:
            return False
    return True


@pytest.mark.parametrize(
    "name, options",
    [(n, {}) for n in MODEL_NAMES] + [("c3d", {"head": "pooled"})],
)
def test_input_contract_is_what_the_model_takes(name, options):
    # The contract is data the search reads instead of building models to find out: it
    # must agree with the model itself at every bound.
    c = input_contract(name, **options)
    assert c.kind in ("2d", "3d") and c.scheme in ("dense", "segments")
    assert c.refusal(c.frames, c.size) is None  # the paper's input is taken
    assert _takes(name, options, c.min_frames, c.min_size)
    if c.min_frames > 1:
        assert not _takes(name, options, c.min_frames - 1, c.min_size)
        assert c.refusal(c.min_frames - 1, c.min_size)
    if c.min_size > 1:
        assert not _takes(name, options, c.min_frames, c.min_size - 1)
    if c.max_frames is not None:
        assert _takes(name, options, c.max_frames, c.min_size)
        assert not _takes(name, options, c.max_frames + 1, c.min_size)
    if c.max_size is not None:
        assert _takes(name, options, c.min_frames, c.max_size)
        assert not _takes(name, options, c.min_frames, c.max_size + 1)
        assert c.refusal(c.min_frames, c.max_size + 1)


def test_a_model_option_from_the_command_line_is_json_or_plain_text():
    assert parse_option("head=pooled") == ("head", "pooled")
    assert parse_option('head="pooled"') == ("head", "pooled")
    assert parse_option("batch_norm=true") == ("batch_norm", True)
    assert parse_option("dropout=0.2") == ("dropout", 0.2)
    assert parse_option("ttl_depths=[1, 3, 6]") == ("ttl_depths", [1, 3, 6])
    for bad in ("head", "=pooled"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_option(bad)
