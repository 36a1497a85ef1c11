"""PFACallback: compress a network between training stages inside a Lightning fit.

The module is analysed as a whole: responses collected, graph traced and surgery applied by calling it on a
batch's model input (:func:`~pfa_lightning.nested.first_input`; a dict goes whole to a one-argument ``forward``).
"""

from __future__ import annotations

import copy
from typing import Any, Iterable, Mapping, Sequence

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from pfa_lightning.callback.checks import check_module, check_schedule, check_trainer, pending_epochs, strategy_now
from pfa_lightning.callback.checkpoint import (CHECKPOINT_KEY, HISTORY_VERSION, RestoreHook, already_applied,
                                               check_not_behind, input_spec, restore_architecture)
from pfa_lightning.callback.data import (Converted, peek, request_fit_data, shard, single_loader,
                                         without_augmentation)
from pfa_lightning.callback.distill import DISTILL_NEEDS_AUTOMATIC, Distillation, Teacher
from pfa_lightning.callback.distributed import (all_reduce, check_same_decision, recalibrate_on_every_rank,
                                                rewrap_ddp, sync_buffers, together)
from pfa_lightning.callback.evaluation import Evaluation
from pfa_lightning.callback.interrupts import prompt_sigterm
from pfa_lightning.callback.monitors import restart_monitors
from pfa_lightning.callback.optim_state import carry_over, kept_parameter_indices
from pfa_lightning.callback.record import Compression
from pfa_lightning.callback.report import (compression_metrics, footprint_of, log_to_loggers, monitored_metrics,
                                          print_compression)
from pfa_lightning.errors import PFAError
from pfa_lightning.nested import clone_inputs, first_input
from pfa_lightning.recipe import COUPLED_MODES, Recipe, check_min_units, check_round_to, make_recipe
from pfa_lightning.selection import SelectionLike, resolve_selection
from pfa_lightning.stats import POOLINGS, ResponseStats, check_max_samples, collect_responses, model_device
from pfa_lightning.strategies import Strategy, resolve_strategy
from pfa_lightning.surgery import apply_recipe
from pfa_lightning.tracing import one_trace
from pfa_lightning.validation import check_bool, check_choice, check_epochs, check_patterns, fail

OPTIMIZER_STATES = ("reset", "transplant")


class PFACallback(Evaluation, Callback):
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
        compress_at: epoch(s) after which to compress (1-based: 1 = after the first epoch); 0 compresses
            at the start of the fit, before any training (a network you already trained; then
            ``max_epochs`` is the fine-tuning, and 0 epochs just cuts it).
        threshold: energy kept, for ``"energy"``.
        ratio, metric, allocation, runtime, batch_size, depth: for ``"footprint"``, its target (``ratio`` of the
            ``"params"``, ``"flops"`` or ``"latency"`` on ``runtime`` at ``batch_size``), ``allocation``, ``depth``.
        selection: which units to keep: ``"max_energy"`` (the default), ``"abs_max"`` (the paper's), ``"l1_max"``,
            ``"per_space"``, ``"weight_l1"`` / ``"random"``, or a selection object (``pfa.Random(seed=1)``, yours).
        dataloader: analysis data (e.g. a target domain); default: the train dataloader's dataset.
        max_samples: analyse a seeded random subset of this many samples (None: all of them).
        pooling: spatial reduction of conv responses, ``"max"`` or ``"avg"``.
        layers, exclude: module names or glob patterns to analyse / to leave alone.
        min_units: no layer keeps fewer units.
        round_to: every kept width a multiple of this (or the full width), e.g. 8 for hardware-friendly
            widths; footprint targets still hold.
        coupled: ``"joint"``: layers added together (residual stages) get one pooled decision;
            ``"skip"``: such layers are left whole.
        optimizer_state: ``"reset"`` starts the new optimizers empty; ``"transplant"`` carries the
            per-parameter state (SGD momentum, Adam moments) over, sliced to the kept units.
        compensate: fold each removed unit into the kept units of its consumers by least squares
            (where the path is linear; see :mod:`pfa_lightning.compensation`). Off by default.
        recalibrate: recompute the BatchNorm running statistics on the analysis data right after each
            surgery (averaged over ranks), so the cut network starts fine-tuning with statistics of
            its own. On by default.
        distill: knowledge distillation during fine-tuning from a frozen copy of the network taken
            right before the surgery (freed when training ends): ``True``, or
            ``{"temperature": 4.0, "weight": 0.5}``, or a :class:`Distillation`. The module must
            return logits and use automatic optimization; a resumed fit goes on without the teacher.
        validate_after: measure accuracy right before and after each surgery (and at the end of
            training) on the validation data, or the analysis data when there is none.
        keep_scheduler_progress: restore the LR schedulers' state and the current learning rates
            after the rebuild (False: restart them as ``configure_optimizers`` returns them).
        verbose: print the recipe table and show a progress bar (rank zero only).

    Raises:
        PFAError: any argument out of range, naming it and the allowed values.
    """

    evaluate_at_end = True  # with validate_after: log `pfa/acc_end` when training ends (subclasses may skip it)
    given_data = "the `dataloader` given to PFACallback"  # the log's name for it

    def __init__(
        self,
        strategy: str | Strategy = "kl",
        *,
        compress_at: int | Sequence[int],
        threshold: float | None = None,
        ratio: float | None = None,
        metric: str | None = None,
        allocation: str | None = None,
        runtime: str | None = None,
        batch_size: int | None = None,
        depth: bool | None = None,
        selection: SelectionLike = "max_energy",
        dataloader: Iterable | None = None,
        max_samples: int | None = 2000,
        pooling: str = "max",
        layers: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        min_units: int = 1,
        round_to: int = 1,
        coupled: str = "joint",
        optimizer_state: str = "reset",
        compensate: bool = False,
        recalibrate: bool = True,
        distill: bool | Mapping[str, float] | Distillation | None = None,
        validate_after: bool = True,
        keep_scheduler_progress: bool = True,
        verbose: bool = True,
    ) -> None:
        self.strategy = resolve_strategy(strategy, threshold=threshold, ratio=ratio, metric=metric,
                                         allocation=allocation, runtime=runtime, batch_size=batch_size, depth=depth)
        self.compress_at = check_epochs("compress_at", compress_at, 0,
                                        " (1-based: 1 compresses after the first epoch, 0 before training)")
        check_schedule(self.strategy, self.compress_at)
        self.selection = resolve_selection(selection)
        if dataloader is not None and not isinstance(dataloader, Iterable):
            raise fail("dataloader", "None (the train dataloader) or an iterable of batches", dataloader)
        self.dataloader = dataloader
        self.max_samples = check_max_samples(max_samples)
        self.pooling = check_choice("pooling", pooling, POOLINGS)
        self.layers = check_patterns("layers", layers)
        self.exclude = check_patterns("exclude", exclude)
        self.min_units = check_min_units(min_units)
        self.round_to = check_round_to(round_to)
        self.coupled = check_choice("coupled", coupled, COUPLED_MODES)
        self.optimizer_state = check_choice("optimizer_state", optimizer_state, OPTIMIZER_STATES)
        self.compensate = check_bool("compensate", compensate)
        self.recalibrate = check_bool("recalibrate", recalibrate)
        self.distill = Distillation.resolve(distill)
        self._teacher: Teacher | None = None
        self.validate_after = check_bool("validate_after", validate_after)
        self.keep_scheduler_progress = check_bool("keep_scheduler_progress", keep_scheduler_progress)
        self.verbose = check_bool("verbose", verbose)
        self.history: list[Compression] = []  # one record per compression done, oldest first
        self.analysis_data = ""  # what the latest analysis read, in words
        self._analysis: tuple[tuple, tuple[Iterable, int | None]] | None = None
        self._example_spec: Any = None
        self._restore_hook: RestoreHook | None = None

    @property
    def recipes(self) -> list[Recipe]:
        """The recipes applied so far, oldest first."""
        return [entry.recipe for entry in self.history]

    @property
    def done_epochs(self) -> set[int]:
        return {entry.epoch for entry in self.history}

    # -- setup: checks that need the trainer, and the restore hook ---------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            check_trainer(trainer, self.compress_at, self.max_samples, type(self))
        self._install_restore_hook(pl_module)

    def _install_restore_hook(self, pl_module: pl.LightningModule) -> None:
        """Make the module rebuild the compressed architecture before a checkpoint's weights load (see
        :class:`RestoreHook`); before that, refuse a checkpoint written before one of this fit's surgeries."""
        def restore(checkpoint: dict[str, Any]) -> None:
            check_not_behind(checkpoint, pl_module, self.history)  # e.g. test(ckpt_path="best") before a surgery
            self._read_checkpoint(restore_architecture(pl_module, checkpoint))

        self._remove_restore_hook()
        self._restore_hook = RestoreHook(pl_module, restore)

    def _remove_restore_hook(self) -> None:
        if self._restore_hook is not None:
            self._restore_hook.remove()
            self._restore_hook = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_restore_hook()
        self._release_teacher()

    # -- checkpoints -------------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "version": HISTORY_VERSION,
            "example_inputs": copy.deepcopy(self._example_spec),
            "history": [entry.to_dict() for entry in self.history],
        }

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self._read_checkpoint(checkpoint.get(CHECKPOINT_KEY) or {})

    def _read_checkpoint(self, data: dict[str, Any]) -> None:
        version = data.get("version", HISTORY_VERSION)
        if version != HISTORY_VERSION:
            raise PFAError(f"Unsupported PFA checkpoint history version {version!r}; expected {HISTORY_VERSION}.")
        self.history = [Compression.from_dict(entry) for entry in data.get("history") or []]
        self._example_spec = copy.deepcopy(data.get("example_inputs")) or self._example_spec

    # -- training ----------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """``compress_at`` 0: analyse and cut now, before the first training epoch (and before the sanity
        check), so the optimizers and schedulers are built for the cut network; also in a fit of 0 epochs."""
        self._forget_if_reused(pl_module)
        if 0 not in self.compress_at or 0 in self.done_epochs or trainer.ckpt_path is not None:
            return  # (resuming a fit whose checkpoint lacks it: on_train_start says it has passed)
        request_fit_data(trainer)  # the analysis data (unless given) and the validation data for the accuracies
        self._preflight(trainer, pl_module)
        self.compress(trainer, pl_module, 0)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fail now, not at the compression epoch: epochs already past, a module PFA cannot cut."""
        self._forget_if_reused(pl_module)
        pending = pending_epochs(self.compress_at, self.done_epochs, trainer.current_epoch)
        if pending:
            self._preflight(trainer, pl_module)

    def _forget_if_reused(self, pl_module: pl.LightningModule) -> None:
        if self.history and not self._module_is_compressed(pl_module):
            rank_zero_warn("PFACallback is reused on an uncompressed module: its compression history is cleared.")
            self.history = []

    def _preflight(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.distill is not None and not pl_module.automatic_optimization:
            raise PFAError(DISTILL_NEEDS_AUTOMATIC)
        inputs = self._example_inputs(trainer, pl_module)
        self._example_spec = self._example_spec or input_spec(inputs)
        check_module(pl_module, inputs, self.strategy, layers=self.layers, exclude=self.exclude,
                     min_units=self.min_units, coupled=self.coupled, round_to=self.round_to)

    def _module_is_compressed(self, pl_module: pl.LightningModule) -> bool:
        """Whether the module has the widths the latest recorded compression produced."""
        try:
            return already_applied(pl_module, self.recipes[-1])
        except PFAError:
            return False

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:  # what a checkpoint saved now holds
            pl_module.log_dict(monitored_metrics(self.history), logger=False, sync_dist=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch in self.compress_at and epoch not in self.done_epochs:
            self.compress(trainer, pl_module, epoch)
        pl_module.log_dict(monitored_metrics(self.history), logger=False, sync_dist=True)  # checkpoints run last

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._release_teacher()
        if self.validate_after and self.evaluate_at_end and self.history:
            accuracy, _ = self._evaluate(trainer, pl_module)
            if accuracy is not None:
                log_to_loggers(trainer, {"pfa/acc_end": accuracy})

    # -- the compression ---------------------------------------------------------------------------
    @one_trace()  # analysis, decision and surgery share one trace of the module
    def compress(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> Recipe:
        """Analyse, decide, cut, rebuild the optimizers (and the DDP wrapper), log; returns the recipe."""
        training = {m: m.training for m in pl_module.modules()}
        inputs = self._example_inputs(trainer, pl_module)
        sync_buffers(trainer, pl_module)
        before = footprint_of(pl_module, inputs)
        acc_before, accuracy_on = self._evaluate(trainer, pl_module) if self.validate_after else (None, None)

        strategy = strategy_now(self.strategy, self.history, before)  # a gradual Footprint's next step
        with prompt_sigterm(trainer.world_size == 1):  # minutes on a large model: a SIGTERM stops it within seconds
            recipe, stats = self._decide(trainer, pl_module, inputs, epoch, strategy)
        old_params = dict(pl_module.named_parameters())
        kept = kept_parameter_indices(pl_module, recipe, inputs) if self.optimizer_state == "transplant" else {}
        old_optimizers = list(trainer.optimizers)
        old_schedulers = [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs]

        if self.distill is not None:
            self._release_teacher()
            self._teacher = Teacher(pl_module, self.distill)  # the network as it is before this surgery
        try:
            apply_recipe(pl_module, recipe, example_inputs=inputs, compensate_with=stats if self.compensate else None)
        except BaseException:
            self._release_teacher()  # the module is untouched: no teacher either
            raise
        rewrap_ddp(trainer, pl_module)
        trainer.strategy.setup_optimizers(trainer)
        carry_over(trainer, old_optimizers, old_schedulers, old_params, dict(pl_module.named_parameters()), kept,
                   transplant=self.optimizer_state == "transplant", keep_progress=self.keep_scheduler_progress)
        for module, flag in training.items():
            module.training = flag

        after = footprint_of(pl_module, inputs)
        self.on_surgery(trainer, pl_module, recipe)
        if self.verbose:
            rank_zero_info(f"PFA cut the network to {after['params']:,} parameters; measuring it"
                           + (" and recalibrating BatchNorm." if self.recalibrate else "."))
        acc_cut = self._evaluate(trainer, pl_module)[0] if self.validate_after else None
        recalibrated = self.recalibrate and self._recalibrate(trainer, pl_module)
        acc_after = self._evaluate(trainer, pl_module)[0] if self.validate_after and recalibrated else acc_cut
        self._example_spec = self._example_spec or input_spec(inputs)
        self.history.append(Compression(
            epoch, int(trainer.global_step), recipe, before["params"], after["params"], before["flops"], after["flops"],
            acc_before, acc_cut, acc_after, recalibrated, accuracy_on))
        metrics = compression_metrics(self.history[-1], len(self.history))
        log_to_loggers(trainer, metrics)
        restart_monitors(trainer, self.verbose)  # best checkpoints / early stopping: scores of the cut network only
        if self.verbose and trainer.is_global_zero:
            print_compression(self.history[-1], len(self.history), metrics)
        return recipe

    def on_surgery(self, trainer: pl.Trainer, pl_module: pl.LightningModule, recipe: Recipe) -> None:
        """Called right after each surgery (optimizers rebuilt), before BatchNorm recalibration; override
        to inspect the cut network. Does nothing by default."""

    def _recalibrate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        def batches() -> tuple[Iterable, int | None]:
            data, limit = self._analysis_data(trainer)
            return Converted(data, trainer.precision_plugin.convert_input), limit

        with trainer.precision_plugin.forward_context():
            return recalibrate_on_every_rank(trainer, pl_module, batches)

    def _release_teacher(self) -> None:
        if self._teacher is not None:
            self._teacher.release()
            self._teacher = None

    def _decide(self, trainer: pl.Trainer, pl_module: pl.LightningModule, inputs: Any, epoch: int,
                strategy: Strategy) -> tuple[Recipe, ResponseStats]:
        """Statistics summed over ranks, then the same recipe on every rank (verified)."""
        data, limit = self._analysis_data(trainer)
        batches = Converted(data, trainer.precision_plugin.convert_input)

        def analyse() -> ResponseStats:
            with trainer.precision_plugin.forward_context():
                return collect_responses(pl_module, batches, max_samples=limit, pooling=self.pooling, layers=self.layers,
                                         exclude=self.exclude, progress=self.verbose and trainer.is_global_zero,
                                         description=f"PFA responses ({f'epoch {epoch}' if epoch else 'before training'})",
                                         per_position=self.compensate, blocks=strategy.depth)

        def decide() -> Recipe:
            self.on_statistics(trainer, pl_module, stats)
            return make_recipe(pl_module, stats, strategy, example_inputs=inputs, selection=self.selection,
                               min_units=self.min_units, coupled=self.coupled, round_to=self.round_to,
                               progress=self.verbose and trainer.is_global_zero)

        stats = together(trainer, analyse)  # a failure on one rank reaches all: none waits in a collective
        all_reduce(trainer, stats.tensors())
        if self.verbose:
            rank_zero_info(f"PFA analysed {stats.num_samples} samples of {self.analysis_data}; deciding the recipe.")
        recipe = together(trainer, decide)
        check_same_decision(trainer, recipe)
        return recipe, stats

    def on_statistics(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stats: ResponseStats) -> None:
        """Called with the response statistics (summed over ranks) before each decision; override to
        inspect them, e.g. to plot the spectra. Does nothing by default."""

    # -- data --------------------------------------------------------------------------------------
    def _analysis_data(self, trainer: pl.Trainer) -> tuple[Iterable, int | None]:
        """This rank's share of the analysis data (unconverted batches) and its sample limit; built once
        per source loader (Lightning makes a new one when it reloads the data)."""
        source = self.dataloader if self.dataloader is not None else single_loader(trainer.train_dataloader, "train")
        if source is None:
            raise PFAError("PFACallback found no train dataloader to analyse; pass `dataloader=`.")
        key = (source, trainer.global_rank, trainer.world_size)
        if self._analysis is None or self._analysis[0] != key:
            if self.dataloader is not None:
                loader, self.analysis_data = source, self.given_data
            else:
                loader, self.analysis_data = without_augmentation(source)
            self._analysis = (key, shard(loader, trainer.global_rank, trainer.world_size, self.max_samples,
                                         min_per_rank=2))
        return self._analysis[1]

    def _example_inputs(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        data, _ = self._analysis_data(trainer)
        batch = trainer.precision_plugin.convert_input(peek(data))
        return clone_inputs(first_input(batch), 2, model_device(pl_module))


__all__ = ["PFACallback"]
