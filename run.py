"""Train, compress with Principal Filter Analysis, fine-tune, test — composed by Hydra.

    python run.py model=vgg16 pfa=kl
    python run.py -m pfa=energy pfa.threshold=0.8,0.9,0.95,0.99
    python run.py experiment=vgg16_cifar10_kl trainer=gpu

See conf/config.yaml for the groups and README.md for more.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | tuple[float, ...] | None:
    from hydra.core.hydra_config import HydraConfig

    from pfa_lightning.experiments.runner import objective_values, run, user_error_message

    try:
        results = run(cfg)
    except Exception as err:  # a user's mistake is one clear line, anything else a full traceback
        message = user_error_message(err)
        if message is None:
            raise
        print(f"Error: {message}", file=sys.stderr)
        if HydraConfig.get().mode.name == "MULTIRUN":  # let the other jobs run; the sweep exits 1 at its end
            Path(HydraConfig.get().runtime.output_dir, "error.txt").write_text(message + "\n")
            return objective_values(cfg, None)  # NaN objectives: a sweeper records a failed trial and goes on
        sys.exit(1)
    return objective_values(cfg, results)  # what a Hydra sweeper optimises: acc_final, or `objectives`


if __name__ == "__main__":
    main()
