"""Depth: whole residual blocks found, measured on the analysis data, removed (``Footprint(..., depth=True)``)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import pfa_lightning as pfa
from pfa_lightning.blocks import blocks_to_remove, is_removed, remove_blocks, residual_blocks, skipped
from pfa_lightning.errors import PFAError
from pfa_lightning.models import build


def _resnet():
    torch.manual_seed(0)
    return build("resnet20", num_classes=10, in_channels=3, width=0.5).eval()


def _data():
    return torch.randn(96, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _stats(model, x, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pfa.collect_responses(model, [x[:48], x[48:]], progress=False, **kwargs)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def test_the_blocks_with_an_identity_shortcut_are_found_and_no_others():
    x = torch.randn(2, 3, 32, 32)
    # the CIFAR ResNet-20: the first block of stages 2 and 3 has a projection shortcut
    assert list(residual_blocks(_resnet(), x)) == ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2",
                                                   "layer3.1", "layer3.2"]
    # torchvision's (``out += identity``, downsample None): every block but the downsampling ones
    assert list(residual_blocks(torchvision.models.resnet18(num_classes=10), x)) == [
        "layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    assert residual_blocks(build("vgg16", num_classes=10, width=0.25), x) == {}


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1))
        self.shared = Residual()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.shared(self.shared(x))  # one module called twice: removing it is not one block's decision
        return self.head(x.mean((2, 3)))


class Residual(nn.Module):
    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.scale = scale

    def forward(self, x):
        return F.relu(x + self.scale * self.conv(x))


class Gated(nn.Module):  # two inputs: not a block
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x, y=None):
        return x + self.conv(x)


class Projected(nn.Module):  # the shortcut is a layer: the stream is not the input
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.proj = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.proj(x) + self.conv(x)


def test_modules_that_are_not_one_residual_block_are_left_whole():
    x = torch.randn(2, 4, 8, 8)
    assert residual_blocks(Twice(), x) == {}
    for module in (Gated(), Projected(), nn.Conv2d(4, 4, 3, padding=1)):
        with pytest.raises(PFAError, match="not a residual block"):
            skipped(module)


def test_a_removed_block_leaves_what_follows_the_addition():
    block = Residual()
    x = torch.randn(2, 4, 8, 8)
    gone = skipped(block)
    assert torch.equal(gone(x), F.relu(x))
    assert sum(p.numel() for p in gone.parameters()) == 0


def test_contributions_are_measured_and_a_silent_branch_goes_first():
    model = _resnet()
    with torch.no_grad():  # layer2.1's branch adds nothing: its output is relu(x) = x (x is already >= 0)
        model.layer2[1].bn2.weight.zero_()
        model.layer2[1].bn2.bias.zero_()
    x = _data()
    stats = _stats(model, x, blocks=True)
    contributions = stats.block_contributions()
    assert set(contributions) == set(residual_blocks(model, x[:2]))
    assert contributions["layer2.1"] == pytest.approx(0.0, abs=1e-12)
    block = model.layer1[1]  # measured directly on the same data
    inputs = []
    hook = model.layer1[0].register_forward_hook(lambda m, a, out: inputs.append(out))
    with torch.no_grad():
        model(x)
        out = block(inputs[0])
    hook.remove()
    out, stream = out.double(), F.relu(inputs[0]).double()
    expected = (out - stream).pow(2).sum() / out.pow(2).sum()
    assert contributions["layer1.1"] == pytest.approx(float(expected), rel=1e-6)
    plain = pfa.collect_responses(model, [x[:48], x[48:]], progress=False)
    assert plain.blocks is None  # only when asked, and the layers' statistics are the same either way
    assert stats.num_samples == plain.num_samples == 96
    assert all(torch.equal(stats[name].outer, plain[name].outer) for name in plain)


def test_the_fewest_blocks_that_meet_the_first_reachable_wish_are_chosen_in_order():
    order = ["a", "b", "c", "d"]
    costs = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.1}
    seen = []

    def without(names):
        seen.append(len(names))
        return 1.0 - sum(costs[n] for n in names)

    def under(share):
        return lambda ratio: ratio <= share

    assert blocks_to_remove(order, without, [under(0.75)]) == (["a", "b"], pytest.approx(0.7))
    assert len(seen) == len(set(seen)) <= 4  # bisection: each count measured once
    assert blocks_to_remove(order, without, [under(0.9)]) == (["a"], pytest.approx(0.9))
    assert blocks_to_remove(order, without, [under(0.1)]) == (order, pytest.approx(0.3))  # none met: every one
    assert blocks_to_remove(order, without, [under(0.1), under(0.75)]) == (["a", "b"], pytest.approx(0.7))
    assert blocks_to_remove(order, without, [under(1.0)]) == ([], 1.0)


class OverheadTimer:
    """'Seconds' = parameters / 1e8 + 1e-4 per convolution: a fixed cost per layer that no width removes (as
    PyTorch's per-call overhead at batch 1), deterministic."""

    def __call__(self, model, inputs) -> float:
        convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
        return pfa.count_params(model) / 1e8 + 1e-4 * convs


def test_a_latency_widths_cannot_reach_is_met_by_removing_blocks(tmp_path, monkeypatch):
    monkeypatch.setenv("PFA_CACHE_DIR", str(tmp_path))
    model, x = _resnet(), _data()
    stats = _stats(model, x, blocks=True)
    timer = OverheadTimer()
    with pytest.raises(PFAError, match="depth=True"):
        _quiet(pfa.make_recipe, model, stats, pfa.Footprint(0.25, metric="latency", timer=timer), example_inputs=x[:2])
    with pytest.raises(PFAError, match="Uniform ratio 0.25") as refused:  # the baseline has no depth to suggest
        _quiet(pfa.make_recipe, model, stats, pfa.Uniform(0.25, metric="latency", timer=timer), example_inputs=x[:2])
    assert "depth" not in str(refused.value)
    recipe = _quiet(pfa.make_recipe, model, stats, pfa.Footprint(0.25, metric="latency", timer=timer, depth=True),
                    example_inputs=x[:2])
    full = timer(model, None)
    summary = recipe.summary
    assert recipe.blocks and set(recipe.blocks) <= set(residual_blocks(model, x[:2]))
    assert summary["depth"]["achieved"] <= 0.5  # depth took at least its share: sqrt(0.25) of the time
    assert summary["depth"]["floor"] <= 0.75 * 0.25 or len(recipe.blocks) == summary["depth"]["candidates"]
    assert summary["measured_full_s"] == pytest.approx(full)  # the ratio is of the whole network's time
    assert summary["measured_s"] <= 0.25 * full * 1.05
    fresh = _resnet()
    pfa.apply_recipe(model, recipe, example_inputs=x[:2])
    assert timer(model, None) == pytest.approx(summary["measured_s"])
    assert not set(residual_blocks(model, x[:2])) & set(recipe.blocks)
    # the recipe is plain data: replayed on a freshly built network, it gives the same network
    replayed = pfa.Recipe.from_json(recipe.to_json())
    assert replayed.blocks == recipe.blocks
    pfa.apply_recipe(fresh, replayed, example_inputs=x[:2])
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(fresh(x[:4]), model(x[:4]))


@pytest.mark.parametrize("metric", ["params", "flops"])
def test_depth_works_for_counted_footprints_too(metric):
    model, x = _resnet(), _data()
    stats = _stats(model, x, blocks=True)
    full = pfa.count_params(model) if metric == "params" else pfa.count_flops(model, x[:1])
    recipe = _quiet(pfa.make_recipe, model, stats, pfa.Footprint(0.3, metric=metric, depth=True), example_inputs=x[:2])
    assert recipe.blocks and recipe.summary["depth"]["achieved"] <= 0.3 ** 0.5
    contributions = stats.block_contributions()  # those that change the stream least went, and not all
    kept = [c for b, c in contributions.items() if b not in recipe.blocks]
    assert kept and max(contributions[b] for b in recipe.blocks) <= min(kept)
    assert recipe.summary["full"] == full
    pfa.apply_recipe(model, recipe, example_inputs=x[:2])
    after = pfa.count_params(model) if metric == "params" else pfa.count_flops(model, x[:1])
    assert after <= 0.3 * full and after == recipe.summary["achieved"]


def test_removing_every_block_is_said():
    model, x = _resnet(), _data()
    stats = _stats(model, x, blocks=True)
    with pytest.warns(UserWarning, match=r"removes every residual block \(7 of 7\)"):
        recipe = pfa.make_recipe(model, stats, pfa.Footprint(0.05, metric="flops", depth=True), example_inputs=x[:2])
    assert len(recipe.blocks) == 7
    with warnings.catch_warnings(record=True) as said:  # an unreachable target: the error, no word of blocks removed
        warnings.simplefilter("always")
        with pytest.raises(PFAError, match="out of reach"):
            pfa.make_recipe(model, stats, pfa.Footprint(0.1, metric="latency", timer=OverheadTimer(), depth=True),
                            example_inputs=x[:2])
    assert not [w for w in said if "every residual block" in str(w.message)]


def test_depth_needs_the_blocks_measured():
    model, x = _resnet(), _data()
    with pytest.raises(PFAError, match="blocks"):
        pfa.collect_responses(model, [x], progress=False, blocks="yes")
    with pytest.raises(PFAError, match=r"blocks=True"):
        _quiet(pfa.make_recipe, model, _stats(model, x), pfa.Footprint(0.3, depth=True), example_inputs=x[:2])
    with pytest.raises(PFAError, match="depth"):
        pfa.Footprint(0.3, depth="yes")
    assert pfa.Footprint(0.3, depth=True).to_dict()["depth"] is True
    vgg = build("vgg16", num_classes=10, width=0.25).eval()  # no residual block: the widths alone, and a warning
    with pytest.warns(UserWarning, match="no residual block"):
        many = torch.randn(160, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # more samples than units
        recipe = pfa.make_recipe(vgg, _stats(vgg, many, blocks=True), pfa.Footprint(0.3, depth=True),
                                 example_inputs=x[:2])
    assert recipe.blocks == [] and recipe.summary["achieved_ratio"] <= 0.3
    with pytest.raises(PFAError, match="out of reach") as unreachable:  # no block to remove: no word of depth=True
        _quiet(pfa.make_recipe, vgg, _stats(vgg, many), pfa.Footprint(0.001), example_inputs=x[:2], min_units=8)
    assert "depth" not in str(unreachable.value)
    with pytest.raises(PFAError, match=r"out of reach.*, or depth=True \(residual blocks go too\)"):
        _quiet(pfa.make_recipe, model, _stats(model, x), pfa.Footprint(0.001), example_inputs=x[:2], min_units=8)
    assert "depth" not in pfa.Footprint(0.3).to_dict()


def test_a_recipe_that_does_not_fit_leaves_the_blocks_in_place():
    model, x = _resnet(), _data()
    stats = _stats(model, x, blocks=True)
    recipe = _quiet(pfa.make_recipe, model, stats, pfa.Footprint(0.3, depth=True), example_inputs=x[:2])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [type(m) for m in model.modules()]
    broken = pfa.Recipe.from_dict({**recipe.to_dict(), "layers": [
        {**recipe.layers[0].__dict__, "original": recipe.layers[0].original + 1}]})
    with pytest.raises(PFAError, match="does not fit"):
        pfa.apply_recipe(model, broken, example_inputs=x[:2])
    not_a_block = pfa.Recipe.from_dict({**recipe.to_dict(), "blocks": ["layer2.0"]})  # a projection shortcut
    with pytest.raises(PFAError, match="layer2.0"):
        pfa.apply_recipe(model, not_a_block, example_inputs=x[:2])
    assert [type(m) for m in model.modules()] == modules
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(PFAError, match="blocks"):
        pfa.Recipe.from_dict({**recipe.to_dict(), "blocks": "layer1.0"})


def test_removing_blocks_by_name_refuses_an_unknown_one_before_changing_anything():
    model = _resnet()
    with pytest.raises(PFAError, match="layer9"):
        remove_blocks(model, ["layer1.1", "layer9"])
    assert isinstance(model.layer1[1], type(model.layer1[0]))


@pytest.mark.parametrize("format", ["onnx", "torchscript", "exported-program"])
def test_a_network_without_blocks_exports_and_matches(tmp_path, format):
    if format == "onnx":
        pytest.importorskip("onnxruntime")
    from pfa_lightning.export import export_model

    model, x = _resnet(), _data()
    recipe = _quiet(pfa.make_recipe, model, _stats(model, x, blocks=True), pfa.Footprint(0.3, depth=True),
                    example_inputs=x[:2])
    pfa.apply_recipe(model, recipe, example_inputs=x[:2])
    report = export_model(model, x[:2], tmp_path / f"cut.{format}", format=format)  # checks outputs against torch
    assert recipe.blocks and report.params == pfa.count_params(model)


class Writes(nn.Module):  # the branch writes its input in place: removing it would not leave what it read
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return x + self.conv(F.relu(x, inplace=True))


class InplacePost(nn.Module):  # torchvision's style: ReLU(inplace=True) after the addition
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu = nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(x + self.conv(x))


class ModeInPost(nn.Module):  # post reads the training flag: tracing would freeze it
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return F.dropout(x + self.conv(x), 0.5, self.training)


class Scaled(nn.Module):  # ConvNeXt's style: a parameter read by get_attr in the branch
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.gamma = nn.Parameter(torch.ones(4, 1, 1))

    def forward(self, x):
        return x + self.gamma * self.conv(x)


def test_what_a_removed_block_leaves_never_writes_its_input_nor_keeps_the_branch():
    x = torch.randn(2, 4, 8, 8)
    with pytest.raises(PFAError, match="not a residual block"):
        skipped(Writes())
    with pytest.raises(PFAError, match="not a residual block"):
        skipped(ModeInPost())
    block = InplacePost()
    gone, before = skipped(block), x.clone()
    assert torch.equal(gone(x), F.relu(before)) and torch.equal(x, before)  # x itself untouched
    assert block.relu.inplace  # the block's own modules are not changed
    assert sum(p.numel() for p in skipped(Scaled()).parameters()) == 0  # gamma went with the branch


def test_nested_or_repeated_blocks_in_a_recipe_are_refused_and_nothing_changes():
    model = _resnet()
    for names in (["layer1.1", "layer1.1"], ["layer1", "layer1.1"]):
        with pytest.raises(PFAError, match="outermost"):
            remove_blocks(model, names)
    assert not any(is_removed(m) for m in model.modules())


def test_the_ranks_digest_tells_recipes_apart_by_their_blocks():
    from pfa_lightning.callback.distributed import decision_digest

    recipe = pfa.Recipe([], blocks=["layer1.1"])
    assert decision_digest(recipe) != decision_digest(pfa.Recipe([], blocks=["layer1.2"]))
