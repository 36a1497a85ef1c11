"""Checks that need the trainer or the module, made before training so that nothing fails mid-fit."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn

from pfa_lightning.blocks import residual_blocks
from pfa_lightning.callback.namespace import lightning_of
from pfa_lightning.callback.record import Compression
from pfa_lightning.candidates import analysable_layers
from pfa_lightning.diagnosis import raise_depth_hint_checked
from pfa_lightning.errors import PFAError
from pfa_lightning.footprint import probe_for
from pfa_lightning.graph import ModelGraph
from pfa_lightning.recipe import floor_widths
from pfa_lightning.strategies import Footprint, Strategy


def check_trainer(trainer: pl.Trainer, compress_at: list[int], max_samples: int | None, kind: type) -> None:
    """Refuse, in ``setup``, what the trainer makes impossible: sharded strategies, two callbacks, epochs past the end."""
    strategy = trainer.strategy
    strategies = lightning_of(trainer).strategies  # pytorch_lightning's or lightning.pytorch's classes
    if (isinstance(strategy, strategies.DeepSpeedStrategy)
            or not isinstance(strategy, (strategies.SingleDeviceStrategy, strategies.DDPStrategy))):
        raise PFAError(
            f"PFACallback supports single-device and DDP strategies, got {type(strategy).__name__}: FSDP, "
            "DeepSpeed and model-parallel strategies shard or wrap parameters, so layer surgery is refused."
        )
    if sum(isinstance(c, kind) for c in trainer.callbacks) > 1:
        raise PFAError("Use only one PFACallback per Trainer; list all its epochs in `compress_at`.")
    max_epochs = trainer.max_epochs
    if max_epochs is not None and max_epochs >= 0:
        late = [e for e in compress_at if e > max_epochs]
        if late:
            raise PFAError(
                f"`compress_at` epoch {late[0]} is beyond `max_epochs={max_epochs}`: that compression would "
                f"never happen. Use epochs in [0, {max_epochs}]."
            )
        if compress_at[-1] == max_epochs > 0:  # (max_epochs=0 asks for the cut alone)
            rank_zero_warn(f"PFACallback's last compression (epoch {max_epochs}) ends the fit: no fine-tuning follows.")
    if max_samples is not None and max_samples < 2 * trainer.world_size:
        raise PFAError(
            f"`max_samples={max_samples}` is too small for {trainer.world_size} processes: "
            f"every rank needs at least 2 samples (use >= {2 * trainer.world_size})."
        )


def check_schedule(strategy: Strategy, compress_at: list[int]) -> None:
    """A gradual ``Footprint(steps=n)`` takes exactly ``n`` compressions."""
    steps = getattr(strategy, "steps", 1)
    if steps > 1 and len(compress_at) != steps:
        raise PFAError(f"{strategy!r} takes {steps} compressions: give as many `compress_at` epochs "
                       f"(got {compress_at}), e.g. compress_at={[compress_at[0] + i for i in range(steps)]}.")


def strategy_now(strategy: Strategy, history: list[Compression], current: dict[str, int]) -> Strategy:
    """The strategy of the next compression: a gradual ``Footprint(steps=n)``'s next step (its share of what
    is left, from the footprint before the first compression), else the strategy itself."""
    if not isinstance(strategy, Footprint) or strategy.steps == 1:
        return strategy
    original = history[0].footprint(strategy.metric, "before") if history else current[strategy.metric]
    return strategy.step(current[strategy.metric] / original, strategy.steps - len(history))


def pending_epochs(compress_at: list[int], done: set[int], current_epoch: int) -> list[int]:
    """The compression epochs still to come when training starts after ``current_epoch`` epochs; refuses
    those already past without a recorded compression (a resumed checkpoint written before them)."""
    pending = [e for e in compress_at if e not in done]
    passed = [e for e in pending if e <= current_epoch]
    if passed:
        when = "before training" if passed[0] == 0 else f"after epoch {passed[0]}"
        hint = (" To compress a network trained elsewhere, load its weights into the module (e.g. "
                "load_from_checkpoint) and fit without `ckpt_path`." if passed[0] == 0 else "")
        raise PFAError(f"`compress_at` epoch {passed[0]} has already passed (training resumes after epoch "
                       f"{current_epoch}) and the checkpoint records no compression {when}.{hint}")
    return pending


def check_module(pl_module: pl.LightningModule, inputs: Any, strategy: Strategy, *, layers: list[str] | None,
                 exclude: list[str] | None, min_units: int, coupled: str, round_to: int = 1) -> None:
    """Refuse, before training, a module PFA cannot cut or a footprint target it cannot reach."""
    try:
        graph = ModelGraph(pl_module, inputs)
    except NotImplementedError as err:
        raise PFAError(
            f"PFACallback runs {type(pl_module).__name__}(inputs) on a batch's model input, but its "
            f"`forward` is not implemented ({err}). Define `forward` to run the network."
        ) from None
    _, chosen = analysable_layers(pl_module, graph, layers, exclude, verb="compress")
    _check_reachable(pl_module, graph, chosen, inputs, strategy, min_units, coupled, round_to)


def _check_reachable(pl_module: pl.LightningModule, graph: ModelGraph, chosen: set[str], inputs: Any,
                     strategy: Strategy, min_units: int, coupled: str, round_to: int) -> None:
    """Let the strategy refuse, before training, a target that even every layer at ``min_units`` cannot meet."""
    metric = strategy.probe_metric
    if metric is None or (strategy.depth and residual_blocks(pl_module, inputs)):  # (blocks go below the floor)
        return
    probe = probe_for(strategy, pl_module, inputs)
    floor = probe(floor_widths(graph, chosen, min_units, coupled, round_to))
    try:
        strategy.check(floor, probe.full, f"for {type(pl_module).__name__} (every analysed layer at min_units={min_units})")
    except PFAError as err:  # "or depth=True" only where there are residual blocks to remove
        raise_depth_hint_checked(err, pl_module, inputs)


__all__ = ["check_module", "check_schedule", "check_trainer", "pending_epochs", "strategy_now"]
