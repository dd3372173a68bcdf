"""STM (Jiang et al., "STM: SpatioTemporal and Motion Encoding for Action Recognition", ICCV 2019).

A 2D ResNet (``raylab.models.tsn``) on the clip's T frames in which STM blocks replace bottlenecks.
An STM block keeps the bottleneck's 1x1 convs and puts two paths, summed, in place of its 3x3::

    conv1   1x1, C_in -> p, BN, ReLU
    CSTM    channel-wise temporal conv over T (kernel 3, pad 1, groups p, no bias), at every
            pixel -> 3x3 conv (the block's stride), BN, ReLU
    CMM     1x1, p -> p/16, BN; for each t: 3x3 channel-wise conv of frame t+1 minus frame t
            (the last step is zeros); 1x1, p/16 -> p; 2x2 max-pool when the block strides
    conv3   (CSTM + CMM) -> 1x1, p -> 4p, BN; + shortcut, ReLU

There is no temporal downsampling; the per-frame logits are averaged over T (as in TSN).

The CSTM temporal kernel starts as a shift (TSM-style): the first quarter of the channels
[1, 0, 0] (frame t sees frame t-1), the last quarter [0, 0, 1] (t sees t+1), the middle half
[0, 1, 0] (identity). The block's 3x3 conv and BN are the ResNet's ``conv2``/``bn2``, so a 2D
ResNet loads into every STM block except the temporal kernel and CMM.

CMM's convs have no bias: the 1x1 expansion feeds a sum that goes through conv3 and BN, which
absorbs a bias. 24.04M parameters with 174 classes (TSN-R50: 23.86M), the paper's 24.0M.

Placement: ``stm_stages`` (the paper's stage numbers 2-5, i.e. ``layer1``-``layer4``) and
``stm_blocks``: "all" (every bottleneck of those stages, the paper's best model) or "first" (one
STM block per stage, as the paper's ablation also tries; here it is the stage's first block).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from raylab.models.tsn import EXPANSION, LAYERS, Bottleneck, FrameResNet, downsample


class ChannelwiseTemporalConv(nn.Conv1d):
    """CSTM's temporal conv: a depthwise 1D conv (kernel 3, pad 1, no bias) over T at every
    pixel, on (N * H * W, C, T) as in the paper; initialised as a shift (``reset_temporal``)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.reset_temporal()

    @torch.no_grad()
    def reset_temporal(self) -> None:
        """Shift init: first quarter [1, 0, 0], last quarter [0, 0, 1], the rest [0, 1, 0]."""
        c, q = self.out_channels, self.out_channels // 4
        self.weight.zero_()
        self.weight[:q, 0, 0] = 1.0  # y[t] = x[t - 1]
        self.weight[c - q :, 0, 2] = 1.0  # y[t] = x[t + 1]
        self.weight[q : c - q, 0, 1] = 1.0  # y[t] = x[t]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, C, H, W) -> (N, T, C, H, W)."""
        n, t, c, h, w = x.shape
        y = x.permute(0, 3, 4, 2, 1).reshape(n * h * w, c, t)
        y = super().forward(y)
        return y.reshape(n, h, w, c, t).permute(0, 4, 3, 1, 2)


class CSTM(nn.Module):
    """Channel-wise spatiotemporal module: temporal conv, then the 3x3 conv (stride), BN, ReLU."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.temporal = ChannelwiseTemporalConv(channels)
        self.conv = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, C, H, W) -> (N * T, C, H', W')."""
        return F.relu(self.bn(self.conv(self.temporal(x).flatten(0, 1))), inplace=True)


class CMM(nn.Module):
    """Channel-wise motion module: features of frame t+1, through a 3x3 channel-wise conv,
    minus those of frame t, in a ``reduction``-times narrower space."""

    def __init__(self, channels: int, stride: int, reduction: int = 16) -> None:
        super().__init__()
        r = max(1, channels // reduction)
        self.reduce = nn.Conv2d(channels, r, 1, bias=False)
        self.bn = nn.BatchNorm2d(r)
        self.motion = nn.Conv2d(r, r, 3, padding=1, groups=r, bias=False)
        self.expand = nn.Conv2d(r, channels, 1, bias=False)
        # ceil: the 2x2 pool then matches the strided 3x3 conv's ceil(H / 2) for odd H too.
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True) if stride > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, C, H, W) -> (N * T, C, H', W')."""
        n, t = x.shape[:2]
        y = self.bn(self.reduce(x.flatten(0, 1))).unflatten(0, (n, t))
        following = self.motion(y[:, 1:].flatten(0, 1)).unflatten(0, (n, t - 1))
        diff = torch.cat([following - y[:, :-1], torch.zeros_like(y[:, :1])], 1)
        return self.pool(self.expand(diff.flatten(0, 1)))


class STMBlock(nn.Module):
    """A bottleneck whose 3x3 conv is replaced by CSTM + CMM (see the module docstring)."""

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.cstm = CSTM(planes, stride)
        self.cmm = CMM(planes, stride)
        self.conv3 = nn.Conv2d(planes, planes * EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample(in_channels, planes * EXPANSION, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t = x.shape[:2]
        frames = x.flatten(0, 1)
        out = self.relu(self.bn1(self.conv1(frames))).unflatten(0, (n, t))
        out = self.cstm(out) + self.cmm(out)
        out = self.bn3(self.conv3(out))
        shortcut = frames if self.downsample is None else self.downsample(frames)
        return self.relu(out + shortcut).unflatten(0, (n, t))


def stm(
    num_classes: int,
    depth: int = 50,
    *,
    stm_stages: Sequence[int] = (2, 3, 4, 5),
    stm_blocks: str = "all",
    **options,
) -> FrameResNet:
    """STM on ResNet-50 (``depth=101``: ResNet-101); STM blocks in ``stm_stages`` (2-5), in
    every bottleneck (``stm_blocks="all"``) or the first of each (``"first"``); other options:
    in_channels, dropout (0.5), width."""
    if depth not in LAYERS:
        raise ValueError(f"stm: depth must be one of {sorted(LAYERS)}, got {depth}")
    stages = set(stm_stages)
    if not stages <= {2, 3, 4, 5}:
        raise ValueError(
            f"stm: stm_stages must be among the paper's stages 2-5, got {stm_stages!r}"
        )
    if stm_blocks not in ("all", "first"):
        raise ValueError(f"stm: stm_blocks must be 'all' or 'first', got {stm_blocks!r}")

    def block(stage: int, index: int, in_channels: int, planes: int, stride: int) -> nn.Module:
        # layerN is the paper's stage N + 1 (conv2_x .. conv5_x).
        if stage + 1 in stages and (stm_blocks == "all" or index == 0):
            return STMBlock(in_channels, planes, stride)
        return Bottleneck(in_channels, planes, stride)

    return FrameResNet(num_classes, LAYERS[depth], block=block, name="stm", **options)
