"""An image classifier LightningModule for the experiments (any network from ``pfa_lightning.models``).

Its hyper-parameters are plain values (no partials or modules), so checkpoints load with
``torch.load(weights_only=True)`` and ``load_compressed(ImageClassifier, path)`` needs no arguments.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from pfa_lightning.models import MODEL_NAMES, build
from pfa_lightning.validation import check_choice, check_positive

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("cosine", "step", "none")


class ImageClassifier(pl.LightningModule):
    """Cross-entropy classification of images with a network built by name.

    Args:
        arch: a name from ``pfa_lightning.models.MODEL_NAMES``.
        num_classes, in_channels, width: passed to :func:`pfa_lightning.models.build`.
        input_size: image side, for the models whose classifier depends on it (VGG, SimpleCNN).
        optimizer: ``sgd`` (Nesterov momentum ``momentum``), ``adam`` or ``adamw``; ``lr``, ``weight_decay``.
        scheduler: ``cosine`` (over the whole fit, ``trainer.max_epochs``), ``step`` (x0.1 every
            ``step_size`` epochs) or ``none``.

    Example:
        >>> module = ImageClassifier("vgg16", num_classes=10, lr=0.05)
    """

    def __init__(self, arch: str = "vgg16", num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
                 optimizer: str = "sgd", lr: float = 0.05, weight_decay: float = 5e-4, momentum: float = 0.9,
                 scheduler: str = "cosine", step_size: int = 30, input_size: int = 32) -> None:
        super().__init__()
        check_choice("arch", arch.lower() if isinstance(arch, str) else arch, MODEL_NAMES)
        check_choice("optimizer", optimizer, OPTIMIZERS)
        check_choice("scheduler", scheduler, SCHEDULERS)
        check_positive("lr", lr)
        self.save_hyperparameters()
        sized = {"input_size": input_size} if arch.startswith("vgg") or arch == "simplecnn" else {}
        self.net: nn.Module = build(arch, num_classes=num_classes, in_channels=in_channels, width=width, **sized)
        self.criterion = nn.CrossEntropyLoss()
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: Any, stage: str, metric: MulticlassAccuracy) -> Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = self.criterion(logits, y)
        metric(logits, y)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage != "train", sync_dist=True)
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val", self.val_acc)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test", self.test_acc)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        if hp.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum,
                                                         weight_decay=hp.weight_decay, nesterov=hp.momentum > 0)
        elif hp.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return opt
        if hp.scheduler == "cosine":
            epochs = max(1, int(self.trainer.max_epochs or 1)) if self._trainer is not None else 1
            sched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        else:
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=hp.step_size, gamma=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
