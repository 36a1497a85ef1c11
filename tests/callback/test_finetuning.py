"""Fine-tuning aids of the callback: BatchNorm recalibration, distillation, un-augmented analysis data."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, Dataset, Subset

import pfa_lightning as pfa
from pfa_lightning import PFACallback
from pfa_lightning.callback.data import without_augmentation
from pfa_lightning.callback.distill import Distillation, Teacher
from tests.helpers.callback_models import ResidualNet, loaders, make_dataset, quiet_trainer


class Snapshot(Callback):
    """Keeps a copy of the module right after PFA's surgery and recalibration (it runs after PFACallback)."""

    def __init__(self) -> None:
        self.module = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.module is None and trainer.current_epoch == 0:
            self.module = copy.deepcopy(pl_module)


@pytest.mark.parametrize("recalibrate", [True, False])
def test_recalibration_after_surgery(recalibrate):
    torch.manual_seed(0)
    train, val = loaders()
    analysis = DataLoader(make_dataset(64, seed=5), batch_size=16)
    snapshot = Snapshot()
    pfa_cb = PFACallback("energy", threshold=0.8, compress_at=[1], dataloader=analysis, max_samples=None,
                         recalibrate=recalibrate, verbose=False)
    quiet_trainer(max_epochs=2, callbacks=[pfa_cb, snapshot]).fit(ResidualNet(), train, val)
    entry = pfa_cb.history[0]
    assert entry.recalibrated is recalibrate
    assert entry.acc_cut is not None and entry.acc_after is not None
    cut = snapshot.module
    reference = copy.deepcopy(cut)
    update_bn(([x] for x, _ in analysis), reference)
    same = torch.allclose(cut.bn0.running_mean, reference.bn0.running_mean, atol=1e-6)
    assert same is recalibrate
    if not recalibrate:
        assert entry.acc_after == entry.acc_cut


def _mini_module():
    module = ResidualNet()
    module.log = lambda *args, **kwargs: None  # outside a fit
    return module


def test_distillation_adds_the_teacher_term_and_releases():
    torch.manual_seed(0)
    module = _mini_module()
    x, y = make_dataset(16, seed=3).tensors
    teacher = Teacher(module, Distillation(temperature=2.0, weight=0.25))
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(0.5)  # the student drifts away from the frozen teacher
    total = module.training_step((x, y), 0)
    student, frozen = module(x), teacher.network(x)
    expected = 0.75 * F.cross_entropy(student, y) + 0.25 * 4.0 * F.kl_div(
        F.log_softmax(student / 2.0, -1), F.softmax(frozen / 2.0, -1), reduction="batchmean")
    torch.testing.assert_close(total, expected)
    assert not any(p.requires_grad for p in teacher.network.parameters())
    teacher.release()
    assert "training_step" not in module.__dict__
    torch.testing.assert_close(module.training_step((x, y), 0), F.cross_entropy(module(x), y))


def test_distillation_inside_a_fit_is_logged_and_freed():
    train, val = loaders()
    pfa_cb = PFACallback("energy", threshold=0.8, compress_at=[1], distill={"temperature": 3.0, "weight": 0.5},
                         max_samples=64, verbose=False)
    module = ResidualNet()
    trainer = quiet_trainer(max_epochs=3, callbacks=[pfa_cb])
    trainer.fit(module, train, val)
    assert "pfa/distill_loss" in trainer.callback_metrics
    assert pfa_cb._teacher is None and "training_step" not in module.__dict__


@pytest.mark.parametrize("value, match", [
    ({"temperature": 0}, r"`distill.temperature` must be a number > 0, got 0"),
    ({"weight": 1.5}, r"`distill.weight` must be a number in \(0, 1\], got 1.5"),
    ({"alpha": 0.5}, r"`distill` must be None, True, or a mapping with `temperature` and/or `weight`"),
    ("yes", r"`distill` must be None, True"),
])
def test_bad_distillation_settings(value, match):
    with pytest.raises(pfa.PFAError, match=match):
        PFACallback("kl", compress_at=[1], distill=value)


def test_distillation_refuses_manual_optimization():
    module = ResidualNet()
    module.automatic_optimization = False
    with pytest.raises(pfa.PFAError, match="`distill` needs automatic optimization"):
        Teacher(module, Distillation())


class Flipped(Dataset):
    """A torchvision-style data set: ``transform`` is a Compose whose first step is a random flip."""

    def __init__(self, transform) -> None:
        self.data = make_dataset(12, seed=2)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        return self.transform(x), y


def test_default_analysis_data_drops_random_augmentation():
    from torchvision import transforms as T

    dataset = Flipped(T.Compose([T.RandomHorizontalFlip(p=1.0), T.Lambda(lambda x: x * 2)]))
    loader = DataLoader(Subset(dataset, [1, 3, 5]), batch_size=2, shuffle=True)
    plain, description = without_augmentation(loader)
    assert "without its random augmentation (RandomHorizontalFlip)" in description
    x, _ = next(iter(plain))
    torch.testing.assert_close(x, torch.stack([dataset.data[1][0], dataset.data[3][0]]) * 2)
    assert isinstance(loader.dataset.dataset.transform.transforms[0], T.RandomHorizontalFlip)  # untouched
    same, text = without_augmentation(DataLoader(make_dataset(8), batch_size=4))
    assert text == "the training data (TensorDataset)"


def test_the_callback_reports_which_data_it_analysed():
    from torchvision import transforms as T

    train = DataLoader(Flipped(T.Compose([T.RandomHorizontalFlip(p=0.5)])), batch_size=4, shuffle=True)
    pfa_cb = PFACallback("energy", threshold=0.9, compress_at=[1], max_samples=12, verbose=False)
    quiet_trainer(max_epochs=1, callbacks=[pfa_cb]).fit(ResidualNet(), train)
    assert pfa_cb.analysis_data == "the training data (Flipped) without its random augmentation (RandomHorizontalFlip)"


def test_a_removal_that_changes_the_sample_shape_keeps_the_augmented_data():
    from torchvision import transforms as T

    dataset = Flipped(T.Compose([T.RandomCrop(6), T.Lambda(lambda x: x)]))  # 8x8 -> 6x6: dropping it changes shapes
    loader = DataLoader(dataset, batch_size=4)
    same, description = without_augmentation(loader)
    assert same is loader
    assert description == ("the training data (Flipped, with its random augmentation) "
                           "(without RandomCrop the samples change shape)")


def test_recalibration_that_fails_leaves_the_statistics_and_warns():
    from types import SimpleNamespace

    from pfa_lightning.callback.distributed import recalibrate_on_every_rank

    module = ResidualNet()
    with torch.no_grad():
        module.bn0.running_mean.fill_(2.0)

    def broken():
        raise RuntimeError("a data loader worker died")

    with pytest.warns(UserWarning, match="could not recalibrate BatchNorm after the surgery .*worker died"):
        assert recalibrate_on_every_rank(SimpleNamespace(world_size=1), module, broken) is False
    assert torch.all(module.bn0.running_mean == 2.0)
    x = make_dataset(9, seed=1).tensors[0]
    assert recalibrate_on_every_rank(SimpleNamespace(world_size=1), module, lambda: ([x[:8], x[8:]], None)) is True
    assert not torch.all(module.bn0.running_mean == 2.0)  # the single-sample batch was skipped, not fatal
