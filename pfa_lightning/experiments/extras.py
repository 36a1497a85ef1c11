"""The optional integrations (pyproject's extras): asking for one that is not installed is one line saying what
to install, not an ImportError from deep inside Lightning or Hydra."""

from __future__ import annotations

import importlib.util
import sys
from typing import Sequence

from pfa_lightning.errors import PFAError

# what a command-line choice needs: (module to find, the extra that installs it)
CHOICES = {"hydra/launcher=slurm": ("hydra_plugins.hydra_submitit_launcher", "submitit"),
           "hydra/launcher=local": ("hydra_plugins.hydra_submitit_launcher", "submitit"),
           "logger=wandb": ("wandb", "wandb")}


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None
        return False


def require(module: str, wanted: str, extra: str) -> None:
    """Raise one PFAError when ``module`` (needed by ``wanted``) is not installed, naming the extra."""
    if not installed(module):
        raise PFAError(f"{wanted} needs {module.split('.')[-1]}, which is not installed: "
                       f'pip install "pfa_lightning[{extra}]" (or pip install -e ".[{extra}]" in the repository).')


def check_command_line(argv: Sequence[str] | None = None) -> str | None:
    """The one-line hint for a command-line choice whose extra is missing (Hydra would fail composing it,
    before the run, with its own message), else None."""
    for arg in sys.argv[1:] if argv is None else argv:
        for choice, (module, extra) in CHOICES.items():
            key, _, value = choice.partition("=")
            if arg.lstrip("+~").split("=", 1)[0] == key and value in arg.split("=", 1)[1].split(","):
                try:
                    require(module, choice, extra)
                except PFAError as err:
                    return str(err)
    return None


__all__ = ["CHOICES", "check_command_line", "installed", "require"]
