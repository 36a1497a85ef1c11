"""Compressed checkpoints: the example-input spec stored with the history, rebuilding the compressed
architecture from a checkpoint, and :func:`load_compressed`."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from pfa_lightning.callback.namespace import lightning_module_classes
from pfa_lightning.blocks import is_removed
from pfa_lightning.callback.record import Compression
from pfa_lightning.errors import PFAError
from pfa_lightning.files import first_line, load_plain, not_a_torch_file, refused_as_unsafe, truncated_torch_file
from pfa_lightning.graph import module_width
from pfa_lightning.nested import map_nested
from pfa_lightning.recipe import Recipe
from pfa_lightning.stats import model_device
from pfa_lightning.surgery import apply_recipe
from pfa_lightning.validation import fail, listed

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
    gone = {}
    for name in recipe.blocks:
        try:
            gone[name] = is_removed(module.get_submodule(name))
        except AttributeError:
            raise PFAError(f"The checkpoint's PFA history does not fit {type(module).__name__}: it has no module "
                           f"{name!r}, a residual block the compression removed.") from None
    if all(widths[layer.name] == layer.kept for layer in recipe.layers) and all(gone.values()):
        return True  # (or a recipe that keeps everything: nothing to do either way)
    if all(widths[layer.name] == layer.original for layer in recipe.layers) and not any(gone.values()):
        return False
    raise PFAError(
        f"The checkpoint's PFA history does not fit {type(module).__name__}: its layer widths {widths} are "
        f"neither those the compression started from nor those it produced{f' (blocks removed: {gone})' if gone else ''}."
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


def check_not_behind(checkpoint: dict[str, Any], module: nn.Module, history: list[Compression]) -> None:
    """Refuse a checkpoint written before some of the compressions ``module`` has had in this fit
    (``history``), whose weights do not fit it: they belong to a wider network, and the module was cut in
    place and cannot grow back."""
    try:  # compressed in place by this fit (not a fresh module resuming)?
        compressions = len(history) if history and already_applied(module, history[-1].recipe) else 0
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
    ``weights_only=True``: a real checkpoint holding objects that refuses (a pickled class), and a remote file
    (``s3://...``), are left to Lightning; bytes torch.save did not write are refused before torch reads them
    (torch calls them a weights_only refusal too, and advises weights_only=False)."""
    return _read_checked(path, name, resume)[0]


def _read_checked(path: Any, name: str, resume: bool) -> tuple[str, bool]:
    """:func:`check_checkpoint_file`'s work, and whether the file read with ``weights_only=True`` (plain data)."""
    if "://" in str(path):
        return str(path), False
    file = Path(str(path))
    if not file.is_file():
        raise PFAError(f"`{name}` {str(file)!r} is not a file (a Lightning checkpoint, e.g. a run's checkpoints/last.ckpt).")
    try:
        foreign = not_a_torch_file(file)
    except OSError as err:
        raise PFAError(f"`{name}` {str(file)!r} cannot be read ({first_line(err)}).") from None
    if foreign is not None:
        raise PFAError(f"`{name}` {str(file)!r} is not a PyTorch checkpoint ({foreign}; torch.save writes a zip "
                       "archive with a data.pkl record).")
    if truncated_torch_file(file):
        raise PFAError(f"`{name}` {str(file)!r} cannot be read as a PyTorch checkpoint (truncated or not a "
                       "checkpoint: it starts as torch.save's zip archive but its end, the archive's directory, is "
                       "missing).")
    try:  # memory-mapped where the format allows it: reading the keys does not load the tensors
        checkpoint = load_plain(file)
    except Exception as err:  # noqa: BLE001 - any failure to read it is the same user error
        if refused_as_unsafe(err, file):
            return str(file), False  # holds objects weights_only refuses: Lightning decides
        raise PFAError(f"`{name}` {str(file)!r} cannot be read as a PyTorch checkpoint (truncated or not a "
                       f"checkpoint: {first_line(err)}).") from None
    keys = sorted(map(str, checkpoint)) if isinstance(checkpoint, dict) else []
    if not ({"state_dict", "epoch", "global_step"} if resume else {"state_dict"}) <= set(keys):
        what = f"a dict with keys {keys[:8]}" if isinstance(checkpoint, dict) else f"a {type(checkpoint).__name__}"
        raise PFAError(f"`{name}` {str(file)!r} is not a Lightning checkpoint (it holds {what}).")
    return str(file), True


def check_module_class(cls: Any, name: str = "module_class", shown: Any = None) -> type:
    """``cls`` if it is a LightningModule subclass (of pytorch_lightning or lightning.pytorch), else one PFAError
    naming the setting ``name`` and the value (``shown``, e.g. the text it came from, or ``cls``)."""
    if not (isinstance(cls, type) and issubclass(cls, lightning_module_classes())):
        raise fail(name, "a LightningModule subclass (of pytorch_lightning or lightning.pytorch)",
                   cls if shown is None else shown)
    return cls


class CheckpointMismatch(PFAError):
    """A checkpoint's hyperparameters do not build ``module_class``, or its weights do not load into it: most
    likely a checkpoint of another LightningModule. ``part`` (``"hyperparameters"`` or ``"weights"``) and
    ``detail`` (the failure, one line) let a caller word its own advice (``pfa-export`` suggests ``--module``)."""

    def __init__(self, module_class: type, checkpoint: str, part: str, detail: str) -> None:
        self.part, self.detail = part, detail
        super().__init__(f"The {part} in checkpoint {checkpoint} do not fit {module_class.__qualname__} ({detail}): "
                         "load it with the LightningModule class that wrote it.")


def load_compressed(module_class: type[pl.LightningModule], checkpoint_path: Any, **kwargs: Any) -> pl.LightningModule:
    """Build ``module_class``, replay the checkpoint's compressions, load the weights; in eval mode.

    Like ``module_class.load_from_checkpoint(checkpoint_path, **kwargs)`` (same keyword arguments:
    ``map_location``, ``strict``, hyperparameter overrides), for checkpoints written by a fit with
    :class:`PFACallback`; a checkpoint without compressions loads as usual.

    Example:
        >>> model = load_compressed(MyModule, "last.ckpt", map_location="cpu")
        >>> model(x)

    Raises:
        PFAError: ``checkpoint_path`` is not a readable Lightning checkpoint, or does not fit ``module_class``: its
            hyperparameters do not build it (:class:`CheckpointMismatch`), its compressions name other layers, or
            its weights have other names or shapes (:class:`CheckpointMismatch`).
    """
    check_module_class(module_class)
    if isinstance(checkpoint_path, (str, os.PathLike)):  # (a file object is Lightning's to read)
        _, plain = _read_checked(checkpoint_path, "checkpoint_path", False)
        takes = "weights_only" in inspect.signature(module_class.load_from_checkpoint).parameters  # Lightning >= 2.6
        if takes and kwargs.get("weights_only") is None and plain:
            kwargs["weights_only"] = True  # tensors and plain values only: read safely, without Lightning's warning
    stage = ["read"]  # -> "build" (the class's __new__) -> "restore" (its on_load_checkpoint) -> "weights"

    def __new__(cls: type, *args: Any, **init_kwargs: Any) -> Any:
        stage[0] = "build"
        parent = super(rebuilding, cls).__new__
        return parent(cls) if parent is object.__new__ else parent(cls, *args, **init_kwargs)

    def on_load_checkpoint(self: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        stage[0] = "restore"
        restore_architecture(self, checkpoint)
        module_class.on_load_checkpoint(self, checkpoint)
        stage[0] = "weights"

    # A throwaway subclass rebuilds the architecture in the hook Lightning calls before the weights load, and marks
    # when the class is built (its __new__), to tell a class the hyperparameters do not fit from a file Lightning
    # cannot read.
    rebuilding = type(module_class.__name__, (module_class,), {
        "__new__": __new__, "on_load_checkpoint": on_load_checkpoint, "__module__": module_class.__module__,
        "__qualname__": module_class.__qualname__,
    })
    try:
        model = rebuilding.load_from_checkpoint(checkpoint_path, **kwargs)
    except CheckpointMismatch:
        raise
    except (PFAError, TypeError, ValueError, RuntimeError, KeyError, AttributeError, IndexError) as err:
        shown = repr(str(checkpoint_path)) if isinstance(checkpoint_path, (str, os.PathLike)) else "(a file object)"
        if stage[0] == "build":
            raise CheckpointMismatch(module_class, shown, "hyperparameters",
                                     _unfit_hyperparameters(module_class, checkpoint_path, err, kwargs)) from err
        if stage[0] == "weights" and not isinstance(err, PFAError):
            raise CheckpointMismatch(module_class, shown, "weights", _state_dict_error(err)) from err
        raise
    model.__class__ = module_class
    return model.eval()


def _unfit_hyperparameters(module_class: type, checkpoint_path: Any, err: BaseException,
                           overrides: dict[str, Any]) -> str:
    """Why ``module_class`` could not be built from the checkpoint's hyperparameters, in one line: the error, the
    saved names its ``__init__`` does not take (Lightning drops those silently), the caller's overrides."""
    cause = str(err.args[0]).rstrip(".") if isinstance(err, PFAError) and err.args else first_line(err)
    parts = [f"building it from them fails: {cause}"]
    if isinstance(checkpoint_path, (str, os.PathLike)):
        try:
            saved = load_plain(checkpoint_path).get(module_class.CHECKPOINT_HYPER_PARAMS_KEY) or {}
        except Exception:  # noqa: BLE001 - only a hint; Lightning read the file (it may hold more than plain values)
            saved = {}
        parameters = inspect.signature(module_class.__init__).parameters
        if isinstance(saved, dict) and not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            unknown = [str(k) for k in saved if k not in parameters]
            if unknown:
                parts.append(f"its __init__ takes no {listed(unknown)}")
    overridden = [k for k in overrides if k not in ("map_location", "hparams_file", "strict", "weights_only")]
    if overridden:
        parts.append(f"with your overrides of {', '.join(overridden)}")
    return "; ".join(parts)


def _state_dict_error(err: BaseException) -> str:
    """The first of torch's load_state_dict complaints (its message opens with a header line), shortened."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        detail = lines[1]
        return detail if len(detail) <= 200 else detail[:197] + "..."
    return first_line(err)


__all__ = ["CHECKPOINT_KEY", "HISTORY_VERSION", "CheckpointMismatch", "RestoreHook", "already_applied",
           "check_checkpoint_file", "check_module_class", "check_not_behind",
           "input_spec", "inputs_from_spec", "load_compressed", "restore_architecture"]
