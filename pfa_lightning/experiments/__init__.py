"""The experiments layer: what ``run.py`` runs (Hydra configs in ``conf/``) on top of the callback.

- :mod:`~pfa_lightning.experiments.runner`: :func:`run` — train, compress, fine-tune, test, write results;
- :mod:`~pfa_lightning.experiments.module`: the :class:`ImageClassifier` LightningModule;
- :mod:`~pfa_lightning.experiments.datamodules`: digits, CIFAR-10/100, image folders, synthetic data;
- :mod:`~pfa_lightning.experiments.datasets`: the plain PyTorch data sets behind them (no Lightning);
- :mod:`~pfa_lightning.experiments.sweep`: the multirun summary; :mod:`~pfa_lightning.experiments.plots`.

Submodules are imported on use, so ``pfa_lightning.experiments.datasets`` needs no Lightning.
"""
