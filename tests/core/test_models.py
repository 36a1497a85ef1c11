"""The reference models: sizes of the paper's architectures and the options tests rely on."""

import pytest
import torch

from pfa_lightning.models import MODEL_NAMES, build
from pfa_lightning import count_params


def test_paper_sizes():
    assert 14.5e6 < count_params(build("vgg16")) < 15.5e6  # "VGG-16 about 15M parameters for 10 classes"
    assert 0.8e6 < count_params(build("resnet56")) < 0.9e6
    assert 0.25e6 < count_params(build("resnet20")) < 0.3e6


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_builds_tiny_and_runs(name):
    model = build(name, num_classes=5, in_channels=1, width=0.125)
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 5)


def test_resnet_stages_have_16_32_64_channels():
    model = build("resnet32")
    assert [model.layer1[0].conv1.out_channels, model.layer2[0].conv1.out_channels,
            model.layer3[0].conv1.out_channels] == [16, 32, 64]
    assert len(model.layer1) == 5
