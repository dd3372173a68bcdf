"""Shared model helpers: the cost of a network, counted on the meta device."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raylab.models.common import measure


def test_measure_counts_macs_params_and_activations_of_a_known_layer():
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.ReLU())
    gmacs, params_m, act_gib = measure(model, (1, 3, 4, 8, 8))
    assert gmacs * 1e9 == pytest.approx(8 * 3 * 27 * 4 * 8 * 8)  # out x in x kernel x positions
    assert params_m * 1e6 == pytest.approx(8 * 3 * 27 + 8)
    assert act_gib * 2**30 == pytest.approx(2 * 8 * 4 * 8 * 8 * 4)  # conv + ReLU outputs, fp32
    # The hooks are gone afterwards: a second count gives the same figures.
    assert measure(model, (1, 3, 4, 8, 8)) == (gmacs, params_m, act_gib)
