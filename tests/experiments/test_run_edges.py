"""run.py at the edges (issue 20): bad numbers, resuming with other settings, two runs into one directory."""

from __future__ import annotations

import json

import pytest

from pfa_lightning import PFAError
from tests.experiments.test_experiments import FAST, compose_and_run

SMALL = ["model=simplecnn", "dataset=synthetic", "dataset.num_samples=64", "logger=none", *FAST]


@pytest.mark.parametrize("override, message", [
    ("train.epochs=abc", r"`train.epochs` must be an integer >= 0, got 'abc'"),
    ("train.epochs=-1", r"`train.epochs` must be an integer >= 0, got -1"),
    ("train.finetune_epochs=abc", r"`train.finetune_epochs` must be an integer >= 0, got 'abc'"),
    ("train.finetune_epochs=-2", r"`train.finetune_epochs` must be an integer >= 0, got -2"),
    ("seed=abc", r"`seed` must be an integer, got 'abc'"),
    ("trainer.max_epochs=abc", r"`trainer.max_epochs` must be an integer >= -1 or None \(-1: no limit\), got 'abc'"),
    ("dataset.size=-3", r"`dataset.size` must be an integer >= 8, got -3"),
    ("pfa.compress_at=abc", r"`pfa.compress_at` must be an epoch number >= 0 or a non-empty list .*got 'abc'"),
    ("pfa.compress_at=[5]", r"`pfa.compress_at` epoch 5 is beyond the run's 2 epochs \(train.epochs=1 \+ "
                            r"train.finetune_epochs=1\)"),
])
def test_bad_run_numbers_are_one_clear_error_naming_the_setting(override, message, tmp_path):
    with pytest.raises(PFAError, match=message):
        compose_and_run(SMALL + [override], tmp_path)
    assert not (tmp_path / "results.json").exists()


def test_resuming_with_other_settings_is_refused_naming_them(tmp_path):
    first = tmp_path / "first"
    compose_and_run(SMALL + ["pfa=kl"], first)
    last = first / "checkpoints" / "last.ckpt"
    with pytest.raises(PFAError, match=r"was written by a run with other settings \(pfa.strategy: \{'_target_': "
                                       r"'pfa_lightning.KL'\} there, \{'_target_': 'pfa_lightning.Energy', 'threshold': "
                                       r"0.9\} here; pfa.threshold: None there, 0.9 here\)"):
        compose_and_run(SMALL + ["pfa=energy", "pfa.threshold=0.9", f"train.ckpt_path={last}"], tmp_path / "second")
    # the same settings resume (nothing left to train: the fit ends at once)
    results = compose_and_run(SMALL + ["pfa=kl", f"train.ckpt_path={last}"], tmp_path / "third")
    assert results["settings"]["pfa_strategy"] == "kl"


def test_a_second_run_into_the_same_directory_is_refused(tmp_path):
    results = compose_and_run(SMALL + ["pfa=kl"], tmp_path)
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(PFAError, match=r"holds another run's results.json, final.ckpt, checkpoints/last.ckpt, which "
                                       r"this run would overwrite: .*train.ckpt_path=.*last.ckpt"):
        compose_and_run(SMALL + ["pfa=energy", "pfa.threshold=0.9"], tmp_path)
    assert (tmp_path / "results.json").read_text() == before and json.loads(before)["name"] == results["name"]
    # resuming the run that owns the directory is allowed
    compose_and_run(SMALL + ["pfa=kl", f"train.ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"], tmp_path)


def test_an_interrupted_run_says_how_to_resume_and_a_failed_one_logs_its_error(tmp_path):
    from tests.experiments.test_experiments import _cli

    common = ["dataset=synthetic", "dataset.num_samples=64", "model=simplecnn", "model.width=0.25", "logger=none",
              "pfa.max_samples=64", "train.epochs=1", "train.finetune_epochs=2", "trainer.enable_progress_bar=false"]
    out = tmp_path / "interrupted"
    proc = _cli([*common, f"hydra.run.dir={out}",
                 "+callbacks.stop={_target_: tests.helpers.killer.InterruptAt, epoch: 1, batch: 1}"], tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    hint = f"Resume with train.ckpt_path={out / 'checkpoints' / 'last.ckpt'}"
    assert hint in proc.stderr + proc.stdout and hint in (out / "run.log").read_text()
    assert "`weights_only` was not set" not in proc.stderr + proc.stdout  # every checkpoint says what it holds

    failed = tmp_path / "failed"
    proc = _cli([*common, f"hydra.run.dir={failed}", "train.epochs=abc"], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "Error: `train.epochs` must be an integer >= 0, got 'abc'." in proc.stderr
    assert (proc.stdout + proc.stderr).count("must be an integer >= 0, got 'abc'") == 1  # one line on the terminal
    assert "Error: `train.epochs` must be an integer >= 0, got 'abc'." in (failed / "run.log").read_text()


def test_a_variant_of_the_users_own_keeps_its_name():
    from omegaconf import OmegaConf

    from pfa_lightning.experiments import _strategy_label

    built = OmegaConf.create({"_target_": "pfa_lightning.Footprint", "ratio": 0.3})
    assert _strategy_label("my_latency", built) == "my_latency"
    assert _strategy_label("kl", built) == "footprint" and _strategy_label("footprint", built) == "footprint"
    assert _strategy_label("kl", OmegaConf.create({"ratio": 0.3})) == "kl"  # no _target_: the choice


def test_a_runs_warnings_reach_its_log_file(tmp_path):
    from tests.experiments.test_experiments import _cli

    out = tmp_path / "run"
    proc = _cli(["dataset=synthetic", "dataset.num_samples=64", "model=simplecnn", "model.width=0.25", "logger=none",
                 "pfa=footprint", "pfa.ratio=0.5", "pfa.depth=true", "pfa.max_samples=64", "train.epochs=1",
                 "train.finetune_epochs=0", "trainer.enable_progress_bar=false", f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = "has no residual block PFA can remove"
    assert said in (out / "run.log").read_text()
    assert (proc.stdout + proc.stderr).count(said) == 1  # on the terminal once


def test_the_run_name_carries_a_library_models_name():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tests.experiments.test_experiments import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        named = compose(config_name="config", overrides=["model=torchvision", "model.name=resnet18"],
                        return_hydra_config=True)
        plain = compose(config_name="config", return_hydra_config=True)
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(named)
        assert named.name == "torchvision-resnet18-digits-kl"
        HydraConfig.instance().set_config(plain)
        assert plain.name == "vgg16-digits-kl"
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("overrides, label", [
    ([], "kl"), (["pfa=uniform"], "uniform"), (["pfa=kl", "pfa.strategy=uniform"], "uniform"),
    (["pfa=kl", "pfa.strategy._target_=pfa_lightning.Energy", "+pfa.strategy.threshold=0.9"], "energy"),
    (["pfa=footprint", "pfa.strategy=footprint"], "footprint"), (["pfa=none"], "none"),
])
def test_the_run_name_follows_the_strategy_really_used(overrides, label):
    """``pfa=kl pfa.strategy=uniform`` runs Uniform: its folder and log say uniform, not kl."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from tests.experiments.test_experiments import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        assert cfg.name == f"vgg16-digits-{label}"
    GlobalHydra.instance().clear()


def test_a_claim_left_by_a_failed_run_is_taken_over_and_a_running_ones_refused(tmp_path):
    import os
    import socket

    from pfa_lightning.experiments.run_checks import CLAIM, claim_output_dir

    dead = 2 ** 22 + 12345  # above Linux's default pid_max: no such process
    (tmp_path / CLAIM).write_text(f"{socket.gethostname()} {dead}")
    claim_output_dir(tmp_path, None)  # the failed run left nothing else: the directory is free
    assert (tmp_path / CLAIM).read_text() == f"{socket.gethostname()} {os.getpid()}"
    with pytest.raises(PFAError, match=rf"is in use by another run \(pid {os.getpid()} on "):
        claim_output_dir(tmp_path, None)  # this process holds it and is running


def test_the_resume_identity_tells_data_sets_apart_and_ignores_reporting_settings(tmp_path):
    import argparse

    import torch
    from omegaconf import OmegaConf

    from pfa_lightning.experiments.run_checks import check_resume_settings, run_identity

    def cfg(dataset: str, **pfa):
        return OmegaConf.create({"model": {"arch": "vgg16", "width": 1.0},
                                 "dataset": {"_target_": "pfa_lightning.experiments.datamodules.CIFARDataModule",
                                             "name": dataset, "in_channels": 3},
                                 "pfa": {"strategy": "kl", "compress_at": [2], "verbose": True, **pfa}})

    assert run_identity(cfg("cifar10")) != run_identity(cfg("cifar100"))
    assert run_identity(cfg("cifar10")) == run_identity(cfg("cifar10", verbose=False, validate_after=False))
    assert run_identity(cfg("cifar10"))["dataset.name"] == "cifar10"
    # a checkpoint weights_only refuses is Lightning's to read: nothing compared, no weights_only advice
    odd = tmp_path / "odd.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": argparse.Namespace(a=1), "pfa_run_identity": {}}, odd)
    check_resume_settings(str(odd), run_identity(cfg("cifar10")))


def test_trainer_max_epochs_zero_reads_as_unset_as_the_runner_does():
    from omegaconf import OmegaConf

    from pfa_lightning.experiments.run_checks import check_run_settings

    check_run_settings(OmegaConf.create({"seed": 0, "train": {"epochs": 1, "finetune_epochs": 1, "batch_limit": None},
                                         "trainer": {"max_epochs": 0}, "pfa": {"strategy": "kl", "compress_at": [1]}}))
