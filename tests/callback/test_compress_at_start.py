"""``compress_at=0``: compress a network you already trained at the start of the fit, then fine-tune it."""

from __future__ import annotations

import warnings

import pytest
import torch
from pytorch_lightning.callbacks import Callback

from pfa_lightning import PFACallback, PFAError, count_params, load_compressed
from tests.callback.test_callback import DDP_SCRIPT, run_python
from tests.helpers.callback_models import ResidualNet, WrappedNet, loaders, quiet_trainer


class FirstBatch(Callback):
    """What the optimizer holds when the first training batch starts, and the weights then."""

    def __init__(self) -> None:
        self.seen: dict = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0:
            held = [p for group in trainer.optimizers[0].param_groups for p in group["params"]]
            self.seen = {"held": [id(p) for p in held], "module": [id(p) for p in pl_module.parameters()],
                         "shapes": [tuple(p.shape) for p in held], "lr": trainer.optimizers[0].param_groups[0]["lr"],
                         "weights": {n: p.detach().clone() for n, p in pl_module.named_parameters()}}


def trained(module_class=ResidualNet, **kwargs):
    """A network a user already trained (2 epochs here)."""
    torch.manual_seed(0)
    module = module_class(**kwargs)
    quiet_trainer(max_epochs=2).fit(module, *loaders())
    module.epoch_losses = []
    return module


def test_compress_at_zero_cuts_before_training_and_the_optimizer_steps_the_cut_parameters():
    module = trained(scheduler=True)
    full = count_params(module)
    pfa, probe = PFACallback(compress_at=0, verbose=False), FirstBatch()
    trainer = quiet_trainer(max_epochs=3, callbacks=[pfa, probe], num_sanity_val_steps=1)
    trainer.fit(module, *loaders())

    [entry] = pfa.history
    assert entry.epoch == 0 and entry.global_step == 0
    assert entry.params_before == full and count_params(module) == entry.params_after < full
    assert entry.acc_before is not None and entry.accuracy_on == "validation"  # measured before training
    cut = [layer for layer in pfa.recipes[0] if layer.kept < layer.original]
    assert cut, "a trained network has correlated units to cut"
    # the optimizer built for the cut network: exactly the module's (cut) parameters, at the schedule's start
    seen = probe.seen
    assert sorted(seen["held"]) == sorted(seen["module"])
    for layer in cut:
        weight = module.get_submodule(layer.name).weight
        assert weight.shape[0] == layer.kept and tuple(weight.shape) in seen["shapes"]
    assert seen["lr"] == pytest.approx(0.05)
    # ... and it stepped them: every cut weight moved, and the loss went down
    for name, before in seen["weights"].items():
        assert not torch.equal(before, dict(module.named_parameters())[name]), name
    assert module.epoch_losses[-1] < module.epoch_losses[0]


def test_compress_at_zero_and_later_compresses_twice():
    module = trained(WrappedNet, width=16)
    pfa = PFACallback(compress_at=[0, 2], verbose=False)
    quiet_trainer(max_epochs=3, callbacks=[pfa]).fit(module, *loaders())
    assert [entry.epoch for entry in pfa.history] == [0, 2]
    assert pfa.history[1].params_before == pfa.history[0].params_after > pfa.history[1].params_after


def test_a_fit_of_zero_epochs_just_compresses_and_the_checkpoint_loads_back(tmp_path):
    module = trained()
    pfa = PFACallback(compress_at=[0], verbose=False)
    trainer = quiet_trainer(max_epochs=0, callbacks=[pfa])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, *loaders())
    assert not [w for w in caught if "no fine-tuning follows" in str(w.message)]  # the cut alone was asked for
    assert [e.epoch for e in pfa.history] == [0] and pfa.history[0].recalibrated
    assert count_params(module) == pfa.history[0].params_after < pfa.history[0].params_before
    trainer.save_checkpoint(tmp_path / "cut.ckpt")
    loaded = load_compressed(ResidualNet, tmp_path / "cut.ckpt")
    assert count_params(loaded) == count_params(module)
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(loaded(x), module.eval()(x))


def test_resuming_a_fit_that_compressed_at_zero_does_not_compress_again(tmp_path):
    pfa = PFACallback(compress_at=[0], verbose=False)
    trainer = quiet_trainer(max_epochs=1, callbacks=[pfa])
    module = trained()
    trainer.fit(module, *loaders())
    trainer.save_checkpoint(tmp_path / "epoch1.ckpt")

    resumed, pfa2 = ResidualNet(), PFACallback(compress_at=[0], verbose=False)
    quiet_trainer(max_epochs=2, callbacks=[pfa2]).fit(resumed, *loaders(), ckpt_path=tmp_path / "epoch1.ckpt")
    assert [e.epoch for e in pfa2.history] == [0]
    assert {n: p.shape for n, p in resumed.named_parameters()} == {n: p.shape for n, p in module.named_parameters()}


def test_resuming_a_checkpoint_without_the_start_compression_is_refused(tmp_path):
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(ResidualNet(), *loaders())
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    module = ResidualNet()
    pfa = PFACallback(compress_at=[0, 2], verbose=False)
    with pytest.raises(PFAError, match="epoch 0 has already passed .* no compression before training. .*without `ckpt_path`"):
        quiet_trainer(max_epochs=2, callbacks=[pfa]).fit(module, *loaders(), ckpt_path=tmp_path / "plain.ckpt")
    assert not pfa.history and module.conv1.out_channels == 12  # untouched


def test_negative_compress_at_is_refused():
    with pytest.raises(PFAError, match=r"`compress_at`.*>= 0.*0 before training"):
        PFACallback(compress_at=[-1])


def test_compress_at_zero_under_ddp_leaves_identical_ranks(tmp_path):
    run_python([DDP_SCRIPT, str(tmp_path), "start"])
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert [e["epoch"] for e in rank0["history"]] == [0] and rank0["history"] == rank1["history"]
    for name, value in rank0["params"].items():
        assert torch.equal(value, rank1["params"][name]), name
    entry = rank0["history"][0]
    assert entry["params_after"] < entry["params_before"]  # both ranks trained the cut network, wrapped anew
