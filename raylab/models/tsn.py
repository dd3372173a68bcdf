"""TSN baseline (Wang et al., "Temporal Segment Networks", ECCV 2016): a 2D ResNet on every frame.

The clip's T frames (one per segment) go through a 2D ResNet-50 (or -101) one by one and the
per-frame logits are averaged (the "average" segmental consensus). Nothing mixes frames, so on
classes that differ only in the direction of motion it sits at chance.

The ResNet is torchvision's v1.5 (stride on the 3x3 conv of a bottleneck), with its module names,
so a torchvision ResNet state dict loads into it key for key (``raylab.models.checkpoints``)::

    stage      blocks (50 / 101)   bottleneck 1x1, 3x3, 1x1      output at 224
    conv1      7x7 / 2, 64; max-pool 3x3 / 2                        56 x 56
    layer1     3 / 3               64, 64, 256                      56 x 56
    layer2     4 / 4               128, 128, 512 (stride 2)         28 x 28
    layer3     6 / 23              256, 256, 1024 (stride 2)        14 x 14
    layer4     3 / 3               512, 512, 2048 (stride 2)         7 x  7
    global average pool, dropout, fc; mean of the T frames' logits

Blocks take and return (N, T, C, H, W) so that a block may mix frames (STM's blocks do,
``raylab.models.stm``); the plain bottleneck folds time into the batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from raylab.models.common import check_clip, check_options, init_weights, scaled

LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
EXPANSION = 4

# (stage index 1-4, block index, in_channels, planes, stride) -> a block module
BlockFactory = Callable[[int, int, int, int, int], nn.Module]


def downsample(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """The projection shortcut (1x1 conv with the block's stride + BN), or None for identity."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
    )


class Bottleneck(nn.Module):
    """1x1 (planes) -> 3x3 (planes, stride) -> 1x1 (4 x planes), + shortcut, ReLU; per frame."""

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample(in_channels, planes * EXPANSION, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t = x.shape[:2]
        x = x.flatten(0, 1)  # (N * T, C, H, W): frames are independent here
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut).unflatten(0, (n, t))


def bottleneck(stage: int, index: int, in_channels: int, planes: int, stride: int) -> nn.Module:
    """The BlockFactory of plain ResNet bottlenecks (TSN)."""
    return Bottleneck(in_channels, planes, stride)


def make_stage(
    block: BlockFactory, stage: int, num_blocks: int, in_channels: int, planes: int, stride: int
) -> tuple[nn.Sequential, int]:
    """A ResNet stage of ``num_blocks`` blocks (the first strides) and its output channels."""
    blocks = []
    for index in range(num_blocks):
        blocks.append(block(stage, index, in_channels, planes, stride if index == 0 else 1))
        in_channels = planes * EXPANSION
    return nn.Sequential(*blocks), in_channels


class FrameResNet(nn.Module):
    """A 2D ResNet applied to every frame, logits averaged over time.

    Input (B, C, T, H, W), output logits (B, num_classes). ``block`` builds each residual block
    (TSN: the plain bottleneck; STM puts its own blocks in chosen places).
    """

    def __init__(
        self,
        num_classes: int,
        layers: tuple[int, int, int, int] = LAYERS[50],
        *,
        in_channels: int = 3,
        dropout: float = 0.5,
        width: float = 1.0,
        block: BlockFactory = bottleneck,
        name: str = "tsn",
    ) -> None:
        super().__init__()
        check_options(name, num_classes, in_channels, dropout, width)
        self.name, self.in_channels = name, in_channels
        self.min_input = (1, 1, 1)  # padded convs and pools: every size keeps >= 1 position
        stem = scaled(64, width)
        self.conv1 = nn.Conv2d(in_channels, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)

        def c(n: int) -> int:
            return scaled(n, width)

        self.layer1, channels = make_stage(block, 1, layers[0], stem, c(64), stride=1)
        self.layer2, channels = make_stage(block, 2, layers[1], channels, c(128), stride=2)
        self.layer3, channels = make_stage(block, 3, layers[2], channels, c(256), stride=2)
        self.layer4, channels = make_stage(block, 4, layers[3], channels, c(512), stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)
        for m in self.modules():
            if m is not self and hasattr(m, "reset_temporal"):
                m.reset_temporal()  # e.g. STM's shift initialisation, after the generic init

    def stem(self, clip: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) clip -> (B, T, C', H', W') after conv1 and the max-pool."""
        check_clip(self.name, clip, self.in_channels, self.min_input)
        n, t = clip.shape[0], clip.shape[2]
        x = clip.transpose(1, 2).flatten(0, 1)  # (B * T, C, H, W)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return x.unflatten(0, (n, t))

    def forward_features(self, clip: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) clip -> (B, T, C', H', W') output of layer4."""
        x = self.stem(clip)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(clip)
        n, t = x.shape[:2]
        x = self.avgpool(x.flatten(0, 1)).flatten(1)
        logits = self.fc(self.dropout(x)).unflatten(0, (n, t))
        return logits.mean(1)  # segmental consensus: average over frames


def tsn(num_classes: int, depth: int = 50, **options) -> FrameResNet:
    """TSN with a ResNet-50 (``depth=101``: ResNet-101); options: in_channels, dropout, width."""
    if depth not in LAYERS:
        raise ValueError(f"tsn: depth must be one of {sorted(LAYERS)}, got {depth}")
    return FrameResNet(num_classes, LAYERS[depth], name="tsn", **options)
