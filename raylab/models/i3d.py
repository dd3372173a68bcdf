"""I3D (Carreira & Zisserman, "Quo Vadis, Action Recognition?", CVPR 2017): Inception-v1 inflated.

Every convolution is a unit Conv3d (no bias) -> BatchNorm (eps 1e-3, momentum 0.01) -> ReLU with
TensorFlow "SAME" padding, computed for the actual input size in ``forward``::

    endpoint            kernel (T,H,W) / stride   out ch   T, H, W at 3x64x224x224
    Conv3d_1a_7x7       7,7,7 / 2,2,2             64       32, 112, 112
    MaxPool3d_2a_3x3    1,3,3 / 1,2,2                      32,  56,  56  (no temporal pooling)
    Conv3d_2b_1x1       1,1,1                     64
    Conv3d_2c_3x3       3,3,3                     192      32,  56,  56
    MaxPool3d_3a_3x3    1,3,3 / 1,2,2                      32,  28,  28  (no temporal pooling)
    Mixed_3b, 3c        inception                 256, 480 32,  28,  28
    MaxPool3d_4a_3x3    3,3,3 / 2,2,2                      16,  14,  14
    Mixed_4b..4f        inception                 512, 512, 512, 528, 832
    MaxPool3d_5a_2x2    2,2,2 / 2,2,2                       8,   7,   7
    Mixed_5b, 5c        inception                 832, 1024
    logits              2x7x7 avg pool (stride 1, valid) -> dropout -> 1x1x1 conv with bias
                        -> mean over the remaining 7 time steps

The paper's 2x7x7 average pool assumes the 7x7 map of a 224 input. Here it is spatially global
(the same thing at 224) and keeps the 2-frame temporal window (1 frame when only one is left),
so every input size works: SAME padding means no size is too small.

Inputs (as the DeepMind release): values in [-1, 1]; flow is 2-channel TV-L1 clipped to
[-20, 20] and rescaled to [-1, 1]; build with ``in_channels=2`` for flow.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from raylab.models.common import check_clip, check_options, init_weights, scaled

Triple = tuple[int, int, int]


def _triple(v: int | Triple) -> Triple:
    return (v, v, v) if isinstance(v, int) else tuple(v)


def same_padding(size: tuple[int, ...], kernel: Triple, stride: Triple) -> tuple[int, ...]:
    """F.pad widths (last dim first) of TensorFlow "SAME" for an input of T, H, W = ``size``.

    Per dim: total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0); the front gets
    total // 2 and the back the rest; the output then has ceil(size / s) positions.
    """
    pads: list[int] = []
    for n, k, s in zip(reversed(size), reversed(kernel), reversed(stride), strict=True):
        total = max(k - s, 0) if n % s == 0 else max(k - n % s, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


class Unit3d(nn.Module):
    """Conv3d (no bias, SAME padding) -> BatchNorm(eps 1e-3, momentum 0.01) -> ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int | Triple = 1,
        stride: int | Triple = 1,
    ) -> None:
        super().__init__()
        self.kernel_size, self.stride = _triple(kernel), _triple(stride)
        self.conv3d = nn.Conv3d(
            in_channels, out_channels, self.kernel_size, self.stride, bias=False
        )
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, same_padding(x.shape[2:], self.kernel_size, self.stride))
        return F.relu(self.bn(self.conv3d(x)), inplace=True)


class MaxPool3dSame(nn.Module):
    """Max-pool with SAME padding. The pad value is 0, as in the PyTorch port: every pool here
    follows a ReLU, so 0 never beats a real value, the same as TensorFlow ignoring the pad."""

    def __init__(self, kernel: int | Triple, stride: int | Triple) -> None:
        super().__init__()
        self.kernel_size, self.stride = _triple(kernel), _triple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, same_padding(x.shape[2:], self.kernel_size, self.stride))
        return F.max_pool3d(x, self.kernel_size, self.stride)


class Inception(nn.Module):
    """Inception-v1 module, inflated: four branches concatenated on channels.

    b0: 1x1x1 | b1: 1x1x1 -> 3x3x3 | b2: 1x1x1 -> 3x3x3 | b3: 3x3x3 max-pool (stride 1) -> 1x1x1.
    Attribute names are the PyTorch port's (b0, b1a, b1b, b2a, b2b, b3a, b3b).
    """

    def __init__(
        self, in_channels: int, b0: int, b1a: int, b1b: int, b2a: int, b2b: int, b3b: int
    ) -> None:
        super().__init__()
        self.b0 = Unit3d(in_channels, b0)
        self.b1a, self.b1b = Unit3d(in_channels, b1a), Unit3d(b1a, b1b, 3)
        self.b2a, self.b2b = Unit3d(in_channels, b2a), Unit3d(b2a, b2b, 3)
        self.b3a, self.b3b = MaxPool3dSame(3, 1), Unit3d(in_channels, b3b)
        self.out_channels = b0 + b1b + b2b + b3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1
        )


class I3D(nn.Module):
    """I3D as in the module docstring. Input (B, C, T, H, W), output logits (B, num_classes)."""

    def __init__(
        self, num_classes: int, *, in_channels: int = 3, dropout: float = 0.5, width: float = 1.0
    ) -> None:
        super().__init__()
        check_options("i3d", num_classes, in_channels, dropout, width)
        self.in_channels = in_channels
        self.min_input = (1, 1, 1)  # SAME padding: every size gives at least one position

        def c(n: int) -> int:
            return scaled(n, width)

        channels = c(192)  # into Mixed_3b; mixed() keeps it up to date

        def mixed(b0: int, b1a: int, b1b: int, b2a: int, b2b: int, b3b: int) -> Inception:
            nonlocal channels
            block = Inception(channels, c(b0), c(b1a), c(b1b), c(b2a), c(b2b), c(b3b))
            channels = block.out_channels
            return block

        self.features = nn.Sequential(
            OrderedDict(
                Conv3d_1a_7x7=Unit3d(in_channels, c(64), kernel=7, stride=2),
                MaxPool3d_2a_3x3=MaxPool3dSame((1, 3, 3), (1, 2, 2)),
                Conv3d_2b_1x1=Unit3d(c(64), c(64)),
                Conv3d_2c_3x3=Unit3d(c(64), c(192), kernel=3),
                MaxPool3d_3a_3x3=MaxPool3dSame((1, 3, 3), (1, 2, 2)),
                Mixed_3b=mixed(64, 96, 128, 16, 32, 32),  # 256
                Mixed_3c=mixed(128, 128, 192, 32, 96, 64),  # 480
                MaxPool3d_4a_3x3=MaxPool3dSame(3, 2),
                Mixed_4b=mixed(192, 96, 208, 16, 48, 64),  # 512
                Mixed_4c=mixed(160, 112, 224, 24, 64, 64),  # 512
                Mixed_4d=mixed(128, 128, 256, 24, 64, 64),  # 512
                Mixed_4e=mixed(112, 144, 288, 32, 64, 64),  # 528
                Mixed_4f=mixed(256, 160, 320, 32, 128, 128),  # 832
                MaxPool3d_5a_2x2=MaxPool3dSame(2, 2),
                Mixed_5b=mixed(256, 160, 320, 32, 128, 128),  # 832
                Mixed_5c=mixed(384, 192, 384, 48, 128, 128),  # 1024
            )
        )
        self.dropout = nn.Dropout(dropout)
        self.logits = nn.Conv3d(channels, num_classes, 1, bias=True)
        init_weights(self)
        # The classifier is a 1x1x1 conv: He init (fan_out = classes) would give it logits
        # of several units at the start; initialise it as the linear classifier it is.
        nn.init.normal_(self.logits.weight, 0.0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_clip("i3d", x, self.in_channels, self.min_input)
        x = self.features(x)
        t, h, w = x.shape[2:]
        x = F.avg_pool3d(x, (min(2, t), h, w), stride=1)  # 2x7x7 valid at 224, see module doc
        x = self.logits(self.dropout(x))  # (B, classes, T', 1, 1)
        return x.flatten(2).mean(2)


def i3d(num_classes: int, **options) -> I3D:
    """I3D; options: in_channels (3 RGB, 2 flow), dropout (0.5), width."""
    return I3D(num_classes, **options)
