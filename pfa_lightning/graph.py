"""The model's channel spaces, found with Torch-Pruning's dependency graph.

A *channel space* is a set of output channels that must shrink together: one
conv's outputs, or, in a residual stage, the outputs of every conv added into
the same stream (Torch-Pruning calls it a pruning group). The Conv/Linear layers
whose outputs live in a space are its *producers*; PFA makes one decision per
space. Spaces that reach the model's output (the classifier) are never analysed.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from pfa_lightning.activations import UNKNOWN_NOTE, Activation, activation_of, unknown_activation
from pfa_lightning.errors import PFAError
from pfa_lightning.nested import clone_inputs, map_nested, run_model
from pfa_lightning.pruning import tp
from pfa_lightning.reshapes import FencedGraph, crosses_fence
from pfa_lightning.sharing import custom_readers, tied_parameters

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# walked through like BatchNorm when finding the tensor to read (a layer's response is read after its norm)
_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm)


def _channel_groups(module: nn.Module) -> int:
    """How many groups ``module`` splits its channels into, when a cut must respect them: a grouped
    (not depthwise) convolution or a GroupNorm; 1 otherwise."""
    if isinstance(module, nn.GroupNorm):
        return int(module.num_groups)
    if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
        depthwise = module.groups == module.in_channels == module.out_channels  # Torch-Pruning couples in and out
        return 1 if depthwise else int(module.groups)
    return 1


@dataclass(frozen=True)
class ResponsePoint:
    """Where a producer's responses are read: a module to hook and the activation to apply."""

    module_name: str
    activation: Activation | None
    unit_dim: int  # 1 for conv outputs (N, C, ...), -1 for linear outputs (..., C)
    description: str
    unrecognised: str = ""  # the element-wise operation the response is read before (not one PFA knows)


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
    # Grouped convolutions (not depthwise) and GroupNorms split the channels into this many equal,
    # consecutive groups; a legal cut removes the same positions from every group.
    groups: int = 1
    # the channels pass through a reshape -> permute -> reshape run (see reshapes.py): left whole
    fenced: bool = False
    # a layer touched by a cut of these channels shares a parameter with another (weight tying): left whole
    tied: tuple[str, ...] = ()

    @property
    def coupled(self) -> bool:
        return len(self.producers) > 1

    def step(self, round_to: int = 1) -> int:
        """Kept widths are multiples of this (or the full width): the group count and ``round_to``."""
        return math.lcm(self.groups, round_to)


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


# how Torch-Pruning's index maps fail on an operation they cannot follow
_MAPPING_ERRORS = (ArithmeticError, IndexError, KeyError, AssertionError)


def _untraceable(model: nn.Module, names: Mapping[nn.Module, str], err: BaseException, layer: str = "") -> str:
    """Why Torch-Pruning could not map ``model``'s channels, naming the layer the failing operation reads
    (or else the ``layer`` whose channels were being followed)."""
    node, tb = None, err.__traceback__
    while tb is not None:  # the graph node Torch-Pruning was mapping when it failed
        node = tb.tb_frame.f_locals.get("node", node) if "torch_pruning" in tb.tb_frame.f_code.co_filename else node
        tb = tb.tb_next
    where, op = "", ""
    if node is not None and hasattr(node, "inputs"):
        kind = type(node.module).__name__.strip("_").replace("Op", "").lower() or "tensor"
        op = f" at {'an' if kind[0] in 'aeiou' else 'a'} {kind} operation"
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
    if not where and layer:
        where = f" while following the channels of layer {layer!r}"
    return (f"PFA cannot map the channels of {type(model).__name__}{op}{where}: Torch-Pruning's dependency graph "
            f"failed ({type(err).__name__}: {err}). Operations that reinterpret the channel axis in a way it cannot "
            "follow are not supported (a channel shuffle, reshape -> permute -> reshape, is); "
            "the model was not changed.")


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
                self.dg = FencedGraph().build_dependency(
                    model, example_inputs=_with_grad(clone_inputs(example_inputs, 2)), forward_fn=run_model,
                    verbose=False,
                )
        except _MAPPING_ERRORS as err:
            raise PFAError(_untraceable(model, self._names, err)) from err
        finally:
            state.restore_training_flags()
        self._used = False
        self._example = clone_inputs(example_inputs, 2)

    @cached_property
    def custom_readers(self) -> dict[str, list[str]]:
        """User-defined leaf modules reading each layer's output (see :func:`~pfa_lightning.sharing.custom_readers`)."""
        return custom_readers(self.model, self._example, (*PRUNABLE_TYPES, *_NORM_TYPES, nn.PReLU))

    @cached_property
    def spaces(self) -> list[ChannelSpace]:
        """The channel spaces, found on first use (a graph built only to cut does not need them)."""
        return self._find_spaces()

    @cached_property
    def tied_parameters(self) -> dict[nn.Module, list[str]]:
        """Modules holding a parameter another module holds too (see :func:`~pfa_lightning.sharing.tied_parameters`)."""
        return tied_parameters(self.model)

    @property
    def tied(self) -> list[str]:
        """Parameters shared between layers whose channels PFA would cut: those channels are left whole."""
        return sorted({name for space in self.spaces for name in space.tied})

    @property
    def fenced(self) -> list[str]:
        """Layers left whole because their channels pass through a reshape -> permute -> reshape run
        (see :mod:`pfa_lightning.reshapes`)."""
        return [p for space in self.spaces if space.fenced for p in space.producers]

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
            try:
                group = self.dg.get_pruning_group(layer, pruner.prune_out_channels, list(range(width)))
            except _MAPPING_ERRORS as err:
                raise PFAError(_untraceable(self.model, self._names, err, self._names[layer])) from err
            maps: dict[nn.Module, dict[int, int]] = {}
            reaches_output = fenced = False
            groups = 1
            tied: set[str] = set()
            for item in group:
                dep = item.dep
                module = dep.target.module
                if module in self.tied_parameters:  # a cut would replace one holder's parameter: untied
                    tied.update(self.tied_parameters[module])
                    reaches_output = True
                is_out = self.dg.is_out_channel_pruning_fn(dep.handler)
                if is_out and isinstance(module, PRUNABLE_TYPES):
                    maps.setdefault(module, {}).update(zip(item.root_idxs, item.idxs))
                if is_out and not dep.target.outputs:
                    reaches_output = True
                if crosses_fence(self.dg, dep, PRUNABLE_TYPES):
                    reaches_output = fenced = True
                g = _channel_groups(module)
                if g > 1 and module in self._names:
                    # positions line up with the space's units only when the module sees the whole space in order
                    in_order = list(item.idxs) == list(item.root_idxs) == list(range(width))
                    step = math.lcm(groups, g)
                    groups = step if in_order and width % step == 0 else width  # else: whole positions only
            seen.update(maps)
            producers = sorted(maps, key=order.__getitem__)
            index_map = {self._names[m]: [maps[m].get(u, -1) for u in range(width)] for m in producers}
            if any(-1 in v for v in index_map.values()):  # a partial coupling we cannot express
                reaches_output = True
            names = [self._names[m] for m in producers]
            root = self._names[layer]
            names.remove(root)
            spaces.append(ChannelSpace(root, [root, *names], width, reaches_output, index_map, groups, fenced,
                                       tuple(sorted(tied))))
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
        nonlinear, unrecognised = False, ""
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
            activation = activation_of(nxt.grad_fn)
            if activation is not None:
                node, nonlinear = nxt, True
                chain.append(activation.name)
            else:
                unrecognised = unknown_activation(nxt.grad_fn)
            break
        if not nonlinear and not unrecognised:  # a module of the user's own may hide a non-linearity
            unrecognised = ", ".join(self.custom_readers.get(self._names[hook], []))
        unit_dim = -1 if isinstance(layer, nn.Linear) else 1
        description = " -> ".join(chain)
        if unrecognised:
            description += f" (read before {unrecognised}, {UNKNOWN_NOTE}: pre-activation response)"
        elif not nonlinear:
            description += " (no non-linearity follows directly: pre-activation response)"
        return ResponsePoint(self._names[hook], activation, unit_dim, description, unrecognised), node

    def following_norm(self, layer_name: str) -> nn.Module | None:
        """The BatchNorm that directly and solely follows ``layer_name``, if any."""
        node = self.dg.module2node[self.model.get_submodule(layer_name)]
        if len(node.outputs) == 1 and isinstance(node.outputs[0].module, nn.modules.batchnorm._BatchNorm):
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


def output_shapes(model: nn.Module, inputs: Any) -> Any:
    with evaluating(model), torch.no_grad():
        return map_nested(run_model(model, inputs), lambda t: tuple(t.shape), other=lambda _: None)


def module_width(module: nn.Module) -> int:
    """Number of output units of a Conv/Linear layer."""
    return int(module.out_features if isinstance(module, nn.Linear) else module.out_channels)


