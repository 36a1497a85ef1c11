"""The ``pfa`` command: the Hydra app of ``run.py``, reading the configs shipped inside the package
(``pfa_lightning.conf``, the repository's ``conf/``), so it works from any directory after ``pip install``.

    pfa model=vgg16 pfa=kl
    pfa -m pfa=energy pfa.threshold=0.8,0.9,0.95
    pfa model=torchvision model.name=resnet18 model.weights=resnet18.pt train.epochs=0

Outputs go under the current directory (``outputs/`` and ``multirun/``), as with ``python run.py``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONFIG_MODULE = "pfa_lightning.conf"


def experiment(cfg: DictConfig) -> float | tuple[float, ...] | None:
    """Run one composed experiment; a user's mistake is one clear line (exit 1), anything else a traceback.
    Returns what a Hydra sweeper optimises: ``acc_final``, or the configured ``objectives``."""
    from hydra.core.hydra_config import HydraConfig

    from pfa_lightning.experiments.runner import objective_values, run, user_error_message

    capturing = logging._warnings_showwarning is not None  # type: ignore[attr-defined]  # (the host's choice)
    logging.captureWarnings(True)  # warnings into run.log too, through Hydra's handlers (printed once, as log lines)
    try:
        results = run(cfg)
    except Exception as err:
        message = user_error_message(err)
        if message is None:
            raise
        print(f"Error: {message}", file=sys.stderr)
        _to_log_files(message)
        if HydraConfig.get().mode.name == "MULTIRUN":  # let the other jobs run; the sweep exits 1 at its end
            Path(HydraConfig.get().runtime.output_dir, "error.txt").write_text(message + "\n")
            return objective_values(cfg, None)  # NaN objectives: a sweeper records a failed trial and goes on
        sys.exit(1)
    finally:
        logging.captureWarnings(capturing)
    return objective_values(cfg, results)


def _to_log_files(message: str) -> None:
    """The error into run.log too: to the file handlers only (Hydra's console handler would print it twice)."""
    record = logging.LogRecord("pfa_lightning", logging.ERROR, __file__, 0, "Error: %s", (message,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def with_extras_checked(app):
    """``app`` (a Hydra main), refusing first a command-line choice whose optional extra is not installed."""
    def main() -> None:
        from pfa_lightning.experiments.extras import check_command_line

        hint = check_command_line()
        if hint is not None:
            print(f"Error: {hint}", file=sys.stderr)
            sys.exit(1)
        app()
    main.__doc__ = app.__doc__
    return main


main = with_extras_checked(hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}",
                                      config_name="config")(experiment))

if __name__ == "__main__":
    main()
