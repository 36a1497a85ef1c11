"""Distributed helpers: statistics summed over ranks, one decision verified on every rank, BatchNorm
recalibration agreed on by every rank, DDP rewrap."""

from __future__ import annotations

import hashlib
import json
from typing import Callable, Iterable, TypeVar

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

from pfa_lightning.callback.namespace import lightning_of
from pfa_lightning.errors import PFAError
from pfa_lightning.recalibration import batchnorm_layers, recalibrate_batchnorm
from pfa_lightning.recipe import Recipe


T = TypeVar("T")


def distributed(trainer: pl.Trainer) -> bool:
    return trainer.world_size > 1 and dist.is_available() and dist.is_initialized()


def sync_buffers(trainer: pl.Trainer, module: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), as DDP's next forward would."""
    if distributed(trainer):
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def all_reduce(trainer: pl.Trainer, tensors: Iterable[Tensor]) -> None:
    if distributed(trainer):
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def recalibrate_on_every_rank(trainer: pl.Trainer, module: nn.Module,
                              batches: Callable[[], tuple[Iterable, int | None]]) -> bool:
    """Fresh BatchNorm statistics from ``batches()`` (this rank's data and sample limit), averaged over
    ranks. False, with the statistics as they were on every rank, when the module has no BatchNorm or
    any rank failed (warned): the ranks agree before any collective on the buffers."""
    norms = batchnorm_layers(module)
    if not norms:
        return False
    buffers = [b for m in norms for b in (m.running_mean, m.running_var) if b is not None]
    saved = [b.clone() for b in buffers]
    failed = torch.zeros(1, device=buffers[0].device if buffers else None)
    try:
        data, limit = batches()
        recalibrate_batchnorm(module, data, max_samples=limit)
    except Exception as err:  # the surgery is done and stays: fine-tuning re-estimates the statistics anyway
        rank_zero_warn(f"PFA could not recalibrate BatchNorm after the surgery ({type(err).__name__}: {err}); "
                       "the running statistics stay as they were.")
        failed += 1
    all_reduce(trainer, [failed])
    if failed.item():
        for b, old in zip(buffers, saved):
            b.copy_(old)
        return False
    if distributed(trainer):
        all_reduce(trainer, buffers)
        for b in buffers:
            b.div_(trainer.world_size)  # equal shards (to one sample): the mean of the ranks' statistics
    return True


def decision_digest(recipe: Recipe) -> int:
    text = json.dumps([recipe.blocks, [[layer.name, layer.kept_indices] for layer in recipe.layers]])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "big")  # fits in int64


def check_same_decision(trainer: pl.Trainer, recipe: Recipe) -> None:
    """Raise on every rank if the ranks decided different recipes (instead of hanging later)."""
    if not distributed(trainer):
        return
    mine = torch.tensor([decision_digest(recipe)], dtype=torch.int64, device=trainer.strategy.root_device)
    gathered = [torch.zeros_like(mine) for _ in range(trainer.world_size)]
    dist.all_gather(gathered, mine)
    if any(not torch.equal(other, mine) for other in gathered):
        raise PFAError(
            f"PFA ranks decided different compressions (rank {trainer.global_rank} chose widths {recipe.widths}; "
            f"decision digests {[int(g) for g in gathered]}). The response statistics differ between ranks: "
            "check that the model and the analysis data are the same on every rank."
        )


def together(trainer: pl.Trainer, work: Callable[[], T]) -> T:
    """``work()`` on every rank; if it raises on any rank, every rank raises the same PFAError naming that
    rank (a rank-local failure before a collective would leave the others waiting until the backend times out)."""
    try:
        result, failure = work(), None
    except Exception as err:  # noqa: BLE001 - whatever failed, every rank must learn of it
        result, failure = None, err
    if not distributed(trainer):
        if failure is not None:
            raise failure
        return result  # type: ignore[return-value]
    messages: list = [None] * trainer.world_size
    own = None
    if failure is not None:
        own = str(failure) if isinstance(failure, PFAError) else f"{type(failure).__name__}: {failure}"
    dist.all_gather_object(messages, own)
    failed = [(rank, message) for rank, message in enumerate(messages) if message is not None]
    if failed:
        rank, message = failed[0]
        raise PFAError(f"PFA's analysis failed on rank {rank} of {trainer.world_size}: {message}") from failure
    return result  # type: ignore[return-value]


def rewrap_ddp(trainer: pl.Trainer, module: pl.LightningModule) -> None:
    """Rebuild the DDP wrapper, which holds the replaced parameters."""
    strategy = trainer.strategy
    if isinstance(strategy, lightning_of(trainer).strategies.DDPStrategy) and strategy.model is not module:
        strategy.model = module
        strategy.configure_ddp()


__all__ = ["all_reduce", "check_same_decision", "decision_digest", "distributed", "recalibrate_on_every_rank",
           "rewrap_ddp", "sync_buffers", "together"]
