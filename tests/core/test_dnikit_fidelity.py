"""Fidelity to Apple's DNIKit: unit selection on its own test matrices and on matrices full of exact
ties, the too-few-samples rule, and the refusal of a non-finite covariance."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import pfa_lightning as pfa
from pfa_lightning.selection import _abs_max_order, _l1_max_order
from tests.helpers import dnikit_reference as ref

# DNIKit's tests/test_pfa.py (TestUnitSelection): a symmetric correlation matrix, keep 1 unit
DNIKIT_MATRIX = np.array([[1.0, 0.7, 0.2, 0.3, 0.9], [0.7, 1.0, 0.1, 0.2, 0.6], [0.2, 0.1, 1.0, 0.8, 0.3],
                          [0.3, 0.2, 0.8, 1.0, 0.3], [0.9, 0.6, 0.3, 0.3, 1.0]])


def _nan_diagonal(r: np.ndarray) -> np.ndarray:
    r = r.copy()
    np.fill_diagonal(r, np.nan)
    return r


def test_dnikit_golden_orders():
    r = _nan_diagonal(DNIKIT_MATRIX)
    assert _abs_max_order(r, 4) == [0, 2, 4, 1]
    assert _l1_max_order(r, 4) == [0, 3, 4, 1]
    ones = _nan_diagonal(np.ones((4, 4)))  # every pair ties
    assert _abs_max_order(ones, 3) == [0, 1, 2]
    assert _l1_max_order(ones, 3) == [0, 1, 2]


def test_dnikit_golden_order_with_inactive_units():
    cov = np.diag([1.0, 1.0, 0.0, 1.0, 0.0])  # units 2 and 4 never respond
    cov[0, 1] = cov[1, 0] = 0.7
    cov[0, 3] = cov[3, 0] = 0.3
    cov[1, 3] = cov[3, 1] = 0.2
    spectrum = pfa.Spectrum("x", cov, 100)
    assert spectrum.inactive.tolist() == [2, 4]
    for selection in ("abs_max", "l1_max"):  # DNIKit: [2, 4, 0, 1] removed, in this order, for both
        assert pfa.select_units(spectrum, 1, selection).tolist() == [3]
        assert pfa.select_units(spectrum, 2, selection).tolist() == [1, 3]
        assert pfa.select_units(spectrum, 3, selection).tolist() == [0, 1, 3]


def _tied_covariance(seed: int, m: int = 14) -> np.ndarray:
    """A correlation matrix whose entries take a few values only: many exact ties at every step."""
    rng = np.random.default_rng(seed)
    levels = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    upper = np.triu(rng.choice(levels, size=(m, m)), 1)
    return upper + upper.T + np.eye(m)


@pytest.mark.parametrize("seed", range(6))
def test_exact_ties_are_broken_as_dnikit_does(seed):
    cov = _tied_covariance(seed)
    m = cov.shape[0]
    r = pfa.Spectrum("x", cov, 1000).abs_correlation(np.arange(m))
    assert _abs_max_order(r, m - 1) == ref.abs_max(ref.correlation(cov, []), [], 1)
    assert _l1_max_order(r, m - 1) == ref.l1_max(ref.correlation(cov, []), [], 1)


@pytest.mark.parametrize("seed", range(3))
def test_selection_with_dead_units_equals_dnikit(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(300, 4)) @ rng.normal(size=(4, 12))
    a[:, [3, 8]] = 0.0  # dead units
    cov = np.cov(a.T)
    dead = [3, 8]
    for keep in (1, 4, 9):
        removed = ref.abs_max(ref.correlation(cov, dead), dead, keep)
        assert pfa.select_units(pfa.Spectrum("x", cov, 300), keep, "abs_max").tolist() == \
            sorted(set(range(12)) - set(removed))
        removed = ref.l1_max(ref.correlation(cov, dead), dead, keep)
        assert pfa.select_units(pfa.Spectrum("x", cov, 300), keep, "l1_max").tolist() == \
            sorted(set(range(12)) - set(removed))


def test_a_space_with_fewer_samples_than_units_is_kept_whole():
    """DNIKit's rule: n samples give a covariance of rank <= n - 1; fewer samples than units keep the
    layer whole, as many are analysed (both warn)."""
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    stats = pfa.collect_responses(net, [torch.randn(7, 4)], progress=False)
    with pytest.warns(UserWarning, match="7 response samples for 8 units.*left uncompressed"):
        recipe = pfa.make_recipe(net, stats, pfa.Energy(0.5), example_inputs=torch.randn(2, 4))
    assert recipe["0"].kept == 8 and recipe["0"].diagnostics["note"] == "too few samples: kept whole"
    stats = pfa.collect_responses(net, [torch.randn(8, 4)], progress=False)
    with pytest.warns(UserWarning, match="8 response samples for 8 units.*analysed"):
        recipe = pfa.make_recipe(net, stats, pfa.Energy(0.5), example_inputs=torch.randn(2, 4))
    assert recipe["0"].kept < 8 and "note" not in recipe["0"].diagnostics


def _dnikit_regression_responses(n_images: int = 128) -> dict[int, np.ndarray]:
    """The responses of DNIKit's regression tests (tests/test_pfa.py, TestPFARegression), per layer width,
    channels first: per image, uniform noise seeded by the image index, units 1-14 copies of unit 0 plus
    1% noise (the generator reseeded before each copy, as there)."""
    layers = {128: [], 64: [], 32: []}
    sizes = {128: 20, 64: 10, 32: 5}
    for i in range(n_images):
        rs = np.random.RandomState(seed=i)
        acts = {m: rs.uniform(-1.0, 1.0, (1, sizes[m], sizes[m], m)) for m in (128, 64, 32)}
        for target in range(1, 15):
            rs.seed(i)
            for m in (128, 64, 32):
                acts[m][..., target] = acts[m][..., 0] + rs.normal(0.0, 0.01, acts[m][..., 0].shape)
        for m in (128, 64, 32):
            layers[m].append(acts[m])
    return {m: np.concatenate(a).transpose(0, 3, 1, 2) for m, a in layers.items()}


def _identity_net(units: int) -> nn.Module:
    """A 1x1 convolution that passes its input through (its responses are the input's), then a consumer."""
    net = nn.Sequential(nn.Conv2d(units, units, 1, bias=False), nn.Conv2d(units, 2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(units).view(units, units, 1, 1))
    return net


def test_dnikit_regression_golden_values_including_the_128_image_layer():
    """DNIKit's recommended widths and KL diagnostics on its regression data: 128 images (max-pooled),
    layers of 128, 64 and 32 units. The 128-unit layer has exactly as many samples as units: DNIKit
    analyses it (PFA-KL keeps 99, PFA-Energy 0.98 keeps 82), and so do we."""
    golden = {128: (99, 1.129493867639542, 0.7672121140631339, 82),
              64: (52, 0.8441312319086356, 0.7970293429776533, 45),
              32: (20, 1.3327294476569362, 0.6154555670037302, 17)}
    for units, responses in _dnikit_regression_responses().items():
        kept_kl, kl, ratio, kept_energy = golden[units]
        net = _identity_net(units)
        x = torch.from_numpy(responses).float()
        stats = pfa.collect_responses(net, [x[:64], x[64:]], progress=False)
        assert stats["0"].num_samples == 128
        example = x[:2]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the 128-unit layer warns: as many samples as units
            recipe = pfa.make_recipe(net, stats, pfa.KL(), example_inputs=example)
            energy = pfa.make_recipe(net, stats, pfa.Energy(0.98), example_inputs=example)
        assert recipe["0"].kept == kept_kl, units
        assert np.isclose(recipe["0"].diagnostics["kl"], kl, rtol=1e-4), units
        assert np.isclose(recipe["0"].diagnostics["units_ratio"], ratio, rtol=1e-4), units
        assert energy["0"].kept == kept_energy, units


def test_spectrum_refuses_a_non_finite_covariance():
    cov = np.eye(3)
    cov[0, 1] = cov[1, 0] = np.inf
    with pytest.raises(pfa.PFAError, match=r"covariance of 'conv1' holds NaN or Inf"):
        pfa.Spectrum("conv1", cov, 10)
