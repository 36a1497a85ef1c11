"""Baselines at equal widths/footprint (weight_l1, random, uniform) and least-squares compensation."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import pfa_lightning as pfa
from pfa_lightning.models import build


@pytest.fixture(scope="module")
def trained_like():
    torch.manual_seed(0)
    model = build("simplecnn", width=0.25, num_classes=5).eval()
    x = torch.rand(4, 3, 32, 32)
    stats = pfa.collect_responses(model, [torch.rand(128, 3, 32, 32) for _ in range(2)], progress=False)
    kl = pfa.make_recipe(model, stats, pfa.KL(), example_inputs=x)
    return model, x, stats, kl


def test_weight_l1_keeps_the_largest_filters_at_pfa_widths(trained_like):
    model, x, stats, kl = trained_like
    l1 = pfa.make_recipe(model, stats, pfa.KL(), example_inputs=x, selection="weight_l1")
    assert l1.widths == kl.widths
    for layer in l1.layers:
        norms = model.get_submodule(layer.name).weight.detach().abs().flatten(1).sum(1).numpy()
        expected = sorted(np.argsort(-norms, kind="stable")[: layer.kept].tolist())
        assert layer.kept_indices == expected, layer.name


def test_random_selection_is_seeded_and_keeps_the_widths(trained_like):
    model, x, stats, kl = trained_like
    a = pfa.make_recipe(model, stats, pfa.KL(), example_inputs=x, selection=pfa.Random(seed=1))
    b = pfa.make_recipe(model, stats, pfa.KL(), example_inputs=x, selection=pfa.Random(seed=1))
    c = pfa.make_recipe(model, stats, pfa.KL(), example_inputs=x, selection=pfa.Random(seed=2))
    assert a.widths == kl.widths
    assert a.to_dict() == b.to_dict()
    assert any(la.kept_indices != lc.kept_indices for la, lc in zip(a.layers, c.layers) if la.kept < la.original)


def test_uniform_ratio_and_parameter_match(trained_like):
    model, x, stats, kl = trained_like
    half = pfa.make_recipe(model, stats, pfa.Uniform(0.5), example_inputs=x)
    assert all(l.kept == math.ceil(l.original * 0.5) for l in half.layers)

    cut = build("simplecnn", width=0.25, num_classes=5)
    cut.load_state_dict(model.state_dict())
    pfa.apply_recipe(cut, kl, example_inputs=x)
    target = pfa.count_params(cut)
    uniform = pfa.make_recipe(model, stats, pfa.Uniform(params=target), example_inputs=x)
    ratios = {l.kept / l.original for l in uniform.layers}
    cut2 = build("simplecnn", width=0.25, num_classes=5)
    pfa.apply_recipe(cut2, uniform, example_inputs=x)
    got = pfa.count_params(cut2)
    assert got <= target
    assert got >= 0.85 * target, (got, target)  # the next common fraction would exceed the target
    assert uniform.summary["achieved_params"] == got
    assert max(ratios) - min(ratios) < 0.15  # one common fraction, up to rounding per layer
    with pytest.raises(ValueError, match="exactly one of `ratio`"):
        pfa.Uniform()
    with pytest.raises(ValueError, match=r"`params` must be a positive integer, got -3"):
        pfa.Uniform(params=-3)


class Chain(nn.Module):
    """conv -> BN -> ReLU -> conv (bias) -> ReLU -> flatten -> Linear -> ReLU -> Linear."""

    def __init__(self, c=6, hidden=5):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(c * 4 * 4, hidden), nn.Linear(hidden, 3)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def test_compensation_is_exact_for_a_linearly_dependent_unit():
    torch.manual_seed(0)
    model = Chain().eval()
    with torch.no_grad():  # unit 4 of conv1 responds exactly 2x unit 1 (ReLU is positively homogeneous)
        model.conv1.weight[4] = 2 * model.conv1.weight[1]
        model.bn1.running_mean.zero_()
        model.bn1.running_var.fill_(1.0)
        model.bn1.weight.fill_(1.0)
        model.bn1.bias.zero_()
    x = torch.rand(16, 3, 4, 4)
    reference = model(x)
    stats = pfa.collect_responses(model, [torch.rand(64, 3, 4, 4)], per_position=True, progress=False)
    recipe = pfa.make_recipe(model, stats, pfa.Energy(0.5), example_inputs=x)
    recipe = pfa.Recipe.from_dict(recipe.to_dict())
    for layer in recipe.layers:  # remove exactly the dependent unit, keep every other layer whole
        layer.kept_indices = [i for i in range(layer.original) if not (layer.name == "conv1" and i == 4)]

    plain = Chain().eval()
    plain.load_state_dict(model.state_dict())
    pfa.apply_recipe(plain, recipe, example_inputs=x)
    assert not torch.allclose(plain(x), reference, atol=1e-3)  # without compensation the output moves

    pfa.apply_recipe(model, recipe, example_inputs=x, compensate_with=stats)
    assert model.conv1.out_channels == 5
    torch.testing.assert_close(model(x), reference, rtol=1e-4, atol=1e-4)


def test_compensation_through_flatten_into_a_linear_layer():
    torch.manual_seed(1)
    model = Chain().eval()
    with torch.no_grad():  # conv2's unit 3 = 0.5 * unit 0, so fc1 (after flatten) must absorb it
        model.conv2.weight[3] = 0.5 * model.conv2.weight[0]
        model.conv2.bias[3] = 0.5 * model.conv2.bias[0]
    x = torch.rand(16, 3, 4, 4)
    reference = model(x)
    stats = pfa.collect_responses(model, [torch.rand(64, 3, 4, 4)], per_position=True, progress=False)
    recipe = pfa.Recipe.from_dict(pfa.make_recipe(model, stats, pfa.Energy(1.0), example_inputs=x).to_dict())
    for layer in recipe.layers:
        layer.kept_indices = [i for i in range(layer.original) if not (layer.name == "conv2" and i == 3)]
    pfa.apply_recipe(model, recipe, example_inputs=x, compensate_with=stats)
    assert model.fc1.in_features == 5 * 16
    torch.testing.assert_close(model(x), reference, rtol=1e-4, atol=1e-4)


def test_compensation_skips_non_linear_paths():
    model = build("vgg11", width=0.125, num_classes=3).eval()
    x = torch.rand(2, 3, 32, 32)
    stats = pfa.collect_responses(model, [torch.rand(64, 3, 32, 32)], per_position=True, progress=False)
    recipe = pfa.make_recipe(model, stats, pfa.Energy(0.8), example_inputs=x)
    from pfa_lightning.compensation import compensate
    from pfa_lightning.graph import ModelGraph

    notes = compensate(model, recipe, ModelGraph(model, x), stats)
    assert "non-linear path" in notes["features.0"]  # conv -> BN -> ReLU -> max-pool -> conv
    assert notes["features.8"] == ""  # conv -> BN -> ReLU -> conv: compensated
