"""The experiments layer: what ``run.py`` runs (Hydra configs in ``conf/``) on top of the callback.

- :mod:`~pfa_lightning.experiments.runner`: :func:`run` — train, compress, fine-tune, test, write results;
- :mod:`~pfa_lightning.experiments.module`: the :class:`ImageClassifier` LightningModule;
- :mod:`~pfa_lightning.experiments.datamodules`: digits, CIFAR-10/100, image folders, synthetic data;
- :mod:`~pfa_lightning.experiments.datasets`: the plain PyTorch data sets behind them (no Lightning);
- :mod:`~pfa_lightning.experiments.sweep`: the multirun summary; :mod:`~pfa_lightning.experiments.plots`.

Submodules are imported on use, so ``pfa_lightning.experiments.datasets`` needs no Lightning.
"""

from omegaconf import OmegaConf


def _model_label(choice: str, name: str | None = None) -> str:
    """The run name's model part: the config choice, and the library model's name when one is set
    (``model=torchvision model.name=resnet18`` -> ``torchvision-resnet18``)."""
    return f"{choice}-{name}" if name else str(choice)


SHIPPED = ("kl", "energy", "footprint", "uniform", "none")  # conf/pfa's variants, each named after its strategy


def _strategy_label(choice: str, strategy: object = None) -> str:
    """The run name's PFA part: the config choice, or the strategy really used when an override replaced a
    shipped variant's (``pfa=kl pfa.strategy=uniform`` -> ``uniform``; ``pfa.strategy._target_=pfa_lightning.Energy``
    -> ``energy``). A variant of the user's own keeps its name."""
    if str(choice) not in SHIPPED:
        return str(choice)
    if isinstance(strategy, str):
        used = strategy
    elif hasattr(strategy, "get"):
        used = str(strategy.get("_target_") or "").rsplit(".", 1)[-1]
    else:
        used = ""
    return str(choice) if not used or used.lower() == str(choice).lower() else used.lower()


# used by conf/config.yaml's `name` (and so by the output folder's name), for run.py, the pfa command and tests
if not OmegaConf.has_resolver("pfa_model_label"):
    OmegaConf.register_new_resolver("pfa_model_label", _model_label)
if not OmegaConf.has_resolver("pfa_strategy_label"):
    OmegaConf.register_new_resolver("pfa_strategy_label", _strategy_label)
