"""How the callback measures the accuracies around a compression (before, right after the cut, after BatchNorm
recalibration): on the validation data, summed over DDP ranks; the override points for other tasks."""

from __future__ import annotations

from typing import Any, Iterable

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from pfa_lightning.callback.data import Converted, shard
from pfa_lightning.callback.distributed import all_reduce, together
from pfa_lightning.graph import evaluating
from pfa_lightning.nested import clone_inputs, first_input, run_model
from pfa_lightning.stats import model_device


class Evaluation:
    """PFACallback's measuring part (a mixin): override ``evaluation_data`` to measure elsewhere, or
    ``accuracy_counts`` for another task."""

    def evaluation_data(self, trainer: pl.Trainer) -> tuple[Iterable, int | None, str]:
        """This rank's share of the data the accuracies are measured on, its sample limit and its name
        for the log: the validation data (all of it), or the analysis data if there is none.
        Override to measure elsewhere (the experiments measure on the test split)."""
        val = trainer.val_dataloaders
        if isinstance(val, (list, tuple)) and len(val) == 1:
            val = val[0]
        if isinstance(val, DataLoader):
            return (*shard(val, trainer.global_rank, trainer.world_size, None), "validation")
        return (*self._analysis_data(trainer), "analysis-data")

    def accuracy_counts(self, pl_module: pl.LightningModule, batch: Any) -> tuple[int, int] | None:
        """Correct predictions and samples in one batch, or None if it is not classification.

        The default reads ``(input, target, ...)`` batches with integer class targets and a
        ``(samples, classes)`` output. Override it for other tasks.
        """
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            return None
        target = batch[1]
        if not isinstance(target, Tensor) or target.dim() != 1 or target.is_floating_point():
            return None
        output = run_model(pl_module, clone_inputs(first_input(batch), device=model_device(pl_module)))
        if not isinstance(output, Tensor) or output.dim() != 2 or output.shape[0] != target.shape[0]:
            return None
        return int((output.argmax(1).cpu() == target.cpu()).sum()), int(target.numel())

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[float | None, str]:
        """(Accuracy over every rank's share of the evaluation data, or None if not classification; the data's name)."""
        data, limit, name = self.evaluation_data(trainer)
        with trainer.precision_plugin.forward_context():
            correct, total = together(trainer, lambda: self.count_correct(
                pl_module, Converted(data, trainer.precision_plugin.convert_input), limit))
        counts = torch.tensor([correct, total], dtype=torch.float64, device=model_device(pl_module))
        all_reduce(trainer, [counts])
        return (float(counts[0] / counts[1]) if counts[1] > 0 else None), name

    def count_correct(self, pl_module: pl.LightningModule, batches: Iterable, limit: int | None = None) -> tuple[int, int]:
        """Correct predictions and samples over ``batches`` (eval mode, no grad); (0, 0) if not classification."""
        correct = total = 0
        with evaluating(pl_module), torch.no_grad():
            for batch in batches:
                result = self.accuracy_counts(pl_module, batch)
                if result is None:
                    return 0, 0  # not classification: no accuracy (and no endless iterable)
                correct, total = correct + result[0], total + result[1]
                if limit is not None and total >= limit:
                    break
        return correct, total


__all__ = ["Evaluation"]
