"""PFACallback inside real Lightning fits: training goes on, DDP, checkpoints, optimizer state, errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import Logger
from pytorch_lightning.strategies import FSDPStrategy
from torch.utils.data import DataLoader

from pfa_lightning import PFACallback, PFAError, Recipe, count_params, load_compressed
from pfa_lightning.callback import restore_architecture
from tests.helpers.callback_models import (LinearOnly, NoForward, ResidualNet, WrappedNet, loaders, make_dataset,
                                   quiet_trainer)

REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DDP_SCRIPT = os.path.join(REPO_DIR, "tests", "helpers", "ddp_script.py")


class RecordingLogger(Logger):
    """Keeps every logged metric in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: dict[str, float] = {}

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.update(metrics)


class AtEpochEnd(Callback):
    """Runs ``fn(trainer, module)`` at the end of 1-based ``epoch``; placed after PFACallback it sees the result."""

    def __init__(self, epoch: int, fn) -> None:
        self.epoch, self.fn, self.seen = epoch, fn, {}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 == self.epoch:
            self.seen = self.fn(trainer, pl_module)


def optimizer_view(trainer, module) -> dict:
    optimizer = trainer.optimizers[0]
    held = [p for group in optimizer.param_groups for p in group["params"]]
    return {
        "held": [id(p) for p in held], "module": [id(p) for p in module.parameters()],
        "training": all(m.training for m in module.modules()), "lr": optimizer.param_groups[0]["lr"],
        "last_epoch": trainer.lr_scheduler_configs[0].scheduler.last_epoch if trainer.lr_scheduler_configs else None,
    }


def state_by_name(trainer, module) -> dict:
    state = trainer.optimizers[0].state
    return {name: {k: v.clone() if torch.is_tensor(v) else v for k, v in state[p].items()}
            for name, p in module.named_parameters() if p in state}


# An in-process DDP fit (elsewhere in the session) leaves these in os.environ; a child would then
# believe it was launched as one rank of an existing job.
LAUNCHER_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "GROUP_RANK", "RANK", "WORLD_SIZE",
                      "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID")


def run_python(args: list[str], timeout: int = 240, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    result = subprocess.run([sys.executable, *args], cwd=REPO_DIR, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0 or not check, result.stderr[-3000:]
    return result


# -- training goes on ------------------------------------------------------------------------------
def test_residual_module_compresses_mid_fit_and_keeps_learning():
    module = ResidualNet(scheduler=True)
    full = count_params(module)
    logger = RecordingLogger()
    pfa = PFACallback(compress_at=[2], verbose=False)
    probe = AtEpochEnd(2, optimizer_view)
    trainer = quiet_trainer(max_epochs=5, callbacks=[pfa, probe], logger=logger)
    trainer.fit(module, *loaders())

    [entry] = pfa.history
    assert entry.epoch == 2 and entry.params_before == full
    assert count_params(module) == entry.params_after < full
    recipe = pfa.recipes[0]
    assert module.conv1.out_channels == recipe["conv1"].kept and module.fc1.out_features == recipe["fc1"].kept
    # right after the surgery: the optimizer holds exactly the new parameters, the schedule went on
    seen = probe.seen
    assert sorted(seen["held"]) == sorted(seen["module"]) and len(set(seen["held"])) == len(seen["held"])
    assert seen["training"]
    assert seen["last_epoch"] == 2 and seen["lr"] == pytest.approx(0.05 * 0.8**2)
    losses = module.epoch_losses  # [2] is the first epoch of the compressed network
    assert losses[4] < losses[3] < losses[2]
    module.eval()
    assert module(torch.randn(5, 3, 8, 8)).shape == (5, 4)
    for key in ("params_before", "params_after", "params_ratio", "flops_before", "flops_after", "flops_ratio",
                "acc_before", "acc_after", "acc_end", "kept_units/conv1", "kept_units/fc1"):
        assert f"pfa/{key}" in logger.metrics, key
    assert logger.metrics["pfa/params_ratio"] == pytest.approx(count_params(module) / full)


def test_two_compressions_in_one_fit_start_from_each_other():
    module = WrappedNet(width=16)
    pfa = PFACallback(compress_at=[1, 3], verbose=False)
    quiet_trainer(max_epochs=4, callbacks=[pfa]).fit(module, *loaders())

    assert [entry.epoch for entry in pfa.history] == [1, 3]
    first, second = pfa.recipes
    assert first.names == second.names == ["net.0", "net.3"]
    for layer in second:
        assert layer.original == first[layer.name].kept
    assert pfa.history[1].params_before == pfa.history[0].params_after
    assert module.net[3].out_channels == second["net.3"].kept
    assert module(torch.randn(2, 3, 8, 8)).shape == (2, 4)


@pytest.mark.parametrize("data, max_samples, samples", [
    (lambda: DataLoader(make_dataset(40, seed=3), batch_size=16), None, 40),  # e.g. a target domain
    (lambda: [make_dataset(64, seed=3)[i : i + 16] for i in range(0, 64, 16)], 50, 50),  # any iterable
])
def test_user_analysis_data_is_used(data, max_samples, samples):
    pfa = PFACallback(compress_at=[1], dataloader=data(), max_samples=max_samples, verbose=False)
    quiet_trainer(max_epochs=1, callbacks=[pfa]).fit(ResidualNet(), *loaders())
    assert {layer.diagnostics["samples"] for layer in pfa.recipes[0]} == {samples}


def test_a_callback_reused_on_a_fresh_module_compresses_it_again():
    pfa = PFACallback(compress_at=[1], verbose=False)
    quiet_trainer(max_epochs=1, callbacks=[pfa]).fit(ResidualNet(), *loaders())
    module = ResidualNet()
    with pytest.warns(UserWarning, match="reused on an uncompressed module"):
        quiet_trainer(max_epochs=1, callbacks=[pfa]).fit(module, *loaders())
    assert len(pfa.history) == 1 and count_params(module) == pfa.history[0].params_after


# -- DDP -------------------------------------------------------------------------------------------
def test_two_process_ddp_ranks_decide_alike_and_end_identical(tmp_path):
    run_python([DDP_SCRIPT, str(tmp_path)])
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert (rank0["rank"], rank1["rank"]) == (0, 1)
    assert len(rank0["history"]) == 1 and rank0["history"] == rank1["history"]
    assert rank0["widths"] == rank1["widths"]
    assert rank0["params"].keys() == rank1["params"].keys()
    for name, value in rank0["params"].items():
        assert torch.equal(value, rank1["params"][name]), name
    # statistics were summed over the ranks: each layer saw both shards (64 samples)
    layers = rank0["history"][0]["recipe"]["layers"]
    assert {layer["diagnostics"]["samples"] for layer in layers} == {64}


def test_ranks_that_decide_differently_fail_clearly_instead_of_hanging(tmp_path):
    result = run_python([DDP_SCRIPT, str(tmp_path), "skew"], check=False)
    assert result.returncode != 0
    assert "PFA ranks decided different compressions" in result.stderr
    assert not list(tmp_path.glob("rank*.pt"))


def test_an_analysis_error_on_one_rank_reaches_every_rank_instead_of_hanging(tmp_path):
    import time

    start = time.monotonic()
    result = run_python([DDP_SCRIPT, str(tmp_path), "nan"], check=False)
    assert result.returncode != 0 and time.monotonic() - start < 120  # no wait for the backend's timeout
    # rank 0 (this process's output) reports rank 1's non-finite responses
    assert "PFA's analysis failed on rank 1 of 2: Layer" in result.stderr and "NaN or Inf" in result.stderr
    assert not list(tmp_path.glob("rank*.pt"))


# -- checkpoints -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compressed_run(tmp_path_factory):
    """A fit compressing after epoch 2 of 3, checkpoints per epoch, a final checkpoint and outputs.

    ``train_end/`` holds Lightning's default checkpoints, written at the end of each training epoch
    (after the surgery); ``val_end/`` those written at validation end, before the surgery.
    """
    root = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    module = ResidualNet()
    pfa = PFACallback(compress_at=[2], verbose=False)
    at_train_end = ModelCheckpoint(dirpath=root / "train_end", filename="{epoch}", save_top_k=-1)
    at_val_end = ModelCheckpoint(dirpath=root / "val_end", filename="{epoch}", save_top_k=-1,
                                 save_on_train_epoch_end=False, monitor="val_acc", mode="max")
    trainer = quiet_trainer(max_epochs=3, callbacks=[pfa, at_train_end, at_val_end], enable_checkpointing=True)
    trainer.fit(module, *loaders())
    trainer.save_checkpoint(root / "final.ckpt")
    x = torch.randn(6, 3, 8, 8)
    module.eval()
    with torch.no_grad():
        out = module(x)
    torch.save({"x": x, "out": out}, root / "io.pt")
    return SimpleNamespace(root=root, module=module, recipe=pfa.recipes[0], steps_per_epoch=trainer.global_step // 3)


def history_of(path) -> list:
    return torch.load(path, weights_only=True)["pfa"]["history"]


def test_checkpoint_history_is_plain_and_loads_with_weights_only(compressed_run):
    root = compressed_run.root
    data = torch.load(root / "final.ckpt", weights_only=True)["pfa"]
    assert data["example_inputs"] == {"shape": [3, 8, 8], "dtype": "float32"}
    [entry] = data["history"]
    assert entry["epoch"] == 2
    assert Recipe.from_dict(entry["recipe"]).widths == compressed_run.recipe.widths
    assert history_of(root / "train_end/epoch=0.ckpt") == []
    assert history_of(root / "train_end/epoch=1.ckpt") == [entry]  # written after the surgery
    assert history_of(root / "val_end/epoch=1.ckpt") == []  # written before it


def test_resume_after_compression_rebuilds_and_does_not_compress_again(compressed_run):
    module = ResidualNet()
    pfa = PFACallback(compress_at=[2], verbose=False)
    trainer = quiet_trainer(max_epochs=4, callbacks=[pfa])
    trainer.fit(module, *loaders(), ckpt_path=compressed_run.root / "train_end/epoch=1.ckpt")

    assert [entry.epoch for entry in pfa.history] == [2]
    assert module.conv1.out_channels == compressed_run.recipe["conv1"].kept
    assert count_params(module) == count_params(compressed_run.module)
    assert len(module.epoch_losses) == 2 and trainer.global_step == 4 * compressed_run.steps_per_epoch
    assert "on_load_checkpoint" not in module.__dict__  # the restore hook was removed


@pytest.mark.parametrize("checkpoint", ["train_end/epoch=0.ckpt", "val_end/epoch=1.ckpt"])
def test_resume_from_before_the_compression_compresses(compressed_run, checkpoint):
    module = ResidualNet()
    pfa = PFACallback(compress_at=[2], verbose=False)
    quiet_trainer(max_epochs=3, callbacks=[pfa]).fit(module, *loaders(), ckpt_path=compressed_run.root / checkpoint)

    assert [entry.epoch for entry in pfa.history] == [2]
    assert count_params(module) < count_params(ResidualNet())
    if checkpoint.startswith("val_end"):  # the weights the original run compressed: the same decision
        assert pfa.recipes[0].widths == compressed_run.recipe.widths


def test_load_compressed_in_a_fresh_process_gives_the_same_outputs(compressed_run):
    root = compressed_run.root
    run_python(["-c", textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {REPO_DIR!r})
        from tests.helpers.callback_models import ResidualNet
        from pfa_lightning import load_compressed
        model = load_compressed(ResidualNet, {str(root / "final.ckpt")!r}, map_location="cpu")
        assert type(model) is ResidualNet and not model.training
        with torch.no_grad():
            out = model(torch.load({str(root / "io.pt")!r})["x"])
        torch.save(out, {str(root / "fresh_out.pt")!r})
    """)])
    expected = torch.load(root / "io.pt")["out"]
    assert torch.allclose(torch.load(root / "fresh_out.pt"), expected, atol=1e-6)


def test_validate_with_the_callback_rebuilds_from_the_checkpoint(compressed_run):
    module = ResidualNet()
    trainer = quiet_trainer(callbacks=[PFACallback(compress_at=[2], verbose=False)])
    [metrics] = trainer.validate(module, loaders()[1], ckpt_path=compressed_run.root / "final.ckpt", verbose=False)
    assert count_params(module) == count_params(compressed_run.module) and 0 <= metrics["val_acc"] <= 1


def test_restoring_an_already_compressed_module_changes_nothing(compressed_run):
    module = compressed_run.module
    before = {name: p.clone() for name, p in module.state_dict().items()}
    restore_architecture(module, torch.load(compressed_run.root / "final.ckpt", weights_only=True))
    assert all(torch.equal(p, before[name]) for name, p in module.state_dict().items())


def test_load_compressed_of_an_uncompressed_checkpoint_loads_as_usual(compressed_run):
    model = load_compressed(ResidualNet, compressed_run.root / "train_end/epoch=0.ckpt")
    assert count_params(model) == count_params(ResidualNet())


# -- optimizer state -------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer, keys", [("sgd", ["momentum_buffer"]), ("adam", ["exp_avg", "exp_avg_sq"])])
def test_transplant_keeps_the_kept_units_state(optimizer, keys):
    module = ResidualNet(optimizer=optimizer, lr=0.01)
    pfa = PFACallback(compress_at=[2], optimizer_state="transplant", verbose=False)
    before, after = AtEpochEnd(2, state_by_name), AtEpochEnd(2, state_by_name)
    quiet_trainer(max_epochs=2, callbacks=[before, pfa, after]).fit(module, *loaders())

    recipe = pfa.recipes[0]
    stem, conv1, fc1 = (torch.tensor(recipe[name].kept_indices) for name in ("stem", "conv1", "fc1"))
    assert len(fc1) < recipe["fc1"].original  # something was cut
    flat = (stem[:, None] * 4 + torch.arange(4)).flatten()  # fc1 reads the 2x2 pooled map of each stem channel
    expected = {
        "conv1.weight": lambda t: t[conv1][:, stem], "conv2.weight": lambda t: t[stem][:, conv1],
        "bn1.weight": lambda t: t[conv1], "fc1.weight": lambda t: t[fc1][:, flat], "fc2.weight": lambda t: t[:, fc1],
        "fc2.bias": lambda t: t,
    }
    old, new = before.seen, after.seen
    for name, cut in expected.items():
        for key in keys:
            assert torch.equal(new[name][key], cut(old[name][key])), (name, key)
    if optimizer == "adam":
        assert torch.equal(new["conv1.weight"]["step"], old["conv1.weight"]["step"])
    assert new.keys() == old.keys()


def test_reset_starts_the_new_optimizer_empty():
    module = ResidualNet()
    pfa = PFACallback(compress_at=[1], verbose=False)
    after = AtEpochEnd(1, state_by_name)
    quiet_trainer(max_epochs=1, callbacks=[pfa, after]).fit(module, *loaders())
    assert after.seen == {}


# -- misconfiguration ------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"strategy": "pca"}, r"`strategy` must be one of \('kl', 'energy', 'footprint', 'uniform'.*\) or a Strategy instance, got 'pca'"),
    ({"strategy": "kl", "threshold": 0.9}, r"Strategy 'kl' takes no options, got unexpected \['threshold'\]"),
    ({"strategy": "energy", "threshold": 1.5}, r"`threshold` must be a number in \(0, 1\], got 1.5"),
    ({"strategy": "footprint", "ratio": 0.5, "metric": "seconds"}, r"`metric` must be one of \('params', 'flops', 'latency'\), got 'seconds'"),
    ({"selection": "magnitude"}, r"`selection` must be one of \('abs_max', 'l1_max', 'max_energy', 'weight_l1', 'random', 'per_space'\) or a selection callable.*got 'magnitude'"),
    ({"compress_at": []}, r"`compress_at` must be an epoch number >= 0 .*got \[\]"),
    ({"compress_at": [-1]}, r"`compress_at` must be .*got \[-1\]"),
    ({"compress_at": [3, 3]}, r"`compress_at` must be .*distinct.*got \[3, 3\]"),
    ({"compress_at": "5"}, r"`compress_at` must be .*got '5'"),
    ({"compress_at": True}, r"`compress_at` must be .*got True"),
    ({"max_samples": 1}, r"`max_samples` must be an integer >= 2 or None.*got 1"),
    ({"pooling": "median"}, r"`pooling` must be one of \('max', 'avg'\), got 'median'"),
    ({"layers": [3]}, r"`layers` must be None, a module name/glob pattern or a list of them, got \[3\]"),
    ({"exclude": []}, r"`exclude` must be None, .*got \[\]"),
    ({"dataloader": 5}, r"`dataloader` must be None \(the train dataloader\) or an iterable of batches, got 5"),
    ({"min_units": 0}, r"`min_units` must be an integer >= 1, got 0"),
    ({"round_to": 2.5}, r"`round_to` must be an integer >= 1, got 2.5"),
    ({"coupled": "both"}, r"`coupled` must be one of \('joint', 'skip'\), got 'both'"),
    ({"optimizer_state": "keep"}, r"`optimizer_state` must be one of \('reset', 'transplant'\), got 'keep'"),
    ({"validate_after": "yes"}, r"`validate_after` must be True or False, got 'yes'"),
    ({"keep_scheduler_progress": 1}, r"`keep_scheduler_progress` must be True or False, got 1"),
])
def test_bad_arguments_are_refused_in_init(kwargs, match):
    kwargs = {"compress_at": [1], **kwargs}
    with pytest.raises(ValueError, match=match):
        PFACallback(**kwargs)


def test_compress_at_is_required():
    with pytest.raises(TypeError, match="compress_at"):
        PFACallback("kl")


@pytest.mark.parametrize("module_cls, pfa_kwargs, match", [
    (ResidualNet, {"compress_at": [5]}, r"`compress_at` epoch 5 is beyond `max_epochs=2`"),
    (LinearOnly, {"compress_at": [2]}, r"LinearOnly has no prunable layer"),
    (NoForward, {"compress_at": [2]}, r"runs NoForward\(inputs\) on a batch's model input, but its `forward`"),
    (ResidualNet, {"compress_at": [2], "layers": ["head*"]}, r"`layers` entry 'head\*' matches no prunable layer"),
    (ResidualNet, {"compress_at": [2], "exclude": "*"}, r"`layers`/`exclude` leave no layer to compress"),
    (ResidualNet, {"compress_at": [2], "strategy": "footprint", "ratio": 0.001},
     r"Footprint ratio 0.001 \(params\) is out of reach for ResidualNet \(every analysed layer at min_units=1\)"),
])
def test_trainer_level_mistakes_fail_before_training(module_cls, pfa_kwargs, match):
    module = module_cls()
    trainer = quiet_trainer(max_epochs=2, callbacks=[PFACallback(verbose=False, **pfa_kwargs)])
    with pytest.raises(ValueError, match=match):
        trainer.fit(module, *loaders())
    assert trainer.global_step == 0


def test_two_callbacks_are_refused():
    callbacks = [PFACallback(compress_at=[1], verbose=False), PFACallback(compress_at=[2], verbose=False)]
    with pytest.raises(ValueError, match=r"Use only one PFACallback per Trainer"):
        quiet_trainer(max_epochs=2, callbacks=callbacks).fit(ResidualNet(), *loaders())


def test_sharded_strategies_are_refused():
    pfa = PFACallback(compress_at=[1])
    trainer = SimpleNamespace(strategy=FSDPStrategy(), callbacks=[pfa], max_epochs=3, world_size=1)
    with pytest.raises(ValueError, match=r"supports single-device and DDP strategies, got FSDPStrategy"):
        pfa.setup(trainer, ResidualNet(), "fit")


def test_a_compression_epoch_already_passed_on_resume_is_an_error(compressed_run):
    pfa = PFACallback(compress_at=[1, 4], verbose=False)
    trainer = quiet_trainer(max_epochs=4, callbacks=[pfa])
    with pytest.raises(ValueError, match=r"`compress_at` epoch 1 has already passed \(training resumes after epoch 3"):
        trainer.fit(ResidualNet(), *loaders(), ckpt_path=compressed_run.root / "train_end/epoch=2.ckpt")


def test_strategy_and_selection_objects_inside_a_fit():
    import pfa_lightning as pfa

    module = ResidualNet()
    full = count_params(module)
    train, val = loaders()
    callback = PFACallback(pfa.Footprint(0.6), selection=pfa.L1Max(), compress_at=[1], max_samples=64, round_to=4,
                           verbose=False)
    quiet_trainer(max_epochs=2, callbacks=[callback]).fit(module, train, val)
    assert count_params(module) <= 0.6 * full
    assert all(layer.kept % 4 == 0 or layer.kept == layer.original for layer in callback.recipes[0])
    assert any(layer.kept < layer.original for layer in callback.recipes[0])
    assert callback.recipes[0].strategy == {"name": "footprint", "ratio": 0.6, "metric": "params", "allocation": "kl"}
    assert callback.recipes[0].selection == "l1_max"
    with pytest.raises(pfa.PFAError, match=r"Options \['ratio'\] only apply to a strategy given by name"):
        PFACallback(pfa.KL(), ratio=0.5, compress_at=[1])
    # a shortcut that repeats the object's own option (what conf/pfa/footprint.yaml interpolates) is no conflict
    assert PFACallback(pfa.Footprint(0.5), ratio=0.5, metric="params", compress_at=[1]).strategy == pfa.Footprint(0.5)
    with pytest.raises(pfa.PFAError, match=r"Options \['ratio'\] only apply to a strategy given by name"):
        PFACallback(pfa.Footprint(0.5), ratio=0.3, compress_at=[1])


def test_compression_metrics_can_be_monitored_and_a_best_checkpoint_from_before_the_surgery_is_refused(tmp_path):
    torch.manual_seed(0)
    module = ResidualNet()
    pfa = PFACallback(compress_at=[1], strategy="footprint", ratio=0.5, metric="params", verbose=False)
    best = ModelCheckpoint(dirpath=tmp_path / "best", monitor="val_acc", mode="max", save_top_k=1)
    smallest = ModelCheckpoint(dirpath=tmp_path / "small", monitor="pfa/params_ratio", mode="min", save_top_k=1,
                               filename="{epoch}-{pfa/params_ratio:.2f}", auto_insert_metric_name=False)
    every_val_end = ModelCheckpoint(dirpath=tmp_path / "val", filename="{epoch}", save_top_k=-1,
                                    save_on_train_epoch_end=False, monitor="pfa/compressions")
    trainer = quiet_trainer(max_epochs=3, callbacks=[pfa, best, smallest, every_val_end], enable_checkpointing=True)
    train, val = loaders()
    trainer.fit(module, train, val)
    assert trainer.callback_metrics["pfa/params_ratio"] <= 0.5 and trainer.callback_metrics["pfa/compressions"] == 1
    assert "pfa/acc_after" in trainer.callback_metrics  # the compression's accuracies, monitorable too
    assert float(Path(smallest.best_model_path).stem.split("-")[1]) <= 0.5  # the metric in the file name
    # best val_acc restarted with the cut network: never the full network, nor the just-cut one under its score
    assert trainer.checkpoint_callback is best and len(history_of(best.best_model_path)) == 1
    assert not Path(best.best_model_path).name.startswith("epoch=0")
    trainer.validate(module, val, ckpt_path="best", verbose=False)  # loads
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(PFAError, match=r"written before 1 of this fit's 1 PFA compression"):
        trainer.validate(module, val, ckpt_path=tmp_path / "val" / "epoch=0.ckpt", verbose=False)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())  # left as it was
    assert load_compressed(ResidualNet, tmp_path / "val" / "epoch=0.ckpt").state_dict().keys() == before.keys()


def test_after_a_surgery_checkpoint_and_early_stopping_scores_start_over():
    from pytorch_lightning import Trainer
    from pytorch_lightning.callbacks import EarlyStopping

    from pfa_lightning.callback.monitors import restart_monitors

    checkpoint, stopping = ModelCheckpoint(monitor="val_acc", mode="max"), EarlyStopping(monitor="val_acc", mode="max")
    trainer = Trainer(callbacks=[checkpoint, stopping], logger=False, enable_progress_bar=False)
    checkpoint.best_model_path, checkpoint.best_model_score = "full.ckpt", torch.tensor(0.9)
    checkpoint.best_k_models = {"full.ckpt": torch.tensor(0.9)}
    stopping.wait_count, stopping.best_score = 3, torch.tensor(0.9)
    assert sorted(restart_monitors(trainer, verbose=False)) == ["EarlyStopping(monitor='val_acc')",
                                                                "ModelCheckpoint(monitor='val_acc')"]
    assert checkpoint.best_model_path == "" and checkpoint.best_k_models == {} and checkpoint.kth_value == -float("inf")
    assert stopping.wait_count == 0 and stopping.best_score == -float("inf")
