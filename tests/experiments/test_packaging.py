"""The installed product: a plain (non-editable) ``pip install`` ships the Hydra configs inside the package,
and the ``pfa`` command runs the experiments from any directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_the_package_list_names_every_package_and_the_configs():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "pfa_lightning").rglob("__init__.py")}
    assert set(setuptools["packages"]) == found | {"pfa_lightning.conf"}
    assert setuptools["package-dir"] == {"pfa_lightning.conf": "conf"}


def test_the_pfa_command_runs_from_a_plain_install_outside_the_repository(tmp_path):
    source = tmp_path / "source"  # build from a copy: the build writes build/ and *.egg-info next to the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("pfa_lightning", "conf"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(tmp_path / "wheel")],
                   check=True, capture_output=True, timeout=300)
    [wheel] = (tmp_path / "wheel").glob("pfa_lightning-*.whl")
    target = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    assert (target / "pfa_lightning" / "conf" / "config.yaml").is_file()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    where = subprocess.run([sys.executable, "-c", "import pfa_lightning; print(pfa_lightning.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(target)  # the installed copy, not the repository
    usage = subprocess.run([str(target / "bin" / "pfa"), "--help"], cwd=elsewhere, env=env, capture_output=True,
                           text=True, timeout=120)
    assert usage.returncode == 0 and usage.stdout.startswith("pfa_lightning: train a network, compress it")
    assert "model: default, resnet20" in usage.stdout and "torchvision" in usage.stdout
    result = subprocess.run(
        [str(target / "bin" / "pfa"), "model=simplecnn", "model.width=0.25", "pfa=kl", "train.epochs=1",
         "train.finetune_epochs=1", "train.batch_limit=2", "pfa.max_samples=64", "pfa.verbose=false", "logger=none",
         "trainer.enable_progress_bar=false"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    [results] = (elsewhere / "outputs").glob("simplecnn-digits-kl/*/results.json")
    hydra = yaml.safe_load((results.parent / ".hydra" / "hydra.yaml").read_text())["hydra"]
    sources = {s["provider"]: (s["schema"], s["path"]) for s in hydra["runtime"]["config_sources"]}
    assert sources["main"] == ("pkg", "pfa_lightning.conf")  # the installed package, not a directory
    assert (results.parent / "final.ckpt").is_file()
