"""Today's architectures, compressed rather than skipped: torchvision's and timm's models (random
weights, no download) reach ``Footprint(0.5, metric="params")``, keep their output shape and run.

Each model gets a few more random samples than its widest layer has units (a space with no more
samples than units is kept whole), at the smallest input size it accepts.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision.models as tvm
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

import pfa_lightning as pfa
from pfa_lightning.graph import PRUNABLE_TYPES, module_width

TORCHVISION = {
    "resnext_small": (lambda: ResNet(Bottleneck, [1, 1, 1, 1], groups=4, width_per_group=8, num_classes=10), 32),
    "regnet_x_400mf": (lambda: tvm.regnet_x_400mf(num_classes=10), 32),
    "convnext_tiny": (lambda: tvm.convnext_tiny(num_classes=10), 32),
    "vit_small": (lambda: VisionTransformer(image_size=32, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32,
                                            mlp_dim=128, num_classes=10), 32),
    "efficientnet_b0": (lambda: tvm.efficientnet_b0(num_classes=10), 32),
    "mobilenet_v3_small": (lambda: tvm.mobilenet_v3_small(num_classes=10), 32),
    "googlenet": (lambda: tvm.googlenet(num_classes=10, aux_logits=False, init_weights=False), 32),
    "squeezenet1_1": (lambda: tvm.squeezenet1_1(num_classes=10), 32),
    "shufflenet_v2_x0_5": (lambda: tvm.shufflenet_v2_x0_5(num_classes=10), 32),
    # swin_t's layout (depths, heads, 7x7 windows) at a quarter of its width: swin_t itself needs 3,088
    # samples for its widest MLP and ~2 minutes here (it reaches 0.49999 too; see BENCHMARKS.md)
    "swin_t_quarter": (lambda: SwinTransformer(patch_size=[4, 4], embed_dim=24, depths=[2, 2, 6, 2],
                                               num_heads=[3, 6, 12, 24], window_size=[7, 7], num_classes=10), 32),
}
TIMM = {  # name: input size
    "convnext_atto": 32,
    "vit_tiny_patch16_224": 32,
    "regnetx_002": 32,
    "mobilenetv3_small_050": 32,
    "resnext26ts": 32,
}


def _timm(name: str, size: int):
    timm = pytest.importorskip("timm")
    kwargs = {"img_size": size, "patch_size": 4, "depth": 3} if name.startswith("vit") else {}
    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)


def _compress(model: torch.nn.Module, size: int) -> tuple[torch.nn.Module, float, dict]:
    torch.manual_seed(0)
    model = model.eval()
    widest = max(module_width(m) for m in model.modules() if isinstance(m, PRUNABLE_TYPES))
    x = torch.randn(widest + 16, 3, size, size, generator=torch.Generator().manual_seed(0))
    data = [x[i:i + 128] for i in range(0, len(x), 128)]
    full = pfa.count_params(model)
    before = {n: m.weight.numel() for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    shape = model(x[:2]).shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. attention widths left whole
        stats = pfa.collect_responses(model, data, progress=False)
        recipe = pfa.make_recipe(model, stats, pfa.Footprint(0.5, metric="params"), example_inputs=x[:2])
    pfa.apply_recipe(model, recipe, example_inputs=x[:2])
    after = {n: m.weight.numel() for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    with torch.no_grad():
        y = model(x[:2])
    assert y.shape == shape and torch.isfinite(y).all()
    return model, pfa.count_params(model) / full, {n: after[n] / before[n] for n in before}


def _mlp_shrank(ratios: dict, pattern: str) -> bool:
    return any(pattern in name and r < 1 for name, r in ratios.items())


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_models_reach_half_their_parameters(name):
    build, size = TORCHVISION[name]
    _, ratio, layers = _compress(build(), size)
    assert 0.4 < ratio <= 0.5
    if name == "vit_small":  # the MLPs shrink; the residual stream (a reshape hard-codes hidden_dim) stays whole
        assert _mlp_shrank(layers, "mlp.0") and layers["conv_proj"] == 1
    if name == "convnext_tiny":  # the pointwise MLP on channels-last tensors shrinks
        assert _mlp_shrank(layers, "block.3")
    if name == "swin_t_quarter":  # the MLPs shrink around shifted-window attention
        assert _mlp_shrank(layers, "mlp.0")
    if name == "shufflenet_v2_x0_5":  # inside the branches, between the channel shuffles
        assert _mlp_shrank(layers, "branch2.0")


@pytest.mark.parametrize("name", list(TIMM))
def test_timm_models_reach_half_their_parameters(name):
    _, ratio, layers = _compress(_timm(name, TIMM[name]), TIMM[name])
    assert 0.4 < ratio <= 0.5
    if name.startswith("vit"):
        assert _mlp_shrank(layers, "mlp.fc1")
    if name.startswith("convnext"):
        assert _mlp_shrank(layers, "mlp.fc1")
