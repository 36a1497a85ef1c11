"""The Hydra experiment behind ``run.py``: train, compress with :class:`PFACallback`, fine-tune, test.

Writes into the Hydra run directory: ``results.json`` (footprints, accuracies, recipes),
``recipe.txt`` (the recipe tables), ``final.ckpt`` (load it with ``load_compressed``),
``spectra.png`` and ``accuracy_vs_footprint.png``; and logs all of it to the attached loggers
(W&B: the resolved config, per-epoch metrics, compression events, the recipe as a table, the plots).
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Checkpoint

from pfa_lightning.callback import PFACallback
from pfa_lightning.callback.data import shard
from pfa_lightning.errors import PFAError
from pfa_lightning.experiments.extras import require
from pfa_lightning.experiments.outputs import finish_wandb, print_summary, write_outputs
from pfa_lightning.experiments.run_checks import (RunIdentity, check_resume_settings, check_run_settings,
                                                  claim_output_dir, resume_from, run_identity, run_settings)
from pfa_lightning.footprint import count_flops, count_params
from pfa_lightning.nested import first_input
from pfa_lightning.recipe import spectra_of
from pfa_lightning.stats import ResponseStats, model_device
from pfa_lightning.validation import fail

log = logging.getLogger("pfa_lightning")

# the `pfa` config keys: every PFACallback argument but the analysis data, which the data module gives
PFA_OPTIONS = tuple(name for name in inspect.signature(PFACallback.__init__).parameters
                    if name not in ("self", "dataloader"))


class ExperimentPFACallback(PFACallback):
    """:class:`PFACallback` that measures its accuracies (right before each surgery, right after it,
    after BatchNorm recalibration) on the data module's *test* split — the split the final accuracy
    is measured on — and keeps the analysed spectra for plots."""

    evaluate_at_end = False  # the run tests the final network itself
    given_data = "the data set's training split, without augmentation"

    def __init__(self, *args: Any, datamodule: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.datamodule = datamodule
        self.spectra: list[dict[str, list[float]]] = []

    def on_statistics(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stats: ResponseStats) -> None:
        self.spectra.append({name: eig.tolist() for name, eig in spectra_of(stats).items()})

    def evaluation_data(self, trainer: pl.Trainer) -> tuple[Iterable, int | None, str]:
        """This rank's share of the test split (the target classes when specialising)."""
        if self.datamodule is None:
            return super().evaluation_data(trainer)
        dm = self.datamodule
        loader = dm.test_dataloader(specialized=bool(dm.specialize_classes))
        data, _ = shard(loader, trainer.global_rank, trainer.world_size, None)
        batches = trainer.limit_test_batches  # (train.batch_limit) the first batches, as the final test reads
        return data, batches * loader.batch_size if isinstance(batches, int) else None, "test"


class LastCheckpoint(Checkpoint):
    """Writes ``last.ckpt`` at the end of every training epoch, atomically (a crash while writing keeps the
    previous one). Lightning runs checkpoint callbacks after the others, so at a compression epoch it holds
    the compressed network and its history: a crash loses at most the epoch under way. (Lightning's
    ``ModelCheckpoint(save_last=True, save_top_k=0)`` writes ``last.ckpt`` only when the fit ends.)"""

    def __init__(self, dirpath: Path) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self.best_model_path, self.last_model_path = "", ""  # what Lightning asks a trainer's checkpoint callback

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        # as ModelCheckpoint does: every rank reduces the epoch's synced metrics now, in the same order (rank 0's
        # progress bar has just started that; a rank going straight to the barrier below would deadlock it)
        _ = trainer.callback_metrics
        partial = self.path.with_name(self.path.name + ".partial")
        trainer.save_checkpoint(partial, weights_only=False)  # every rank calls it; rank 0 writes (all state: resumable)
        try:
            if trainer.is_global_zero:
                os.replace(partial, self.path)
                self.last_model_path = str(self.path)
        finally:
            trainer.strategy.barrier("pfa_last_checkpoint")


def _instantiate(spec: DictConfig, failure: str, group: str = "", **kwargs: Any) -> Any:
    """Hydra's ``instantiate`` (plain containers): a PFAError inside passes through (a setting it names as
    `x` named `group.x`, as on the command line), any other failure is one PFAError starting with ``failure``
    instead of Hydra's traceback."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(spec, _convert_="all", **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, PFAError):
            cause = err.__cause__
            if group and re.match(r"`[A-Za-z_]\w*` ", str(cause)) and str(cause)[1:].split("`")[0] in spec:
                raise PFAError(f"`{group}.{str(cause)[1:]}") from None  # named as on the command line
            raise cause from None
        raise PFAError(f"{failure}: {str(err).splitlines()[0]}") from None


def _extra_callbacks(cfg: DictConfig) -> list[Any]:
    """The `callbacks` group's Lightning callbacks (one `_target_` entry each, as in lightning-hydra-template)."""
    built = []
    for name, spec in (cfg.get("callbacks") or {}).items():
        if not isinstance(spec, DictConfig) or "_target_" not in spec:
            raise fail(f"callbacks.{name}", "a callback config with a `_target_`", spec)
        callback = _instantiate(spec, f"`callbacks.{name}` could not be built")
        if isinstance(callback, PFACallback):
            raise PFAError(f"`callbacks.{name}` builds a PFACallback, but run.py builds its own from the `pfa` group "
                           "(conf/callbacks/pfa.yaml is for other Hydra projects): drop it and set `pfa.*` instead.")
        built.append(callback)
    return built


def _pfa_callback(cfg: DictConfig, datamodule: Any) -> ExperimentPFACallback | None:
    if cfg.pfa.get("strategy") == "none":
        return None
    unknown = sorted(set(cfg.pfa) - set(PFA_OPTIONS))
    if unknown:
        raise fail("pfa", f"a config whose keys are PFACallback's arguments {PFA_OPTIONS}; unknown keys", unknown)
    # the strategy object (conf/pfa/*.yaml interpolate the shortcuts pfa.ratio=... into it), a selection object...
    options = _instantiate(cfg.pfa, "A `pfa` setting could not be built")
    _check_shortcuts(options)
    analysis = datamodule.analysis_dataloader() if hasattr(datamodule, "analysis_dataloader") else None
    return ExperimentPFACallback(datamodule=datamodule, dataloader=analysis, **options)


SHORTCUTS = {"threshold": "energy", "ratio": "footprint", "metric": "footprint", "allocation": "footprint",
             "runtime": "footprint", "batch_size": "footprint", "depth": "footprint"}  # pfa.<key> -> the variant it sets


def _check_shortcuts(options: dict) -> None:
    """A shortcut (``pfa.ratio=0.3``) the chosen variant's strategy does not take, named in the command line's words
    (the library would say it only applies to a strategy given by name)."""
    import dataclasses

    strategy = options.get("strategy")
    if isinstance(strategy, str) or not dataclasses.is_dataclass(strategy):
        return
    takes = {f.name for f in dataclasses.fields(strategy)}
    stray = {k: options[k] for k in SHORTCUTS if options.get(k) is not None and k not in takes
             and not (k == "depth" and options[k] is False)}
    if stray:
        shown = {k: f"pfa.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in stray.items()}
        examples = {}  # one per variant: pfa=footprint pfa.ratio=0.3; pfa=energy pfa.threshold=0.9
        for k in stray:
            examples.setdefault(SHORTCUTS[k], []).append(shown[k])
        raise PFAError(f"{' '.join(shown.values())} {'does' if len(stray) == 1 else 'do'} not apply to {strategy!r}, "
                       f"which takes {sorted(takes) or 'no options'}: choose the variant that takes "
                       f"{'it' if len(stray) == 1 else 'them'}, e.g. "
                       + "; ".join(f"pfa={v} {' '.join(o)}" for v, o in examples.items()) + ".")


def _loggers(cfg: DictConfig, out: Path) -> list:
    from hydra.utils import instantiate

    loggers = []
    for key, conf in (cfg.get("logger") or {}).items():
        if conf is None or "_target_" not in conf:
            continue
        if conf._target_.endswith("WandbLogger"):
            require("wandb", "logger=wandb", "wandb")
            job, sweep = _job_identity(cfg, out)
            conf = OmegaConf.merge(conf, {"name": conf.get("name") or job, "group": conf.get("group") or sweep})
        loggers.append(instantiate(conf))
    return loggers


def _job_identity(cfg: DictConfig, out: Path) -> tuple[str, str]:
    """(run name, group): the job's name and number; the sweep directory for a multirun."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        if hc.mode is not None and hc.mode.name == "MULTIRUN":
            return f"{cfg.name}-{hc.job.num}", Path(hc.sweep.dir).name
    except ValueError:  # Hydra not initialised (called from Python)
        pass
    return str(cfg.name), str(cfg.name)


def _example_input(datamodule: Any) -> torch.Tensor:
    batch = next(iter(datamodule.test_dataloader()))
    return first_input(batch)[:2]


def run(cfg: DictConfig, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Run one experiment from a composed config; returns (and writes) the results."""
    from hydra.utils import instantiate

    if output_dir is None:
        from hydra.core.hydra_config import HydraConfig

        output_dir = HydraConfig.get().runtime.output_dir
    out = Path(output_dir)
    check_objectives(cfg)  # before any training
    check_run_settings(cfg)
    ckpt_path = resume_from(cfg.train.get("ckpt_path"))
    identity = run_identity(cfg)
    check_resume_settings(ckpt_path, identity)
    if int(cfg.train.epochs) == 0 and cfg.model.get("weights") is None and cfg.pfa.get("strategy") != "none":
        log.warning("train.epochs=0 without model.weights: PFA compresses a network with random weights "
                    "(set model.weights=<your trained weights>).")
    out.mkdir(parents=True, exist_ok=True)
    claim_output_dir(out, ckpt_path)
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = _instantiate(cfg.dataset, "The `dataset` could not be built", "dataset")
    datamodule.setup("fit")
    extra = {"input_size": datamodule.size} if getattr(datamodule, "size", None) else {}
    module = _instantiate(cfg.model, "The `model` could not be built", "model", num_classes=datamodule.num_classes,
                          in_channels=datamodule.in_channels, **extra)
    pfa_cb = _pfa_callback(cfg, datamodule)
    checkpoint = LastCheckpoint(out / "checkpoints")
    loggers = _loggers(cfg, out)
    epochs = int(cfg.train.epochs) + int(cfg.train.finetune_epochs)
    extra_callbacks = _extra_callbacks(cfg)
    trainer: pl.Trainer = instantiate(
        cfg.trainer, max_epochs=cfg.trainer.get("max_epochs") or epochs, default_root_dir=str(out),
        # the user's checkpoint callbacks first: the first one is trainer.checkpoint_callback ("best")
        callbacks=[c for c in (pfa_cb, *extra_callbacks, RunIdentity(identity), checkpoint) if c is not None],
        logger=loggers or False,
        reload_dataloaders_every_n_epochs=1 if getattr(datamodule, "specialize_classes", None) else 0,
    )
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    x = _example_input(datamodule)
    # without PFA, a resumed checkpoint may hold another network: count the full one before the fit
    full_before = (count_params(module), count_flops(module, x)) if pfa_cb is None else None
    try:
        try:
            trainer.fit(module, datamodule, ckpt_path=ckpt_path)
        except SystemExit:  # Lightning's answer to Ctrl-C or SIGTERM: say how to go on
            last = out / "checkpoints" / "last.ckpt"
            log.error("Interrupted. " + (f"Resume with train.ckpt_path={last} (the same settings; only the unfinished "
                                         "epoch is redone)." if last.exists() else "No epoch had finished: nothing to "
                                         "resume, run it again."))
            raise
        tested = trainer.test(module, datamodule, verbose=False)
        acc_final = float(tested[0]["test/acc"]) if tested else None
        history = pfa_cb.history if pfa_cb is not None else []
        # the callback counted the footprints around each surgery; count them here only without one
        if history:
            params_full, flops_full = history[0].params_before, history[0].flops_before
            params_now, flops_now = history[-1].params_after, history[-1].flops_after
        else:
            params_now, flops_now = count_params(module), count_flops(module, x.to(model_device(module)))
            params_full, flops_full = full_before or (params_now, flops_now)
        results = {
            "name": str(cfg.name),
            "params_full": params_full, "params_compressed": params_now,
            "flops_full": flops_full, "flops_compressed": flops_now,
            "acc_full": history[0].acc_before if history else acc_final,
            "acc_after_surgery": history[0].acc_cut if history else None,
            "acc_after_recalibration": history[0].acc_after if history and history[0].recalibrated else None,
            "acc_final": acc_final,
            # what each accuracy is: the full network after `epochs_full` epochs, the final one after `epochs_final`
            "epochs_full": history[0].epoch if history else int(trainer.current_epoch),
            "epochs_final": int(trainer.current_epoch),
            "recipe": history[-1].recipe.to_dict() if history else None,
            "compressions": [h.measures() for h in history],
            "recipes": [h.recipe.to_dict() for h in history],
            "settings": run_settings(cfg, pfa_cb.strategy if pfa_cb is not None else None),
        }
        results["params_ratio"] = results["params_compressed"] / params_full
        results["flops_ratio"] = results["flops_compressed"] / flops_full
        trainer.save_checkpoint(str(out / "final.ckpt"), weights_only=False)  # every rank: it synchronises them
        if trainer.is_global_zero:
            write_outputs(out, results, pfa_cb, loggers)
            print_summary(out, results)
        return results
    finally:
        finish_wandb(loggers)


OBJECTIVES = ("acc_final", "acc_full", "params_ratio", "flops_ratio", "params_compressed", "flops_compressed")


def check_objectives(cfg: DictConfig) -> list[str] | None:
    """``objectives``: null, or a non-empty list of results.json keys a sweeper can optimise."""
    names = cfg.get("objectives")
    if names is None:
        return None
    names = list(names) if OmegaConf.is_list(names) else names
    if not isinstance(names, list) or not names or any(n not in OBJECTIVES for n in names):
        raise fail("objectives", f"null or a list of {OBJECTIVES}", names)
    return names


def objective_values(cfg: DictConfig, results: dict[str, Any] | None) -> float | tuple[float, ...] | None:
    """What run.py returns to a sweeper: ``acc_final``, or the ``objectives`` in their order (one: a number);
    for a failed job (``results`` None): None, or NaN per objective (Optuna records a failed trial)."""
    try:
        names = check_objectives(cfg)
    except PFAError:
        names = None
    if names is None:
        return None if results is None else results["acc_final"]
    values = tuple(float("nan") if results is None or results[n] is None else float(results[n]) for n in names)
    return values[0] if len(values) == 1 else values


def user_error_message(err: BaseException) -> str | None:
    """The message of an error a user caused, else None (a bug: show the whole traceback).

    User errors are :class:`~pfa_lightning.PFAError` (bad values, missing data, unsupported models:
    every one names the value and what is allowed) and missing config values, possibly wrapped by
    Hydra's ``instantiate`` (followed through ``__cause__``).
    """
    from omegaconf.errors import MissingMandatoryValue

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, MissingMandatoryValue):
            return f"a required setting is missing: {err.full_key} (set it on the command line, e.g. {err.full_key}=...)"
        if isinstance(err, PFAError):
            return str(err)
        err = err.__cause__  # type: ignore[assignment]
    return None


__all__ = ["ExperimentPFACallback", "run", "user_error_message"]
