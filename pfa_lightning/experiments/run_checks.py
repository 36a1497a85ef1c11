"""What ``run.py`` checks before it trains anything: its own numbers, the checkpoint it resumes (readable, and
written with the same settings), and an output directory that no other run owns."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from pfa_lightning.callback.checkpoint import check_checkpoint_file
from pfa_lightning.errors import PFAError
from pfa_lightning.validation import check_epochs, check_int, fail, is_int


def run_settings(cfg: DictConfig, strategy: Any = None) -> dict[str, Any]:
    """What results.json and the sweep summary say a run was: model, data, seed, epochs, and the PFA strategy's
    own account of itself (``pfa_strategy``: its name, ``pfa_<option>``, ``pfa_label``) when it was built."""
    pfa = OmegaConf.to_container(cfg.pfa, resolve=True)
    model = f"{cfg.model.arch}:{cfg.model.name}" if cfg.model.get("name") else cfg.model.arch
    settings = {"model": model, "width": cfg.model.width, "weights": cfg.model.get("weights"), "dataset": cfg.dataset._target_.rsplit(".", 1)[-1],
                "seed": cfg.seed, "epochs": cfg.train.epochs, "finetune_epochs": cfg.train.finetune_epochs}
    if strategy is not None:
        settings.update({("pfa_strategy" if k == "name" else f"pfa_{k}"): v for k, v in strategy.to_dict().items()})
        settings["pfa_label"] = strategy.label
    else:
        settings["pfa_strategy"] = pfa.get("strategy")  # type: ignore[union-attr]
    settings["pfa_selection"] = pfa.get("selection")  # type: ignore[union-attr]
    try:
        from hydra.core.hydra_config import HydraConfig

        settings["overrides"] = " ".join(HydraConfig.get().overrides.task)
    except ValueError:
        settings["overrides"] = ""
    return settings


def resume_from(path: Any) -> str | None:
    """``train.ckpt_path``, checked: a readable Lightning checkpoint, else one clear PFAError (a truncated
    or foreign file used to give Lightning's 44-line traceback)."""
    if path is None or str(path) in ("last", "best", "hpc", "registry"):
        return path  # Lightning's own names: Lightning finds them
    return check_checkpoint_file(path, "train.ckpt_path", resume=True)


def check_run_settings(cfg: DictConfig) -> None:
    """The run's own numbers, before anything is built: one clear PFAError naming the setting instead of a
    ValueError from ``int("abc")`` or another component's complaint about a value derived from it."""
    def value(key: str) -> Any:
        return OmegaConf.select(cfg, key, throw_on_missing=False)

    if not is_int(value("seed")):
        raise fail("seed", "an integer", value("seed"))
    epochs = check_int("train.epochs", value("train.epochs"), 0)
    finetune = check_int("train.finetune_epochs", value("train.finetune_epochs"), 0)
    check_int("train.batch_limit", value("train.batch_limit"), 1, optional=True)
    max_epochs = check_int("trainer.max_epochs", value("trainer.max_epochs"), -1, optional=True,
                           hint=" (-1: no limit)")
    if cfg.pfa.get("strategy") != "none" and value("pfa.compress_at") is not None:
        capped = max_epochs not in (None, -1, 0)  # the runner reads trainer.max_epochs=0 as unset, as null
        total = max_epochs if capped else epochs + finetune
        for epoch in check_epochs("pfa.compress_at", OmegaConf.to_object(cfg.pfa.compress_at)
                                  if OmegaConf.is_list(cfg.pfa.compress_at) else value("pfa.compress_at"), 0):
            if epoch > total:
                raise PFAError(f"`pfa.compress_at` epoch {epoch} is beyond the run's {total} epochs "
                               f"(train.epochs={epochs} + train.finetune_epochs={finetune}"
                               f"{f', trainer.max_epochs={max_epochs}' if capped else ''}).")


# what a resumed run must share with the run that wrote its checkpoint: the network, the data it is shaped for, and
# the settings that decide the compressions (not those that only report, such as verbose or validate_after)
RESUME_MODEL = ("arch", "name", "width", "model_kwargs")
RESUME_DATA = ("_target_", "name", "root", "size", "in_channels", "classes", "specialize_classes", "train_size")
RESUME_PFA = ("strategy", "threshold", "ratio", "metric", "allocation", "runtime", "batch_size", "depth", "selection",
              "compress_at", "pooling", "min_units", "round_to", "coupled", "layers", "exclude", "compensate")


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """The settings that decide what a run's checkpoint holds (``model.*``, ``dataset.*``, ``pfa.*``, as on the
    command line): a resumed run must have the same ones."""
    identity = {}
    for group, keys in (("model", RESUME_MODEL), ("dataset", RESUME_DATA), ("pfa", RESUME_PFA)):
        values = OmegaConf.to_container(cfg[group], resolve=True) if group in cfg else {}
        identity.update({f"{group}.{k}": values.get(k) for k in keys if k in values})  # type: ignore[union-attr]
    return json.loads(json.dumps(identity, default=str))  # plain, as read back from a checkpoint


class RunIdentity(pl.Callback):
    """Stores :func:`run_identity` in every checkpoint the run writes (``pfa_run_identity``), so that a resumed
    run with other settings is refused instead of labelling the old run's results with its own settings."""

    KEY = "pfa_run_identity"

    def __init__(self, identity: dict[str, Any]) -> None:
        self.identity = identity

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[self.KEY] = self.identity


def check_resume_settings(path: str | None, identity: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint written by a run whose settings differ, naming them."""
    if path is None or not Path(path).is_file():
        return
    from pfa_lightning.files import load_plain, refused_as_unsafe

    try:
        saved = load_plain(path).get(RunIdentity.KEY)
    except Exception as err:  # noqa: BLE001 - a checkpoint weights_only refuses: Lightning reads it, we cannot
        if refused_as_unsafe(err, path):
            return
        raise
    if saved is None:
        return  # written before runs recorded their settings, or by another program: nothing to compare
    differ = [f"{k}: {saved.get(k)!r} there, {identity.get(k)!r} here" for k in sorted(set(saved) | set(identity))
              if saved.get(k) != identity.get(k)]
    if differ:
        raise PFAError(f"train.ckpt_path {path} was written by a run with other settings ({'; '.join(differ)}): "
                       "resume it with the settings it was started with, or start a new run without train.ckpt_path.")


CLAIM = ".pfa_run"  # written into a run's output directory when it starts


RESULTS = ("results.json", "final.ckpt", "checkpoints/last.ckpt")  # what a run leaves that another would overwrite


def _claimant(claim: Path) -> str | None:
    """Who holds ``claim`` and is still running ("pid N on host"), or None when that run is over (its process
    gone on this host: a run that failed before writing anything leaves its directory free)."""
    try:
        host, pid = claim.read_text().split()
    except (OSError, ValueError):
        return None
    if host == socket.gethostname():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return None
        except (PermissionError, ValueError):
            pass
    return f"pid {pid} on {host}"


def claim_output_dir(out: Path, resuming: str | None) -> None:
    """Make ``out`` this run's: refuse a directory that holds another run's results or checkpoints (unless this
    run resumes a checkpoint inside it), or that a running run has claimed (two started at once: the claim file
    ``.pfa_run`` is created atomically). Rank zero of node zero claims for a distributed run."""
    from pytorch_lightning.utilities import rank_zero_only

    if rank_zero_only.rank != 0 or os.environ.get("NODE_RANK", "0") != "0":  # DDP workers re-run the script
        return
    claim, me = out / CLAIM, f"{socket.gethostname()} {os.getpid()}"
    if resuming is not None and Path(resuming).resolve().is_relative_to(out.resolve()):
        claim.write_text(me)
        return
    left = [name for name in RESULTS if (out / name).exists()]
    if left:
        last = out / "checkpoints" / "last.ckpt"
        raise PFAError(f"Output directory {out} holds another run's {', '.join(left)}, which this run would overwrite: "
                       "choose another one (hydra.run.dir=...)"
                       + (f", or resume that run with train.ckpt_path={last}." if last.exists() else "."))
    for _ in range(2):
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = _claimant(claim)
            if holder is not None:
                raise PFAError(f"Output directory {out} is in use by another run ({holder}; its claim is {claim}): "
                               "choose another one (hydra.run.dir=...), or delete the claim if that run is gone.") from None
            claim.unlink(missing_ok=True)  # a finished or failed run's: take it over
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return
    raise PFAError(f"Output directory {out}: its claim {claim} keeps changing; another run is starting there.")


__all__ = ["CLAIM", "RESULTS", "RunIdentity", "check_resume_settings", "check_run_settings", "claim_output_dir",
           "resume_from", "run_identity", "run_settings"]
