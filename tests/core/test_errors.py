"""Every error a user can cause in the core: one clear message naming the value and what is allowed."""

import pytest
import torch
from torch import nn

import pfa_lightning as pfa
from pfa_lightning.models import build


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build("simplecnn", width=0.125, num_classes=3)
    x = torch.rand(4, 3, 32, 32)
    stats = pfa.collect_responses(model, [torch.rand(64, 3, 32, 32)], progress=False)
    return model, x, stats


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: pfa.Energy(0), r"`threshold` must be a number in \(0, 1\], got 0"),
        (lambda: pfa.Energy(1.5), r"`threshold` must be a number in \(0, 1\], got 1.5"),
        (lambda: pfa.Energy("0.9"), r"`threshold` must be a number in \(0, 1\], got '0.9'"),
        (lambda: pfa.Footprint(0.0), r"`ratio` must be a number in \(0, 1\], got 0.0"),
        (lambda: pfa.Footprint(-1), r"`ratio` must be a number in \(0, 1\], got -1"),
        (lambda: pfa.Footprint(0.5, metric="bytes"), r"`metric` must be one of \('params', 'flops', 'latency'\), got 'bytes'"),
        (lambda: pfa.resolve_strategy("pca"), r"`strategy` must be one of \('kl', 'energy', 'footprint', 'uniform'.*\) or a Strategy instance, got 'pca'"),
        (lambda: pfa.resolve_strategy("kl", threshold=0.9), r"Strategy 'kl' takes no options, got unexpected \['threshold'\]"),
        (lambda: pfa.resolve_strategy("energy", threshold=2), r"`threshold` must be a number in \(0, 1\], got 2"),
        (lambda: pfa.resolve_strategy("kl", depth=True), r"Strategy 'kl' takes no options, got unexpected \['depth'\]"),
        (lambda: pfa.Footprint(0.5, runtime="onnxruntime"),
         r"runtime only applies to metric='latency' \(a time is measured\), not to metric='params'.*leave it out"),
        (lambda: pfa.Footprint(0.5, "flops", batch_size=8, timer=lambda m, x: 1.0),
         r"batch_size, timer only apply to metric='latency'.*not to metric='flops'"),
        (lambda: pfa.Uniform(0.5, timer=lambda m, x: 1.0), r"timer only applies to metric='latency'.*metric='units'"),
        (lambda: build("vgg17"), r"`name` must be one of \('vgg11', 'vgg13', 'vgg16', 'vgg19', 'resnet20'.*got 'vgg17'"),
        (lambda: build("vgg11", width=0), r"`width` must be a number > 0, got 0"),
        (lambda: build("resnet20", num_classes=0), r"`num_classes` must be an integer >= 1, got 0"),
        (lambda: pfa.Recipe.from_dict({"foo": 1}), r"Not a PFA recipe"),
        (lambda: pfa.Recipe.from_dict({"version": 9, "layers": []}), r"Unsupported recipe version 9"),
        (lambda: pfa.Recipe.from_dict({"layers": [{"name": "a"}]}), r"Malformed recipe layer entry"),
    ],
)
def test_bad_values(make, match):
    with pytest.raises(pfa.PFAError, match=match):
        make()


def test_a_feature_a_strategy_lacks_may_be_turned_off_and_latency_options_at_their_defaults_pass():
    assert pfa.resolve_strategy("kl", depth=False) == pfa.KL() == pfa.resolve_strategy(pfa.KL(), depth=False)
    with pytest.raises(pfa.PFAError, match=r"Options \['depth'\] only apply to a strategy given by name"):
        pfa.resolve_strategy(pfa.Footprint(0.3, depth=True), depth=False)  # an instance's own choice is not overridden
    assert pfa.resolve_strategy("energy", threshold=0.9, depth=False) == pfa.Energy(0.9)
    assert pfa.Footprint(0.5, "flops", runtime="torch", batch_size=1).metric == "flops"  # a config's defaults
    assert pfa.Footprint(0.5, "latency", runtime="onnxruntime", batch_size=8).batch_size == 8


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"selection": "magnitude"}, r"`selection` must be one of \('abs_max', 'l1_max', 'max_energy', 'weight_l1', 'random', 'per_space'\) or a selection callable.*got 'magnitude'"),
        ({"min_units": 0}, r"`min_units` must be an integer >= 1, got 0"),
        ({"coupled": "merge"}, r"`coupled` must be one of \('joint', 'skip'\), got 'merge'"),
        ({"strategy": "svd"}, r"`strategy` must be one of .*got 'svd'"),
        ({"strategy": pfa.Footprint(0.001)}, r"Footprint ratio 0.001 \(params\) is out of reach"),
    ],
)
def test_bad_recipe_options(tiny, kwargs, match):
    model, x, stats = tiny
    kwargs = {"strategy": pfa.KL(), **kwargs}
    with pytest.raises(pfa.PFAError, match=match):
        pfa.make_recipe(model, stats, kwargs.pop("strategy"), example_inputs=x, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"pooling": "median"}, r"`pooling` must be one of \('max', 'avg'\), got 'median'"),
        ({"max_samples": 1}, r"`max_samples` must be an integer >= 2 or None.*got 1"),
        ({"layers": ["features.99"]}, r"`layers` entry 'features.99' matches no prunable layer; prunable layers are: features.0"),
        ({"exclude": ["features.*", "classifier.*"]}, r"leave no layer to analyse"),
    ],
)
def test_bad_collection_options(tiny, kwargs, match):
    model, _, _ = tiny
    with pytest.raises(pfa.PFAError, match=match):
        pfa.collect_responses(model, [torch.rand(8, 3, 32, 32)], progress=False, **kwargs)


def test_layer_patterns_select_layers(tiny):
    model, _, _ = tiny
    stats = pfa.collect_responses(model, [torch.rand(8, 3, 32, 32)], layers=["features.*"], exclude=["features.0"],
                                  progress=False)
    assert sorted(stats) == ["features.10", "features.3", "features.7"]


def test_model_without_prunable_layer_and_empty_data():
    with pytest.raises(pfa.PFAError, match=r"Sequential has no prunable layer"):
        pfa.collect_responses(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), [torch.rand(4, 3, 2, 2)], progress=False)
    with pytest.raises(pfa.PFAError, match=r"dataloader is empty"):
        pfa.collect_responses(build("resnet20", width=0.25), [], progress=False)
    with pytest.raises(pfa.PFAError, match=r"gave 1 sample\(s\); PFA needs at least 2"):
        pfa.collect_responses(build("resnet20", width=0.25), [torch.rand(1, 3, 32, 32)], progress=False)
    with pytest.raises(pfa.PFAError, match=r"Cannot find the model input in a batch of type str"):
        pfa.collect_responses(build("resnet20", width=0.25), ["not a batch"], progress=False)


def test_recipe_that_does_not_fit(tiny):
    model, x, stats = tiny
    recipe = pfa.make_recipe(model, stats, pfa.Energy(0.6), example_inputs=x)
    other = build("resnet20", width=0.25)
    with pytest.raises(pfa.PFAError, match=r"Recipe does not fit the model: it has no layer 'features.0'"):
        pfa.apply_recipe(other, recipe, example_inputs=x)
    wider = build("simplecnn", width=0.25, num_classes=3)
    with pytest.raises(pfa.PFAError, match=r"layer 'features.0' has 8 units, the recipe expects 4"):
        pfa.apply_recipe(wider, recipe, example_inputs=x)
    bad = pfa.Recipe.from_dict(recipe.to_dict())
    bad.layers[0].kept_indices = [3, 1]
    with pytest.raises(pfa.PFAError, match=r"kept_indices must be a non-empty ascending list"):
        pfa.apply_recipe(model, bad, example_inputs=x)
    with pytest.raises(pfa.PFAError, match=r"'classifier.4' is not a prunable layer"):
        fake = pfa.Recipe.from_dict(recipe.to_dict())
        fake.layers[0].name = "classifier.4"
        fake.layers[0].original = 3
        fake.layers[0].kept_indices = [0]
        pfa.apply_recipe(model, fake, example_inputs=x)
    with pytest.raises(pfa.PFAError, match=r"statistics were collected on a different model"):
        pfa.make_recipe(wider, stats, pfa.KL(), example_inputs=x)


def test_coupled_layers_must_agree():
    model = build("resnet20", width=0.25)
    x = torch.rand(4, 3, 32, 32)
    stats = pfa.collect_responses(model, [torch.rand(48, 3, 32, 32)], progress=False)
    recipe = pfa.make_recipe(model, stats, pfa.Energy(0.5), example_inputs=x)
    broken = pfa.Recipe.from_dict(recipe.to_dict())
    broken.layers = [l for l in broken.layers if l.name != "layer2.0.shortcut.0"]
    with pytest.raises(pfa.PFAError, match=r"'layer2.0.shortcut.0' shares its channels with"):
        pfa.apply_recipe(model, broken, example_inputs=x)


def test_inputs_that_do_not_fit_the_model_are_named_not_left_to_torch():
    model = build("simplecnn", width=0.25, in_channels=1, num_classes=10).train()
    x = torch.randn(8, 1, 32, 32)
    with pytest.raises(pfa.PFAError, match=r"`dataloader` must be an iterable of batches .* got a Tensor of shape "
                                           r"\(8, 1, 32, 32\): pass \[x\] for one batch"):
        pfa.collect_responses(model, x, progress=False)
    with pytest.raises(pfa.PFAError, match=r"SimpleCNN fails on the inputs it was given \(shapes \(4, 3, 32, 32\)\): "
                                           r"Given groups=1.*Give inputs shaped as its training batches"):
        pfa.collect_responses(model, [torch.zeros(4, 3, 32, 32)], progress=False)
    stats = pfa.collect_responses(model, [x], progress=False)
    with pytest.raises(pfa.PFAError, match=r"SimpleCNN fails on the inputs it was given \(shapes \(2, 1, 8, 8\)\)"):
        pfa.make_recipe(model, stats, pfa.KL(), example_inputs=torch.zeros(2, 1, 8, 8))
    assert not any(m._forward_hooks for m in model.modules())  # nothing the failed traces hooked is left behind

    class Broken(nn.Module):  # a bug in the model, not the inputs: its own traceback
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            raise RuntimeError("something went wrong inside")

    with pytest.raises(RuntimeError, match="something went wrong inside"):
        pfa.collect_responses(Broken(), [x], progress=False)
    assert model.training and all(m.training for m in model.modules())  # the check left the modes as they were
