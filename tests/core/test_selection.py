"""Unit selections as objects: built-ins equal their names, users can pass their own callable."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import pfa_lightning as pfa
from pfa_lightning.models import build


@pytest.fixture(scope="module")
def analysed():
    torch.manual_seed(0)
    model = build("vgg11", width=0.125, input_size=32)
    x = torch.randn(96, 3, 32, 32)
    stats = pfa.collect_responses(model, DataLoader(TensorDataset(x), batch_size=32), progress=False)
    return model, x[:2], stats


@pytest.mark.parametrize("name, selection", [
    ("abs_max", pfa.AbsMax()), ("l1_max", pfa.L1Max()), ("max_energy", pfa.MaxEnergy()), ("weight_l1", pfa.WeightL1()),
    ("random", pfa.Random(seed=0)), ("per_space", pfa.PerSpace()),
])
def test_names_and_objects_give_the_same_recipe(analysed, name, selection):
    model, x, stats = analysed
    by_name = pfa.make_recipe(model, stats, pfa.Energy(0.8), example_inputs=x, selection=name)
    by_object = pfa.make_recipe(model, stats, pfa.Energy(0.8), example_inputs=x, selection=selection)
    assert [l.kept_indices for l in by_name] == [l.kept_indices for l in by_object]
    assert by_object.selection.startswith(name)
    assert any(l.kept < l.original for l in by_object)


def test_the_default_selection_is_max_energy_everywhere(analysed):
    """MaxEnergy keeps better filters than the paper's AbsMax at the same widths on Fashion-MNIST, plain and
    residual nets (BENCHMARKS.md): it is the default of the API, the callback and the configs."""
    import inspect

    from omegaconf import OmegaConf

    model, x, stats = analysed
    default = pfa.make_recipe(model, stats, pfa.Energy(0.8), example_inputs=x)
    explicit = pfa.make_recipe(model, stats, pfa.Energy(0.8), example_inputs=x, selection=pfa.MaxEnergy())
    assert default.selection == "max_energy" and default.to_dict() == explicit.to_dict()
    paper = pfa.make_recipe(model, stats, pfa.Energy(0.8), example_inputs=x, selection="abs_max")
    assert [l.kept_indices for l in paper] != [l.kept_indices for l in default]  # the paper's stays one word away
    assert inspect.signature(pfa.PFACallback).parameters["selection"].default == "max_energy"
    root = Path(__file__).resolve().parents[2] / "conf"
    assert OmegaConf.load(root / "pfa" / "default.yaml").selection == "max_energy"
    assert OmegaConf.load(root / "callbacks" / "pfa.yaml").pfa.selection == "max_energy"


def test_a_users_own_selector_is_called_with_spectrum_count_and_weights(analysed):
    model, x, stats = analysed
    calls = []

    def keep_last(spectrum, keep, weights):
        calls.append((spectrum.name, keep, [tuple(w.shape) for w in weights]))
        assert all(w.shape[0] == spectrum.units for w in weights)
        return np.arange(spectrum.units - keep, spectrum.units)

    recipe = pfa.make_recipe(model, stats, pfa.Energy(0.8), example_inputs=x, selection=keep_last)
    assert recipe.selection == "keep_last"
    assert len(calls) == len(recipe.layers)
    for layer in recipe.layers:
        assert layer.kept_indices == list(range(layer.original - layer.kept, layer.original))
    pfa.apply_recipe(copy.deepcopy(model), recipe, example_inputs=x)  # a plain recipe: it applies like any other


def test_random_selection_object_is_seeded(analysed):
    model, x, stats = analysed
    a, b, c = (pfa.make_recipe(model, stats, pfa.Energy(0.8), example_inputs=x, selection=pfa.Random(seed=s))
               for s in (1, 1, 2))
    assert a.to_dict() == b.to_dict() != c.to_dict()
    assert a.selection == "random(seed=1)"


@pytest.mark.parametrize("selection, match", [
    (lambda spectrum, keep, weights: [0] * keep, r"Selection <lambda> returned \[0, 0.*expected \d+ distinct unit"),
    (lambda spectrum, keep, weights: np.arange(keep) + 10_000, r"expected \d+ distinct unit indices in \[0, \d+\)"),
    (pfa.Random, r"`selection` must be one of .* or a selection callable"),  # the class, not an instance
    (3, r"`selection` must be one of \('abs_max', 'l1_max', 'max_energy', 'weight_l1', 'random', 'per_space'\).*got 3"),
])
def test_bad_selections_are_refused(analysed, selection, match):
    model, x, stats = analysed
    with pytest.raises(pfa.PFAError, match=match):
        pfa.make_recipe(model, stats, pfa.Energy(0.8), example_inputs=x, selection=selection)


def test_random_seed_must_be_an_integer():
    with pytest.raises(pfa.PFAError, match=r"`seed` must be an integer, got 0.5"):
        pfa.Random(seed=0.5)


def test_max_energy_keeps_what_explains_the_most_variance():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2000, 3))
    responses = np.stack([3 * z[:, 0], 3 * z[:, 0] + 1e-3 * z[:, 2], 2 * z[:, 1], 1e-3 * z[:, 2], 0 * z[:, 0]], 1)
    spectrum = pfa.Spectrum("x", np.cov(responses.T), 2000)
    assert spectrum.inactive.tolist() == [4]
    select = pfa.MaxEnergy()
    # a loudest unit first, then the independent one, not the (near) copy of the first
    assert select(spectrum, 1, []).tolist() in ([0], [1])
    assert select(spectrum, 2, []).tolist() in ([0, 2], [1, 2])
    assert 4 not in select(spectrum, 4, []).tolist()  # the silent unit only when nothing else is left
    assert select(spectrum, 5, []).tolist() == [0, 1, 2, 3, 4]


@pytest.fixture(scope="module")
def residual():
    torch.manual_seed(0)
    model = build("resnet20", width=0.5).eval()
    x = torch.randn(128, 3, 16, 16)
    stats = pfa.collect_responses(model, DataLoader(TensorDataset(x), batch_size=64), progress=False)
    return model, x[:2], stats


def test_per_space_takes_weight_l1_in_a_residual_stream_and_max_energy_elsewhere(residual):
    model, x, stats = residual
    strategy = pfa.Footprint(0.4)
    recipes = {name: pfa.make_recipe(model, stats, strategy, example_inputs=x, selection=name)
               for name in ("per_space", "max_energy", "weight_l1")}
    kept = {name: {layer.name: layer.kept_indices for layer in r} for name, r in recipes.items()}
    coupled = {layer.name for layer in recipes["per_space"] if "+" in layer.group or any(
        other.group == layer.group and other.name != layer.name for other in recipes["per_space"])}
    assert coupled and len(coupled) < len(kept["per_space"])  # the streams, and single spaces besides
    for name, indices in kept["per_space"].items():
        assert indices == kept["weight_l1" if name in coupled else "max_energy"][name], name
    assert kept["per_space"] != kept["max_energy"] and kept["per_space"] != kept["weight_l1"]
    again = pfa.make_recipe(model, stats, strategy, example_inputs=x, selection=pfa.PerSpace())
    assert again.to_dict() == recipes["per_space"].to_dict()  # deterministic
    assert recipes["per_space"].selection == "per_space(single='max_energy', coupled='weight_l1')"
    other = pfa.make_recipe(model, stats, strategy, example_inputs=x, selection=pfa.PerSpace(coupled="l1_max"))
    assert {l.name: l.kept_indices for l in other if l.name in coupled} == {
        l.name: l.kept_indices for l in pfa.make_recipe(model, stats, strategy, example_inputs=x, selection="l1_max")
        if l.name in coupled}


def test_per_space_breaks_ties_by_the_lower_index_in_both_kinds_of_space():
    spectrum = pfa.Spectrum("s", np.eye(6), 100)  # every unit alike
    same = torch.ones(6, 3)
    select = pfa.PerSpace()
    assert select(spectrum, 3, [same]).tolist() == [0, 1, 2]  # single: MaxEnergy's ties
    assert select(spectrum, 3, [same, same]).tolist() == [0, 1, 2]  # coupled: weight L1's ties
    louder = same.clone()
    louder[5] *= 2
    assert select(spectrum, 3, [louder, same]).tolist() == [0, 1, 5]  # coupled: the larger filters


def test_a_depthwise_convolution_sharing_a_layers_channels_is_no_stream():
    from pfa_lightning.selection import adds_into

    conv, dw, stem, linear = torch.ones(6, 4, 3, 3), torch.ones(6, 1, 3, 3), torch.ones(6, 1, 3, 3), torch.ones(6, 5)
    assert adds_into([conv, conv]) and adds_into([stem, conv, conv]) and adds_into([linear, linear])
    assert not adds_into([conv]) and not adds_into([conv, dw]) and not adds_into([linear])
    rng = np.random.default_rng(0)
    z = rng.normal(size=(500, 6)) * np.array([1, 1, 1, 1, 5, 5])  # the loud units 4 and 5 carry the energy
    spectrum = pfa.Spectrum("s", np.cov(z.T), 500)
    loud_l1 = conv.clone()
    loud_l1[:2] *= 3  # the largest filters: units 0 and 1
    assert pfa.PerSpace()(spectrum, 2, [loud_l1, dw]).tolist() == [4, 5]  # MaxEnergy, as for one layer
    assert pfa.PerSpace()(spectrum, 2, [loud_l1, conv]).tolist() == [0, 1]  # a stream: weight L1


@pytest.mark.parametrize("kwargs, match", [
    ({"coupled": "foo"}, r"`PerSpace.coupled` must be one of \('abs_max', .*got 'foo'"),
    ({"single": pfa.MaxEnergy}, r"`PerSpace.single` must be one of .* or a selection callable, got <class"),
])
def test_per_space_refuses_an_unknown_selection_at_once(kwargs, match):
    with pytest.raises(pfa.PFAError, match=match):
        pfa.PerSpace(**kwargs)
