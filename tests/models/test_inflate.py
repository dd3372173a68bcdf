"""Inflation: repeat-and-divide, and the boring-video fixed point of every inflated family.

The 2D reference networks here are written from scratch in torchvision's key layout (torchvision
is not a dependency), with a width multiplier so they run tiny; ``test_checkpoints`` reuses them.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raylab.models.checkpoints import load_densenet_2d, load_googlenet_2d, load_resnet_2d
from raylab.models.i3d import I3D, Inception, MaxPool3dSame, Unit3d, same_padding
from raylab.models.inflate import adapt_in_channels, inflate_weight
from raylab.models.stm import STMBlock, stm
from raylab.models.t3d import DenseNet3D
from raylab.models.tsn import FrameResNet

# ---------------------------------------------------------------- 2D reference networks


def c(n: int, width: float) -> int:
    return max(1, round(n * width))


def same_pad_2d(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    pads = []
    for n in reversed(x.shape[2:]):
        total = max(k - s, 0) if n % s == 0 else max(k - n % s, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class BasicConv2d(nn.Module):
    """torchvision GoogLeNet's conv -> bn (eps 1e-3) -> relu, padded TF-SAME as Inception-v1."""

    def __init__(self, i: int, o: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.k, self.s = k, s
        self.conv = nn.Conv2d(i, o, k, s, bias=False)
        self.bn = nn.BatchNorm2d(o, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(same_pad_2d(x, self.k, self.s))))


class MaxPoolSame2d(nn.Module):
    def __init__(self, k: int, s: int) -> None:
        super().__init__()
        self.k, self.s = k, s

    def forward(self, x):
        return F.max_pool2d(same_pad_2d(x, self.k, self.s), self.k, self.s)


class Inception2d(nn.Module):
    def __init__(self, i, b0, b1a, b1b, b2a, b2b, b3b) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(i, b0)
        self.branch2 = nn.Sequential(BasicConv2d(i, b1a), BasicConv2d(b1a, b1b, 3))
        self.branch3 = nn.Sequential(BasicConv2d(i, b2a), BasicConv2d(b2a, b2b, 3))
        self.branch4 = nn.Sequential(MaxPoolSame2d(3, 1), BasicConv2d(i, b3b))
        self.out_channels = b0 + b1b + b2b + b3b

    def forward(self, x):
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return torch.cat([b(x) for b in branches], 1)


class GoogLeNet2D(nn.Module):
    """Inception-v1 with torchvision GoogLeNet's names; children in forward order."""

    def __init__(self, num_classes: int = 1000, width: float = 1.0) -> None:
        super().__init__()
        ch = c(192, width)

        def mixed(*b):
            nonlocal ch
            block = Inception2d(ch, *(c(n, width) for n in b))
            ch = block.out_channels
            return block

        self.conv1 = BasicConv2d(3, c(64, width), 7, 2)
        self.maxpool1 = MaxPoolSame2d(3, 2)
        self.conv2 = BasicConv2d(c(64, width), c(64, width))
        self.conv3 = BasicConv2d(c(64, width), c(192, width), 3)
        self.maxpool2 = MaxPoolSame2d(3, 2)
        self.inception3a = mixed(64, 96, 128, 16, 32, 32)
        self.inception3b = mixed(128, 128, 192, 32, 96, 64)
        self.maxpool3 = MaxPoolSame2d(3, 2)
        self.inception4a = mixed(192, 96, 208, 16, 48, 64)
        self.inception4b = mixed(160, 112, 224, 24, 64, 64)
        self.inception4c = mixed(128, 128, 256, 24, 64, 64)
        self.inception4d = mixed(112, 144, 288, 32, 64, 64)
        self.inception4e = mixed(256, 160, 320, 32, 128, 128)
        self.maxpool4 = MaxPoolSame2d(2, 2)
        self.inception5a = mixed(256, 160, 320, 32, 128, 128)
        self.inception5b = mixed(384, 192, 384, 48, 128, 128)
        self.fc = nn.Linear(ch, num_classes)

    def endpoints(self, x):
        outs = []
        for module in list(self.children())[:-1]:
            x = module(x)
            outs.append(x)
        return outs


class DenseLayer2d(nn.Module):
    def __init__(self, i: int, k: int) -> None:
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(i), nn.ReLU()
        self.conv1 = nn.Conv2d(i, 4 * k, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(4 * k), nn.ReLU()
        self.conv2 = nn.Conv2d(4 * k, k, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.conv1(self.relu1(self.norm1(x)))
        return torch.cat([x, self.conv2(self.relu2(self.norm2(y)))], 1)


class DenseNet2D(nn.Module):
    """torchvision's DenseNet-BC (features.conv0 ... features.norm5, classifier)."""

    def __init__(self, blocks=(6, 12, 24, 16), num_classes=1000, width=1.0) -> None:
        super().__init__()
        k, ch = c(32, width), c(64, width)
        layers = OrderedDict(
            conv0=nn.Conv2d(3, ch, 7, 2, 3, bias=False),
            norm0=nn.BatchNorm2d(ch),
            relu0=nn.ReLU(),
            pool0=nn.MaxPool2d(3, 2, 1),
        )
        for b, n in enumerate(blocks, 1):
            layers[f"denseblock{b}"] = nn.Sequential(
                OrderedDict((f"denselayer{j + 1}", DenseLayer2d(ch + j * k, k)) for j in range(n))
            )
            ch += n * k
            if b < len(blocks):
                layers[f"transition{b}"] = nn.Sequential(
                    OrderedDict(
                        norm=nn.BatchNorm2d(ch),
                        relu=nn.ReLU(),
                        conv=nn.Conv2d(ch, ch // 2, 1, bias=False),
                        pool=nn.AvgPool2d(2, 2),
                    )
                )
                ch //= 2
        layers["norm5"] = nn.BatchNorm2d(ch)
        self.features = nn.Sequential(layers)
        self.classifier = nn.Linear(ch, num_classes)


class Bottleneck2d(nn.Module):
    def __init__(self, i: int, p: int, s: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(i, p, 1, bias=False), nn.BatchNorm2d(p)
        self.conv2, self.bn2 = nn.Conv2d(p, p, 3, s, 1, bias=False), nn.BatchNorm2d(p)
        self.conv3, self.bn3 = nn.Conv2d(p, 4 * p, 1, bias=False), nn.BatchNorm2d(4 * p)
        self.relu = nn.ReLU()
        self.downsample = None
        if s != 1 or i != 4 * p:
            self.downsample = nn.Sequential(
                nn.Conv2d(i, 4 * p, 1, s, bias=False), nn.BatchNorm2d(4 * p)
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet2D(nn.Module):
    """torchvision's ResNet v1.5 with bottlenecks (conv1, bn1, layer1-4, fc)."""

    def __init__(self, layers=(3, 4, 6, 3), num_classes=1000, width=1.0) -> None:
        super().__init__()
        ch = c(64, width)
        self.conv1, self.bn1 = nn.Conv2d(3, ch, 7, 2, 3, bias=False), nn.BatchNorm2d(ch)
        self.relu, self.maxpool = nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        for stage, (n, p) in enumerate(zip(layers, (64, 128, 256, 512), strict=True), 1):
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck2d(ch, c(p, width), 2 if stage > 1 and j == 0 else 1))
                ch = 4 * c(p, width)
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.fc = nn.Linear(ch, num_classes)

    def stem(self, x):
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine terms, so that a wrong copy cannot pass; eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


# ---------------------------------------------------------------- which frames are border-free


def propagate(
    clean: list[bool], k: int, s: int, front: int, back: int, pad_spoils: bool
) -> list[bool]:
    """Per output time step: does its window hold only border-free inputs? Padding spoils a
    conv's output (zeros), not a max-pool's (a repeated frame beats the pad)."""
    n = len(clean)
    out = []
    for t in range((n + front + back - k) // s + 1):
        window = range(t * s - front, t * s - front + k)
        out.append(all(clean[j] if 0 <= j < n else not pad_spoils for j in window))
    return out


def i3d_masks(model: I3D, frames: int) -> list[list[bool]]:
    clean, masks = [True] * frames, []
    for block in model.features:
        if isinstance(block, Inception):
            k, s, spoils = 3, 1, True
        else:
            k, s = block.kernel_size[0], block.stride[0]
            spoils = isinstance(block, Unit3d)
        front, back = same_padding((len(clean),), (k,), (s,))
        clean = propagate(clean, k, s, front, back, spoils)
        masks.append(clean)
    return masks


def densenet_masks(model: DenseNet3D, frames: int) -> list[list[bool]]:
    clean, masks = [True] * frames, []
    for name, block in model.features.named_children():
        if name == "conv0":
            clean = propagate(clean, 3, 2, 1, 1, True)
        elif name == "pool0":
            clean = propagate(clean, 3, 2, 1, 1, False)
        elif name.startswith("denseblock"):
            for _ in block:
                clean = propagate(clean, 3, 1, 1, 1, True)
        elif name.startswith("transition"):
            clean = propagate(clean, 2, 2, 0, 0, False)
        masks.append(clean)
    return masks


def boring(frame: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, C, H, W) image -> (B, C, T, H, W) clip of it repeated."""
    return frame.unsqueeze(2).expand(-1, -1, frames, -1, -1).contiguous()


def assert_matches_2d(
    out3d: torch.Tensor, out2d: torch.Tensor, clean: list[bool], where: str
) -> int:
    """Every border-free time step of ``out3d`` (B, C, T, H, W) equals ``out2d`` (B, C, H, W)."""
    steps = [t for t, ok in enumerate(clean) if ok]
    for t in steps:
        torch.testing.assert_close(out3d[:, :, t], out2d, rtol=1e-9, atol=1e-9, msg=where)
    return len(steps)


# ---------------------------------------------------------------- tests


def test_inflate_weight_repeats_and_divides():
    w = torch.randn(4, 3, 5, 5)
    w3 = inflate_weight(w, 7)
    assert w3.shape == (4, 3, 7, 5, 5)
    for t in range(7):
        torch.testing.assert_close(w3[:, :, t], w / 7)
    torch.testing.assert_close(w3.sum(2), w)
    with pytest.raises(ValueError, match="2D kernel"):
        inflate_weight(torch.randn(4, 3, 1, 5, 5), 3)


def test_inflated_conv_on_boring_video_equals_2d_conv_inside():
    torch.manual_seed(0)
    conv2d = nn.Conv2d(3, 5, 3, padding=1)
    conv3d = nn.Conv3d(3, 5, 3, padding=1)
    conv3d.weight.data = inflate_weight(conv2d.weight.data, 3)
    conv3d.bias.data = conv2d.bias.data.clone()
    frame = torch.randn(2, 3, 9, 9)
    out = conv3d(boring(frame, 6))
    for t in range(1, 5):
        torch.testing.assert_close(out[:, :, t], conv2d(frame), rtol=1e-5, atol=1e-5)
    # The zero padding in time changes the border frames.
    assert not torch.allclose(out[:, :, 0], conv2d(frame), atol=1e-3)


def test_adapt_in_channels_averages_and_repeats():
    w = torch.randn(8, 3, 7, 7)
    w2 = adapt_in_channels(w, 2)
    assert w2.shape == (8, 2, 7, 7)
    torch.testing.assert_close(w2[:, 0], w.mean(1))
    torch.testing.assert_close(w2[:, 1], w.mean(1))


def test_i3d_from_googlenet_boring_video_fixed_point():
    torch.manual_seed(0)
    width, frames = 0.125, 160  # enough frames for Mixed_5c (receptive field 99) to have an inside
    ref = randomize(GoogLeNet2D(num_classes=1000, width=width)).double()
    model = I3D(1000, width=width).double().eval()
    report = load_googlenet_2d(model, ref.state_dict())
    assert report.missing == [] and report.skipped == {}
    frame = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        outs2d = ref.endpoints(frame)
        x, checked = boring(frame, frames), []
        for (name, block), out2d, clean in zip(
            model.features.named_children(), outs2d, i3d_masks(model, frames), strict=True
        ):
            x = block(x)
            assert x.shape[2] == len(clean) and x.shape[3:] == out2d.shape[2:], name
            checked.append(assert_matches_2d(x, out2d, clean, name))
    assert all(n > 0 for n in checked), checked  # every endpoint, Mixed_5c too, has an inside


def test_densenet3d_from_densenet_boring_video_fixed_point():
    torch.manual_seed(0)
    width, blocks, frames = 0.25, (1, 2, 1, 1), 224
    ref = randomize(DenseNet2D(blocks, num_classes=10, width=width)).double()
    model = DenseNet3D(10, blocks, width=width).double().eval()
    report = load_densenet_2d(model, ref.state_dict())
    assert report.missing == [] and report.skipped == {}
    frame = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    x, x2d, checked = boring(frame, frames), frame, []
    with torch.no_grad():
        for (name, block), block2d, clean in zip(
            model.features.named_children(),
            ref.features.children(),
            densenet_masks(model, frames),
            strict=True,
        ):
            x, x2d = block(x), block2d(x2d)
            checked.append(assert_matches_2d(x, x2d, clean, name))
    assert all(n > 0 for n in checked), checked


def test_stm_from_resnet_is_the_2d_net_on_boring_video_when_cmm_is_silent():
    # The temporal kernel starts as a shift, which moves identical frames: STM loaded from a
    # 2D ResNet is that ResNet on a still clip, away from the borders, once CMM adds nothing.
    torch.manual_seed(0)
    width, frames = 0.125, 40
    ref = randomize(ResNet2D(num_classes=10, width=width)).double()
    model = stm(10, width=width).double().eval()
    load_resnet_2d(model, ref.state_dict())
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, STMBlock):
                block.cmm.expand.weight.zero_()
        frame = torch.randn(2, 3, 32, 32, dtype=torch.float64)
        x, x2d, clean = model.stem(boring(frame, frames)), ref.stem(frame), [True] * frames
        assert_matches_2d(x.transpose(1, 2), x2d, clean, "stem")
        for stage in (1, 2, 3, 4):
            x, x2d = getattr(model, f"layer{stage}")(x), getattr(ref, f"layer{stage}")(x2d)
            for _ in getattr(model, f"layer{stage}"):
                clean = propagate(clean, 3, 1, 1, 1, True)
            assert_matches_2d(x.transpose(1, 2), x2d, clean, f"layer{stage}")
    assert sum(clean) == frames - 2 * 16  # one frame lost at each end per STM block


def test_tsn_from_resnet_is_the_2d_net_averaged_over_frames():
    torch.manual_seed(0)
    ref = randomize(ResNet2D(layers=(1, 1, 1, 1), num_classes=6, width=0.125))
    model = FrameResNet(6, (1, 1, 1, 1), width=0.125)
    report = load_resnet_2d(model, ref.state_dict())
    assert report.missing == [] and report.skipped == {}
    model.eval()
    clip = torch.randn(2, 3, 5, 40, 36)  # any clip: TSN never mixes frames
    with torch.no_grad():
        expected = torch.stack([ref(clip[:, :, t]) for t in range(5)], 1).mean(1)
        torch.testing.assert_close(model(clip), expected, rtol=1e-4, atol=1e-5)


def test_max_pool_same_pads_like_tensorflow():
    # 5 -> ceil(5 / 2) = 3 positions; total pad max(3 - 5 % 2, 0) = 2, one on each side.
    pool = MaxPool3dSame(3, 2)
    x = torch.arange(5.0).view(1, 1, 5, 1, 1).expand(1, 1, 5, 3, 3)
    assert pool(x)[0, 0, :, 0, 0].tolist() == [1.0, 3.0, 4.0]
