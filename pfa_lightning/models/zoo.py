"""Networks from torchvision and timm by name (never downloading weights), and a user's trained weights.

Example:
    >>> net = build_library_model("torchvision", "resnet18", num_classes=10, in_channels=1)
    >>> load_weights(net, "resnet18_digits.pt")  # a state_dict, or a Lightning checkpoint of it
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pfa_lightning.errors import PFAError
from pfa_lightning.files import load_plain
from pfa_lightning.validation import check_choice

LIBRARIES = ("torchvision", "timm")


def build_library_model(library: str, name: str, num_classes: int = 10, in_channels: int = 3,
                        **kwargs: Any) -> nn.Module:
    """``torchvision.models.get_model(name)`` or ``timm.create_model(name)`` with random weights, a
    ``num_classes``-way classifier and ``in_channels`` input channels; ``kwargs`` go to the constructor
    (e.g. ``img_size=32`` for a timm ViT).

    Raises:
        PFAError: an unknown library or model name (with the closest names), timm not installed, a constructor
            refusing ``kwargs``, or a torchvision model whose first convolution does not take 3 channels when
            ``in_channels != 3``.
    """
    check_choice("library", library, LIBRARIES)
    if not isinstance(name, str) or not name:
        raise PFAError(f"`name` must be a {library} model name (e.g. resnet18), got {name!r}.")
    if library == "timm":
        try:
            import timm
        except ImportError:
            raise PFAError("`model=timm` needs timm: pip install 'pfa_lightning[timm]'.") from None
        _check_known(name, timm.list_models(), "timm", "timm.list_models()")
        return _construct(timm.create_model, name, pretrained=False, num_classes=num_classes, in_chans=in_channels,
                          **kwargs)
    import torchvision

    _check_known(name, torchvision.models.list_models(module=torchvision.models), "torchvision's classification models",
                 "torchvision.models.list_models(module=torchvision.models)")
    net = _construct(torchvision.models.get_model, name, weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        _set_input_channels(net, name, in_channels)
    return net


def _construct(builder: Any, name: str, **kwargs: Any) -> nn.Module:
    """``builder(name, **kwargs)``; a constructor refusing an argument (``model_kwargs``) is one PFAError."""
    try:
        return builder(name, **kwargs)
    except TypeError as err:
        raise PFAError(f"{name} cannot be built with the arguments {sorted(kwargs)} ({err}): check "
                       "`model.model_kwargs`.") from None


def _check_known(name: str, known: list[str], models: str, listing: str) -> None:
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5)
        hint = f" Closest: {', '.join(close)}." if close else ""
        raise PFAError(f"{name!r} is not one of {models} (see {listing}).{hint}")


def _set_input_channels(net: nn.Module, name: str, in_channels: int) -> None:
    """Replace the first convolution (3 input channels, as torchvision builds them) by one taking ``in_channels``."""
    first = next(((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or first[1].in_channels != 3 or first[1].groups != 1:
        raise PFAError(f"torchvision's {name} does not start with a 3-channel convolution, so it cannot take "
                       f"{in_channels}-channel images: use a data set of RGB images.")
    path, conv = first
    parent_name, _, attribute = path.rpartition(".")
    setattr(net.get_submodule(parent_name), attribute, nn.Conv2d(
        in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        bias=conv.bias is not None, padding_mode=conv.padding_mode))


def load_weights(net: nn.Module, path: str | Path) -> nn.Module:
    """Load trained weights into ``net`` in place: a ``state_dict`` file, or a checkpoint holding one under
    ``state_dict`` (Lightning), ``model_state_dict`` or ``model``. Keys may carry one prefix more than
    ``net``'s (a Lightning module's attribute, e.g. ``net.`` or ``model.``). Read with ``weights_only=True``.

    Raises:
        PFAError: a missing or unreadable file, keys that do not match ``net``'s (naming a few), or
            shapes that differ (e.g. another number of classes, or a compressed network's checkpoint).
    """
    file = Path(path)
    if not file.is_file():
        raise PFAError(f"`model.weights` {str(file)!r} is not a file (a state_dict or a checkpoint to start from).")
    try:
        saved = load_plain(file)
    except Exception as err:  # noqa: BLE001 - any failure to read it is the same user error
        raise PFAError(f"`model.weights` {str(file)!r} cannot be read with torch.load(weights_only=True) "
                       f"({type(err).__name__}): save the weights with torch.save(model.state_dict(), path).") from None
    state = _state_dict_of(saved, file)
    own = net.state_dict()
    state = _strip_prefix(state, set(own))
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise PFAError(f"`model.weights` {str(file)!r} does not fit the model: missing keys {missing[:4]}, "
                       f"unexpected keys {unexpected[:4]} ({len(missing)} and {len(unexpected)} in all).")
    wrong = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        key, theirs, ours = wrong[0]
        raise PFAError(f"`model.weights` {str(file)!r} does not fit the model: {key} has shape {theirs}, the model "
                       f"{ours} ({len(wrong)} such tensors; another number of classes or input channels? a compressed "
                       "checkpoint loads with load_compressed).")
    net.load_state_dict(state)
    return net


def _state_dict_of(saved: Any, file: Path) -> dict[str, torch.Tensor]:
    if isinstance(saved, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(saved.get(key), dict):
                saved = saved[key]
                break
    if isinstance(saved, dict) and saved and all(isinstance(v, torch.Tensor) for v in saved.values()):
        return saved
    raise PFAError(f"`model.weights` {str(file)!r} holds no state_dict (a dict of tensors, alone or under "
                   "'state_dict', 'model_state_dict' or 'model').")


def _strip_prefix(state: dict[str, torch.Tensor], own: set[str]) -> dict[str, torch.Tensor]:
    """``state`` with the one leading prefix removed that makes its keys ``own``'s (if any)."""
    if set(state) == own or not own:
        return state
    anchor = next(iter(own))
    for key in state:
        if key.endswith("." + anchor):
            prefix = key[: len(key) - len(anchor)]
            stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if set(stripped) == own:
                return stripped
    return state


__all__ = ["LIBRARIES", "build_library_model", "load_weights"]
