"""Recipes applied for real: full-size paper models, other architectures, exactness, all-or-nothing."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import pfa_lightning as pfa
from pfa_lightning.graph import module_width
from pfa_lightning.models import build

STRATEGIES = [pfa.KL(), pfa.Energy(0.9), pfa.Footprint(0.25, metric="params"), pfa.Footprint(0.25, metric="flops"),
              pfa.Footprint(0.25, metric="params", allocation="energy"),
              pfa.Footprint(0.25, metric="flops", allocation="uniform")]


def _batches(n, shape, batch=128):
    return [torch.rand(min(batch, n - i), *shape) for i in range(0, n, batch)]


def _assert_widths(model, recipe):
    for layer in recipe.layers:
        assert module_width(model.get_submodule(layer.name)) == layer.kept, layer.name


@pytest.fixture(scope="module", params=["vgg16", "resnet56"])
def full_size(request):
    torch.manual_seed(0)
    model = build(request.param, num_classes=10)
    # at least as many samples as the widest layer (512), so that no layer is left whole
    stats = pfa.collect_responses(model, _batches(640, (3, 32, 32)), progress=False)
    return request.param, model, stats


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: repr(s))
def test_full_size_models_compress_and_run(full_size, strategy):
    name, original, stats = full_size
    model = copy.deepcopy(original)
    x = torch.rand(4, 3, 32, 32)
    params, flops = pfa.count_params(model), pfa.count_flops(model, x)
    recipe = pfa.make_recipe(model, stats, strategy, example_inputs=x)
    assert pfa.apply_recipe(model, recipe, example_inputs=x) is model
    _assert_widths(model, recipe)
    assert model(x).shape == (4, 10)
    new_params, new_flops = pfa.count_params(model), pfa.count_flops(model, x)
    assert new_params < params and new_flops < flops
    if isinstance(strategy, pfa.Footprint):
        achieved = (new_params / params) if strategy.metric == "params" else (new_flops / flops)
        assert achieved <= 0.25
        assert achieved >= 0.24, f"{name} {strategy}: {achieved:.4f} is not close to the 0.25 target"
        assert recipe.summary["achieved_ratio"] == pytest.approx(achieved)
    if name == "resnet56":  # residual-coupled layers share one decision
        stage = [l for l in recipe.layers if l.group == recipe["layer3.0.conv2"].group]
        assert {l.name for l in stage} >= {"layer3.0.conv2", "layer3.0.shortcut.0", "layer3.8.conv2"}
        assert all(l.kept_indices == stage[0].kept_indices for l in stage)


def test_kept_units_keep_their_weights():
    model = build("vgg11", width=0.125, num_classes=3)
    x = torch.rand(4, 3, 32, 32)
    stats = pfa.collect_responses(model, _batches(96, (3, 32, 32), 32), progress=False)
    before = copy.deepcopy(model)
    recipe = pfa.make_recipe(model, stats, pfa.Energy(0.8), example_inputs=x)
    pfa.apply_recipe(model, recipe, example_inputs=x)
    first, second = recipe["features.0"], recipe["features.4"]
    w = before.features[4].weight[second.kept_indices][:, first.kept_indices]
    assert torch.equal(model.features[4].weight, w)
    bn = before.features[1]
    assert torch.equal(model.features[1].running_mean, bn.running_mean[first.kept_indices])
    assert torch.equal(model.features[1].weight, bn.weight[first.kept_indices])


def test_removing_only_dead_units_leaves_outputs_unchanged_and_recipe_round_trips():
    model = build("simplecnn", width=0.25, num_classes=4).eval()
    dead = {"features.0": [2, 5], "features.7": [1]}  # conv -> BN -> ReLU: BN that outputs -1 kills the unit
    with torch.no_grad():
        for conv, units in dead.items():
            bn = model.get_submodule(conv.replace(".0", ".1").replace(".7", ".8"))
            bn.weight[units] = 0.0
            bn.bias[units] = -1.0
    x = torch.rand(8, 3, 32, 32)
    reference = model(x)
    stats = pfa.collect_responses(model, _batches(200, (3, 32, 32), 50), progress=False)
    recipe = pfa.make_recipe(model, stats, pfa.Energy(1.0), example_inputs=x)
    removed = {l.name: l.removed_indices for l in recipe.layers if l.removed_indices}
    assert all(set(units) <= set(removed[name]) for name, units in dead.items())
    # Energy(1.0) on full-rank responses removes exactly the inactive units (planted, or dead ReLUs)
    assert all(l.original - l.kept == l.diagnostics["inactive"] for l in recipe.layers)
    restored = pfa.Recipe.from_dict(json.loads(json.dumps(recipe.to_dict())))
    assert restored.to_dict() == recipe.to_dict()
    assert restored.widths == recipe.widths
    pfa.apply_recipe(model, restored, example_inputs=x)
    assert model.features[0].out_channels == 8 - len(removed["features.0"])
    torch.testing.assert_close(model(x), reference, rtol=1e-5, atol=1e-5)


class SqueezeExcite(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class Zoo(nn.Module):
    """Concatenation, depthwise separable convs, a squeeze-excite gate, a residual add onto the
    concatenation, flatten -> Linear, and ReLU6 / Hardswish / GELU non-linearities."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(24, 24, 3, padding=1, groups=24), nn.BatchNorm2d(24), nn.Hardswish())
        self.se = SqueezeExcite(24)
        self.project = nn.Sequential(nn.Conv2d(24, 16, 1), nn.BatchNorm2d(16))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 12), nn.GELU(), nn.Linear(12, 5))

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.a(x), self.b(x)], dim=1)
        x = x + self.project(self.se(self.dw(self.expand(x))))
        return self.head(F.relu(x))


def _compress(model, x, strategy, n=96, **kw):
    stats = pfa.collect_responses(model, [torch.rand(n, *x.shape[1:])], progress=False)
    recipe = pfa.make_recipe(model, stats, strategy, example_inputs=x, **kw)
    before = pfa.count_params(model)
    pfa.apply_recipe(model, recipe, example_inputs=x)
    _assert_widths(model, recipe)
    assert pfa.count_params(model) < before
    return recipe


def test_concat_depthwise_squeeze_excite_residual():
    model = Zoo()
    x = torch.rand(4, 3, 16, 16)
    recipe = _compress(model, x, pfa.Energy(0.7))
    assert model(x).shape == (4, 5)
    # the concatenated branches are decided separately; project's output is added to the
    # concatenation, so its first 8 channels follow a's decision and its last 8 b's
    assert recipe["a.0"].group == "a.0" and recipe["b.0"].group == "b.0"
    assert recipe["project.0"].group == "a.0+b.0"
    b_kept = [8 + i for i in recipe["b.0"].kept_indices]
    assert recipe["project.0"].kept_indices == recipe["a.0"].kept_indices + b_kept
    # depthwise conv and SE output share the expand conv's channels
    assert recipe["dw.0"].group == recipe["expand.0"].group == recipe["se.fc2"].group
    assert model.dw[0].groups == model.dw[0].out_channels == model.expand[0].out_channels
    assert "Hardswish" in recipe["dw.0"].response and "GELU" in recipe["head.2"].response


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "resnet18", "densenet121"])
@pytest.mark.filterwarnings("ignore:Layer .* response samples")  # the widest layers stay whole here
def test_torchvision_architectures(arch):
    model = getattr(torchvision.models, arch)(weights=None, num_classes=7)
    if arch == "densenet121":  # keep it small: the first dense block only
        model.features = model.features[:5]
        model.classifier = nn.Linear(model.features[-1].denselayer6.conv2.out_channels * 0 + 256, 7)
    x = torch.rand(2, 3, 64, 64)
    model.eval()
    _compress(model, x, pfa.KL(), n=160)
    assert model(x).shape == (2, 7)


def test_coupled_skip_and_min_units():
    model = build("resnet20", width=0.5)
    x = torch.rand(4, 3, 32, 32)
    stats = pfa.collect_responses(model, _batches(96, (3, 32, 32), 48), progress=False)
    joint = pfa.make_recipe(model, stats, pfa.KL(), example_inputs=x)
    skip = pfa.make_recipe(model, stats, pfa.KL(), example_inputs=x, coupled="skip")
    assert "layer2.0.conv2" in joint.names and "layer2.0.conv2" not in skip.names
    assert "layer2.0.conv1" in skip.names
    tiny = pfa.make_recipe(model, stats, pfa.Energy(0.01), example_inputs=x)
    floor = pfa.make_recipe(model, stats, pfa.Energy(0.01), example_inputs=x, min_units=4)
    assert min(l.kept for l in tiny.layers) == 1
    assert min(l.kept for l in floor.layers) == 4
    assert "layer1.0.conv1" in floor.table().columns[0]._cells


def test_surgery_is_all_or_nothing(monkeypatch):
    model = build("resnet20", width=0.25).train()
    model.layer1.eval()
    x = torch.rand(4, 3, 32, 32)
    stats = pfa.collect_responses(model, _batches(64, (3, 32, 32)), progress=False)
    recipe = pfa.make_recipe(model, stats, pfa.Energy(0.5), example_inputs=x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())

    import torch_pruning as tp

    calls = {"n": 0}
    original = tp.dependency.group.Group.prune

    def fail_on_third(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # two channel spaces are already cut when this happens
            raise RuntimeError("simulated failure in the middle of the surgery")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tp.dependency.group.Group, "prune", fail_on_third)
    with pytest.raises(RuntimeError, match="simulated failure"):
        pfa.apply_recipe(model, recipe, example_inputs=x)
    assert calls["n"] == 3
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    assert all(a is b for a, b in zip(model.parameters(), params))
    assert model.conv1.out_channels == 4 and model.training and not model.layer1.training
    monkeypatch.undo()
    pfa.apply_recipe(model, recipe, example_inputs=x)  # the untouched model still takes the recipe
    _assert_widths(model, recipe)
