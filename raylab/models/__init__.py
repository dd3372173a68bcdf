"""The model zoo: C3D, I3D, DenseNet3D, T3D, STM and a TSN baseline, built by name.

Every model takes a float clip (B, C, T, H, W) and returns logits (B, num_classes). Common
options: ``in_channels`` (3 RGB, 2 flow), ``dropout`` (before the classifier, 0.5 by default)
and ``width`` (a channel multiplier, for tiny networks in tests). Each family's own options are
in its builder's docstring. A clip too small for a model's pooling raises ValueError naming the
model, the input shape and the minimum, before any layer runs.

``MODEL_INFO`` has, per name, the input contract (what clips the model takes, as data a
program reads: the search draws only clips its models take, jobs pick a model's default
sampling from it) and the published (or computed) figures that ``benchmarks/models.py`` and
the tests compare against.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

from torch import nn

from raylab.models.c3d import C3D, c3d
from raylab.models.i3d import I3D, i3d
from raylab.models.stm import stm
from raylab.models.t3d import DenseNet3D, densenet3d, t3d
from raylab.models.t3d import min_size as min_t3d_size
from raylab.models.tsn import FrameResNet, tsn


@dataclass(frozen=True)
class InputContract:
    """The clips a model takes, as torchvision's weight metadata carries ``min_size`` and
    ``min_temporal_size``.

    ``kind`` is "3d" when convolutions run over time (C3D, I3D, DenseNet3D, T3D) and "2d" for
    a frame network (TSN; STM, whose temporal modules sit inside a 2D ResNet).
    ``min_frames`` / ``min_size``: the smallest T and H = W that the model's pooling keeps a
    position for; ``max_frames`` / ``max_size``: None, or the largest (C3D's fc head takes
    only inputs whose pool5 output is 1x4x4). ``frames`` x ``size`` x ``size`` is the paper's
    input; ``scheme`` how its clips are sampled by default: "dense" (consecutive frames
    ``stride`` apart) or TSN's "segments" (one frame from each of ``frames`` equal parts).
    """

    kind: str
    min_frames: int
    min_size: int
    frames: int
    size: int
    scheme: str = "dense"
    max_frames: int | None = None
    max_size: int | None = None

    def takes_frames(self, frames: int) -> bool:
        return frames >= self.min_frames and (self.max_frames is None or frames <= self.max_frames)

    def takes_size(self, size: int) -> bool:
        return size >= self.min_size and (self.max_size is None or size <= self.max_size)

    def refusal(self, frames: int, size: int) -> str | None:
        """Why a ``frames`` x ``size`` x ``size`` clip cannot go in; None when it can."""
        if self.takes_frames(frames) and self.takes_size(size):
            return None

        def bounds(low: int, high: int | None) -> str:
            return f">= {low}" if high is None else f"in {low}..{high}"

        return (
            f"needs T {bounds(self.min_frames, self.max_frames)} and "
            f"H = W {bounds(self.min_size, self.max_size)}, got {frames}x{size}x{size}"
        )


# DenseNet3D / T3D: conv0 and pool0 leave ceil(s / 4) positions, which its three 2x average
# pools must not empty (t3d.min_size).
_DENSE3D = InputContract("3d", min_t3d_size(3), min_t3d_size(3), frames=32, size=224)
_FRAMES_2D = InputContract("2d", 1, 1, frames=8, size=224, scheme="segments")


@dataclass(frozen=True)
class ModelInfo:
    """A builder, the clips it takes (``contract``, for the default options: see
    :func:`input_contract`) and its reference figures.

    ``params_m`` (millions, with
    ``classes`` outputs) and ``gmacs`` (multiply-adds per clip at that input; papers' "GFLOPs"
    for these models are MACs) are the published figures, or ones computed from
    the layer table where no paper gives one (``source`` says which); None: neither exists.
    """

    builder: Callable[..., nn.Module]
    contract: InputContract
    classes: int
    params_m: float | None
    gmacs: float | None
    source: str
    inputs: str

    @property
    def frames(self) -> int:
        """The paper's input frames."""
        return self.contract.frames

    @property
    def size(self) -> int:
        """The paper's input crop side."""
        return self.contract.size


_IMAGENET = "ImageNet-normalised RGB frames (0..1 minus mean, over std)"

MODEL_INFO: dict[str, ModelInfo] = {
    "c3d": ModelInfo(
        c3d,
        # The default fc head: pool5 must be 1x4x4 (c3d.pool5_size), T 16-31, H = W 96-127.
        InputContract("3d", 16, 96, frames=16, size=112, max_frames=31, max_size=127),
        487,
        79.99,
        38.5,
        "C3D paper / FASTER (38.5 GFLOPs)",
        "BGR 0..255 minus the Sports-1M mean (c3d.preprocess_sports1m) for its weights; "
        "normalised input when trained from scratch",
    ),
    "i3d": ModelInfo(
        i3d,
        InputContract("3d", 1, 1, frames=64, size=224),  # SAME padding keeps a position
        400,
        12.7,
        107.9,
        "I3D paper (12M), S3D paper (107.9 GFLOPs)",
        "values in [-1, 1]; flow: TV-L1 clipped to [-20, 20] and scaled to [-1, 1]",
    ),
    "densenet3d121": ModelInfo(
        partial(densenet3d, depth=121),
        _DENSE3D,
        400,
        11.66,
        34.1,
        "layer table [calc]",
        _IMAGENET,
    ),
    "densenet3d169": ModelInfo(
        partial(densenet3d, depth=169),
        _DENSE3D,
        400,
        19.21,
        35.3,
        "layer table [calc]",
        _IMAGENET,
    ),
    "t3d121": ModelInfo(
        partial(t3d, depth=121), _DENSE3D, 400, None, None, "none published", _IMAGENET
    ),
    "t3d169": ModelInfo(
        partial(t3d, depth=169), _DENSE3D, 400, None, None, "none published", _IMAGENET
    ),
    "t3d201": ModelInfo(
        partial(t3d, depth=201), _DENSE3D, 400, None, None, "none published", _IMAGENET
    ),
    "stm": ModelInfo(stm, _FRAMES_2D, 174, 24.0, 33.3, "STM paper (24.0M, 33.3G)", _IMAGENET),
    "tsn": ModelInfo(tsn, _FRAMES_2D, 174, 23.86, 32.7, "layer table [calc] (TSN-R50)", _IMAGENET),
}

MODEL_NAMES: tuple[str, ...] = tuple(MODEL_INFO)


def input_contract(name: str, **options) -> InputContract:
    """The clips model ``name`` takes when built with ``options`` (C3D's pooled head takes any
    clip of at least 16 x 16 x 16)."""
    if name not in MODEL_INFO:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    contract = MODEL_INFO[name].contract
    if name == "c3d" and options.get("head", "fc") == "pooled":
        contract = replace(contract, min_size=16, max_frames=None, max_size=None)
    return contract


def build_model(name: str, num_classes: int, **options) -> nn.Module:
    """The model ``name`` (one of ``MODEL_NAMES``) with ``num_classes`` outputs.

    Raises ValueError for an unknown name (listing the valid ones), an unknown option name or
    a value the model cannot take.
    """
    if name not in MODEL_INFO:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    builder = MODEL_INFO[name].builder
    if "depth" in options and isinstance(builder, partial):
        raise ValueError(f"{name}: the depth is part of the name; choose from {MODEL_NAMES}")
    try:
        return builder(num_classes, **options)
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise
        raise ValueError(f"{name}: {err}") from err


def parse_option(item: str) -> tuple[str, object]:
    """A ``KEY=VALUE`` build option from the command line: a VALUE that reads as JSON is
    that value (``dropout=0.2``, ``batch_norm=true``, ``ttl_depths=[1,3,6]``), any other is
    plain text (``head=pooled``)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"model option {item!r}: expected KEY=VALUE, e.g. head=pooled")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


__all__ = [
    "C3D",
    "I3D",
    "MODEL_INFO",
    "MODEL_NAMES",
    "DenseNet3D",
    "FrameResNet",
    "InputContract",
    "ModelInfo",
    "build_model",
    "input_contract",
    "parse_option",
]
