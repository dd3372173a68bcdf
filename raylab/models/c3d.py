"""C3D (Tran et al., "Learning Spatiotemporal Features with 3D Convolutional Networks", ICCV 2015).

Eight 3x3x3 convolutions (stride 1, padding 1) and five max-pools, then fc6/fc7 (4096) and fc8::

    layer           kernel / stride        out     C x T x H x W at 3x16x112x112
    conv1           3x3x3 / 1              64      64 x 16 x 112 x 112
    pool1 (max)     1x2x2 / 1x2x2                  64 x 16 x  56 x  56
    conv2           3x3x3 / 1              128    128 x 16 x  56 x  56
    pool2           2x2x2 / 2                     128 x  8 x  28 x  28
    conv3a, conv3b  3x3x3 / 1              256    256 x  8 x  28 x  28
    pool3           2x2x2 / 2                     256 x  4 x  14 x  14
    conv4a, conv4b  3x3x3 / 1              512    512 x  4 x  14 x  14
    pool4           2x2x2 / 2                     512 x  2 x   7 x   7
    conv5a, conv5b  3x3x3 / 1              512    512 x  2 x   7 x   7
    pool5           2x2x2 / 2, pad 0,1,1          512 x  1 x   4 x   4 = 8192
    fc6, fc7        ReLU, dropout 0.5      4096
    fc8                                    classes (487 for Sports-1M)

pool5: the Caffe original pools 7 -> 4 with ceil rounding and no padding (windows {0,1}, {2,3},
{4,5}, {6}); the PyTorch port (DavideA/c3d-pytorch), whose key layout the published Sports-1M
weights use, pads (0, 1, 1) instead (windows {-,0}, {1,2}, {3,4}, {5,6}). We follow the port, so
the imported Sports-1M weights give the port's outputs exactly (max-pool padding is -inf, and the
inputs are post-ReLU, so the padded row never wins).

Convolutions have biases and there is no batch norm in the published network. ``batch_norm=True``
adds BN after every conv and after fc6/fc7, as the I3D paper's C3D baseline does; without it, a
C3D trained from scratch on un-normalised input can stay at chance, so use it
(and normalised input) when not starting from the Sports-1M weights.

``head="fc"`` is the original head; it needs the pool5 output to be 1x4x4, i.e. the published
16x112x112 input. ``head="pooled"`` averages the pool5 output over time and space and applies a
single linear layer, so any input of at least 16x16x16 works (the four 2x pools need 16).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from raylab.models.common import check_clip, check_options, init_weights, scaled

# Sports-1M preprocessing of the original release: BGR 0..255 minus these channel means.
SPORTS1M_MEAN_BGR = (90.25, 97.66, 101.41)
SPORTS1M_RESIZE = (128, 171)
SPORTS1M_CROP = 112


class Conv3dBlock(nn.Sequential):
    """3x3x3 convolution (stride 1, padding 1) -> [BatchNorm] -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = False) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        # A bias before BN is redundant; without BN it is the published layer.
        layers["conv"] = nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=not batch_norm)
        if batch_norm:
            layers["bn"] = nn.BatchNorm3d(out_channels)
        layers["relu"] = nn.ReLU(inplace=True)
        super().__init__(layers)


def _fc(in_features: int, out_features: int, dropout: float, batch_norm: bool) -> nn.Sequential:
    """Linear -> [BatchNorm] -> ReLU -> Dropout: fc6 and fc7."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["fc"] = nn.Linear(in_features, out_features, bias=not batch_norm)
    if batch_norm:
        layers["bn"] = nn.BatchNorm1d(out_features)
    layers["relu"] = nn.ReLU(inplace=True)
    layers["dropout"] = nn.Dropout(dropout)
    return nn.Sequential(layers)


def pool5_size(t: int, h: int, w: int) -> tuple[int, int, int]:
    """T, H, W of the pool5 output for a t x h x w input (0 where a pool has nothing to pool)."""

    def pooled(s: int, first_pools: bool, pad5: int) -> int:
        s = s // 2 if first_pools else s  # pool1: 1x2x2
        for _ in range(3):  # pool2-4: 2x2x2 / 2
            s //= 2
        return (s + 2 * pad5 - 2) // 2 + 1 if s >= 1 else 0

    return pooled(t, False, 0), pooled(h, True, 1), pooled(w, True, 1)


class C3D(nn.Module):
    """C3D as in the module docstring. Input (B, C, T, H, W), output logits (B, num_classes)."""

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        dropout: float = 0.5,
        width: float = 1.0,
        head: str = "fc",
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        check_options("c3d", num_classes, in_channels, dropout, width)
        if head not in ("fc", "pooled"):
            raise ValueError(f"c3d: head must be 'fc' or 'pooled', got {head!r}")
        self.in_channels, self.head, self.batch_norm = in_channels, head, batch_norm
        self.min_input = (16, 16, 16)

        def c(n: int) -> int:
            return scaled(n, width)

        def conv(i: int, o: int) -> Conv3dBlock:
            return Conv3dBlock(i, o, batch_norm)

        self.features = nn.Sequential(
            OrderedDict(
                conv1=conv(in_channels, c(64)),
                pool1=nn.MaxPool3d((1, 2, 2), (1, 2, 2)),  # no temporal pooling yet
                conv2=conv(c(64), c(128)),
                pool2=nn.MaxPool3d(2, 2),
                conv3a=conv(c(128), c(256)),
                conv3b=conv(c(256), c(256)),
                pool3=nn.MaxPool3d(2, 2),
                conv4a=conv(c(256), c(512)),
                conv4b=conv(c(512), c(512)),
                pool4=nn.MaxPool3d(2, 2),
                conv5a=conv(c(512), c(512)),
                conv5b=conv(c(512), c(512)),
                pool5=nn.MaxPool3d(2, 2, padding=(0, 1, 1)),  # the port's 7 -> 4, see above
            )
        )
        if head == "fc":
            self.classifier = nn.Sequential(
                OrderedDict(
                    flatten=nn.Flatten(),  # C x 1 x 4 x 4 in (C, T, H, W) order, as the port
                    fc6=_fc(c(512) * 1 * 4 * 4, c(4096), dropout, batch_norm),
                    fc7=_fc(c(4096), c(4096), dropout, batch_norm),
                    fc8=nn.Linear(c(4096), num_classes),
                )
            )
        else:
            self.classifier = nn.Sequential(
                OrderedDict(
                    pool=nn.AdaptiveAvgPool3d(1),
                    flatten=nn.Flatten(),
                    dropout=nn.Dropout(dropout),
                    fc=nn.Linear(c(512), num_classes),
                )
            )
        init_weights(self)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is a clip this C3D (and its head) can take."""
        check_clip("c3d", x, self.in_channels, self.min_input)
        if self.head == "fc" and pool5_size(*x.shape[2:]) != (1, 4, 4):
            raise ValueError(
                f"c3d: head='fc' needs a pool5 output of 1x4x4 (the published 16x112x112 input), "
                f"got input (B, C, T, H, W) = {tuple(x.shape)} whose pool5 output is "
                "{}x{}x{}; for other sizes build it with head='pooled' (jobs: --model-option "
                "head=pooled)".format(*pool5_size(*x.shape[2:]))
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.classifier(self.features(x))


def c3d(num_classes: int, **options) -> C3D:
    """C3D; options: in_channels, dropout (0.5), width, head ("fc" | "pooled"), batch_norm."""
    return C3D(num_classes, **options)


def preprocess_sports1m(clip: torch.Tensor, train: bool = False) -> torch.Tensor:
    """RGB (B, 3, T, H, W) frames in 0..255 -> the input the Sports-1M C3D weights expect.

    As the original release: every frame resized to 128x171, BGR order, the Sports-1M channel
    means subtracted, and a 112x112 crop (the centre; a random one when ``train``).
    """
    if clip.ndim != 5 or clip.shape[1] != 3:
        raise ValueError(
            f"preprocess_sports1m: expected RGB (B, 3, T, H, W), got {tuple(clip.shape)}"
        )
    x = clip.float()
    x = F.interpolate(x, size=(x.shape[2], *SPORTS1M_RESIZE), mode="trilinear", align_corners=False)
    x = x.flip(1)  # RGB -> BGR
    x = x - torch.tensor(SPORTS1M_MEAN_BGR, device=x.device).view(1, 3, 1, 1, 1)
    h, w = SPORTS1M_RESIZE
    if train:
        top = int(torch.randint(0, h - SPORTS1M_CROP + 1, ()))
        left = int(torch.randint(0, w - SPORTS1M_CROP + 1, ()))
    else:
        top, left = (h - SPORTS1M_CROP) // 2, (w - SPORTS1M_CROP) // 2
    return x[..., top : top + SPORTS1M_CROP, left : left + SPORTS1M_CROP]
