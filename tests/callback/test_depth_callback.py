"""``Footprint(..., depth=True)`` through PFACallback: residual blocks measured on the analysis data, removed
mid-fit with the widths, training goes on, and a checkpoint rebuilds the same network."""

from __future__ import annotations

import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

from pfa_lightning import Footprint, PFACallback, PFAError, count_params, load_compressed
from pfa_lightning.blocks import residual_blocks
from pfa_lightning.models import build
from tests.helpers.callback_models import NUM_CLASSES, ResidualNet, _Classifier, loaders, quiet_trainer


class BlockNet(_Classifier):
    """A CIFAR ResNet-20 at a quarter width, whose residual blocks are submodules."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__("sgd", lr, False)
        self.net = build("resnet20", num_classes=NUM_CLASSES, in_channels=3, width=0.5)

    def forward(self, x):
        return self.net(x)


def overhead_timer(model, inputs) -> float:
    """'Seconds' = parameters / 1e8 + 3e-5 per convolution: a cost per layer no width removes (as at batch 1)."""
    return count_params(model) / 1e8 + 3e-5 * sum(isinstance(m, nn.Conv2d) for m in model.modules())


def test_depth_meets_a_latency_widths_cannot_and_a_checkpoint_rebuilds_the_network(tmp_path, monkeypatch):
    monkeypatch.setenv("PFA_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    module = BlockNet()
    full = overhead_timer(module, None)
    blocks = residual_blocks(module, torch.randn(2, 3, 8, 8))
    # widths alone leave every convolution's overhead (about half the time): 0.4 is out of their reach
    widths_only = PFACallback(Footprint(0.4, metric="latency", timer=overhead_timer), compress_at=1, verbose=False)
    with pytest.raises(PFAError, match=r"out of reach.*, or depth=True \(residual blocks go too\)"):
        quiet_trainer(max_epochs=2, callbacks=[widths_only]).fit(BlockNet(), *loaders())
    plain = PFACallback("footprint", ratio=0.001, compress_at=1, verbose=False)  # its residual is no submodule
    with pytest.raises(PFAError, match="out of reach") as refused:
        quiet_trainer(max_epochs=2, callbacks=[plain]).fit(ResidualNet(), *loaders())
    assert "depth" not in str(refused.value)
    callback = PFACallback(Footprint(0.4, metric="latency", timer=overhead_timer, depth=True), compress_at=1,
                           verbose=False)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    quiet_trainer(max_epochs=3, callbacks=[callback, checkpoint], enable_checkpointing=True).fit(module, *loaders())

    recipe = callback.history[0].recipe
    assert recipe.blocks and set(recipe.blocks) <= set(blocks)
    assert overhead_timer(module, None) == pytest.approx(recipe.summary["measured_s"])
    assert recipe.summary["measured_s"] <= 0.4 * 1.05 * full and recipe.summary["measured_full_s"] == pytest.approx(full)
    assert not set(residual_blocks(module, torch.randn(2, 3, 8, 8))) & set(recipe.blocks)
    assert module.epoch_losses[2] < module.epoch_losses[1]  # the network without them learns
    loaded = load_compressed(BlockNet, tmp_path / "last.ckpt", map_location="cpu")
    x = torch.randn(5, 3, 8, 8)
    module.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), module(x), atol=1e-6)
