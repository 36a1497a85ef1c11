"""metric="latency" through PFACallback: the strategy object with an injected timer, or the name plus its options."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

import pfa_lightning as pfa
from pfa_lightning.errors import PFAError


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                 nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _loader():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 1, 8, 8, generator=g), torch.randint(0, 3, (256,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)


def _fit(callback: pfa.PFACallback) -> Net:
    model = Net()
    pl.Trainer(max_epochs=2, callbacks=[callback], logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False).fit(model, _loader())
    return model


def test_a_latency_footprint_compresses_in_a_fit():
    def timer(model, inputs):  # deterministic 'seconds'
        return pfa.count_params(model) / 1e6 + 1e-5

    full = timer(Net(), None)
    callback = pfa.PFACallback(strategy=pfa.Footprint(0.5, metric="latency", timer=timer), compress_at=1,
                               max_samples=256, verbose=False)
    model = _fit(callback)
    summary = callback.history[0].recipe.summary
    assert summary["metric"] == "latency" and summary["measured_s"] <= 0.5 * summary["measured_full_s"] * 1.05
    assert timer(model, None) == pytest.approx(summary["measured_s"]) and timer(model, None) < 0.55 * full


def test_latency_options_are_shortcuts_of_the_footprint_name():
    callback = pfa.PFACallback("footprint", ratio=0.5, metric="latency", runtime="torch", batch_size=8, compress_at=1)
    assert callback.strategy == pfa.Footprint(0.5, metric="latency", runtime="torch", batch_size=8)
    with pytest.raises(PFAError, match="runtime"):
        pfa.PFACallback("footprint", ratio=0.5, metric="latency", runtime="tvm", compress_at=1)
    baseline = pfa.PFACallback("uniform", ratio=0.5, metric="latency", runtime="onnxruntime", batch_size=4,
                               compress_at=1)  # the width-scaling baseline at the same time target
    assert baseline.strategy == pfa.Uniform(0.5, metric="latency", runtime="onnxruntime", batch_size=4)
