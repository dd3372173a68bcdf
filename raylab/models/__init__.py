"""The model zoo: C3D, I3D, DenseNet3D, T3D, STM and a TSN baseline, built by name.

Every model takes a float clip (B, C, T, H, W) and returns logits (B, num_classes). Common
options: ``in_channels`` (3 RGB, 2 flow), ``dropout`` (before the classifier, 0.5 by default)
and ``width`` (a channel multiplier, for tiny networks in tests). Each family's own options are
in its builder's docstring. A clip too small for a model's pooling raises ValueError naming the
model, the input shape and the minimum, before any layer runs.

``MODEL_INFO`` has, per name, the canonical input and the published (or computed) figures that
``benchmarks/models.py`` and the tests compare against (MODELS.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import nn

from raylab.models.c3d import C3D, c3d
from raylab.models.i3d import I3D, i3d
from raylab.models.stm import stm
from raylab.models.t3d import DenseNet3D, densenet3d, t3d
from raylab.models.tsn import FrameResNet, tsn


@dataclass(frozen=True)
class ModelInfo:
    """A builder and its reference figures.

    ``frames`` x ``size`` x ``size`` is the paper's input; ``params_m`` (millions, with
    ``classes`` outputs) and ``gmacs`` (multiply-adds per clip at that input; papers' "GFLOPs"
    for these models are MACs) are the published figures, or the ones MODELS.md computed from
    the layer table where no paper gives one (``source`` says which); None: neither exists.
    """

    builder: Callable[..., nn.Module]
    frames: int
    size: int
    classes: int
    params_m: float | None
    gmacs: float | None
    source: str
    inputs: str


_IMAGENET = "ImageNet-normalised RGB frames (0..1 minus mean, over std)"

MODEL_INFO: dict[str, ModelInfo] = {
    "c3d": ModelInfo(
        c3d,
        16,
        112,
        487,
        79.99,
        38.5,
        "C3D paper / FASTER (38.5 GFLOPs)",
        "BGR 0..255 minus the Sports-1M mean (c3d.preprocess_sports1m) for its weights; "
        "normalised input when trained from scratch",
    ),
    "i3d": ModelInfo(
        i3d,
        64,
        224,
        400,
        12.7,
        107.9,
        "I3D paper (12M), S3D paper (107.9 GFLOPs)",
        "values in [-1, 1]; flow: TV-L1 clipped to [-20, 20] and scaled to [-1, 1]",
    ),
    "densenet3d121": ModelInfo(
        partial(densenet3d, depth=121), 32, 224, 400, 11.66, 34.1, "MODELS.md [calc]", _IMAGENET
    ),
    "densenet3d169": ModelInfo(
        partial(densenet3d, depth=169), 32, 224, 400, 19.21, 35.3, "MODELS.md [calc]", _IMAGENET
    ),
    "t3d121": ModelInfo(
        partial(t3d, depth=121), 32, 224, 400, None, None, "none published", _IMAGENET
    ),
    "t3d169": ModelInfo(
        partial(t3d, depth=169), 32, 224, 400, None, None, "none published", _IMAGENET
    ),
    "t3d201": ModelInfo(
        partial(t3d, depth=201), 32, 224, 400, None, None, "none published", _IMAGENET
    ),
    "stm": ModelInfo(stm, 8, 224, 174, 24.0, 33.3, "STM paper (24.0M, 33.3G)", _IMAGENET),
    "tsn": ModelInfo(tsn, 8, 224, 174, 23.86, 32.7, "MODELS.md [calc] (TSN-R50)", _IMAGENET),
}

MODEL_NAMES: tuple[str, ...] = tuple(MODEL_INFO)


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


__all__ = [
    "C3D",
    "I3D",
    "MODEL_INFO",
    "MODEL_NAMES",
    "DenseNet3D",
    "FrameResNet",
    "ModelInfo",
    "build_model",
]
