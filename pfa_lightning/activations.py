"""The element-wise activations PFA recognises in the autograd graph (and re-applies, with their
parameters, to read a layer's response after its non-linearity)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Activation:
    """A non-linearity applied to a layer's output, recovered from the autograd graph."""

    name: str
    fn: Callable[[Tensor], Tensor]
    monotone: bool  # non-decreasing: then act(max(x)) == max(act(x)) and pooling may go first


def _saved(grad_fn: Any, attr: str, default: Any) -> Any:
    try:
        value = getattr(grad_fn, attr)
    except Exception:  # attribute absent in this torch build
        return default
    return default if value is None else value


def _elu(x: Tensor, alpha: float, scale: float, input_scale: float) -> Tensor:
    """torch's ELU family (ELU, SELU) with its saved constants: ``scale * x`` for x > 0, else
    ``scale * alpha * (exp(input_scale * x) - 1)``."""
    return scale * torch.where(x > 0, x, alpha * torch.expm1(input_scale * x))


def _kind(grad_fn: Any) -> str:
    """The operation an autograd node differentiates: ``LeakyReluBackward1`` (in place) -> ``LeakyRelu``."""
    return re.sub(r"Backward\d+$", "", grad_fn.name())


def activation_of(grad_fn: Any) -> Activation | None:
    """The activation an autograd node computes (in-place variants included, with their parameters),
    or None when it is not a known element-wise one."""
    if grad_fn is None:
        return None
    kind = _kind(grad_fn)
    if kind == "Relu":
        return Activation("ReLU", torch.relu, True)
    if kind == "LeakyRelu":
        slope = float(_saved(grad_fn, "_saved_negative_slope", 0.01))
        return Activation(f"LeakyReLU({slope:g})", partial(F.leaky_relu, negative_slope=slope), slope >= 0)
    if kind == "Hardtanh":
        lo, hi = float(_saved(grad_fn, "_saved_min_val", -1.0)), float(_saved(grad_fn, "_saved_max_val", 1.0))
        return Activation(f"Hardtanh({lo:g}, {hi:g})", partial(F.hardtanh, min_val=lo, max_val=hi), True)
    if kind == "Elu":  # ELU, and SELU (its scale and alpha)
        alpha = float(_saved(grad_fn, "_saved_alpha", 1.0))
        scale = float(_saved(grad_fn, "_saved_scale", 1.0))
        input_scale = float(_saved(grad_fn, "_saved_input_scale", 1.0))
        selu = math.isclose(alpha, 1.6732632423543772) and math.isclose(scale, 1.0507009873554805)
        name = "SELU" if selu and input_scale == 1 else f"ELU({alpha:g}, scale={scale:g})" if scale != 1 else f"ELU({alpha:g})"
        fn = partial(_elu, alpha=alpha, scale=scale, input_scale=input_scale)
        return Activation(name, fn, alpha * scale >= 0 and scale > 0 and input_scale > 0)
    if kind == "Celu":
        alpha = float(_saved(grad_fn, "_saved_alpha", 1.0))
        return Activation(f"CELU({alpha:g})", partial(F.celu, alpha=alpha), alpha > 0)
    if kind == "Softplus":
        beta, threshold = float(_saved(grad_fn, "_saved_beta", 1.0)), float(_saved(grad_fn, "_saved_threshold", 20.0))
        # above the threshold it is x itself: a drop of log(1 + e^-t) / beta there, negligible only for a large t
        return Activation(f"Softplus({beta:g}, {threshold:g})", partial(F.softplus, beta=beta, threshold=threshold),
                          beta > 0 and threshold >= 15)
    if kind == "Gelu":
        approx = str(_saved(grad_fn, "_saved_approximate", "none"))
        return Activation("GELU" if approx == "none" else f"GELU({approx})", partial(F.gelu, approximate=approx), False)
    simple = {
        "Sigmoid": ("Sigmoid", torch.sigmoid, True),
        "Tanh": ("Tanh", torch.tanh, True),
        "Silu": ("SiLU", F.silu, False),
        "Hardswish": ("Hardswish", F.hardswish, False),
        "Hardsigmoid": ("Hardsigmoid", F.hardsigmoid, True),
        "Mish": ("Mish", F.mish, False),
    }
    if kind in simple:
        return Activation(*simple[kind])
    return None


# element-wise non-linearities PFA does not apply itself: a response directly followed by one is read before it
_UNKNOWN = frozenset({"Hardshrink", "Softshrink", "Threshold", "LogSigmoid", "Rrelu", "RreluWithNoise", "Glu",
                      "Softsign", "Exp", "Log", "Sin", "Cos", "Abs", "Sqrt", "Rsqrt", "Pow", "Erf", "Sign", "Clamp",
                      "ClampMin", "ClampMax"})
UNKNOWN_NOTE = "an activation PFA does not know"  # in the response description; the recipe table looks for it


def unknown_activation(grad_fn: Any) -> str:
    """The name of the element-wise non-linearity ``grad_fn`` computes when PFA cannot apply it; "" otherwise."""
    kind = _kind(grad_fn) if grad_fn is not None else ""
    return kind if kind in _UNKNOWN else ""


__all__ = ["Activation", "UNKNOWN_NOTE", "activation_of", "unknown_activation"]
