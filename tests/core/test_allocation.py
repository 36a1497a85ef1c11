"""Footprint allocations: every one stays within the target; each shapes the widths as documented."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pfa_lightning as pfa
from pfa_lightning.models import build
from pfa_lightning.strategies import energy_count, kl_keep_ratio


@pytest.fixture(scope="module", params=["vgg11", "resnet20"])
def analysed(request):
    torch.manual_seed(0)
    kwargs = {"width": 0.25, "input_size": 32} if request.param == "vgg11" else {"width": 0.5}
    model = build(request.param, **kwargs)
    x = torch.rand(160, 3, 32, 32)
    stats = pfa.collect_responses(model, [x[i:i + 40] for i in range(0, 160, 40)], progress=False)
    return model, stats, x[:2]


def _measure(model, recipe, x, metric):
    import copy

    cut = pfa.apply_recipe(copy.deepcopy(model), recipe, example_inputs=x)
    count = pfa.count_params if metric == "params" else (lambda m: pfa.count_flops(m, x))
    return count(cut) / count(model)


@pytest.mark.parametrize("allocation", ["kl", "energy", "uniform"])
@pytest.mark.parametrize("metric, ratio", [("params", 0.5), ("params", 0.1), ("flops", 0.3)])
def test_every_allocation_stays_within_the_target(analysed, allocation, metric, ratio):
    model, stats, x = analysed
    recipe = pfa.make_recipe(model, stats, pfa.Footprint(ratio, metric, allocation=allocation), example_inputs=x)
    achieved = _measure(model, recipe, x, metric)
    assert achieved <= ratio
    assert recipe.summary["achieved_ratio"] == pytest.approx(achieved)
    assert recipe.summary["allocation"] == allocation
    assert recipe.strategy["allocation"] == allocation


def _spectra_by_group(model, stats, x):
    """The spectrum of every uncoupled layer (a coupled group's spectrum pools its members)."""
    recipe = pfa.make_recipe(model, stats, pfa.Energy(1.0), example_inputs=x)
    members = [layer.group for layer in recipe.layers]
    spectra = {}
    for layer in recipe.layers:
        if layer.group == layer.name and members.count(layer.name) == 1:
            s = stats[layer.name]
            spectra[layer.name] = pfa.Spectrum(layer.name, s.covariance(), s.num_samples)
    return spectra


def test_kl_allocation_scales_pfa_kl_fractions_by_one_factor(analysed):
    model, stats, x = analysed
    recipe = pfa.make_recipe(model, stats, pfa.Footprint(0.3, "params", allocation="kl"), example_inputs=x)
    scale = recipe.summary["scale"]
    for name, spectrum in _spectra_by_group(model, stats, x).items():
        share = kl_keep_ratio(spectrum)[1]
        expected = max(1, math.ceil(spectrum.units * min(1.0, scale * share) - 1e-9))
        assert recipe[name].kept == expected, name


def test_uniform_allocation_keeps_one_fraction_everywhere(analysed):
    model, stats, x = analysed
    recipe = pfa.make_recipe(model, stats, pfa.Footprint(0.3, "flops", allocation="uniform"), example_inputs=x)
    scale = recipe.summary["scale"]
    for layer in recipe.layers:
        assert layer.kept == max(1, math.ceil(layer.original * min(1.0, scale) - 1e-9))


def test_energy_allocation_is_the_papers_common_threshold(analysed):
    model, stats, x = analysed
    recipe = pfa.make_recipe(model, stats, pfa.Footprint(0.3, "params", allocation="energy"), example_inputs=x)
    tau = recipe.summary["threshold"]
    for name, spectrum in _spectra_by_group(model, stats, x).items():
        assert recipe[name].kept == energy_count(spectrum.energy_fractions(), tau), name


def test_the_default_allocation_and_a_bad_one():
    assert pfa.Footprint(0.5).allocation == "kl"
    with pytest.raises(pfa.PFAError, match=r"`allocation` must be one of \('kl', 'energy', 'uniform'\), got 'greedy'"):
        pfa.Footprint(0.5, allocation="greedy")
    assert np.isclose(pfa.Footprint(0.25, "flops", "energy").ratio, 0.25)
