"""Compressed checkpoints: the example-input spec stored with the history, rebuilding the compressed
architecture from a checkpoint, and :func:`load_compressed`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from pfa_lightning.callback.namespace import lightning_module_classes
from pfa_lightning.errors import PFAError
from pfa_lightning.files import load_plain, refused_as_unsafe
from pfa_lightning.graph import module_width
from pfa_lightning.nested import map_nested
from pfa_lightning.recipe import Recipe
from pfa_lightning.stats import model_device
from pfa_lightning.surgery import apply_recipe
from pfa_lightning.validation import fail

CHECKPOINT_KEY = "pfa"  # top-level checkpoint entry: {"version", "example_inputs", "history"}
HISTORY_VERSION = 1


def input_spec(x: Any) -> Any:
    """Shape (without the batch dimension) and dtype of model inputs, in plain types."""
    def unsupported(v: Any) -> Any:
        raise PFAError(f"Cannot record model inputs of type {type(v).__name__}: they must be tensors, "
                       "or lists, tuples and dicts of tensors.")

    return map_nested(x, lambda t: {"shape": list(t.shape[1:]), "dtype": str(t.dtype).removeprefix("torch.")},
                      other=unsupported, sequence=lambda _, items: {"sequence": items},
                      mapping=lambda _, items: {"mapping": {str(k): v for k, v in items.items()}})


def inputs_from_spec(spec: Any, module: nn.Module, batch: int = 2) -> Any:
    """Zero inputs shaped like ``spec``, on the module's device; floating ones in the module's dtype."""
    if "sequence" in spec:
        return [inputs_from_spec(s, module, batch) for s in spec["sequence"]]
    if "mapping" in spec:
        return {k: inputs_from_spec(s, module, batch) for k, s in spec["mapping"].items()}
    dtype = getattr(torch, spec["dtype"])
    if dtype.is_floating_point:
        dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), dtype)
    return torch.zeros((batch, *spec["shape"]), dtype=dtype, device=model_device(module))


def already_applied(module: nn.Module, recipe: Recipe) -> bool:
    """True if ``module`` has the recipe's compressed widths, False if its original ones.

    Raises:
        PFAError: the module has neither (or lacks one of the recipe's layers).
    """
    widths = {}
    for layer in recipe.layers:
        try:
            widths[layer.name] = module_width(module.get_submodule(layer.name))
        except AttributeError:
            raise PFAError(
                f"The checkpoint's PFA history does not fit {type(module).__name__}: it has no layer {layer.name!r}."
            ) from None
    if all(widths[layer.name] == layer.kept for layer in recipe.layers):
        return True  # (or a recipe that keeps everything: nothing to do either way)
    if all(widths[layer.name] == layer.original for layer in recipe.layers):
        return False
    raise PFAError(
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
        inputs = inputs_from_spec(data["example_inputs"], module)
        for entry in history:
            recipe = Recipe.from_dict(entry["recipe"])
            if not already_applied(module, recipe):
                apply_recipe(module, recipe, example_inputs=inputs)
    return data


class RestoreHook:
    """Runs ``restore(checkpoint)`` (rebuild the compressed architecture) when a checkpoint is loaded into
    ``module``, right before its weights are. Lightning calls ``LightningModule.on_load_checkpoint`` just
    before loading the state dict, and callbacks' own restore hooks only after; so the instance's hook is
    wrapped, and unwrapped after one call or by :meth:`remove`."""

    def __init__(self, module: nn.Module, restore: Any) -> None:
        self.module, self._previous = module, module.__dict__.get("on_load_checkpoint")
        original = module.on_load_checkpoint

        def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
            self.remove()
            restore(checkpoint)
            original(checkpoint)

        module.on_load_checkpoint = on_load_checkpoint  # type: ignore[method-assign]
        self._installed = True

    def remove(self) -> None:
        if not self._installed:
            return
        self._installed = False
        if self._previous is None:
            del self.module.on_load_checkpoint
        else:
            self.module.on_load_checkpoint = self._previous


def check_not_behind(checkpoint: dict[str, Any], module: nn.Module, history: list[dict[str, Any]]) -> None:
    """Refuse a checkpoint written before some of the compressions ``module`` has had in this fit
    (``history``), whose weights do not fit it: they belong to a wider network, and the module was cut in
    place and cannot grow back."""
    try:  # compressed in place by this fit (not a fresh module resuming)?
        compressions = len(history) if history and already_applied(module, Recipe.from_dict(history[-1]["recipe"])) else 0
    except PFAError:
        compressions = 0
    saved = len((checkpoint.get(CHECKPOINT_KEY) or {}).get("history") or [])
    if saved >= compressions:
        return
    current = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    stored = checkpoint.get("state_dict") or {}
    if all(current.get(k) == tuple(v.shape) for k, v in stored.items() if hasattr(v, "shape")):
        return  # it fits anyway (e.g. a compression that kept every unit)
    raise PFAError(
        f"This checkpoint was written before {compressions - saved} of this fit's {compressions} PFA compression(s) "
        "(at an earlier epoch, or by a ModelCheckpoint at validation end of a compression epoch): it holds a wider "
        "network than the module, which was cut in place. Load it into a fresh module with "
        "load_compressed(YourModule, path); monitoring checkpoints start over after each compression, so "
        "ckpt_path='best' names one written after it."
    )


def check_checkpoint_file(path: Any, name: str = "checkpoint_path", *, resume: bool = False) -> str:
    """``path`` if it is a readable Lightning checkpoint (with a ``state_dict``; to ``resume`` a fit, also its
    ``epoch`` and ``global_step``); else one PFAError naming the setting ``name`` and what the file holds
    (Lightning's own failure on a truncated or foreign file is a long traceback). Read with
    ``weights_only=True``: a file that needs more, and a remote one (``s3://...``), are left to Lightning."""
    if "://" in str(path):
        return str(path)
    file = Path(str(path))
    if not file.is_file():
        raise PFAError(f"`{name}` {str(file)!r} is not a file (a Lightning checkpoint, e.g. a run's checkpoints/last.ckpt).")
    try:  # memory-mapped where the format allows it: reading the keys does not load the tensors
        checkpoint = load_plain(file)
    except Exception as err:  # noqa: BLE001 - any failure to read it is the same user error
        if refused_as_unsafe(err):
            return str(file)  # readable, but holds objects weights_only refuses: Lightning decides
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise PFAError(f"`{name}` {str(file)!r} cannot be read as a PyTorch checkpoint (truncated or not a "
                       f"checkpoint: {reason}).") from None
    keys = sorted(map(str, checkpoint)) if isinstance(checkpoint, dict) else []
    if not ({"state_dict", "epoch", "global_step"} if resume else {"state_dict"}) <= set(keys):
        what = f"a dict with keys {keys[:8]}" if isinstance(checkpoint, dict) else f"a {type(checkpoint).__name__}"
        raise PFAError(f"`{name}` {str(file)!r} is not a Lightning checkpoint (it holds {what}).")
    return str(file)


def check_module_class(cls: Any, name: str = "module_class", shown: Any = None) -> type:
    """``cls`` if it is a LightningModule subclass (of pytorch_lightning or lightning.pytorch), else one PFAError
    naming the setting ``name`` and the value (``shown``, e.g. the text it came from, or ``cls``)."""
    if not (isinstance(cls, type) and issubclass(cls, lightning_module_classes())):
        raise fail(name, "a LightningModule subclass (of pytorch_lightning or lightning.pytorch)",
                   cls if shown is None else shown)
    return cls


def load_compressed(module_class: type[pl.LightningModule], checkpoint_path: Any, **kwargs: Any) -> pl.LightningModule:
    """Build ``module_class``, replay the checkpoint's compressions, load the weights; in eval mode.

    Like ``module_class.load_from_checkpoint(checkpoint_path, **kwargs)`` (same keyword arguments:
    ``map_location``, ``strict``, hyperparameter overrides), for checkpoints written by a fit with
    :class:`PFACallback`; a checkpoint without compressions loads as usual.

    Example:
        >>> model = load_compressed(MyModule, "last.ckpt", map_location="cpu")
        >>> model(x)

    Raises:
        PFAError: ``checkpoint_path`` is not a readable Lightning checkpoint, or its compressions do not fit
            the module built by ``module_class``.
    """
    check_module_class(module_class)
    if isinstance(checkpoint_path, (str, os.PathLike)):  # (a file object is Lightning's to read)
        check_checkpoint_file(checkpoint_path)

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


__all__ = ["CHECKPOINT_KEY", "HISTORY_VERSION", "RestoreHook", "already_applied", "check_checkpoint_file", "check_module_class", "check_not_behind",
           "input_spec", "inputs_from_spec", "load_compressed", "restore_architecture"]
