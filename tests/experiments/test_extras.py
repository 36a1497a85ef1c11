"""Install what you use (issue 21, item 5): W&B and the submitit launcher are extras; without them the default
job runs, and asking for one is a one-line hint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["model=simplecnn", "dataset=synthetic", "dataset.num_samples=64", "train.epochs=1", "train.finetune_epochs=1",
         "pfa.max_samples=64", "trainer.enable_progress_bar=false"]


def _without_extras(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "without_extras.py"), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


def test_the_extras_are_not_required_and_dev_has_them_all():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = " ".join(project["dependencies"])
    assert "wandb" not in required and "submitit" not in required
    extras = project["optional-dependencies"]
    dev = " ".join(extras["dev"])
    for name in ("wandb", "submitit", "optuna", "export", "timm"):
        for requirement in extras[name]:
            assert requirement in dev, (name, requirement)


def test_without_wandb_and_submitit_the_default_job_runs_and_asking_for_them_says_what_to_install(tmp_path):
    out = tmp_path / "run"
    proc = _without_extras([*SMALL, "logger=csv", f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "results.json").exists()
    for choice, extra in (("logger=wandb", "wandb"), ("hydra/launcher=slurm", "submitit")):
        proc = _without_extras([*SMALL, choice, f"hydra.run.dir={tmp_path / extra}"], tmp_path)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert f'is not installed: pip install "pfa_lightning[{extra}]"' in proc.stderr


@pytest.mark.parametrize("argv, hint", [(["logger=wandb"], "wandb"), (["-m", "hydra/launcher=local", "x=1"], "submitit"),
                                        (["logger=csv"], None)])
def test_the_command_line_check(argv, hint, monkeypatch):
    from pfa_lightning.experiments import extras

    monkeypatch.setattr(extras, "installed", lambda module: False)
    message = extras.check_command_line(argv)
    assert (message is None) if hint is None else f"pfa_lightning[{hint}]" in message
