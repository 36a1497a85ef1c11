"""Runs run.py as if W&B and the submitit launcher were not installed (``pip install .`` without extras):
``python tests/helpers/without_extras.py <run.py arguments>``."""

import runpy
import sys
from pathlib import Path

for name in ("wandb", "submitit", "hydra_plugins.hydra_submitit_launcher"):
    sys.modules[name] = None  # an import of it raises ImportError, find_spec ValueError: as if absent

sys.argv = ["run.py", *sys.argv[1:]]
runpy.run_path(str(Path(__file__).resolve().parents[2] / "run.py"), run_name="__main__")
