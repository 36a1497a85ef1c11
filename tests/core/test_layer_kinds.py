"""Layer kinds in one registry: a user's own layer type compressed through ``pfa.register_layer``, and
attention heads cut whole (timm's ViT) through the attention kinds."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import pfa_lightning as pfa
from pfa_lightning.errors import PFAError
from pfa_lightning.layers import layer_kind, unit_count
from pfa_lightning.selection import select_units
from pfa_lightning.spectrum import Spectrum


class MyLinear(nn.Module):
    """A user's own dense layer: not an nn.Linear, so neither PFA nor Torch-Pruning knows it."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.in_features, self.out_features = n_in, n_out
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / math.sqrt(n_in))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(MyLinear(6, 24), nn.ReLU(), MyLinear(24, 24), nn.ReLU(), MyLinear(24, 3))


def _redundant_batches(n: int = 600) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(n, 2, generator=g)
    x = torch.cat([base, base @ torch.randn(2, 4, generator=g)], 1)  # 6 inputs spanning 2 directions
    return list(x.split(100))


@pytest.fixture
def my_linear_registered():
    kind = pfa.register_layer(MyLinear, unit_dim=-1, out_attr="out_features", in_attr="in_features")
    yield kind
    pfa.unregister_layer(MyLinear)


def test_a_registered_layer_kind_is_analysed_and_cut(my_linear_registered):
    model = _mlp()
    data = _redundant_batches()
    x = data[0][:4]
    before = model(x).shape
    stats = pfa.collect_responses(model, data, progress=False)
    assert set(stats.keys()) == {"0", "2"}  # the last layer reaches the output
    recipe = pfa.make_recipe(model, stats, pfa.KL(), example_inputs=x)
    pfa.apply_recipe(model, recipe, example_inputs=x)
    assert model[0].out_features == model[0].weight.shape[0] == recipe["0"].kept < 24
    assert model[2].in_features == model[2].weight.shape[1] == recipe["0"].kept  # its consumer shrank with it
    assert model[2].bias.shape == (recipe["2"].kept,)
    y = model(x)
    assert y.shape == before and torch.isfinite(y).all()
    # the kind answers for the width and the weights of the selections
    assert unit_count(model[0]) == recipe["0"].kept
    assert layer_kind(model[0]) is my_linear_registered


def test_an_unregistered_layer_type_is_left_alone():
    model = _mlp()
    data = _redundant_batches()
    with pytest.raises(PFAError, match="no prunable layer|No analysable|prunable"):
        pfa.collect_responses(model, data, progress=False)


def test_weight_selection_reads_a_registered_kinds_weights(my_linear_registered):
    model = _mlp()
    data = _redundant_batches()
    x = data[0][:4]
    with torch.no_grad():
        model[0].weight[5:].mul_(1e-3)  # units 0-4 carry the largest filters
    stats = pfa.collect_responses(model, data, progress=False, layers=["0"])
    recipe = pfa.make_recipe(model, stats, pfa.Uniform(5 / 24), example_inputs=x, selection="weight_l1")
    assert recipe["0"].kept_indices == [0, 1, 2, 3, 4]


def test_registration_errors_name_the_value():
    with pytest.raises(PFAError, match="built in"):
        pfa.register_layer(nn.Linear)
    with pytest.raises(PFAError, match="unit_dim must be 1 .* or -1"):
        pfa.register_layer(MyLinear, unit_dim=2)
    with pytest.raises(PFAError, match="nn.Module subclass"):
        pfa.register_layer(int)
    with pytest.raises(PFAError, match="Torch-Pruning pruner"):
        pfa.register_layer(MyLinear, pruner=object())
    assert layer_kind(MyLinear(2, 2)) is None  # nothing was left registered by the refusals


def test_block_selection_keeps_whole_blocks_deterministically():
    rng = np.random.default_rng(0)
    cov = np.cov(rng.standard_normal((200, 12)), rowvar=False)
    spectrum = Spectrum("attn", cov, 200)
    weights = [torch.tensor([[1.0]] * 4 + [[9.0]] * 4 + [[5.0]] * 4)]  # block 1 strongest, then block 2
    kept = select_units(spectrum, 8, "weight_l1", weights, block=4)
    assert kept.tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    tied = [torch.ones(12, 1)]  # every unit alike: ties go to the lower blocks
    assert select_units(spectrum, 4, "weight_l1", tied, block=4).tolist() == [0, 1, 2, 3]
    with pytest.raises(PFAError, match="whole blocks of 4"):
        select_units(spectrum, 6, "weight_l1", weights, block=4)


# -- attention heads ------------------------------------------------------------------------------
def _vit_tiny():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=4,
                             depth=3).eval()


def test_timm_vit_tiny_reaches_055_of_its_parameters_with_heads_cut():
    model = _vit_tiny()
    x = torch.randn(800, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    heads = [b.attn.num_heads for b in model.blocks]
    full = pfa.count_params(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = pfa.collect_responses(model, list(x.split(200)), progress=False)
        recipe = pfa.make_recipe(model, stats, pfa.Footprint(0.5), example_inputs=x[:2], progress=False)
    assert all(f"blocks.{i}.attn" in stats for i in range(3))  # each attention module's heads are analysed
    pfa.apply_recipe(model, recipe, example_inputs=x[:2])
    assert pfa.count_params(model) / full <= 0.55
    after = [b.attn.num_heads for b in model.blocks]
    assert sum(after) < sum(heads)  # heads were cut...
    for block in model.blocks:  # ...whole: every module agrees on the heads left
        attn = block.attn
        assert attn.qkv.out_features == 3 * attn.num_heads * attn.head_dim == 3 * attn.attn_dim
        assert attn.proj.in_features == attn.attn_dim
    y = model(x[:2])
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    # replayed on a freshly built model (what load_compressed does), the weights load
    fresh = _vit_tiny()
    pfa.apply_recipe(fresh, pfa.Recipe.from_dict(recipe.to_dict()), example_inputs=x[:2])
    fresh.load_state_dict(model.state_dict())
    assert torch.allclose(fresh(x[:2]), y)


def test_cutting_a_head_whose_projection_reads_nothing_changes_no_output():
    model = _vit_tiny()
    attn = model.blocks[1].attn
    d = attn.head_dim
    with torch.no_grad():
        attn.proj.weight[:, d:2 * d] = 0  # head 1 contributes nothing
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = model(x)
    keep = [u for u in range(attn.attn_dim) if not d <= u < 2 * d]
    recipe = pfa.Recipe([pfa.LayerRecipe("blocks.1.attn", attn.attn_dim, keep, "blocks.1.attn")])
    pfa.apply_recipe(model, recipe, example_inputs=x[:2])
    assert model.blocks[1].attn.num_heads == 2
    assert torch.allclose(model(x), y, atol=1e-5)


def test_a_cut_that_splits_a_head_is_refused_and_the_model_left_whole():
    model = _vit_tiny()
    attn = model.blocks[0].attn
    x = torch.randn(2, 3, 32, 32)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = pfa.Recipe([pfa.LayerRecipe("blocks.0.attn", attn.attn_dim, list(range(attn.attn_dim - 1)),
                                         "blocks.0.attn")])
    with pytest.raises(PFAError, match="whole heads"):
        pfa.apply_recipe(model, recipe, example_inputs=x)
    assert model.blocks[0].attn.num_heads == 3
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def _torchvision_vit():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=256,
                             num_classes=10).eval()


def test_torchvision_small_vit_reaches_055_of_its_parameters_with_heads_cut():
    model = _torchvision_vit()
    x = torch.randn(800, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    full = pfa.count_params(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the residual stream is left whole (a reshape hard-codes hidden_dim)
        stats = pfa.collect_responses(model, list(x.split(200)), progress=False)
        recipe = pfa.make_recipe(model, stats, pfa.Footprint(0.5), example_inputs=x[:2], progress=False)
    names = [f"encoder.layers.encoder_layer_{i}.self_attention" for i in range(2)]
    assert all(n in stats for n in names)
    pfa.apply_recipe(model, recipe, example_inputs=x[:2])
    assert pfa.count_params(model) / full <= 0.55
    attentions = [model.get_submodule(n) for n in names]
    assert sum(a.num_heads for a in attentions) < 8
    assert all(a.in_proj_weight.shape[0] == 3 * a.num_heads * a.head_dim == 3 * a.out_proj.in_features
               for a in attentions)
    y = model(x[:2])
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    model.train()  # and it trains
    model(x[:4]).sum().backward()
    assert all(a.in_proj_weight.grad is not None for a in attentions)
    fresh = _torchvision_vit()
    pfa.apply_recipe(fresh, pfa.Recipe.from_dict(recipe.to_dict()), example_inputs=x[:2])
    fresh.load_state_dict(model.state_dict())
    assert torch.allclose(fresh.eval()(x[:2]), model.eval()(x[:2]))


@pytest.mark.parametrize("batch_first", [True, False])
def test_pruned_multihead_attention_computes_what_torch_does(batch_first):
    from pfa_lightning.heads import PrunedMultiheadAttention

    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, dropout=0.0, batch_first=batch_first).eval()
    ours = __import__("copy").deepcopy(mha)
    ours.__class__ = PrunedMultiheadAttention
    q = torch.randn(3, 5, 32) if batch_first else torch.randn(5, 3, 32)
    kv = torch.randn(3, 7, 32) if batch_first else torch.randn(7, 3, 32)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[0, -2:] = True
    causal = torch.ones(5, 7, dtype=torch.bool).triu(1)
    for kwargs in ({}, {"key_padding_mask": padding}, {"attn_mask": causal}, {"need_weights": False},
                   {"average_attn_weights": False}):
        want, want_w = mha(q, kv, kv, **kwargs)
        got, got_w = ours(q, kv, kv, **kwargs)
        assert torch.allclose(got, want, atol=1e-5), kwargs
        assert (got_w is None) == (want_w is None) and (got_w is None or torch.allclose(got_w, want_w, atol=1e-5))


def test_cutting_a_silent_multihead_attention_head_changes_no_output():
    model = _torchvision_vit()
    name = "encoder.layers.encoder_layer_0.self_attention"
    attn = model.get_submodule(name)
    d = attn.head_dim
    with torch.no_grad():
        attn.out_proj.weight[:, 2 * d:3 * d] = 0  # head 2 contributes nothing
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = model(x)
    keep = [u for u in range(64) if not 2 * d <= u < 3 * d]
    pfa.apply_recipe(model, pfa.Recipe([pfa.LayerRecipe(name, 64, keep, name)]), example_inputs=x[:2])
    assert model.get_submodule(name).num_heads == 3
    assert torch.allclose(model(x), y, atol=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_vit_with_heads_cut_exports_and_matches(tmp_path, fmt):
    """PrunedMultiheadAttention is plain tensor code: ONNX and TorchScript files compute what PyTorch does."""
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    from pfa_lightning.export import export_model

    model = _torchvision_vit()
    name = "encoder.layers.encoder_layer_1.self_attention"
    keep = list(range(32))  # heads 0 and 1 of 4
    x = torch.randn(2, 3, 32, 32)
    pfa.apply_recipe(model, pfa.Recipe([pfa.LayerRecipe(name, 64, keep, name)]), example_inputs=x)
    report = export_model(model, x, tmp_path / f"vit.{'onnx' if fmt == 'onnx' else 'pt'}", format=fmt)
    assert report.max_abs_diff < 1e-4


def test_a_transformer_encoder_with_an_even_number_of_heads_left_runs_its_own_forward():
    """nn.TransformerEncoderLayer's fused fast path (eval, no grad, even heads) would read the cut weights itself:
    a cut module turns it off, and a later compression still finds its heads."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.TransformerEncoder(
        nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True), 1, enable_nested_tensor=False)).eval()
    attn = model[0].layers[0].self_attn
    with torch.no_grad():
        attn.out_proj.weight[:, 16:] = 0  # heads 2 and 3 contribute nothing
    x = torch.randn(3, 5, 32)
    with torch.no_grad():
        y = model(x)
    name = "0.layers.0.self_attn"
    pfa.apply_recipe(model, pfa.Recipe([pfa.LayerRecipe(name, 32, list(range(16)), name)]), example_inputs=x[:2])
    assert model.get_submodule(name).num_heads == 2
    with torch.no_grad():
        assert torch.allclose(model(x), y, atol=1e-5)
    from pfa_lightning.graph import ModelGraph

    assert any(s.root == name and s.heads and s.width == 16 for s in ModelGraph(model, x[:2]).spaces)
