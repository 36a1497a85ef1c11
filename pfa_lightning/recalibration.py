"""BatchNorm recalibration: fresh running statistics for a network whose layers just got thinner.

After a surgery, a BatchNorm layer's running mean and variance describe inputs computed from the
full network upstream; recomputing them on a few batches (as ``torch.optim.swa_utils.update_bn``
does) makes the cut network's accuracy right after surgery meaningful and gives fine-tuning a
better start.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from pfa_lightning.errors import PFAError
from pfa_lightning.graph import evaluating
from pfa_lightning.nested import model_inputs, run_model
from pfa_lightning.stats import check_max_samples, model_device

_NORMS = (nn.modules.batchnorm._BatchNorm,)


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _NORMS) and m.track_running_stats]


def recalibrate_batchnorm(model: nn.Module, dataloader: Iterable[Any], *, max_samples: int | None = 2000,
                          device: torch.device | str | None = None) -> int:
    """Recompute every BatchNorm's running mean and variance on ``dataloader``'s batches.

    Each batch's statistics count in proportion to its samples (with equal batches this is what
    ``torch.optim.swa_utils.update_bn`` computes); batches of a single sample are skipped. Everything
    else runs in eval mode (no dropout), no gradient is computed, and each module's train/eval flag
    and momentum are restored. Returns the number of samples used (0, and nothing changed, when the
    model has no BatchNorm).

    Raises:
        PFAError: a bad ``max_samples`` or an empty ``dataloader``.
    """
    check_max_samples(max_samples)
    norms = batchnorm_layers(model)
    if not norms:
        return 0
    device = torch.device(device) if device is not None else model_device(model)
    momenta = [m.momentum for m in norms]
    saved = [{k: v.clone() for k, v in m.named_buffers()} for m in norms]
    seen = 0
    with evaluating(model), torch.no_grad():
        for m in norms:
            m.reset_running_stats()
            m.train()
        try:
            for x, n in model_inputs(dataloader, max_samples, device):
                if n < 2:
                    continue  # a BatchNorm in train mode needs two samples (and one says little)
                for m in norms:
                    m.momentum = n / (seen + n)  # running statistics: the sample-weighted mean over batches
                run_model(model, x)
                seen += n
            if seen == 0:
                raise PFAError("The BatchNorm recalibration data is empty (or holds only single-sample batches): pass batches of model inputs.")
        except BaseException:
            for m, buffers in zip(norms, saved):  # all or nothing: the old statistics come back
                for name, value in buffers.items():
                    getattr(m, name).copy_(value)
            raise
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
    return seen


__all__ = ["batchnorm_layers", "recalibrate_batchnorm"]
