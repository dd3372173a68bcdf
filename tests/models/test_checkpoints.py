"""Checkpoint importers: each published key layout, rebuilt here as its port writes it (with a
width multiplier so it runs tiny), must give the same outputs after import into our model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_inflate import DenseNet2D, GoogLeNet2D, ResNet2D, randomize
from torch import nn

from raylab.models.c3d import C3D, preprocess_sports1m
from raylab.models.checkpoints import (
    googlenet_key,
    load_c3d_sports1m,
    load_densenet_2d,
    load_googlenet_2d,
    load_i3d_piergiaj,
    load_resnet_2d,
    read_state,
)
from raylab.models.i3d import I3D
from raylab.models.stm import stm
from raylab.models.t3d import DenseNet3D, t3d


def c(n: int, width: float) -> int:
    return max(1, round(n * width))


# ---------------------------------------------------------------- DavideA/c3d-pytorch


class PortC3D(nn.Module):
    """DavideA/c3d-pytorch's C3D (its names, its pool5 padding, softmax output), widths scaled."""

    def __init__(self, num_classes: int = 487, width: float = 1.0) -> None:
        super().__init__()
        w = width
        self.conv1 = nn.Conv3d(3, c(64, w), 3, padding=1)
        self.pool1 = nn.MaxPool3d((1, 2, 2), (1, 2, 2))
        self.conv2 = nn.Conv3d(c(64, w), c(128, w), 3, padding=1)
        self.pool2 = nn.MaxPool3d(2, 2)
        self.conv3a = nn.Conv3d(c(128, w), c(256, w), 3, padding=1)
        self.conv3b = nn.Conv3d(c(256, w), c(256, w), 3, padding=1)
        self.pool3 = nn.MaxPool3d(2, 2)
        self.conv4a = nn.Conv3d(c(256, w), c(512, w), 3, padding=1)
        self.conv4b = nn.Conv3d(c(512, w), c(512, w), 3, padding=1)
        self.pool4 = nn.MaxPool3d(2, 2)
        self.conv5a = nn.Conv3d(c(512, w), c(512, w), 3, padding=1)
        self.conv5b = nn.Conv3d(c(512, w), c(512, w), 3, padding=1)
        self.pool5 = nn.MaxPool3d(2, 2, padding=(0, 1, 1))
        self.flat = c(512, w) * 16
        self.fc6 = nn.Linear(self.flat, c(4096, w))
        self.fc7 = nn.Linear(c(4096, w), c(4096, w))
        self.fc8 = nn.Linear(c(4096, w), num_classes)
        self.dropout = nn.Dropout(0.5)
        self.relu = nn.ReLU()
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        h = self.pool1(self.relu(self.conv1(x)))
        h = self.pool2(self.relu(self.conv2(h)))
        h = self.pool3(self.relu(self.conv3b(self.relu(self.conv3a(h)))))
        h = self.pool4(self.relu(self.conv4b(self.relu(self.conv4a(h)))))
        h = self.pool5(self.relu(self.conv5b(self.relu(self.conv5a(h)))))
        h = h.view(-1, self.flat)
        h = self.dropout(self.relu(self.fc6(h)))
        h = self.dropout(self.relu(self.fc7(h)))
        return self.softmax(self.fc8(h))


def test_c3d_sports1m_import_gives_the_ports_outputs(tmp_path):
    torch.manual_seed(0)
    port = PortC3D(num_classes=487, width=0.0625).eval()
    for p in port.parameters():  # a scale at which the softmax is not flat
        p.data.normal_(0, 0.1)
    path = tmp_path / "c3d.pickle"
    torch.save(port.state_dict(), path)
    model = C3D(487, width=0.0625).eval()
    report = load_c3d_sports1m(model, path)
    assert report.missing == [] and report.skipped == {}
    assert len(report.loaded) == 22  # 8 convs and 3 fcs, weight and bias each
    clip = torch.randn(1, 3, 16, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(model(clip).softmax(1), port(clip), rtol=1e-4, atol=1e-6)


def test_c3d_sports1m_import_into_another_head():
    port = PortC3D(num_classes=487, width=0.125)
    model = C3D(101, width=0.125)
    report = load_c3d_sports1m(model, port.state_dict())
    assert set(report.skipped) == {"fc8.weight", "fc8.bias"}
    assert report.missing == ["classifier.fc8.weight", "classifier.fc8.bias"]
    torch.testing.assert_close(model.features.conv5b.conv.weight, port.conv5b.weight)

    pooled = C3D(101, width=0.125, head="pooled")
    report = load_c3d_sports1m(pooled, port.state_dict())
    assert {k.split(".")[0] for k in report.skipped} == {"fc6", "fc7", "fc8"}
    with pytest.raises(ValueError, match="without batch norm"):
        load_c3d_sports1m(C3D(101, width=0.125, batch_norm=True), port.state_dict())
    with pytest.raises(ValueError, match="does not fit"):
        load_c3d_sports1m(C3D(487, width=0.25), port.state_dict())


def test_preprocess_sports1m_is_bgr_minus_mean_at_112():
    clip = torch.zeros(1, 3, 4, 240, 320)
    clip[:, 0] = 200.0  # red
    out = preprocess_sports1m(clip)
    assert out.shape == (1, 3, 4, 112, 112)
    torch.testing.assert_close(out[0, :, 0, 50, 50], torch.tensor([-90.25, -97.66, 200 - 101.41]))
    assert preprocess_sports1m(clip, train=True).shape == (1, 3, 4, 112, 112)


# ---------------------------------------------------------------- piergiaj/pytorch-i3d


def port_pad(x, kernel, stride):
    """pytorch-i3d's compute_pad, applied to T, H, W."""
    pads = []
    for dim in (2, 1, 0):
        s, k, st = x.shape[2 + dim], kernel[dim], stride[dim]
        total = max(k - st, 0) if s % st == 0 else max(k - s % st, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class PortUnit3D(nn.Module):
    def __init__(self, i, o, k=(1, 1, 1), s=(1, 1, 1), activation=True, bn=True, bias=False):
        super().__init__()
        self.k, self.s, self.activation = k, s, activation
        self.conv3d = nn.Conv3d(i, o, k, s, bias=bias)
        self.bn = nn.BatchNorm3d(o, eps=0.001, momentum=0.01) if bn else None

    def forward(self, x):
        x = self.conv3d(port_pad(x, self.k, self.s))
        x = self.bn(x) if self.bn is not None else x
        return F.relu(x) if self.activation else x


class PortMaxPool(nn.MaxPool3d):
    def forward(self, x):
        return super().forward(port_pad(x, self.kernel_size, self.stride))


class PortInception(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.b0 = PortUnit3D(i, o[0])
        self.b1a, self.b1b = PortUnit3D(i, o[1]), PortUnit3D(o[1], o[2], (3, 3, 3))
        self.b2a, self.b2b = PortUnit3D(i, o[3]), PortUnit3D(o[3], o[4], (3, 3, 3))
        self.b3a = PortMaxPool((3, 3, 3), (1, 1, 1))
        self.b3b = PortUnit3D(i, o[5])

    def forward(self, x):
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1
        )


class PortI3D(nn.Module):
    """pytorch-i3d's InceptionI3d (end points as top-level modules); returns [B, classes, T']."""

    def __init__(self, num_classes=400, in_channels=3, width=1.0):
        super().__init__()

        def w(*ns):
            return [c(n, width) for n in ns]

        self.Conv3d_1a_7x7 = PortUnit3D(in_channels, c(64, width), (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = PortMaxPool((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = PortUnit3D(c(64, width), c(64, width))
        self.Conv3d_2c_3x3 = PortUnit3D(c(64, width), c(192, width), (3, 3, 3))
        self.MaxPool3d_3a_3x3 = PortMaxPool((1, 3, 3), (1, 2, 2))
        table = [
            ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
            ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
            ("MaxPool3d_4a_3x3", None),
            ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
            ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
            ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
            ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
            ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
            ("MaxPool3d_5a_2x2", None),
            ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
            ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
        ]
        ch = c(192, width)
        for name, branches in table:
            if branches is None:
                k = (3, 3, 3) if name.endswith("3x3") else (2, 2, 2)
                setattr(self, name, PortMaxPool(k, (2, 2, 2)))
            else:
                o = w(*branches)
                setattr(self, name, PortInception(ch, o))
                ch = o[0] + o[2] + o[4] + o[5]
        self.names = ["Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3"]
        self.names += ["MaxPool3d_3a_3x3"] + [n for n, _ in table]
        self.avg_pool = nn.AvgPool3d((2, 7, 7), (1, 1, 1))
        self.dropout = nn.Dropout(0.5)
        self.logits = PortUnit3D(ch, num_classes, activation=False, bn=False, bias=True)

    def forward(self, x):
        for name in self.names:
            x = getattr(self, name)(x)
        x = self.logits(self.dropout(self.avg_pool(x)))
        return x.squeeze(3).squeeze(3)


@pytest.mark.parametrize("in_channels", [3, 2], ids=["rgb_imagenet", "flow_imagenet"])
def test_i3d_piergiaj_import_gives_the_ports_logits(in_channels):
    torch.manual_seed(0)
    port = randomize(PortI3D(400, in_channels, width=0.0625))
    # The published files predate num_batches_tracked.
    state = {k: v for k, v in port.state_dict().items() if "num_batches_tracked" not in k}
    assert "Mixed_4e.b2b.conv3d.weight" in state and "logits.conv3d.bias" in state
    model = I3D(400, in_channels=in_channels, width=0.0625).eval()
    report = load_i3d_piergiaj(model, state)
    assert report.missing == [] and report.skipped == {}
    # 7x7 at Mixed_5c, as the port's 2x7x7 pool needs; 17 frames leave 3, pooled to 2.
    clip = torch.randn(1, in_channels, 17, 193, 193)
    with torch.no_grad():
        per_step = port(clip)  # [B, classes, T']
        assert per_step.shape == (1, 400, 2)
        torch.testing.assert_close(model(clip), per_step.mean(2), rtol=1e-4, atol=1e-5)


def test_i3d_piergiaj_charades_into_another_class_count_keeps_the_backbone():
    port = PortI3D(157, 3, width=0.125)
    model = I3D(10, width=0.125)
    report = load_i3d_piergiaj(model, port.state_dict())
    assert set(report.skipped) == {"logits.conv3d.weight", "logits.conv3d.bias"}
    assert report.missing == ["logits.weight", "logits.bias"]


# ---------------------------------------------------------------- torchvision 2D state dicts


def test_googlenet_keys_map_onto_i3d_endpoints():
    assert googlenet_key("conv1.conv.weight") == "features.Conv3d_1a_7x7.conv3d.weight"
    assert googlenet_key("conv3.bn.running_var") == "features.Conv3d_2c_3x3.bn.running_var"
    assert googlenet_key("inception3a.branch1.conv.weight") == "features.Mixed_3b.b0.conv3d.weight"
    assert googlenet_key("inception4e.branch3.1.bn.bias") == "features.Mixed_4f.b2b.bn.bias"
    assert (
        googlenet_key("inception5b.branch4.1.conv.weight") == "features.Mixed_5c.b3b.conv3d.weight"
    )
    assert googlenet_key("aux1.conv.conv.weight") is None
    assert googlenet_key("fc.weight") == "logits.weight"


def test_googlenet_into_i3d_inflates_every_conv_and_reports_the_rest():
    torch.manual_seed(0)
    ref = GoogLeNet2D(num_classes=1000, width=0.125)
    state = dict(ref.state_dict())
    state["aux1.fc2.weight"] = torch.zeros(1000, 8)  # torchvision's auxiliary heads
    model = I3D(7, width=0.125)
    report = load_googlenet_2d(model, state)
    assert set(report.skipped) == {"aux1.fc2.weight", "fc.weight", "fc.bias"}
    assert report.missing == ["logits.weight", "logits.bias"]
    w2d = ref.inception4e.branch2[1].conv.weight
    w3d = model.features.Mixed_4f.b1b.conv3d.weight
    assert w3d.shape[2] == 3
    torch.testing.assert_close(w3d.sum(2), w2d)
    stem = model.features.Conv3d_1a_7x7.conv3d.weight
    assert stem.shape[2] == 7
    torch.testing.assert_close(stem[:, :, 3] * 7, ref.conv1.conv.weight)


def test_rgb_googlenet_into_flow_i3d_averages_the_first_conv():
    ref = GoogLeNet2D(width=0.125)
    model = I3D(7, in_channels=2, width=0.125)
    load_googlenet_2d(model, ref.state_dict())
    stem = model.features.Conv3d_1a_7x7.conv3d.weight  # (64w, 2, 7, 7, 7)
    expected = ref.conv1.conv.weight.mean(1) / 7
    for channel in (0, 1):
        torch.testing.assert_close(stem[:, channel, 0], expected)


def test_densenet_into_t3d_fills_all_but_the_ttls():
    torch.manual_seed(0)
    ref = DenseNet2D((6, 12, 24, 16), num_classes=400, width=0.125)
    model = t3d(400, 121, width=0.125)
    report = load_densenet_2d(model, ref.state_dict())
    assert {k.split(".")[1] for k in report.skipped} == {
        "transition1",
        "transition2",
        "transition3",
    }
    assert report.missing and all(k.split(".")[1].startswith("ttl") for k in report.missing)
    torch.testing.assert_close(model.classifier.weight, ref.classifier.weight)
    w = model.features.denseblock3.denselayer7.conv2.weight
    torch.testing.assert_close(w.sum(2), ref.features.denseblock3.denselayer7.conv2.weight)


def test_densenet_legacy_key_names_load():
    # Checkpoints from old torchvision name dense-layer modules "norm.1", "conv.2", ...
    ref = DenseNet2D((1, 1, 1, 1), num_classes=5, width=0.125)
    legacy = {}
    for key, value in ref.state_dict().items():
        for old in ("norm1", "norm2", "conv1", "conv2", "relu1", "relu2"):
            key = key.replace(f".{old}.", f".{old[:-1]}.{old[-1]}.")
        legacy[key] = value
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    model = DenseNet3D(5, (1, 1, 1, 1), width=0.125)
    report = load_densenet_2d(model, legacy)
    assert report.missing == [] and report.skipped == {}


def test_resnet_into_stm_maps_conv2_onto_cstm():
    torch.manual_seed(0)
    ref = ResNet2D(num_classes=10, width=0.125)
    model = stm(10, width=0.125, stm_stages=(3, 5), stm_blocks="first")
    report = load_resnet_2d(model, {f"module.{k}": v for k, v in ref.state_dict().items()})
    assert report.skipped == {}
    # Left at init: the temporal kernels and CMMs of the two STM blocks, nothing else.
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in report.missing} == {
        "layer2.0",
        "layer4.0",
    }
    assert all(".cstm.temporal." in k or ".cmm." in k for k in report.missing)
    torch.testing.assert_close(model.layer2[0].cstm.conv.weight, ref.layer2[0].conv2.weight)
    torch.testing.assert_close(model.layer2[1].conv2.weight, ref.layer2[1].conv2.weight)


def test_importers_check_the_model_type_and_shapes():
    with pytest.raises(TypeError, match="needs a I3D model"):
        load_i3d_piergiaj(C3D(5, width=0.125), {})
    ref = ResNet2D(num_classes=10, width=0.25)
    with pytest.raises(ValueError, match="does not fit"):
        load_resnet_2d(stm(10, width=0.125), ref.state_dict())


def test_read_state_unwraps_state_dict_and_module_prefix(tmp_path):
    torch.save({"state_dict": {"module.a": torch.ones(1)}}, tmp_path / "x.pt")
    assert list(read_state(tmp_path / "x.pt")) == ["a"]
