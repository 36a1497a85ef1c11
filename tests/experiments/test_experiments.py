"""Hydra experiments: every config option and preset runs a few batches; end to end on digits;
multirun summary; W&B offline; clear errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from pfa_lightning.experiments.runner import run
from tests.helpers.fake_cifar import write_fake_cifar
from tests.helpers.fake_idx import write_fake_fashion_mnist
from tests.helpers.wandb_reader import read_offline_run

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
FAST = ["train.epochs=1", "train.finetune_epochs=1", "train.batch_limit=2", "model.width=0.125",
        "pfa.max_samples=64", "dataset.batch_size=16", "trainer.enable_progress_bar=false"]


def options(group: str) -> list[str]:
    """The choices of a config group (``default.yaml`` is the group's base, not a choice)."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if p.stem != "default")


@pytest.fixture
def fake_cifar_dir(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10, CIFAR100

    for name, cls in (("cifar10", CIFAR10), ("cifar100", CIFAR100)):
        lists = write_fake_cifar(tmp_path / "data", name, per_file=16 if name == "cifar10" else 64)
        monkeypatch.setattr(cls, "train_list", lists["train_list"])
        monkeypatch.setattr(cls, "test_list", lists["test_list"])
        monkeypatch.setattr(cls, "meta", lists["meta"])
    return tmp_path / "data"


def compose_and_run(overrides: list[str], out: Path) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(out)
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        results = run(cfg, output_dir=out)
    GlobalHydra.instance().clear()
    return results


def _cases() -> list[list[str]]:
    cases = [[f"model={m}"] for m in options("model")]
    cases += [[f"dataset={d}"] for d in options("dataset") if d != "imagefolder"]
    cases += [["dataset=synthetic", "dataset.size=64", "model=vgg11"]]
    cases += [[f"pfa={p}"] for p in options("pfa")]
    cases += [["pfa=kl", "pfa.compensate=true", "pfa.selection=weight_l1", "pfa.optimizer_state=transplant"],
              ["pfa=footprint", "pfa.metric=flops", "pfa.selection=random"],
              ["pfa=energy", "pfa.selection={_target_:pfa_lightning.Random,seed:3}", "pfa.verbose=false"],
              ["pfa=footprint", "pfa.allocation=energy", "pfa.distill={temperature:2.0,weight:0.5}",
               "pfa.recalibrate=false"]]
    cases += [["trainer=gpu", "trainer.accelerator=cpu", "trainer.precision=32-true"],
              ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1"], ["trainer=cpu"]]
    cases += [[f"logger={l}"] for l in options("logger")]
    cases += [[f"experiment={e}"] for e in options("experiment")]
    return cases


@pytest.mark.parametrize("overrides", _cases(), ids=lambda o: " ".join(o))
def test_every_option_and_preset_runs_a_few_batches(overrides, tmp_path, fake_cifar_dir):
    chosen = " ".join(overrides)
    preset = "experiment=" in chosen
    cifar = "cifar" in chosen
    setup = [] if preset or "model=" in chosen else ["model=simplecnn"]
    if "logger=" not in chosen:
        setup.append("logger=none")
    if cifar:
        setup += [f"dataset.data_dir={fake_cifar_dir}", "dataset.download=false", "dataset.num_workers=0"]
    elif "fashion_mnist" in chosen:
        setup.append(f"dataset.root={write_fake_fashion_mnist(tmp_path / 'fashion', n_train=64, n_test=32)}")
    elif "dataset=" not in chosen:
        setup += ["dataset=synthetic", "dataset.num_samples=64"]
    elif "synthetic" in chosen:
        setup.append("dataset.num_samples=64")
    fast = [o for o in FAST if not (o.startswith("pfa.") and "pfa=none" in chosen)]
    if "model=torchvision" in chosen or "model=timm" in chosen:  # library models keep their own width
        fast.remove("model.width=0.125")
    results = compose_and_run(overrides + setup + fast, tmp_path)
    assert (tmp_path / "results.json").exists()
    assert results["acc_final"] is not None and 0.0 <= results["acc_final"] <= 1.0
    if "pfa=none" not in chosen:
        assert results["params_compressed"] <= results["params_full"]
        assert results["recipe"] is not None


def test_imagefolder_option(tmp_path):
    from PIL import Image

    for part in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / "imgs" / part / c).mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (8, 8), (i * 30, 10 * (c == "a"), 0)).save(tmp_path / "imgs" / part / c / f"{i}.png")
    results = compose_and_run(["dataset=imagefolder", f"dataset.root={tmp_path / 'imgs'}", "model=simplecnn",
                               "logger=none", "dataset.num_workers=0", *FAST], tmp_path / "out")
    assert results["acc_final"] is not None


def _cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_end_to_end_on_digits_with_wandb_offline(tmp_path):
    out = tmp_path / "run"
    proc = _cli(["model=simplecnn", "model.width=0.5", "pfa=kl", "logger=wandb", "train.epochs=2",
                 "train.finetune_epochs=1", f"hydra.run.dir={out}", "logger.wandb.tags=[smoke,digits]"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    for key in ("params_full", "params_compressed", "flops_full", "flops_compressed", "acc_full",
                "acc_after_surgery", "acc_final", "recipe"):
        assert results[key] is not None, key
    assert results["params_compressed"] < results["params_full"]
    assert results["flops_compressed"] < results["flops_full"]
    assert results["acc_full"] > 0.5 and results["acc_final"] > 0.5  # real accuracies on the digits test split
    assert (results["epochs_full"], results["epochs_final"]) == (2, 3)  # what each accuracy is
    assert results["compressions"][0]["accuracy_on"] == "test"
    assert "full network after 2 epochs" in proc.stderr + proc.stdout
    assert (out / "final.ckpt").exists() and (out / "recipe.txt").exists()
    assert (out / "spectra.png").exists() and (out / "accuracy_vs_footprint.png").exists()
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    logged = read_offline_run(runs[0])
    summary = logged["summary"]
    assert summary["test/acc"] == pytest.approx(results["acc_final"])
    assert summary["results/params_compressed"] == results["params_compressed"]
    assert summary["pfa/params_after"] == results["params_compressed"]
    epochs = [row["val/acc"] for row in logged["history"] if "val/acc" in row]
    assert len(epochs) == 3  # per-epoch metrics: 2 + 1 epochs
    assert any("pfa/recipe/_type" in row for row in logged["history"])  # the recipe table
    assert "pfa/spectra/path" in summary and "pfa/accuracy_vs_footprint/path" in summary
    assert logged["config"]["pfa"]["strategy"] == {"_target_": "pfa_lightning.KL"}  # the resolved config
    assert logged["tags"] == ["smoke", "digits"]
    artifacts = {a["type"]: a for a in logged["artifacts"]}  # the checkpoint and the recipe, with their worth
    assert artifacts["model"]["files"] == ["final.ckpt"] and artifacts["recipe"]["files"] == ["recipe.json"]
    for artifact in (artifacts["model"], artifacts["recipe"]):
        assert artifact["metadata"]["params_ratio"] == pytest.approx(results["params_ratio"])
        assert artifact["metadata"]["acc_final"] == pytest.approx(results["acc_final"])


def test_two_job_multirun_writes_summary_and_plot(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _cli(["-m", "dataset=synthetic", "model=simplecnn", "model.width=0.25", "pfa=energy",
                 "pfa.threshold=0.8,0.95", "logger=csv", *FAST[:3], "dataset.num_samples=96",
                 f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert [r["pfa_threshold"] for r in rows] == ["0.8", "0.95"]
    assert all(float(r["params_compressed"]) <= float(r["params_full"]) for r in rows)
    assert (sweep / "accuracy_vs_footprint.png").stat().st_size > 1000


def test_clear_errors_for_bad_input(tmp_path):
    proc = _cli(["model=vgg17"], tmp_path)
    assert proc.returncode != 0 and "Could not find 'model/vgg17'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _cli(["pfa=energy", "pfa.threshold=1.5", "dataset=synthetic", "model.width=0.125",
                 f"hydra.run.dir={tmp_path / 'bad'}"], tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "Error: `threshold` must be a number in (0, 1], got 1.5."
    assert "Traceback" not in proc.stderr
    proc = _cli(["dataset=cifar10", f"dataset.data_dir={tmp_path / 'none'}", "dataset.download=false",
                 f"hydra.run.dir={tmp_path / 'bad2'}"], tmp_path)
    assert proc.returncode == 1 and "cifar10 was not found in" in proc.stderr and "Traceback" not in proc.stderr


def test_a_failed_job_does_not_stop_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    # the first job has an invalid threshold: it fails with one line, the second still runs
    proc = _cli(["-m", "dataset=synthetic", "model=simplecnn", "model.width=0.25", "pfa=energy",
                 "pfa.threshold=7,0.9", "logger=none", *FAST[:3], "dataset.num_samples=96",
                 f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 1
    assert "Error: `threshold` must be a number in (0, 1], got 7" in proc.stderr
    assert "Error: 1 job(s) of the sweep failed (0)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (sweep / "0" / "error.txt").exists()
    assert json.loads((sweep / "1" / "results.json").read_text())["acc_final"] is not None
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert [r["job"] for r in rows] == ["1"]
    assert (sweep / "accuracy_vs_footprint.png").exists()


def test_ddp_run_writes_its_outputs(tmp_path):
    out = tmp_path / "ddp"
    proc = _cli(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "dataset=synthetic",
                 "dataset.num_samples=96", "model=simplecnn", "logger=none", *FAST[:3], "model.width=0.25",
                 f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["params_compressed"] < results["params_full"]
    assert (out / "final.ckpt").exists() and (out / "recipe.txt").exists()


def test_submitit_local_launcher_runs_a_two_job_sweep(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    proc = _cli(["-m", "hydra/launcher=local", "dataset=synthetic", "model=simplecnn", "model.width=0.25",
                 "pfa=kl,none", "logger=none", *FAST[:3], "dataset.num_samples=96", f"hydra.sweep.dir={sweep}"],
                tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.parent.name for p in sweep.glob("*/results.json")) == ["0", "1"]
    assert len(list(csv.DictReader((sweep / "sweep_summary.csv").open()))) == 2


def test_a_run_killed_during_fine_tuning_resumes_from_last_ckpt_without_a_second_compression(tmp_path):
    import csv

    import torch

    common = ["dataset=synthetic", "model=simplecnn", "model.width=0.25", "pfa=kl", "logger=csv",
              "pfa.max_samples=128", "train.epochs=1", "train.finetune_epochs=2", "trainer.enable_progress_bar=false"]
    killed = tmp_path / "killed"
    proc = _cli([*common, f"hydra.run.dir={killed}",
                 "+callbacks.killer={_target_: tests.helpers.killer.KillAt, epoch: 1, batch: 1}"], tmp_path)
    assert proc.returncode == -9, proc.stderr[-3000:]  # SIGKILL in the second epoch (the first of fine-tuning)
    last = killed / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    # written at the end of the compression epoch, after the surgery: the cut network and its history
    assert saved["epoch"] == 0 and len(saved["pfa"]["history"]) == 1
    kept = {layer["name"]: len(layer["kept_indices"]) for layer in saved["pfa"]["history"][0]["recipe"]["layers"]}
    assert all(saved["state_dict"][f"{name}.weight"].shape[0] == k for name, k in kept.items())
    assert any(layer["original"] > len(layer["kept_indices"]) for layer in saved["pfa"]["history"][0]["recipe"]["layers"])
    resumed = tmp_path / "resumed"
    proc = _cli([*common, f"hydra.run.dir={resumed}", f"train.ckpt_path={last}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((resumed / "results.json").read_text())
    assert len(results["compressions"]) == 1  # no second compression
    assert results["recipe"]["layers"] == saved["pfa"]["history"][0]["recipe"]["layers"]  # the same widths
    rows = list(csv.DictReader(next((resumed / "csv").rglob("metrics.csv")).open()))
    trained = sorted({int(r["epoch"]) for r in rows if r.get("val/acc")})
    assert trained == [1, 2]  # only the unfinished epoch redone, then the last one


def test_optuna_multi_objective_sweep_runs_four_trials_on_digits(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    import yaml

    sweep = tmp_path / "sweep"
    proc = _cli(["-m", "hparams_search=energy_nsga2", "hydra.sweeper.n_trials=4",
                 "hydra.sweeper.sampler.population_size=2", "model=simplecnn", "model.width=0.25", "train.epochs=1",
                 "train.finetune_epochs=1", "train.batch_limit=2", "pfa.max_samples=64", "dataset.batch_size=16",
                 "trainer.enable_progress_bar=false", "logger=none", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert len(jobs) == 4
    thresholds = {job["settings"]["pfa_threshold"] for job in jobs}
    assert len(thresholds) > 1  # the sampler chose different thresholds
    front = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert front["name"] == "optuna" and front["solutions"]  # the Pareto front: accuracy and parameter ratio
    returned = {(round(job["acc_final"], 6), round(job["params_ratio"], 6)) for job in jobs}
    assert all((round(s["values"][0], 6), round(s["values"][1], 6)) in returned for s in front["solutions"])
