"""An image classifier LightningModule for the experiments: a network from ``pfa_lightning.models``, or any
torchvision or timm model by name, from random or given weights.

Its hyper-parameters are plain values (no partials or modules), so checkpoints load with
``torch.load(weights_only=True)`` and ``load_compressed(ImageClassifier, path)`` needs no arguments.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from pfa_lightning.models import MODEL_NAMES, build
from pfa_lightning.models.zoo import LIBRARIES, build_library_model, load_weights
from pfa_lightning.validation import check_choice, check_positive, fail, is_sequence

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("cosine", "step", "none")


def can_fuse(params: Sequence[Tensor]) -> bool | None:
    """``True`` when every parameter is a floating-point CPU tensor: torch's fused CPU kernels step them in
    one pass instead of a loop over tensors, the same update up to floating-point rounding (VGG-16's SGD
    step on 2 cores: 11 ms instead of 24). ``None`` (torch's default) otherwise: on GPUs the default is already
    multi-tensor, and Lightning refuses gradient clipping for fused optimizers under mixed precision."""
    return True if params and all(p.device.type == "cpu" and p.is_floating_point() for p in params) else None


class ImageClassifier(pl.LightningModule):
    """Cross-entropy classification of images with a network built by name.

    Args:
        arch: a name from ``pfa_lightning.models.MODEL_NAMES``, or ``"torchvision"`` / ``"timm"``
            for the model ``name`` of that library (random weights: nothing is downloaded).
        name, model_kwargs: the torchvision/timm model and its constructor's extra arguments
            (e.g. ``{"img_size": 32}`` for a timm ViT).
        num_classes, in_channels, width: passed to :func:`pfa_lightning.models.build` (``width``:
            bundled models only).
        weights: a ``state_dict`` file or a checkpoint (e.g. Lightning's) to start from, see
            :func:`~pfa_lightning.models.zoo.load_weights`. Not kept in the hyperparameters, so
            loading this module's own checkpoint later does not need the file.
        input_size: image side, for the models whose classifier depends on it (VGG, SimpleCNN).
        optimizer: ``sgd`` (Nesterov momentum ``momentum``), ``adam`` or ``adamw``; ``lr``, ``weight_decay``.
        scheduler: ``cosine`` (over the whole fit, ``trainer.max_epochs``, or over each stage between
            ``restarts``), ``step`` (x0.1 every ``step_size`` epochs) or ``none``.
        restarts: epochs (1-based, as ``PFACallback.compress_at``) after which the cosine schedule
            starts again: each stage decays to zero, so the full network converges before it is
            compressed and each fine-tuning stage gets a whole schedule of its own. The experiments
            pass the compression epochs; ``None`` or empty: one schedule over the fit. ``0``: the fit
            starts with a compression (given weights), so its first stage is fine-tuning too.
        restart_lr: the peak learning rate of every stage after the first (fine-tuning); ``None``: ``lr``.

    Example:
        >>> module = ImageClassifier("vgg16", num_classes=10, lr=0.05)
        >>> module = ImageClassifier("torchvision", name="resnet18", weights="resnet18.pt")
    """

    def __init__(self, arch: str = "vgg16", num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
                 optimizer: str = "sgd", lr: float = 0.05, weight_decay: float = 5e-4, momentum: float = 0.9,
                 scheduler: str = "cosine", step_size: int = 30, input_size: int = 32,
                 restarts: Sequence[int] | None = None, restart_lr: float | None = None, name: str | None = None,
                 model_kwargs: dict[str, Any] | None = None, weights: str | None = None) -> None:
        super().__init__()
        arch = check_choice("arch", arch.lower() if isinstance(arch, str) else arch, MODEL_NAMES + LIBRARIES)
        if model_kwargs is not None:  # plain data (not Hydra's DictConfig): checkpoints load with weights_only
            if not isinstance(model_kwargs, Mapping):
                raise fail("model_kwargs", "a mapping of constructor arguments (or null)", model_kwargs)
            model_kwargs = OmegaConf.to_container(model_kwargs) if isinstance(model_kwargs, DictConfig) else dict(model_kwargs)
        check_choice("optimizer", optimizer, OPTIMIZERS)
        check_choice("scheduler", scheduler, SCHEDULERS)
        check_positive("lr", lr)
        if restart_lr is not None:
            check_positive("restart_lr", restart_lr)
        if restarts is not None and not (is_sequence(restarts) and all(type(e) is int and e >= 0 for e in restarts)):
            raise fail("restarts", "a list of epochs >= 0 (or null)", restarts)
        restarts = sorted(set(restarts or ()))
        self.save_hyperparameters(ignore=["weights"])
        self.net: nn.Module = self._build_net(input_size)
        if weights is not None:
            load_weights(self.net, weights)
        self.criterion = nn.CrossEntropyLoss()
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def _build_net(self, input_size: int) -> nn.Module:
        hp = self.hparams
        if hp.arch in LIBRARIES:
            if hp.width != 1.0:
                raise fail("width", f"1.0 for a {hp.arch} model (the multiplier applies to the bundled models)", hp.width)
            return build_library_model(hp.arch, hp.name, hp.num_classes, hp.in_channels, **(hp.model_kwargs or {}))
        for key in ("name", "model_kwargs"):
            if hp[key] is not None:
                raise fail(key, f"null for arch={hp.arch!r} (it applies to torchvision and timm models)", hp[key])
        sized = {"input_size": input_size} if hp.arch.startswith("vgg") or hp.arch == "simplecnn" else {}
        return build(hp.arch, num_classes=hp.num_classes, in_channels=hp.in_channels, width=hp.width, **sized)

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
        fused = can_fuse(params)
        if hp.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, fused=fused,
                                                         weight_decay=hp.weight_decay, nesterov=hp.momentum > 0)
        elif hp.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay, fused=fused)
        else:
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay, fused=fused)
        if hp.scheduler == "none":
            return opt
        if hp.scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=hp.step_size, gamma=0.1)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        epochs, steps = self._schedule_length()
        restart_scale = (hp.restart_lr or hp.lr) / hp.lr
        cosine = StagedCosine([e * steps for e in hp.restarts], epochs * steps, restart_scale)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step" if steps > 1 else "epoch"}}

    def _schedule_length(self) -> tuple[int, int]:
        """(epochs, optimizer steps per epoch) of the fit; steps 1 (an epoch-wise schedule) when unknown."""
        trainer = self._trainer
        epochs = int(trainer.max_epochs) if trainer is not None and (trainer.max_epochs or 0) > 0 else 1
        try:
            total = float(trainer.estimated_stepping_batches) if trainer is not None else 0.0
        except Exception:  # Lightning raises its own exception types when no data is attached yet
            total = 0.0
        return epochs, max(1, int(total) // epochs) if 0 < total < math.inf else 1


class StagedCosine:
    """LR factor of step ``t`` (0-based; a step is an epoch or an optimizer step): a cosine from 1
    to 0 over each stage ``[start, end)``, the stages cut at ``restarts`` (steps completed before
    each restart); the stages after a restart are scaled by ``restart_scale`` (all of them when one
    restart is at 0: the fit starts from a compression). A class, not a closure, so ``LambdaLR`` can save it."""

    def __init__(self, restarts: Sequence[int], total: int, restart_scale: float = 1.0) -> None:
        self.bounds = [0, *(e for e in sorted(restarts) if 0 < e < total), max(total, 1)]
        self.restart_scale = restart_scale
        self.first_scale = restart_scale if 0 in restarts else 1.0

    def __call__(self, step: int) -> float:
        stage = min(bisect.bisect_right(self.bounds, step) - 1, len(self.bounds) - 2)  # the last stage runs on
        start, end = self.bounds[stage], self.bounds[stage + 1]
        position = min(step - start, end - start) / (end - start)
        return (self.first_scale if stage == 0 else self.restart_scale) * 0.5 * (1 + math.cos(math.pi * position))
