"""Responses are read after the activation, whatever its variant (in-place, parameterised): the
collected statistics equal a direct computation of conv -> BatchNorm -> activation."""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch
from torch import nn

import pfa_lightning as pfa

ACTIVATIONS = {
    "ReLU(inplace)": (nn.ReLU(inplace=True), "ReLU"),
    "LeakyReLU(0.1, inplace)": (nn.LeakyReLU(0.1, inplace=True), "LeakyReLU(0.1)"),
    "LeakyReLU(0.3)": (nn.LeakyReLU(0.3), "LeakyReLU(0.3)"),
    "ELU(0.7, inplace)": (nn.ELU(0.7, inplace=True), "ELU(0.7)"),
    "CELU(0.5)": (nn.CELU(0.5), "CELU(0.5)"),
    "SELU(inplace)": (nn.SELU(inplace=True), "SELU"),
    "SELU": (nn.SELU(), "SELU"),
    "Softplus(2, 1)": (nn.Softplus(beta=2, threshold=1), "Softplus(2, 1)"),
    "Hardswish(inplace)": (nn.Hardswish(inplace=True), "Hardswish"),
    "SiLU(inplace)": (nn.SiLU(inplace=True), "SiLU"),
    "GELU(tanh)": (nn.GELU(approximate="tanh"), "GELU(tanh)"),
    "Mish(inplace)": (nn.Mish(inplace=True), "Mish"),
    "ReLU6(inplace)": (nn.ReLU6(inplace=True), "Hardtanh(0, 6)"),
}


def _net(activation: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), activation,
                         nn.Conv2d(8, 6, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()


@pytest.mark.parametrize("pooling", ["max", "avg"])
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_response_after_each_activation_variant_equals_a_direct_computation(name, pooling):
    activation, label = ACTIVATIONS[name]
    net = _net(activation)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the activation sees both signs
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(64, 3, 6, 6)
    stats = pfa.collect_responses(net, [x[:40], x[40:]], pooling=pooling, layers=["0"], progress=False)
    assert label in stats["0"].response  # named in the recipe table's response column
    with torch.no_grad():
        direct = _not_in_place(activation)(net[1](net[0](x)))
    pooled = direct.flatten(2).amax(-1) if pooling == "max" else direct.flatten(2).mean(-1)
    mean = (stats["0"].sum / stats["0"].num_samples).float()
    assert torch.allclose(mean, pooled.mean(0), atol=1e-4), name


def _not_in_place(activation: nn.Module) -> nn.Module:
    """The same activation, not in place (so the direct computation leaves its input alone)."""
    copy = deepcopy(activation)
    if hasattr(copy, "inplace"):
        copy.inplace = False
    return copy


@pytest.mark.parametrize("activation", [nn.Softshrink(0.3), nn.LogSigmoid(), nn.Hardshrink(0.5)])
def test_a_layer_read_before_an_unknown_activation_is_named_in_a_warning_and_the_recipe(activation):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), activation,
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 3)).eval()
    x = torch.randn(64, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"reads the responses of 0 \(\w+\) before an activation it does not know"):
        stats = pfa.collect_responses(model, [x], progress=False)
    assert "an activation PFA does not know" in stats["0"].response and "ReLU" in stats["3"].response
    recipe = pfa.make_recipe(model, stats, pfa.KL(), example_inputs=x[:2])
    rows = {row[0]: row for row in zip(*(c._cells for c in recipe.table().columns))}
    assert "read before its activation" in rows["0"][-1] and "read before" not in rows["3"][-1]
