"""BatchNorm recalibration: the running statistics torch's update_bn computes, all or nothing."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, TensorDataset

import pfa_lightning as pfa
from pfa_lightning.models import build


def test_recalibration_equals_update_bn_and_keeps_flags_and_momentum():
    torch.manual_seed(0)
    model = build("vgg11", width=0.125, input_size=32)
    model.train()
    model.classifier[3].eval()  # a mixed state survives
    loader = DataLoader(TensorDataset(torch.randn(80, 3, 32, 32), torch.zeros(80)), batch_size=16)
    reference = copy.deepcopy(model)
    update_bn(([x] for x, _ in loader), reference)
    assert pfa.recalibrate_batchnorm(model, loader, max_samples=None) == 80
    for ours, theirs in zip(pfa_norms(model), pfa_norms(reference)):
        torch.testing.assert_close(ours.running_mean, theirs.running_mean)
        torch.testing.assert_close(ours.running_var, theirs.running_var)
        assert ours.momentum == 0.1
    assert model.training and not model.classifier[3].training


def test_recalibration_stops_at_max_samples():
    model = build("resnet20", width=0.25)
    x = torch.randn(64, 3, 16, 16)
    first = copy.deepcopy(model)
    pfa.recalibrate_batchnorm(first, [x[:16], x[16:24]], max_samples=None)  # what the limit leaves
    assert pfa.recalibrate_batchnorm(model, [x[:16], x[16:48]], max_samples=24) == 24
    torch.testing.assert_close(model.bn1.running_mean, first.bn1.running_mean)


def test_empty_data_changes_nothing():
    model = build("resnet20", width=0.25)
    with torch.no_grad():
        model.bn1.running_mean.fill_(3.0)
    with pytest.raises(pfa.PFAError, match="recalibration data is empty"):
        pfa.recalibrate_batchnorm(model, [])
    assert torch.all(model.bn1.running_mean == 3.0)
    assert pfa.recalibrate_batchnorm(torch.nn.Linear(3, 2), [torch.randn(4, 3)]) == 0  # no BatchNorm: nothing to do


def pfa_norms(model):
    from pfa_lightning.recalibration import batchnorm_layers

    return batchnorm_layers(model)
