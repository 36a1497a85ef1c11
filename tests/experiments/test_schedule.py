"""The experiments' learning-rate schedule: one cosine per stage, cut at the compressions, so the full
network converges before it is compressed and fine-tuning gets a schedule of its own."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl

from pfa_lightning import PFAError
from pfa_lightning.experiments.datamodules import SyntheticDataModule
from pfa_lightning.experiments.module import ImageClassifier, StagedCosine
from pfa_lightning.experiments.runner import ExperimentPFACallback


def test_staged_cosine_decays_to_zero_in_each_stage_and_restarts_scaled():
    f = StagedCosine([4], total=10, restart_scale=0.2)
    assert f(0) == 1.0 and f(4) == pytest.approx(0.2) and f(10) == pytest.approx(0.0)
    assert f(2) == pytest.approx(0.5)  # half way through the first stage
    assert f(3) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 4)))
    assert f(7) == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert all(f(t) >= f(t + 1) for t in range(0, 3)) and all(f(t) >= f(t + 1) for t in range(4, 10))
    # no restarts (or restarts outside the fit): one cosine over everything
    for plain in (StagedCosine([], 10), StagedCosine([0, 10, 12], 10)):
        assert [plain(t) for t in range(11)] == pytest.approx([0.5 * (1 + math.cos(math.pi * t / 10)) for t in range(11)])


def test_a_restart_at_zero_makes_the_first_stage_fine_tuning():
    f = StagedCosine([0, 4], total=10, restart_scale=0.2)  # compress at fit start, and after epoch 4
    assert f(0) == pytest.approx(0.2) and f(4) == pytest.approx(0.2) and f(3) < f(0)
    ImageClassifier("simplecnn", restarts=[0])  # accepted: PFACallback(compress_at=0)


@pytest.mark.parametrize("restarts", [[-1], [1.5], "3", [True]])
def test_bad_restarts_are_refused_by_name(restarts):
    with pytest.raises(PFAError, match="`restarts`"):
        ImageClassifier("simplecnn", restarts=restarts)


class LearningRates(pl.Callback):
    def __init__(self) -> None:
        self.rates: list[tuple[int, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rates.append((trainer.current_epoch, trainer.optimizers[0].param_groups[0]["lr"]))


def test_inside_a_compressed_fit_the_rate_restarts_at_restart_lr(tmp_path):
    pl.seed_everything(0)
    data = SyntheticDataModule(num_samples=64, size=16, batch_size=16)  # 4 steps per epoch
    module = ImageClassifier("simplecnn", width=0.25, input_size=16, lr=0.1, restarts=[2], restart_lr=0.02)
    rates = LearningRates()
    pfa = ExperimentPFACallback(strategy="kl", compress_at=[2], verbose=False, datamodule=data)
    trainer = pl.Trainer(max_epochs=3, callbacks=[pfa, rates], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, data)
    assert len(pfa.history) == 1 and pfa.history[0].accuracy_on == "test"
    stage1 = [lr for epoch, lr in rates.rates if epoch < 2]
    stage2 = [lr for epoch, lr in rates.rates if epoch == 2]
    assert len(stage1) == 8 and len(stage2) == 4  # stepped per batch
    assert stage1[0] == pytest.approx(0.1) and stage1[-1] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert stage2[0] == pytest.approx(0.02)  # the optimizer rebuilt for the cut network starts the new stage
    assert stage2 == sorted(stage2, reverse=True) and stage2[-1] < 0.01


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_optimizers_use_the_fused_kernels_on_cpu_with_the_same_update(optimizer):
    import copy
    import inspect

    import torch

    module = ImageClassifier(arch="simplecnn", num_classes=3, width=0.25, optimizer=optimizer, scheduler="none",
                             weight_decay=5e-4)
    twin = copy.deepcopy(module)
    fused = module.configure_optimizers()
    assert fused.defaults["fused"] is True
    kind = type(fused)
    settings = {k: v for k, v in fused.defaults.items() if k in inspect.signature(kind).parameters}
    plain = kind(twin.parameters(), **{**settings, "fused": None, "foreach": False})
    for step in range(3):
        for a, b in zip(module.parameters(), twin.parameters()):
            a.grad = torch.full_like(a, 0.1 * (step + 1)).add_(a)
            b.grad = a.grad.clone()
        fused.step()
        plain.step()
    for a, b in zip(module.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)  # the same update, up to rounding
