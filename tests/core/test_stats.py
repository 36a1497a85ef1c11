"""Streaming response statistics and the spectral formulas, against independent numpy computations."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import pfa_lightning as pfa
from pfa_lightning.stats import LayerStats


def _linear_relu_net(d=6, m=8, dead=(7,), duplicate=(6, 1), seed=0):
    """x >= 0, weights >= 0, bias > 0: pre-activations stay positive, so responses are affine in x."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(d, m), nn.ReLU(), nn.Linear(m, 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.rand(m, d, generator=g) + 0.1)
        net[0].bias.copy_(torch.rand(m, generator=g) + 0.5)
        copy_to, copy_from = duplicate
        net[0].weight[copy_to] = net[0].weight[copy_from]
        net[0].bias[copy_to] = net[0].bias[copy_from]
        for u in dead:
            net[0].weight[u] = 0.0
            net[0].bias[u] = -1.0
    return net


def _loader(x, batch):
    return [(x[i : i + batch], torch.zeros(len(x[i : i + batch]))) for i in range(0, len(x), batch)]


def _numpy_responses(net, x):
    w, b = net[0].weight.detach().double().numpy(), net[0].bias.detach().double().numpy()
    return np.maximum(x.double().numpy() @ w.T + b, 0.0)


def _numpy_kl_count(eig):
    m = eig.size
    p = eig / eig.sum() + np.finfo(float).eps
    p = p / p.sum()
    kl = np.sum(p * np.log(p / (1.0 / m)))
    return int(math.ceil(m * (1 - kl / np.log(m)) - 1e-9))


def _numpy_energy_count(eig, tau):
    frac = np.cumsum(eig) / eig.sum()
    return int(np.argmax(frac >= tau - 1e-12) + 1)


@pytest.mark.parametrize("batch_sizes", [[500], [1, 499], [7, 13, 100, 380], [250, 250]])
def test_streaming_statistics_equal_torch_cov_for_any_split(batch_sizes):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(500, 12, generator=g, dtype=torch.float64) @ torch.randn(12, 12, generator=g, dtype=torch.float64)
    a += 3.0  # a non-zero mean, as ReLU responses have
    stats = LayerStats.empty("layer", 12)
    start = 0
    for size in batch_sizes:
        stats.update(a[start : start + size])
        start += size
    expected = torch.cov(a.T).numpy()
    got = stats.covariance()
    assert np.max(np.abs(got - expected)) / np.max(np.abs(expected)) < 1e-10


@pytest.mark.parametrize("batch", [1, 16, 300])
def test_collected_statistics_match_full_response_matrix(batch):
    net = _linear_relu_net().double()  # float64 forward: the only rounding left is the accumulation's
    x = torch.rand(300, 6, dtype=torch.float64)
    stats = pfa.collect_responses(net, _loader(x, batch), progress=False)
    assert list(stats) == ["0"]  # the final classifier is never analysed
    expected = np.cov(_numpy_responses(net, x).T)
    got = stats["0"].covariance()
    assert stats["0"].num_samples == 300
    assert np.max(np.abs(got - expected)) / np.max(np.abs(expected)) < 1e-10
    assert "ReLU" in stats["0"].response


def test_max_samples_bounds_the_collection():
    net = _linear_relu_net()
    stats = pfa.collect_responses(net, _loader(torch.rand(300, 6), 32), max_samples=70, progress=False)
    assert stats["0"].num_samples == 70


def test_kl_and_energy_counts_equal_numpy_formulas_and_duplicates_and_dead_units_go():
    net = _linear_relu_net(d=6, m=8, dead=(7,), duplicate=(6, 1))
    x = torch.rand(400, 6)
    stats = pfa.collect_responses(net, _loader(x, 64), progress=False)
    eig = np.sort(np.clip(np.linalg.eigvalsh(np.cov(_numpy_responses(net, x).T)), 0, None))[::-1]
    example = x[:4]

    kl = pfa.make_recipe(net, stats, pfa.KL(), example_inputs=example)
    assert kl["0"].kept == _numpy_kl_count(eig)
    assert kl["0"].diagnostics["inactive"] == 1
    for tau in (0.5, 0.9, 0.99, 1.0):
        energy = pfa.make_recipe(net, stats, pfa.Energy(tau), example_inputs=example)
        assert energy["0"].kept == _numpy_energy_count(eig, tau), tau
    # rank 6 of 8 units: Energy(1.0) drops exactly the dead unit and one of the duplicates (units 1
    # and 6 tie; with AbsMax, as in DNIKit, the first of the tied rows goes; MaxEnergy, the default,
    # keeps the lower index of a tie)
    full = pfa.make_recipe(net, stats, pfa.Energy(1.0), example_inputs=example, selection="abs_max")
    assert full["0"].removed_indices == [1, 7]
    default = pfa.make_recipe(net, stats, pfa.Energy(1.0), example_inputs=example)
    assert default["0"].removed_indices == [6, 7]
    # when only one unit goes, it is the dead one
    one = pfa.select_units(pfa.Spectrum("0", stats["0"].covariance(), 400), 7, "abs_max")
    assert 7 not in one.tolist() and len(one) == 7
    two = pfa.select_units(pfa.Spectrum("0", stats["0"].covariance(), 400), 6, "abs_max")
    assert two.tolist() == [0, 2, 3, 4, 5, 6]  # the dead unit and the first of the duplicates 1 == 6


def _naive_abs_max(cov, keep):
    """Direct transcription of PFA.md section 4 (AbsMax), O(m^3)."""
    std = np.sqrt(np.diag(cov))
    r = np.abs(cov / np.outer(std, std))
    alive = list(range(cov.shape[0]))
    while len(alive) > keep:
        best, pair = -1.0, None
        for i in alive:
            for j in alive:
                if i < j and r[i, j] > best:
                    best, pair = r[i, j], (i, j)
        i, j = pair
        si = max((r[i, u] for u in alive if u not in (i, j)), default=None)
        sj = max((r[j, u] for u in alive if u not in (i, j)), default=None)
        # the member whose next-largest |r| is larger goes; with nothing to compare, the lower index
        drop = j if si is not None and sj > si else i
        alive.remove(drop)
    return alive


def _naive_l1_max(cov, keep):
    std = np.sqrt(np.diag(cov))
    r = np.abs(cov / np.outer(std, std))
    np.fill_diagonal(r, 0.0)
    alive = list(range(cov.shape[0]))
    while len(alive) > keep:
        sums = {u: sum(r[u, v] for v in alive) for u in alive}
        alive.remove(max(alive, key=lambda u: (sums[u], -u)))  # on a tie (the last pair), the lower index
    return alive


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_selection_matches_direct_transcription_of_the_rules(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 16)) + 0.3 * rng.normal(size=(200, 16))
    cov = np.cov(a.T)
    spectrum = pfa.Spectrum("x", cov, 200)
    for keep in (1, 4, 9, 15):
        assert pfa.select_units(spectrum, keep, "abs_max").tolist() == _naive_abs_max(cov, keep)
        assert pfa.select_units(spectrum, keep, "l1_max").tolist() == _naive_l1_max(cov, keep)


def test_collection_restores_training_mode_and_warns_on_few_samples():
    net = _linear_relu_net()
    net.train()
    net[1].eval()  # a mixed state must survive too
    stats = pfa.collect_responses(net, _loader(torch.rand(5, 6), 5), progress=False)
    assert net.training and net[0].training and not net[1].training
    with pytest.warns(UserWarning, match="5 response samples for 8 units"):
        recipe = pfa.make_recipe(net, stats, pfa.KL(), example_inputs=torch.rand(2, 6))
    assert recipe["0"].kept == 8
    assert net.training and not net[1].training


def test_avg_pooling_and_nan_responses():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    x = torch.rand(16, 3, 6, 6)
    stats = pfa.collect_responses(net, [x], pooling="avg", progress=False)
    with torch.no_grad():
        expected = torch.relu(net[1].eval()(net[0](x))).mean((2, 3)).double()
    assert np.allclose(stats["0"].covariance(), torch.cov(expected.T).numpy(), rtol=1e-9, atol=1e-12)
    assert stats["0"].response == "0 -> 1 -> ReLU"
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="Layer '0' produced NaN or Inf responses"):
        pfa.collect_responses(net, [x], progress=False)
