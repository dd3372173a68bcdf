"""2D -> 3D inflation ("bootstrapping", Carreira & Zisserman 2017), shared by every family.

A 2D kernel is repeated N times along time and divided by N. Then a "boring" video (one image
repeated) gives the 2D network's activations: exactly, at every position whose temporal window
lies inside the clip (zero padding in time changes the frames at the borders).

``load_inflated`` fills a model from a 2D state dict: each source key is renamed to the model's
key, 4D kernels are inflated to the model's temporal size, everything else with the model's
shape is copied (biases, BatchNorm affine and running statistics, kernels that already have the
model's shape: 2D ones of 2D models, 3D ones of a 3D checkpoint). Keys the
model lacks are skipped, and classifier weights of another class count too; any other
mismatch is an error, so a wrong mapping cannot load silently.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn


def inflate_weight(weight: torch.Tensor, time: int) -> torch.Tensor:
    """(O, I, kH, kW) kernel -> (O, I, time, kH, kW): repeated along time and divided by time."""
    if weight.ndim != 4:
        raise ValueError(
            f"inflate_weight: expected a 2D kernel (O, I, kH, kW), got {tuple(weight.shape)}"
        )
    return weight.unsqueeze(2).repeat(1, 1, time, 1, 1) / time


def adapt_in_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A first-layer kernel for ``in_channels`` inputs: the mean over the source's input
    channels, repeated (TSN's cross-modality initialisation, e.g. RGB -> 2-channel flow)."""
    mean = weight.mean(1, keepdim=True)
    return mean.expand(-1, in_channels, *weight.shape[2:]).clone()


@dataclass
class LoadReport:
    """What a load did: model keys filled, source keys left out (with why), model keys left
    at their initialisation."""

    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def _fit(value: torch.Tensor, target: torch.Tensor, adapt: bool) -> torch.Tensor | None:
    """``value`` shaped as ``target`` (inflated, channel-adapted, reshaped), or None."""
    if value.ndim == 4 and target.ndim == 5:
        value = inflate_weight(value, target.shape[2])
    elif value.ndim == 2 and target.ndim == 5 and value.shape == target.shape[:2]:
        value = value.reshape(target.shape[:2] + (1, 1, 1))  # linear -> 1x1x1 conv logits
    if adapt and value.shape != target.shape and value.shape[2:] == target.shape[2:]:
        value = adapt_in_channels(value, target.shape[1])
    return value if value.shape == target.shape else None


def load_inflated(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    rename: Callable[[str], str | None] = lambda key: key,
    *,
    first_conv: str | None = None,
    head: Collection[str] = (),
) -> LoadReport:
    """Fill ``model`` from ``state`` (2D, or already 3D); returns what was loaded.

    ``rename`` maps a source key to the model's key (None: not wanted). ``first_conv`` is the
    model key whose input channels may differ (RGB weights into a flow model: averaged and
    repeated). Model keys in ``head`` are skipped when their shapes differ (another class
    count); any other shape mismatch raises ValueError naming both keys and shapes.
    """
    target = model.state_dict()
    report, new = LoadReport(), {}
    for source_key, value in state.items():
        key = rename(source_key)
        if key is None or key not in target:
            report.skipped[source_key] = "not in the model"
            continue
        fitted = _fit(value, target[key], adapt=key == first_conv)
        if fitted is None:
            if key in head:
                report.skipped[source_key] = (
                    f"shape {tuple(value.shape)} vs {tuple(target[key].shape)}"
                )
                continue
            raise ValueError(
                f"{type(model).__name__}: source {source_key!r} {tuple(value.shape)} does not "
                f"fit model {key!r} {tuple(target[key].shape)}"
            )
        new[key] = fitted.to(target[key].dtype)
        report.loaded.append(key)
    model.load_state_dict(new, strict=False)
    # BatchNorm's step counters are not weights; leave them out of what is reported missing.
    report.missing = [k for k in target if k not in new and not k.endswith("num_batches_tracked")]
    return report
