"""DenseNet3D and T3D (Diba et al., "Temporal 3D ConvNets", arXiv 1711.08200).

DenseNet3D is DenseNet-BC with 3D kernels; every conv is a pre-activation unit BN -> ReLU -> Conv::

    layer           kernel / stride               out                T x H at 32x224
    conv0           3x7x7 / 2, pad 1,3,3          64                 16 x 112
    pool0 (max)     3x3x3 / 2, pad 1                                  8 x 56
    denseblock1     [1x1x1 -> 4k, 3x3x3 -> k] x 6  64 + 6k
    transition1     1x1x1 (halve), avg 2x2x2 / 2                      4 x 28
    denseblock2     x 12
    transition2                                                       2 x 14
    denseblock3     x 24 (121), 32 (169), 48 (201)
    transition3                                                       1 x 7
    denseblock4     x 16 (121), 32 (169, 201)
    norm5, ReLU, global average pool, dropout, linear

with growth rate k = 32. Module names are torchvision's DenseNet, so a 2D ImageNet DenseNet
inflates into it key for key (``raylab.models.checkpoints``). The authors' code pools the final
1x7x7 map with a 1x7x7 window; the pool here is global, the same at 32x224 and valid elsewhere.
Three stride-2 pools after the stride-2 conv0 and pool0 need T, H, W >= 29 (32 in practice).

T3D replaces each transition by a Temporal Transition Layer (TTL): parallel BN -> ReLU -> Conv3d
branches with the same 3x3 spatial kernel and different temporal depths ("same" padding, so
time is kept inside the TTL), concatenated on channels, then BN -> ReLU -> a 1x1x1 compression
and the 2x2x2 / 2 average pool.

The temporal depths are a parameter, ``ttl_depths``: one tuple for every TTL or one tuple per TTL.
The paper's Table 1 prints them in bold; the authors' (later deleted) code used 1, 3, 4, which
is the default here (kernels 1x3x3, 3x3x3, 4x3x3, as a Keras port; the authors' depth-1 branch
was 1x1x1). Another port uses 6 instead of 4 in the first TTL: ``ttl_depths=((1, 3, 6), (1, 3, 4),
(1, 3, 4))``. Each branch has ``ttl_channels`` = 128 channels, as in the authors' code.

The compression keeps DenseNet's widths by default (half the block's output, the transition's
own output), so a 2D DenseNet inflates into every layer of T3D but the TTLs. The authors' code
kept 3 x 128 = 384 channels after every TTL instead: ``ttl_out=384``. With 400 classes T3D-121
has 27.84M parameters by default and 31.96M with ``ttl_out=384`` (the authors' code, whose
depth-1 branch was 1x1x1, had 29.73M); DenseNet3D-121 has 11.66M and -169 19.21M.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from raylab.models.common import check_clip, check_options, init_weights, scaled

BLOCKS = {121: (6, 12, 24, 16), 169: (6, 12, 32, 32), 201: (6, 12, 48, 32)}


def min_size(transitions: int) -> int:
    """Smallest T (and H, W): conv0 and pool0 leave ceil(s / 4) positions, which the
    ``transitions`` 2x average pools must not empty (29 for DenseNet's three)."""
    return 4 * (2**transitions - 1) + 1


class DenseLayer(nn.Module):
    """BN-ReLU-Conv 1x1x1 (bn_size * k) -> BN-ReLU-Conv 3x3x3 (k), concatenated to the input."""

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm3d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv3d(in_channels, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm3d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.relu1(self.norm1(x)))
        y = self.conv2(self.relu2(self.norm2(y)))
        return torch.cat([x, y], 1)


class DenseBlock(nn.Sequential):
    """``num_layers`` dense layers; the output has in_channels + num_layers * k channels."""

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int, bn_size: int) -> None:
        super().__init__(
            OrderedDict(
                (
                    f"denselayer{i + 1}",
                    DenseLayer(in_channels + i * growth_rate, growth_rate, bn_size),
                )
                for i in range(num_layers)
            )
        )
        self.out_channels = in_channels + num_layers * growth_rate


class Transition(nn.Sequential):
    """BN -> ReLU -> 1x1x1 conv -> 2x2x2 / 2 average pool."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            OrderedDict(
                norm=nn.BatchNorm3d(in_channels),
                relu=nn.ReLU(inplace=True),
                conv=nn.Conv3d(in_channels, out_channels, 1, bias=False),
                pool=nn.AvgPool3d(2, 2),
            )
        )


def _ttl_branch(in_channels: int, out_channels: int, depth: int) -> nn.Sequential:
    """BN -> ReLU -> Conv3d (depth x 3 x 3), zero-padded so T, H, W are kept ("same")."""
    front = (depth - 1) // 2  # an even depth pads one more frame at the back
    return nn.Sequential(
        OrderedDict(
            norm=nn.BatchNorm3d(in_channels),
            relu=nn.ReLU(inplace=True),
            pad=nn.ConstantPad3d((1, 1, 1, 1, front, depth - 1 - front), 0.0),
            conv=nn.Conv3d(in_channels, out_channels, (depth, 3, 3), bias=False),
        )
    )


class TemporalTransition(nn.Module):
    """TTL: one BN-ReLU-Conv (d x 3 x 3) branch per temporal depth d, concatenated, then
    BN -> ReLU -> 1x1x1 compression -> 2x2x2 / 2 average pool."""

    def __init__(
        self, in_channels: int, out_channels: int, branch_channels: int, depths: Sequence[int]
    ) -> None:
        super().__init__()
        self.depths = tuple(depths)
        self.branches = nn.ModuleList(
            _ttl_branch(in_channels, branch_channels, d) for d in self.depths
        )
        self.transition = Transition(branch_channels * len(self.depths), out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transition(torch.cat([branch(x) for branch in self.branches], 1))


class DenseNet3D(nn.Module):
    """DenseNet3D, or T3D with ``ttl=True``; see the module docstring. Input (B, C, T, H, W),
    output logits (B, num_classes)."""

    def __init__(
        self,
        num_classes: int,
        block_config: Sequence[int] = BLOCKS[121],
        *,
        in_channels: int = 3,
        dropout: float = 0.5,
        width: float = 1.0,
        growth_rate: int = 32,
        bn_size: int = 4,
        init_features: int = 64,
        ttl: bool = False,
        ttl_depths: Sequence[int] | Sequence[Sequence[int]] = (1, 3, 4),
        ttl_channels: int = 128,
        ttl_out: int | None = None,
        name: str = "densenet3d",
    ) -> None:
        super().__init__()
        check_options(name, num_classes, in_channels, dropout, width)
        self.name, self.in_channels = name, in_channels
        self.min_input = (min_size(len(block_config) - 1),) * 3
        depths = _ttl_depths(name, ttl_depths, len(block_config) - 1)
        k, channels = scaled(growth_rate, width), scaled(init_features, width)

        self.features = nn.Sequential(
            OrderedDict(
                conv0=nn.Conv3d(in_channels, channels, (3, 7, 7), 2, (1, 3, 3), bias=False),
                norm0=nn.BatchNorm3d(channels),
                relu0=nn.ReLU(inplace=True),
                pool0=nn.MaxPool3d(3, 2, 1),
            )
        )
        for i, num_layers in enumerate(block_config, start=1):
            block = DenseBlock(num_layers, channels, k, bn_size)
            self.features.add_module(f"denseblock{i}", block)
            channels = block.out_channels
            if i == len(block_config):
                break
            if ttl:
                out = channels // 2 if ttl_out is None else scaled(ttl_out, width)
                branch = scaled(ttl_channels, width)
                self.features.add_module(
                    f"ttl{i}", TemporalTransition(channels, out, branch, depths[i - 1])
                )
            else:
                out = channels // 2  # DenseNet-BC compression 0.5
                self.features.add_module(f"transition{i}", Transition(channels, out))
            channels = out
        self.features.add_module("norm5", nn.BatchNorm3d(channels))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled feature vector (B, C) that the classifier reads (before dropout)."""
        check_clip(self.name, x, self.in_channels, self.min_input)
        x = F.relu(self.features(x))
        return F.adaptive_avg_pool3d(x, 1).flatten(1)  # 1x7x7 at 32x224, see module doc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.forward_features(x)))


def _ttl_depths(
    name: str, depths: Sequence[int] | Sequence[Sequence[int]], count: int
) -> list[tuple[int, ...]]:
    """``depths`` as one tuple of temporal depths per TTL."""
    if all(isinstance(d, int) for d in depths):
        per_ttl = [tuple(depths)] * count
    else:
        per_ttl = [tuple(d) for d in depths]
    if len(per_ttl) != count or any(not d or min(d) < 1 for d in per_ttl):
        raise ValueError(
            f"{name}: ttl_depths must be one tuple of depths >= 1, or {count} such tuples "
            f"(one per TTL), got {depths!r}"
        )
    return per_ttl


def _blocks(name: str, depth: int) -> tuple[int, ...]:
    if depth not in BLOCKS:
        raise ValueError(f"{name}: depth must be one of {sorted(BLOCKS)}, got {depth}")
    return BLOCKS[depth]


def densenet3d(num_classes: int, depth: int = 121, **options) -> DenseNet3D:
    """DenseNet3D-121/169/201; options: in_channels, dropout (0.5), width, growth_rate, ..."""
    return DenseNet3D(
        num_classes, _blocks("densenet3d", depth), name=f"densenet3d{depth}", **options
    )


def t3d(num_classes: int, depth: int = 121, **options) -> DenseNet3D:
    """T3D-121/169/201 (DenseNet3D with TTLs); options as densenet3d plus ttl_depths
    ((1, 3, 4) for every TTL by default), ttl_channels (128) and ttl_out (None: DenseNet's)."""
    return DenseNet3D(num_classes, _blocks("t3d", depth), ttl=True, name=f"t3d{depth}", **options)


class DenseNet2D(nn.Module):
    """A 2D DenseNet-BC in torchvision's key layout (``features.conv0`` ... ``features.norm5``,
    ``classifier``), so a torchvision ImageNet state dict loads into it at ``width=1``.

    Input (B, 3, H, W), ImageNet-normalised; ``forward`` returns logits, ``forward_features``
    the globally pooled (B, C) vector after the final BN-ReLU (1024-D for DenseNet-121). It is
    the frozen frame teacher of T3D's supervision transfer (``raylab.train.transfer``).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        block_config: Sequence[int] = BLOCKS[121],
        *,
        width: float = 1.0,
        growth_rate: int = 32,
        bn_size: int = 4,
        init_features: int = 64,
        name: str = "densenet2d",
    ) -> None:
        super().__init__()
        check_options(name, num_classes, 3, 0.0, width)
        self.name = name
        k, channels = scaled(growth_rate, width), scaled(init_features, width)
        self.features = nn.Sequential(
            OrderedDict(
                conv0=nn.Conv2d(3, channels, 7, 2, 3, bias=False),
                norm0=nn.BatchNorm2d(channels),
                relu0=nn.ReLU(inplace=True),
                pool0=nn.MaxPool2d(3, 2, 1),
            )
        )
        for i, num_layers in enumerate(block_config, start=1):
            block = nn.Sequential(
                OrderedDict(
                    (f"denselayer{j + 1}", _DenseLayer2d(channels + j * k, k, bn_size))
                    for j in range(num_layers)
                )
            )
            self.features.add_module(f"denseblock{i}", block)
            channels += num_layers * k
            if i == len(block_config):
                break
            self.features.add_module(
                f"transition{i}",
                nn.Sequential(
                    OrderedDict(
                        norm=nn.BatchNorm2d(channels),
                        relu=nn.ReLU(inplace=True),
                        conv=nn.Conv2d(channels, channels // 2, 1, bias=False),
                        pool=nn.AvgPool2d(2, 2),
                    )
                ),
            )
            channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.out_features = channels
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images (B, 3, H, W), got {tuple(x.shape)}")
        x = F.relu(self.features(x))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


class _DenseLayer2d(nn.Module):
    """torchvision's dense layer: BN-ReLU-Conv 1x1 (bn_size * k) -> BN-ReLU-Conv 3x3 (k)."""

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.relu1(self.norm1(x)))
        y = self.conv2(self.relu2(self.norm2(y)))
        return torch.cat([x, y], 1)


def densenet2d(depth: int = 121, width: float = 1.0, num_classes: int = 1000) -> DenseNet2D:
    """2D DenseNet-121/169/201 in torchvision's layout (``width`` scales every channel count)."""
    return DenseNet2D(
        num_classes, _blocks("densenet2d", depth), width=width, name=f"densenet{depth}"
    )
