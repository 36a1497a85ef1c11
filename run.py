"""Train, compress with Principal Filter Analysis, fine-tune, test — composed by Hydra.

    python run.py model=vgg16 pfa=kl
    python run.py -m pfa=energy pfa.threshold=0.8,0.9,0.95,0.99
    python run.py experiment=vgg16_cifar10_kl trainer=gpu

See conf/config.yaml for the groups and README.md for more. Installed, the same app is the `pfa`
command (pfa_lightning/experiments/cli.py), which reads these configs from the package.
"""

from __future__ import annotations

from pathlib import Path

import hydra

from pfa_lightning.experiments.cli import experiment, with_extras_checked

# absolute: Hydra resolves a relative path from the module defining `experiment`, not from this file
main = with_extras_checked(hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parent / "conf"),
                                      config_name="config")(experiment))

if __name__ == "__main__":
    main()
