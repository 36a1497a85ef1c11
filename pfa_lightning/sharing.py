"""What a model shares or hides that a cut must respect: parameters tied between layers (a language model's
output layer reusing its embedding), and modules of the user's own that read a layer's output (a custom
activation PFA cannot recognise)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pfa_lightning.nested import map_nested, run_model


def tied_parameters(model: nn.Module) -> dict[nn.Module, list[str]]:
    """Modules holding a parameter that another module holds too, or that one module holds under two names —
    weight tying — with every name of those parameters. Parameters sharing storage count as tied as well. A
    module reachable under two names (``self.first = self.net[0]``) is one module: not tied."""
    holders: dict[tuple, list[tuple[nn.Module, str, str]]] = {}
    for module_name, module in model.named_modules():  # each module once, under its first name
        for param_name, param in module._parameters.items():
            if param is None:
                continue
            real = param.numel() > 0 and param.device.type != "meta"  # meta and empty tensors have no storage
            key = (param.device, param.untyped_storage().data_ptr(), param.storage_offset()) if real else (id(param),)
            holders.setdefault(key, []).append((module, param_name, f"{module_name}.{param_name}".lstrip(".")))
    tied: dict[nn.Module, set[str]] = {}
    for entries in holders.values():
        if len({(id(module), attr) for module, attr, _ in entries}) > 1:
            names = {name for _, _, name in entries}
            for module, _, _ in entries:
                tied.setdefault(module, set()).update(names)
    return {module: sorted(names) for module, names in tied.items()}


def custom_readers(model: nn.Module, inputs: Any, producers: tuple[type, ...]) -> dict[str, list[str]]:
    """For the output of each module of the ``producers`` types, the user-defined leaf modules (not torch's)
    that read it, as ``"name (Class)"``: e.g. a custom activation module (``x * sigmoid(1.702 x)``) whose
    operations PFA cannot recognise as one non-linearity. One forward pass on ``inputs`` with hooks; empty
    if that pass fails (it only costs a warning)."""
    produced: dict[int, str] = {}
    readers: dict[str, list[str]] = {}
    alive: list[torch.Tensor] = []  # keeps every hooked tensor alive, so no id() is reused during the pass

    def remember(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                produced[id(output)] = name
                alive.append(output)
        return hook

    def read(name: str):
        def note(t: torch.Tensor) -> None:
            if id(t) in produced:
                readers.setdefault(produced[id(t)], []).append(f"{name} ({type(module_of[name]).__name__})")
        def hook(module: nn.Module, args: Any) -> None:  # returns None: the arguments stay as they are
            map_nested(args, note)
        return hook

    module_of = dict(model.named_modules())
    hooks = []
    for name, module in module_of.items():
        if isinstance(module, producers):
            hooks.append(module.register_forward_hook(remember(name)))
        elif not any(True for _ in module.children()) and not type(module).__module__.startswith("torch."):
            hooks.append(module.register_forward_pre_hook(read(name)))
    training = [(m, m.training) for m in model.modules()]
    try:
        with torch.no_grad():
            model.eval()
            run_model(model, inputs)
    except Exception:  # noqa: BLE001 - the trace worked on these inputs: a failure here only costs the warning
        return {}
    finally:
        for h in hooks:
            h.remove()
        for m, flag in training:
            m.training = flag
    return readers


__all__ = ["custom_readers", "tied_parameters"]
