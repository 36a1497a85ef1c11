"""PFACallback: compress a network between training stages inside a Lightning fit; load_compressed.

The callback analyses the LightningModule as a whole: the responses are collected, the graph
traced and the surgery applied by calling ``pl_module(inputs)``, where ``inputs`` is the model
input of a batch (the batch itself if it is a tensor, its first element if a sequence, or
``batch["x"]``/``["input"]``/``["image"]``). So the module's ``forward`` must take that input;
the network itself may be the module or one of its attributes.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from typing import Any, Iterable, Iterator, Sequence

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset, Subset

from pfa_lightning._optim_state import copy_hyperparameters, kept_parameter_indices, transplant_state
from pfa_lightning.footprint import FootprintProbe, count_flops, count_params
from pfa_lightning.graph import ModelGraph, analysable_layers, clone_inputs, evaluating, module_width, run_model
from pfa_lightning.recipe import COUPLED_MODES, Recipe, apply_recipe, check_min_units, make_recipe
from pfa_lightning.selection import check_selection
from pfa_lightning.stats import POOLINGS, ResponseStats, check_max_samples, collect_responses, first_input, model_device
from pfa_lightning.strategies import Footprint, Strategy, resolve_strategy

CHECKPOINT_KEY = "pfa"  # top-level checkpoint entry: {"version", "example_inputs", "history"}
HISTORY_VERSION = 1
OPTIMIZER_STATES = ("reset", "transplant")
_ANALYSIS_SEED = 0  # the analysis subset is the same on every rank and every run
_DEFAULT_BATCH_SIZE = 64


# -- argument validation -------------------------------------------------------------------------
def _validate_compress_at(compress_at: Any) -> list[int]:
    epochs = [compress_at] if isinstance(compress_at, int) and not isinstance(compress_at, bool) else compress_at
    ok = (
        isinstance(epochs, (list, tuple))
        and len(epochs) > 0
        and all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in epochs)
        and len(set(epochs)) == len(epochs)
    )
    if not ok:
        raise ValueError(
            "`compress_at` must be an epoch number >= 1 or a non-empty list of distinct ones "
            f"(1-based: 1 compresses after the first epoch), got {compress_at!r}."
        )
    return sorted(epochs)


def _validate_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {tuple(allowed)}, got {value!r}.")
    return value


def _validate_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False, got {value!r}.")
    return value


def _validate_patterns(name: str, value: Any) -> list[str] | None:
    if value is None:
        return None
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, (list, tuple)) or not patterns or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"`{name}` must be None, a module name/glob pattern or a list of them, got {value!r}.")
    return list(patterns)


def _validate_dataloader(value: Any) -> Iterable | None:
    if value is not None and not isinstance(value, Iterable):
        raise ValueError(f"`dataloader` must be None (the train dataloader) or an iterable of batches, got {value!r}.")
    return value


# -- data ----------------------------------------------------------------------------------------
class _EveryNth:
    """Batches ``rank, rank + world, ...`` of an iterable, for data that cannot be indexed."""

    def __init__(self, loader: Iterable, rank: int, world: int) -> None:
        self.loader, self.rank, self.world = loader, rank, world

    def __iter__(self) -> Iterator:
        return itertools.islice(iter(self.loader), self.rank, None, self.world)


class _Converted:
    """Batches of ``loader`` passed through ``convert`` (the precision plugin's input conversion)."""

    def __init__(self, loader: Iterable, convert: Any) -> None:
        self.loader, self.convert = loader, convert

    def __iter__(self) -> Iterator:
        return (self.convert(batch) for batch in self.loader)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]  # TypeError if unsized: callers handle it


def _shard(loader: Iterable, rank: int, world: int, max_samples: int | None,
           min_per_rank: int = 0) -> tuple[Iterable, int | None]:
    """This rank's exact share of ``loader``'s data, and how many samples it may still take.

    Map-style data: a seeded random subset of ``max_samples`` indices (the same on every rank),
    split ``range(rank, n, world)`` with no padding duplicates. Other iterables: every
    ``world``-th batch, bounded to this rank's part of ``max_samples``.

    Raises:
        ValueError: (on every rank alike) map-style data too small to give each rank ``min_per_rank``.
    """
    dataset = getattr(loader, "dataset", None)
    if not isinstance(loader, DataLoader) or isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        limit = None if max_samples is None else math.ceil(max_samples / world)
        return (loader if world == 1 else _EveryNth(loader, rank, world)), limit
    n = len(dataset)
    if min(n, max_samples or n) < min_per_rank * world:
        raise ValueError(f"The PFA analysis data has {n} samples; {world} process(es) need at least "
                         f"{min_per_rank * world} ({min_per_rank} each).")
    if max_samples is not None and max_samples < n:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(_ANALYSIS_SEED))[:max_samples].tolist()
    else:
        order = list(range(n))
    shard = Subset(dataset, order[rank::world])
    return DataLoader(shard, batch_size=loader.batch_size or _DEFAULT_BATCH_SIZE, shuffle=False,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn), None


def _single_loader(loaders: Any, what: str) -> Any:
    if isinstance(loaders, (list, tuple)):
        if len(loaders) != 1:
            raise ValueError(f"PFACallback cannot choose among {len(loaders)} {what} dataloaders; pass `dataloader=`.")
        return loaders[0]
    if isinstance(loaders, dict):
        raise ValueError(f"PFACallback cannot choose among several {what} dataloaders (a dict); pass `dataloader=`.")
    return loaders


def _peek(loader: Iterable) -> Any:
    """The first batch of ``loader`` (two samples, without starting worker processes when possible)."""
    if isinstance(loader, DataLoader) and loader.batch_size and hasattr(loader.dataset, "__getitem__"):
        n = min(2, len(loader.dataset))  # type: ignore[arg-type]
        return loader.collate_fn([loader.dataset[i] for i in range(n)])  # type: ignore[misc]
    for batch in loader:
        return batch
    raise ValueError("The PFA analysis dataloader is empty.")


# -- example inputs, stored with the history -------------------------------------------------------
def _input_spec(x: Any) -> Any:
    """Shape (without the batch dimension) and dtype of model inputs, in plain types."""
    if isinstance(x, Tensor):
        return {"shape": list(x.shape[1:]), "dtype": str(x.dtype).removeprefix("torch.")}
    if isinstance(x, (list, tuple)):
        return {"sequence": [_input_spec(v) for v in x]}
    if isinstance(x, dict):
        return {"mapping": {str(k): _input_spec(v) for k, v in x.items()}}
    raise TypeError(f"Cannot record model inputs of type {type(x).__name__}.")


def _inputs_from_spec(spec: Any, module: nn.Module, batch: int = 2) -> Any:
    """Zero inputs shaped like ``spec``, on the module's device; floating ones in the module's dtype."""
    if "sequence" in spec:
        return [_inputs_from_spec(s, module, batch) for s in spec["sequence"]]
    if "mapping" in spec:
        return {k: _inputs_from_spec(s, module, batch) for k, s in spec["mapping"].items()}
    dtype = getattr(torch, spec["dtype"])
    if dtype.is_floating_point:
        dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), dtype)
    return torch.zeros((batch, *spec["shape"]), dtype=dtype, device=model_device(module))


# -- rebuilding from a checkpoint ----------------------------------------------------------------
def _already_applied(module: nn.Module, recipe: Recipe) -> bool:
    """True if ``module`` has the recipe's compressed widths, False if its original ones.

    Raises:
        ValueError: the module has neither (or lacks one of the recipe's layers).
    """
    widths = {}
    for layer in recipe.layers:
        try:
            widths[layer.name] = module_width(module.get_submodule(layer.name))
        except AttributeError:
            raise ValueError(
                f"The checkpoint's PFA history does not fit {type(module).__name__}: it has no layer {layer.name!r}."
            ) from None
    if all(widths[layer.name] == layer.kept for layer in recipe.layers):
        return True  # (or a recipe that keeps everything: nothing to do either way)
    if all(widths[layer.name] == layer.original for layer in recipe.layers):
        return False
    raise ValueError(
        f"The checkpoint's PFA history does not fit {type(module).__name__}: its layer widths {widths} are "
        "neither those the compression started from nor those it produced."
    )


def restore_architecture(module: nn.Module, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Replay the compressions recorded in ``checkpoint`` on ``module`` so that its weights fit.

    Compressions the module already has are skipped. Returns the checkpoint's PFA entry (empty
    if it has none).
    """
    data = checkpoint.get(CHECKPOINT_KEY) or {}
    history = data.get("history") or []
    if history:
        inputs = _inputs_from_spec(data["example_inputs"], module)
        for entry in history:
            recipe = Recipe.from_dict(entry["recipe"])
            if not _already_applied(module, recipe):
                apply_recipe(module, recipe, example_inputs=inputs)
    return data


def load_compressed(module_class: type[pl.LightningModule], checkpoint_path: Any, **kwargs: Any) -> pl.LightningModule:
    """Build ``module_class``, replay the checkpoint's compressions, load the weights; in eval mode.

    Like ``module_class.load_from_checkpoint(checkpoint_path, **kwargs)`` (same keyword arguments:
    ``map_location``, ``strict``, hyperparameter overrides), for checkpoints written by a fit with
    :class:`PFACallback`; a checkpoint without compressions loads as usual.

    Example:
        >>> model = load_compressed(MyModule, "last.ckpt", map_location="cpu")
        >>> model(x)

    Raises:
        TypeError: ``module_class`` is not a LightningModule subclass.
        ValueError: the checkpoint's compressions do not fit the module built by ``module_class``.
    """
    if not (isinstance(module_class, type) and issubclass(module_class, pl.LightningModule)):
        raise TypeError(f"`module_class` must be a LightningModule subclass, got {module_class!r}.")

    def on_load_checkpoint(self: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        restore_architecture(self, checkpoint)
        module_class.on_load_checkpoint(self, checkpoint)

    # A throwaway subclass rebuilds the architecture in the hook Lightning calls before the weights load.
    rebuilding = type(module_class.__name__, (module_class,), {
        "on_load_checkpoint": on_load_checkpoint, "__module__": module_class.__module__,
        "__qualname__": module_class.__qualname__,
    })
    model = rebuilding.load_from_checkpoint(checkpoint_path, **kwargs)
    model.__class__ = module_class
    return model.eval()


# -- distributed helpers -------------------------------------------------------------------------
def _distributed(trainer: pl.Trainer) -> bool:
    return trainer.world_size > 1 and dist.is_available() and dist.is_initialized()


def _sync_buffers(trainer: pl.Trainer, module: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), as DDP's next forward would."""
    if _distributed(trainer):
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def _all_reduce(trainer: pl.Trainer, tensors: Iterable[Tensor]) -> None:
    if _distributed(trainer):
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def _decision_digest(recipe: Recipe) -> int:
    text = json.dumps([[layer.name, layer.kept_indices] for layer in recipe.layers])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "big")  # fits in int64


def _check_same_decision(trainer: pl.Trainer, recipe: Recipe) -> None:
    """Raise on every rank if the ranks decided different recipes (instead of hanging later)."""
    if not _distributed(trainer):
        return
    mine = torch.tensor([_decision_digest(recipe)], dtype=torch.int64, device=trainer.strategy.root_device)
    gathered = [torch.zeros_like(mine) for _ in range(trainer.world_size)]
    dist.all_gather(gathered, mine)
    if any(not torch.equal(other, mine) for other in gathered):
        raise RuntimeError(
            f"PFA ranks decided different compressions (rank {trainer.global_rank} chose widths {recipe.widths}; "
            f"decision digests {[int(g) for g in gathered]}). The response statistics differ between ranks: "
            "check that the model and the analysis data are the same on every rank."
        )


def _rewrap_ddp(trainer: pl.Trainer, module: pl.LightningModule) -> None:
    """Rebuild the DDP wrapper, which holds the replaced parameters."""
    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy) and strategy.model is not module:
        strategy.model = module
        strategy.configure_ddp()


# -- the callback --------------------------------------------------------------------------------
class PFACallback(Callback):
    """Compress the network with Principal Filter Analysis at the end of chosen epochs, then train on.

    At the end of each epoch listed in ``compress_at`` (1-based), the callback collects layer
    responses on the analysis data, decides a recipe (how many and which units each layer keeps),
    cuts the LightningModule in place, rebuilds the optimizers and LR schedulers from the module's
    ``configure_optimizers`` (keeping the schedule's progress) and lets the fit go on with the
    smaller network. Several epochs compress iteratively. Checkpoints carry the compression
    history, so ``trainer.fit(module, ckpt_path=...)`` resumes with a fresh module and
    :func:`load_compressed` rebuilds for inference.

    The module's ``forward`` must take a batch's model input (see the module docstring). Other
    holders of the old parameters (EMA/SWA copies, ``wandb.watch`` hooks, ``torch.compile``
    caches) are not rebuilt. Override :meth:`accuracy_counts` for tasks other than
    classification, :meth:`on_statistics` to inspect the collected statistics.

    Example:
        >>> trainer = Trainer(max_epochs=40, callbacks=[PFACallback("kl", compress_at=[20])])
        >>> trainer.fit(module, datamodule)
        >>> model = load_compressed(MyModule, trainer.checkpoint_callback.best_model_path)

    Args:
        strategy: ``"kl"``, ``"energy"``, ``"footprint"`` or a :class:`~pfa_lightning.Strategy`.
        compress_at: epoch(s) after which to compress (1-based: 1 = after the first epoch).
        threshold: energy kept, for ``"energy"``.
        ratio, metric: footprint target (``ratio`` of ``"params"`` or ``"flops"``), for ``"footprint"``.
        selection: which units to keep: ``"abs_max"`` (the paper's) or ``"l1_max"``.
        dataloader: analysis data (e.g. a target domain); default: the train dataloader's dataset.
        max_samples: analyse a seeded random subset of this many samples (None: all of them).
        pooling: spatial reduction of conv responses, ``"max"`` or ``"avg"``.
        layers, exclude: module names or glob patterns to analyse / to leave alone.
        min_units: no layer keeps fewer units.
        coupled: ``"joint"``: layers added together (residual stages) get one pooled decision;
            ``"skip"``: such layers are left whole.
        optimizer_state: ``"reset"`` starts the new optimizers empty; ``"transplant"`` carries the
            per-parameter state (SGD momentum, Adam moments) over, sliced to the kept units.
        compensate: fold each removed unit into the kept units of its consumers by least squares
            (where the path is linear; see :mod:`pfa_lightning.compensation`). Off by default.
        validate_after: measure accuracy right before and after each surgery (and at the end of
            training) on the validation data, or the analysis data when there is none.
        keep_scheduler_progress: restore the LR schedulers' state and the current learning rates
            after the rebuild (False: restart them as ``configure_optimizers`` returns them).
        verbose: print the recipe table and show a progress bar (rank zero only).

    Raises:
        ValueError: any argument out of range, naming it and the allowed values.
    """

    def __init__(
        self,
        strategy: str | Strategy = "kl",
        *,
        compress_at: int | Sequence[int],
        threshold: float | None = None,
        ratio: float | None = None,
        metric: str | None = None,
        selection: str = "abs_max",
        dataloader: Iterable | None = None,
        max_samples: int | None = 2000,
        pooling: str = "max",
        layers: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        min_units: int = 1,
        coupled: str = "joint",
        optimizer_state: str = "reset",
        compensate: bool = False,
        validate_after: bool = True,
        keep_scheduler_progress: bool = True,
        verbose: bool = True,
    ) -> None:
        self.strategy = resolve_strategy(strategy, threshold=threshold, ratio=ratio, metric=metric)
        self.compress_at = _validate_compress_at(compress_at)
        self.selection = check_selection(selection)
        self.dataloader = _validate_dataloader(dataloader)
        self.max_samples = check_max_samples(max_samples)
        self.pooling = _validate_choice("pooling", pooling, POOLINGS)
        self.layers = _validate_patterns("layers", layers)
        self.exclude = _validate_patterns("exclude", exclude)
        self.min_units = check_min_units(min_units)
        self.coupled = _validate_choice("coupled", coupled, COUPLED_MODES)
        self.optimizer_state = _validate_choice("optimizer_state", optimizer_state, OPTIMIZER_STATES)
        self.compensate = _validate_bool("compensate", compensate)
        self.validate_after = _validate_bool("validate_after", validate_after)
        self.keep_scheduler_progress = _validate_bool("keep_scheduler_progress", keep_scheduler_progress)
        self.verbose = _validate_bool("verbose", verbose)
        self.history: list[dict[str, Any]] = []  # one plain dict per compression done, oldest first
        self._example_spec: Any = None
        self._restore_hook: tuple[pl.LightningModule, Any] | None = None

    @property
    def recipes(self) -> list[Recipe]:
        """The recipes applied so far, oldest first."""
        return [Recipe.from_dict(entry["recipe"]) for entry in self.history]

    @property
    def done_epochs(self) -> set[int]:
        return {int(entry["epoch"]) for entry in self.history}

    # -- setup: checks that need the trainer, and the restore hook ---------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._check_trainer(trainer)
        self._install_restore_hook(pl_module)

    def _check_trainer(self, trainer: pl.Trainer) -> None:
        strategy = trainer.strategy
        if isinstance(strategy, DeepSpeedStrategy) or not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)):
            raise ValueError(
                f"PFACallback supports single-device and DDP strategies, got {type(strategy).__name__}: FSDP, "
                "DeepSpeed and model-parallel strategies shard or wrap parameters, so layer surgery is refused."
            )
        if sum(isinstance(c, PFACallback) for c in trainer.callbacks) > 1:
            raise ValueError("Use only one PFACallback per Trainer; list all its epochs in `compress_at`.")
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0:
            late = [e for e in self.compress_at if e > max_epochs]
            if late:
                raise ValueError(
                    f"`compress_at` epoch {late[0]} is beyond `max_epochs={max_epochs}`: that compression would "
                    f"never happen. Use epochs in [1, {max_epochs}]."
                )
            if self.compress_at[-1] == max_epochs:
                rank_zero_warn(f"PFACallback compresses after the last epoch ({max_epochs}): no fine-tuning follows.")
        if self.max_samples is not None and self.max_samples < 2 * trainer.world_size:
            raise ValueError(
                f"`max_samples={self.max_samples}` is too small for {trainer.world_size} processes: "
                f"every rank needs at least 2 samples (use >= {2 * trainer.world_size})."
            )

    def _install_restore_hook(self, pl_module: pl.LightningModule) -> None:
        """Make the module rebuild the compressed architecture before a checkpoint's weights load.

        Lightning calls ``LightningModule.on_load_checkpoint`` right before loading the state dict,
        and this callback's own restore hooks only after; so the module instance's hook is wrapped
        (and unwrapped after one call, or at teardown).
        """
        self._remove_restore_hook()
        original = pl_module.on_load_checkpoint
        previous = pl_module.__dict__.get("on_load_checkpoint")

        def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
            self._remove_restore_hook()
            self._read_checkpoint(restore_architecture(pl_module, checkpoint))
            original(checkpoint)

        pl_module.on_load_checkpoint = on_load_checkpoint  # type: ignore[method-assign]
        self._restore_hook = (pl_module, previous)

    def _remove_restore_hook(self) -> None:
        if self._restore_hook is None:
            return
        module, previous = self._restore_hook
        self._restore_hook = None
        if previous is None:
            del module.on_load_checkpoint
        else:
            module.on_load_checkpoint = previous

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_restore_hook()

    # -- checkpoints -------------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "version": HISTORY_VERSION,
            "example_inputs": copy.deepcopy(self._example_spec),
            "history": copy.deepcopy(self.history),
        }

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self._read_checkpoint(checkpoint.get(CHECKPOINT_KEY) or {})

    def _read_checkpoint(self, data: dict[str, Any]) -> None:
        version = data.get("version", HISTORY_VERSION)
        if version != HISTORY_VERSION:
            raise ValueError(f"Unsupported PFA checkpoint history version {version!r}; expected {HISTORY_VERSION}.")
        self.history = copy.deepcopy(list(data.get("history") or []))
        self._example_spec = copy.deepcopy(data.get("example_inputs")) or self._example_spec

    # -- training ----------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fail now, not at the compression epoch: epochs already past, a module PFA cannot cut."""
        if self.history and not self._module_is_compressed(pl_module):
            rank_zero_warn("PFACallback is reused on an uncompressed module: its compression history is cleared.")
            self.history = []
        pending = [e for e in self.compress_at if e not in self.done_epochs]
        passed = [e for e in pending if e <= trainer.current_epoch]
        if passed:
            raise ValueError(
                f"`compress_at` epoch {passed[0]} has already passed (training resumes after epoch "
                f"{trainer.current_epoch}) and the checkpoint records no compression then."
            )
        if not pending:
            return
        inputs = self._example_inputs(trainer, pl_module)
        self._example_spec = self._example_spec or _input_spec(inputs)
        self._check_module(pl_module, inputs)

    def _module_is_compressed(self, pl_module: pl.LightningModule) -> bool:
        """Whether the module has the widths the latest recorded compression produced."""
        try:
            return _already_applied(pl_module, self.recipes[-1])
        except ValueError:
            return False

    def _check_module(self, pl_module: pl.LightningModule, inputs: Any) -> None:
        try:
            graph = ModelGraph(pl_module, inputs)
        except NotImplementedError as err:
            raise ValueError(
                f"PFACallback runs {type(pl_module).__name__}(inputs) on a batch's model input, but its "
                f"`forward` is not implemented ({err}). Define `forward` to run the network."
            ) from None
        _, chosen = analysable_layers(pl_module, graph, self.layers, self.exclude, verb="compress")
        self._check_reachable(pl_module, graph, chosen, inputs)

    def _check_reachable(self, pl_module: pl.LightningModule, graph: ModelGraph, chosen: set[str], inputs: Any) -> None:
        """Refuse a footprint target that even every layer at ``min_units`` cannot meet, before training."""
        metric = self.strategy.probe_metric
        target = getattr(self.strategy, "ratio", None) if isinstance(self.strategy, Footprint) else None
        if metric is None or target is None:
            return
        probe = FootprintProbe(pl_module, inputs, metric)
        floor = probe({s.root: min(self.min_units, s.width) for s in graph.spaces
                       if not s.reaches_output and set(s.producers) <= chosen
                       and not (self.coupled == "skip" and s.coupled)})
        if floor > target * probe.full:
            raise ValueError(
                f"Footprint ratio {target:g} ({metric}) is out of reach for {type(pl_module).__name__}: even with every "
                f"analysed layer at min_units={self.min_units} the network keeps {floor / probe.full:.4f} of its "
                f"{metric}. Use a larger ratio, a smaller `min_units`, or analyse more layers."
            )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch in self.compress_at and epoch not in self.done_epochs:
            self.compress(trainer, pl_module, epoch)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.validate_after and self.history:
            accuracy = self._evaluate(trainer, pl_module)
            if accuracy is not None:
                self.log_metrics(trainer, {"pfa/acc_end": accuracy})

    # -- the compression ---------------------------------------------------------------------------
    def compress(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> Recipe:
        """Analyse, decide, cut, rebuild the optimizers (and the DDP wrapper), log; returns the recipe."""
        training = {m: m.training for m in pl_module.modules()}
        inputs = self._example_inputs(trainer, pl_module)
        _sync_buffers(trainer, pl_module)
        before = self._footprint(pl_module, inputs)
        acc_before = self._evaluate(trainer, pl_module) if self.validate_after else None

        recipe, stats = self._decide(trainer, pl_module, inputs)
        old_params = dict(pl_module.named_parameters())
        kept = kept_parameter_indices(pl_module, recipe, inputs) if self.optimizer_state == "transplant" else {}
        old_optimizers = list(trainer.optimizers)
        old_schedulers = [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs]

        apply_recipe(pl_module, recipe, example_inputs=inputs, compensate_with=stats if self.compensate else None)
        _rewrap_ddp(trainer, pl_module)
        trainer.strategy.setup_optimizers(trainer)
        self._carry_over(trainer, pl_module, old_optimizers, old_schedulers, old_params, kept)
        for module, flag in training.items():
            module.training = flag

        after = self._footprint(pl_module, inputs)
        acc_after = self._evaluate(trainer, pl_module) if self.validate_after else None
        self._example_spec = self._example_spec or _input_spec(inputs)
        self.history.append({
            "epoch": epoch, "global_step": int(trainer.global_step), "recipe": recipe.to_dict(),
            "params_before": before["params"], "params_after": after["params"],
            "flops_before": before["flops"], "flops_after": after["flops"],
            "acc_before": acc_before, "acc_after": acc_after,
        })
        self._report(trainer, recipe, self.history[-1])
        return recipe

    def _decide(self, trainer: pl.Trainer, pl_module: pl.LightningModule, inputs: Any) -> tuple[Recipe, ResponseStats]:
        """Statistics summed over ranks, then the same recipe on every rank (verified)."""
        data, limit = self._analysis_data(trainer)
        batches = _Converted(data, trainer.precision_plugin.convert_input)
        with trainer.precision_plugin.forward_context():
            stats = collect_responses(
                pl_module, batches, max_samples=limit, pooling=self.pooling, layers=self.layers,
                exclude=self.exclude, progress=self.verbose and trainer.is_global_zero,
                description=f"PFA responses (epoch {trainer.current_epoch + 1})", per_position=self.compensate,
            )
        _all_reduce(trainer, stats.tensors())
        self.on_statistics(trainer, pl_module, stats)
        recipe = make_recipe(pl_module, stats, self.strategy, example_inputs=inputs, selection=self.selection,
                             min_units=self.min_units, coupled=self.coupled)
        _check_same_decision(trainer, recipe)
        return recipe, stats

    def on_statistics(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stats: ResponseStats) -> None:
        """Called with the response statistics (summed over ranks) before each decision; override to
        inspect them, e.g. to plot the spectra. Does nothing by default."""

    def _carry_over(self, trainer: pl.Trainer, pl_module: pl.LightningModule, old_optimizers: list,
                    old_schedulers: list[dict], old_params: dict, kept: dict) -> None:
        """Give the rebuilt optimizers the schedule's progress and, if asked, the sliced state."""
        new_optimizers = trainer.optimizers
        if len(new_optimizers) != len(old_optimizers):
            rank_zero_warn("configure_optimizers returned a different number of optimizers after PFA; "
                           "their state and learning rates start afresh.")
            return
        new_params = dict(pl_module.named_parameters())
        for old, new in zip(old_optimizers, new_optimizers):
            if self.optimizer_state == "transplant":
                transplant_state(old, new, old_params, new_params, kept)
            if self.keep_scheduler_progress and not copy_hyperparameters(old, new):
                rank_zero_warn("An optimizer's parameter groups changed in number after PFA; its learning rate "
                               "is the one configure_optimizers sets.")
        configs = trainer.lr_scheduler_configs
        if self.keep_scheduler_progress and len(configs) == len(old_schedulers):
            for config, state in zip(configs, old_schedulers):
                config.scheduler.load_state_dict(state)
        elif self.keep_scheduler_progress:
            rank_zero_warn("configure_optimizers returned a different number of LR schedulers after PFA; "
                           "they restart from zero.")

    # -- data --------------------------------------------------------------------------------------
    def _analysis_data(self, trainer: pl.Trainer) -> tuple[Iterable, int | None]:
        """This rank's share of the analysis data (unconverted batches) and its sample limit."""
        loader = self.dataloader
        if loader is None:
            loader = _single_loader(trainer.train_dataloader, "train")
            if loader is None:
                raise ValueError("PFACallback found no train dataloader to analyse; pass `dataloader=`.")
        return _shard(loader, trainer.global_rank, trainer.world_size, self.max_samples, min_per_rank=2)

    def _example_inputs(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        data, _ = self._analysis_data(trainer)
        batch = trainer.precision_plugin.convert_input(_peek(data))
        return clone_inputs(first_input(batch), 2, model_device(pl_module))

    def _evaluation_data(self, trainer: pl.Trainer) -> tuple[Iterable, int | None]:
        """This rank's share of the validation data (all of it), or of the analysis data if none."""
        val = trainer.val_dataloaders
        if isinstance(val, (list, tuple)) and len(val) == 1:
            val = val[0]
        if isinstance(val, DataLoader):
            return _shard(val, trainer.global_rank, trainer.world_size, None)
        return self._analysis_data(trainer)

    # -- measuring ---------------------------------------------------------------------------------
    @staticmethod
    def _footprint(pl_module: pl.LightningModule, inputs: Any) -> dict[str, int]:
        return {"params": count_params(pl_module), "flops": count_flops(pl_module, inputs)}

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

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float | None:
        """Accuracy over every rank's share of the evaluation data, or None if not classification."""
        data, limit = self._evaluation_data(trainer)
        with trainer.precision_plugin.forward_context():
            correct, total = self.count_correct(pl_module, _Converted(data, trainer.precision_plugin.convert_input), limit)
        counts = torch.tensor([correct, total], dtype=torch.float64, device=model_device(pl_module))
        _all_reduce(trainer, [counts])
        return float(counts[0] / counts[1]) if counts[1] > 0 else None

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

    # -- reporting ---------------------------------------------------------------------------------
    @staticmethod
    def log_metrics(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
        """Log to every attached logger, on rank zero, at the current global step."""
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def _report(self, trainer: pl.Trainer, recipe: Recipe, entry: dict[str, Any]) -> None:
        """Metrics to every logger; with ``verbose``, the recipe table and a summary line on the console."""
        metrics: dict[str, float] = {"pfa/compressions": len(self.history)}
        for metric in ("params", "flops"):
            before, after = entry[f"{metric}_before"], entry[f"{metric}_after"]
            metrics.update({f"pfa/{metric}_before": before, f"pfa/{metric}_after": after,
                            f"pfa/{metric}_ratio": after / before if before else 1.0})
        metrics.update({f"pfa/acc_{when}": entry[f"acc_{when}"] for when in ("before", "after")
                        if entry[f"acc_{when}"] is not None})
        metrics.update({f"pfa/kept_units/{layer.name}": layer.kept for layer in recipe.layers})
        self.log_metrics(trainer, metrics)
        if not (self.verbose and trainer.is_global_zero):
            return
        from rich.console import Console

        Console().print(recipe.table(title=f"PFA compression {len(self.history)} after epoch {entry['epoch']}"))
        accuracy = ""
        if "pfa/acc_before" in metrics and "pfa/acc_after" in metrics:
            accuracy = f", validation accuracy {metrics['pfa/acc_before']:.4f} -> {metrics['pfa/acc_after']:.4f}"
        rank_zero_info(
            f"PFA after epoch {entry['epoch']}: params {entry['params_before']:,} -> {entry['params_after']:,} "
            f"({metrics['pfa/params_ratio']:.1%}), FLOPs {entry['flops_before']:,} -> {entry['flops_after']:,} "
            f"({metrics['pfa/flops_ratio']:.1%}){accuracy}."
        )

__all__ = ["CHECKPOINT_KEY", "PFACallback", "load_compressed", "restore_architecture"]
