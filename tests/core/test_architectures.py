"""Architectures beyond VGG/ResNet: what is not supported is refused before any change with one
PFAError naming the layer, never an arithmetic crash inside Torch-Pruning."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import shufflenet_v2_x0_5

import pfa_lightning as pfa


def test_channel_shuffle_is_refused_with_one_clear_error_naming_a_layer():
    torch.manual_seed(0)
    model = shufflenet_v2_x0_5(num_classes=10).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 3, 32, 32)
    with pytest.raises(pfa.PFAError, match=r"ShuffleNetV2 .*reads layer 'stage\d\.\d+\.branch\d\.\d+'.*channel shuffle"):
        pfa.collect_responses(model, [x], progress=False)
    with pytest.raises(pfa.PFAError, match="ZeroDivisionError"):  # the cause, for a bug report
        pfa.make_recipe(model, pfa.ResponseStats({}), pfa.Uniform(0.5), example_inputs=x[:2])
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
