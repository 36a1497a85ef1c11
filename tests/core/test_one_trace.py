"""One trace serves every trial cut: ``ModelGraph.trial`` cuts and restores the model and the graph's own
records of its shapes, so a footprint probe or the search for cuts that break a model need one trace."""

from __future__ import annotations

import contextlib
import copy
import random
import warnings

import pytest
import torch
from torchvision import models

import pfa_lightning as pfa
from pfa_lightning import graph as graph_module
from pfa_lightning.footprint import FootprintProbe, measure
from pfa_lightning.graph import ModelGraph, module_width
from pfa_lightning.models import build


def _fresh_cut(probe: FootprintProbe, keep: dict[str, int], metric: str) -> int:
    model = copy.deepcopy(probe.template)
    g = ModelGraph(model, probe.inputs)
    widths = {r: module_width(model.get_submodule(r)) for r in keep}
    g.prune({r: range(k, widths[r]) for r, k in keep.items() if k < widths[r]})
    return measure(model, probe.inputs, metric)


# concatenations, sums, SE gates, unwrapped parameters (ConvNeXt's layer scale: a cut re-keys Torch-Pruning's graph)
@pytest.mark.parametrize("name", ["densenet121", "resnet18", "mobilenet_v3_small", "convnext_tiny"])
def test_a_reused_graph_measures_what_fresh_cuts_measure(name):
    model = getattr(models, name)(weights=None).eval()
    x = torch.randn(1, 3, 32, 32)
    for metric in ("params", "flops"):
        probe = FootprintProbe(model, x, metric)
        spaces = [s for s in probe.graph.spaces if not s.reaches_output]
        rng = random.Random(0)
        for _ in range(4):
            keep = {}
            for space in rng.sample(spaces, min(len(spaces), 10)):
                step = space.step()
                keep[space.root] = max(step, rng.randint(1, space.width) // step * step)
            assert probe(keep) == _fresh_cut(probe, keep, metric)
        assert measure(probe.template, probe.inputs, metric) == probe.full  # restored after every query


def test_a_trial_restores_the_model_exactly():
    model = models.densenet121(weights=None).eval()
    x = torch.randn(2, 3, 32, 32)
    y = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    g = ModelGraph(model, x)
    space = next(s for s in g.spaces if not s.reaches_output and s.width > 8)
    with g.trial({space.root: range(4)}):
        assert module_width(model.get_submodule(space.root)) == space.width - 4
    assert module_width(model.get_submodule(space.root)) == space.width
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in state.items()}
    assert torch.equal(model(x), y)
    g.prune({space.root: range(4)})  # and the graph still cuts for real afterwards
    assert module_width(model.get_submodule(space.root)) == space.width - 4
    assert model(x).shape == y.shape


@pytest.mark.parametrize("shared", [False, True])
def test_a_compression_traces_the_model_a_fixed_number_of_times(monkeypatch, shared):
    """Alone, collect_responses, make_recipe and apply_recipe trace the model once each, and the footprint probe
    its weightless copy once (not once per query or per trial cut); within pfa.one_trace() the three share one."""
    torch.manual_seed(0)
    model = build("resnet20", num_classes=10, in_channels=3).eval()
    x = torch.randn(160, 3, 32, 32)
    builds = []
    original = graph_module.ModelGraph.__init__

    def counted(self, *args, **kwargs):
        builds.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(graph_module.ModelGraph, "__init__", counted)
    with warnings.catch_warnings(), (pfa.one_trace() if shared else contextlib.nullcontext()):
        warnings.simplefilter("ignore")
        stats = pfa.collect_responses(model, [x], progress=False)
        recipe = pfa.make_recipe(model, stats, pfa.Footprint(0.5), example_inputs=x[:2])
        pfa.apply_recipe(model, recipe, example_inputs=x[:2])
        assert len(builds) == (2 if shared else 4)
        again = pfa.collect_responses(model, [x], progress=False)  # the cut model: traced anew
    assert len(builds) == (3 if shared else 5)
    assert again["layer1.0.conv1"].units == recipe["layer1.0.conv1"].kept
