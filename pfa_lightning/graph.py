"""The model's channel spaces, found with Torch-Pruning's dependency graph.

A *channel space* is a set of output channels that must shrink together: one
conv's outputs, or, in a residual stage, the outputs of every conv added into
the same stream (Torch-Pruning calls it a pruning group). The Conv/Linear layers
whose outputs live in a space are its *producers*; PFA makes one decision per
space. Spaces that reach the model's output (the classifier) are never analysed.
"""

from __future__ import annotations

import math
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import Tensor, nn

from pfa_lightning.errors import PFAError
from pfa_lightning.nested import clone_inputs, map_nested, run_model

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORM_TYPES = (nn.modules.batchnorm._BatchNorm,)


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


def _activation_of(grad_fn: Any) -> Activation | None:
    """The activation an autograd node computes (in-place variants included, with their parameters),
    or None when it is not a known element-wise one."""
    if grad_fn is None:
        return None
    kind = re.sub(r"Backward\d+$", "", grad_fn.name())  # LeakyReluBackward1 is the in-place LeakyReLU
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


@dataclass(frozen=True)
class ResponsePoint:
    """Where a producer's responses are read: a module to hook and the activation to apply."""

    module_name: str
    activation: Activation | None
    unit_dim: int  # 1 for conv outputs (N, C, ...), -1 for linear outputs (..., C)
    description: str


@dataclass
class ChannelSpace:
    """One set of output channels that is pruned as a whole.

    ``index_map[p][u]`` is the output channel of producer ``p`` that carries unit ``u`` of the
    space. Usually a producer lies wholly in one space (identity map); a layer whose output is
    added to a concatenation spans several spaces, one slice each.
    """

    root: str  # the first producer in module order; names the space; lies wholly in it
    producers: list[str]  # Conv/Linear layers whose outputs carry these channels
    width: int
    reaches_output: bool
    index_map: dict[str, list[int]] = field(default_factory=dict)

    @property
    def coupled(self) -> bool:
        return len(self.producers) > 1


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and give every submodule its own train/eval flag back."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


def _with_grad(inputs: Any) -> Any:
    # Tracing follows grad_fn; an input that requires grad gives every op one even in a frozen model.
    return map_nested(inputs, lambda t: t.detach().clone().requires_grad_(True) if t.is_floating_point() else t)


class ModelState:
    """Everything surgery may replace in a model, so that a failed surgery can be undone exactly."""

    def __init__(self, model: nn.Module) -> None:
        self._saved = [
            (m, dict(m.__dict__), dict(m._parameters), dict(m._buffers), m.training) for m in model.modules()
        ]
        self._data = [(t, t.data) for m in model.modules() for t in (*m._parameters.values(), *m._buffers.values())
                      if t is not None]

    def restore(self) -> None:
        for module, attrs, params, buffers, training in self._saved:
            module.__dict__.clear()
            module.__dict__.update(attrs)
            module.__dict__["_parameters"] = params
            module.__dict__["_buffers"] = buffers
            module.training = training
        for tensor, data in self._data:
            tensor.data = data

    def restore_training_flags(self) -> None:
        for module, *_, training in self._saved:
            module.training = training


def _untraceable(model: nn.Module, names: Mapping[nn.Module, str], err: BaseException) -> str:
    """Why Torch-Pruning could not map ``model``'s channels, naming the layer the failing operation reads."""
    node, tb = None, err.__traceback__
    while tb is not None:  # the graph node Torch-Pruning was mapping when it failed
        node = tb.tb_frame.f_locals.get("node", node) if "torch_pruning" in tb.tb_frame.f_code.co_filename else node
        tb = tb.tb_next
    where, op = "", ""
    if node is not None and hasattr(node, "inputs"):
        op = f" at a {type(node.module).__name__.strip('_').replace('Op', '').lower() or 'tensor'} operation"
        queue, seen = list(node.inputs), set()
        while queue:  # breadth first, up to the nearest named layer
            current = queue.pop(0)
            if id(current) in seen:
                continue
            seen.add(id(current))
            if current.module in names:
                where = f" that reads layer {names[current.module]!r}"
                break
            queue.extend(current.inputs)
    return (f"PFA cannot map the channels of {type(model).__name__}{op}{where}: Torch-Pruning's dependency graph "
            f"failed ({type(err).__name__}: {err}). Reshapes that mix channels across groups (e.g. ShuffleNet's "
            "channel shuffle) are not supported; the model was not changed.")


class ModelGraph:
    """Channel spaces and response points of ``model``, traced on ``example_inputs``.

    The model's train/eval flags are left as they were (Torch-Pruning's tracing sets eval).
    """

    def __init__(self, model: nn.Module, example_inputs: Any) -> None:
        self.model = model
        self._names = {m: n for n, m in model.named_modules()}
        state = ModelState(model)
        try:
            with torch.enable_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # forward_fn: Torch-Pruning would otherwise try model(*tensor), unpacking a batch into rows
                self.dg = tp.DependencyGraph().build_dependency(
                    model, example_inputs=_with_grad(clone_inputs(example_inputs, 2)), forward_fn=run_model,
                    verbose=False,
                )
        except (ArithmeticError, IndexError, KeyError, AssertionError) as err:  # Torch-Pruning's index maps
            raise PFAError(_untraceable(model, self._names, err)) from err
        finally:
            state.restore_training_flags()
        self.spaces: list[ChannelSpace] = self._find_spaces()
        self._used = False

    # -- discovery ---------------------------------------------------------------------------
    def _find_spaces(self) -> list[ChannelSpace]:
        spaces: list[ChannelSpace] = []
        seen: set[nn.Module] = set()
        order = {m: i for i, m in enumerate(self.model.modules())}
        layers = sorted((m for m in self.dg.module2node if isinstance(m, PRUNABLE_TYPES)), key=order.__getitem__)
        for layer in layers:
            if layer in seen:
                continue
            pruner = self.dg.get_pruner_of_module(layer)
            width = pruner.get_out_channels(layer)
            group = self.dg.get_pruning_group(layer, pruner.prune_out_channels, list(range(width)))
            maps: dict[nn.Module, dict[int, int]] = {}
            reaches_output = False
            for item in group:
                dep = item.dep
                module = dep.target.module
                is_out = self.dg.is_out_channel_pruning_fn(dep.handler)
                if is_out and isinstance(module, PRUNABLE_TYPES):
                    maps.setdefault(module, {}).update(zip(item.root_idxs, item.idxs))
                if is_out and not dep.target.outputs:
                    reaches_output = True
            seen.update(maps)
            producers = sorted(maps, key=order.__getitem__)
            index_map = {self._names[m]: [maps[m].get(u, -1) for u in range(width)] for m in producers}
            if any(-1 in v for v in index_map.values()):  # a partial coupling we cannot express
                reaches_output = True
            names = [self._names[m] for m in producers]
            root = self._names[layer]
            names.remove(root)
            spaces.append(ChannelSpace(root, [root, *names], width, reaches_output, index_map))
        return spaces

    def spaces_of(self, layer_name: str) -> list[ChannelSpace]:
        return [space for space in self.spaces if layer_name in space.producers]

    def prunable_layers(self) -> list[str]:
        """Conv/Linear layers whose outputs do not reach the model output, in module order."""
        names = {p for s in self.spaces if not s.reaches_output for p in s.producers}
        names -= {p for s in self.spaces if s.reaches_output for p in s.producers}
        return [n for n, m in self.model.named_modules() if n in names]

    def response_point(self, layer_name: str) -> ResponsePoint:
        """Follow ``layer -> [BatchNorm] -> activation`` and say which tensor to read."""
        return self._walk(layer_name)[0]

    def _walk(self, layer_name: str) -> tuple[ResponsePoint, Any]:
        """The response point and the graph node that produces the response tensor."""
        layer = self.model.get_submodule(layer_name)
        node = self.dg.module2node[layer]
        hook, chain = layer, [layer_name]
        activation: Activation | None = None
        nonlinear = False
        while len(node.outputs) == 1:
            nxt = node.outputs[0]
            if isinstance(nxt.module, _NORM_TYPES) and nxt.module in self._names:
                node, hook = nxt, nxt.module
                chain.append(self._names[hook])
                continue
            if isinstance(nxt.module, nn.PReLU) and nxt.module in self._names:
                node, hook, nonlinear = nxt, nxt.module, True  # a module: hook its output directly
                chain.append(self._names[hook])
                break
            activation = _activation_of(nxt.grad_fn)
            if activation is not None:
                node, nonlinear = nxt, True
                chain.append(activation.name)
            break
        unit_dim = -1 if isinstance(layer, nn.Linear) else 1
        description = " -> ".join(chain)
        if not nonlinear:
            description += " (no non-linearity follows directly: pre-activation response)"
        return ResponsePoint(self._names[hook], activation, unit_dim, description), node

    def following_norm(self, layer_name: str) -> nn.Module | None:
        """The BatchNorm that directly and solely follows ``layer_name``, if any."""
        node = self.dg.module2node[self.model.get_submodule(layer_name)]
        if len(node.outputs) == 1 and isinstance(node.outputs[0].module, _NORM_TYPES):
            return node.outputs[0].module
        return None

    def linear_consumers(self, layer_name: str) -> list[str] | None:
        """The Conv/Linear layers that read ``layer_name``'s response through linear reshapes only.

        ``None`` when some path from the response goes through anything else (pooling, an addition,
        a concatenation, a normalisation...), or reaches a grouped convolution: compensation is
        exact only along linear paths.
        """
        _, start = self._walk(layer_name)
        consumers: list[str] = []
        stack = list(start.outputs)
        if not stack:
            return None
        while stack:
            node = stack.pop()
            module = node.module
            if isinstance(module, PRUNABLE_TYPES) and module in self._names:
                if isinstance(module, nn.Linear) or module.groups == 1:
                    consumers.append(self._names[module])
                    continue
                return None
            if isinstance(module, tp.ops._ReshapeOp):
                stack.extend(node.outputs)
                continue
            return None
        return sorted(set(consumers))

    # -- surgery -----------------------------------------------------------------------------
    def prune(self, removals: Mapping[str, Sequence[int]]) -> None:
        """Remove output channels ``removals[root]`` (current numbering) from each named space.

        All or nothing: if any step fails the model is restored exactly and the error re-raised.
        A graph prunes once; build a new one for the next surgery.
        """
        if self._used:
            raise RuntimeError("This ModelGraph already performed a surgery; build a new one.")
        self._used = True
        state = ModelState(self.model)
        try:
            for root, idxs in removals.items():
                idxs = sorted(int(i) for i in idxs)
                if not idxs:
                    continue
                layer = self.model.get_submodule(root)
                pruner = self.dg.get_pruner_of_module(layer)
                group = self.dg.get_pruning_group(layer, pruner.prune_out_channels, idxs)
                group.prune()
        except BaseException:
            state.restore()
            raise
        state.restore_training_flags()


def module_width(module: nn.Module) -> int:
    """Number of output units of a Conv/Linear layer."""
    return int(module.out_features if isinstance(module, nn.Linear) else module.out_channels)


def match_layers(candidates: Sequence[str], patterns: Iterable[str] | None, what: str) -> set[str]:
    """Names among ``candidates`` matched by glob ``patterns``; each pattern must match something."""
    import fnmatch

    if patterns is None:
        return set(candidates)
    if isinstance(patterns, str):
        patterns = [patterns]
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [c for c in candidates if c == pattern or fnmatch.fnmatchcase(c, pattern)]
        if not hits:
            raise PFAError(
                f"`{what}` entry {pattern!r} matches no prunable layer; prunable layers are: {', '.join(candidates)}."
            )
        chosen.update(hits)
    return chosen


def analysable_layers(model: nn.Module, graph: ModelGraph, layers: Iterable[str] | None,
                      exclude: Iterable[str] | None, verb: str = "analyse") -> tuple[list[str], set[str]]:
    """(prunable layers, the ones ``layers``/``exclude`` choose), or a clear PFAError if there are none."""
    candidates = graph.prunable_layers()
    if not candidates:
        raise PFAError(
            f"{type(model).__name__} has no prunable layer: PFA compresses Conv/Linear layers whose "
            "outputs feed other layers (the final classifier is never compressed)."
        )
    chosen = match_layers(candidates, layers, "layers")
    if exclude is not None:
        chosen -= match_layers(candidates, exclude, "exclude")
    if not chosen:
        raise PFAError(f"`layers`/`exclude` leave no layer to {verb}.")
    return candidates, chosen
