"""What every family shares: the width multiplier, option checks and the up-front input check."""

from __future__ import annotations

import torch
from torch import nn


def scaled(channels: int, width: float) -> int:
    """``channels`` times the width multiplier, rounded to the nearest integer and at least 1."""
    return max(1, round(channels * width))


def check_options(
    name: str, num_classes: int, in_channels: int, dropout: float, width: float
) -> None:
    """Raise ValueError, naming the model, for an option no network of the zoo can take."""
    if num_classes < 1:
        raise ValueError(f"{name}: num_classes must be >= 1, got {num_classes}")
    if in_channels < 1:
        raise ValueError(
            f"{name}: in_channels must be >= 1 (3 for RGB, 2 for flow), got {in_channels}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout}")
    if not width > 0:
        raise ValueError(f"{name}: width must be > 0, got {width}")


def check_clip(name: str, x: torch.Tensor, in_channels: int, min_thw: tuple[int, int, int]) -> None:
    """Raise ValueError unless ``x`` is a (B, in_channels, T, H, W) clip, T, H, W >= ``min_thw``.

    Called first thing in every ``forward`` so that a wrong input fails with the model's name,
    the shape it got and the minimum it needs, instead of a shape error deep inside a conv.
    """
    shape = tuple(x.shape)
    if x.ndim != 5:
        raise ValueError(f"{name}: expected a clip of shape (B, C, T, H, W), got {shape}")
    if shape[1] != in_channels:
        raise ValueError(
            f"{name}: expected {in_channels} input channels, got input (B, C, T, H, W) = {shape}"
        )
    if any(s < m for s, m in zip(shape[2:], min_thw, strict=True)):
        t, h, w = min_thw
        raise ValueError(
            f"{name}: input (B, C, T, H, W) = {shape} is too small; "
            f"needs T >= {t}, H >= {h}, W >= {w}"
        )


def init_weights(model: nn.Module) -> None:
    """He-normal convolutions, unit/zero norms, N(0, 0.01) linears with zero bias: torchvision's
    scheme for VGG and ResNet. Special inits (STM's shift) are applied after it.

    A model on the meta device (built to be measured or checked) has no values to draw;
    drawing them anyway runs torch's Python references for every weight, for nothing."""
    if any(p.is_meta for p in model.parameters()):
        return
    for m in model.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def measure(model: torch.nn.Module, shape: tuple[int, ...]) -> tuple[float, float, float]:
    """(GMACs per clip, millions of parameters, activation GiB per clip) of a meta model.

    MACs come from ``torch.utils.flop_counter`` (which counts 2 FLOPs per multiply-add).
    Activations are the outputs of every leaf module, in float32: roughly what autograd
    keeps for the backward pass.
    """
    from torch.utils.flop_counter import FlopCounterMode

    activations = 0

    def count(_module, _inputs, output) -> None:
        nonlocal activations
        if isinstance(output, torch.Tensor):
            activations += output.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.empty(shape, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    return counter.get_total_flops() / 2 / 1e9, params / 1e6, activations * 4 / 2**30
