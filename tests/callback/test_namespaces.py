"""Drop-in for Lightning and Hydra users: the callback under `import lightning as L` as under
`pytorch_lightning`, built from a lightning-hydra-template-style `callbacks/pfa.yaml`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pfa_lightning as pfa

L = pytest.importorskip("lightning")  # the dev extra installs it
CONF = Path(__file__).resolve().parents[2] / "conf"


def _body() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


class TinyNet(L.LightningModule):  # a `lightning.pytorch` module
    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body = _body()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _data() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(96, 3, 8, 8, generator=g), torch.randint(0, 3, (96,), generator=g)),
                      batch_size=32)


def _template_callbacks(**overrides) -> list:
    """What lightning-hydra-template's `instantiate_callbacks` does with a callbacks config: instantiate each
    `_target_` entry as it is (ListConfig values included)."""
    cfg = OmegaConf.load(CONF / "callbacks" / "pfa.yaml")
    for key, value in overrides.items():
        OmegaConf.update(cfg, f"pfa.{key}", value)
    return [instantiate(spec) for spec in cfg.values()]


def test_the_template_style_config_builds_a_working_callback_for_a_lightning_trainer(tmp_path):
    torch.manual_seed(0)
    (callback,) = _template_callbacks(compress_at=[1], strategy="footprint", ratio=0.5, metric="params",
                                      verbose=False)
    assert isinstance(callback, pfa.PFACallback) and callback.compress_at == [1]
    model = TinyNet()
    full = pfa.count_params(model)
    trainer = L.Trainer(max_epochs=2, callbacks=[callback], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, _data())
    assert len(callback.history) == 1 and pfa.count_params(model) <= 0.5 * full
    path = tmp_path / "compressed.ckpt"
    trainer.save_checkpoint(path)
    loaded = pfa.load_compressed(TinyNet, path, map_location="cpu")
    assert [m.weight.shape for m in loaded.modules() if isinstance(m, nn.Conv2d)] == \
        [m.weight.shape for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_load_compressed_refuses_what_is_not_a_lightning_module_by_name(tmp_path):
    with pytest.raises(pfa.PFAError, match="LightningModule subclass .*got <class 'torch.nn.modules.linear.Linear'>"):
        pfa.load_compressed(nn.Linear, tmp_path / "x.ckpt")


def test_load_compressed_refuses_a_truncated_or_foreign_file_in_one_line(tmp_path):
    truncated = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {}, "epoch": 1, "global_step": 1}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    foreign = tmp_path / "weights.pt"
    torch.save(TinyNet().state_dict(), foreign)
    for path, match in [(truncated, "cannot be read as a PyTorch checkpoint"), (foreign, "is not a Lightning checkpoint")]:
        with pytest.raises(pfa.PFAError, match=f"`checkpoint_path` .*{match}") as info:
            pfa.load_compressed(TinyNet, path)
        assert "\n" not in str(info.value)
