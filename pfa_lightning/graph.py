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
from dataclasses import dataclass, field
from contextlib import contextmanager
from functools import cached_property
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from pfa_lightning.activations import UNKNOWN_NOTE, Activation, activation_of, unknown_activation
from pfa_lightning.errors import PFAError
from pfa_lightning.layers import (attention_kind, channel_groups, customized_pruners, heads_of, layer_kind, layer_types,
                                  unit_count)
from pfa_lightning.nested import check_inputs_fit, clone_inputs, map_nested, run_model
from pfa_lightning.pruning import tp
from pfa_lightning.reshapes import MAPPING_ERRORS, FencedGraph, crosses_fence, untraceable
from pfa_lightning.state import ModelState, evaluating
from pfa_lightning.sharing import custom_readers, tied_parameters

# the built-in layer kinds; every registered kind (pfa_lightning.layers) is prunable: see layer_types()
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# walked through like BatchNorm when finding the tensor to read (a layer's response is read after its norm)
_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm)


@dataclass(frozen=True)
class ResponsePoint:
    """Where a producer's responses are read: a module to hook and the activation to apply."""

    module_name: str
    activation: Activation | None
    unit_dim: int  # 1 for conv outputs (N, C, ...), -1 for linear outputs (..., C)
    description: str
    unrecognised: str = ""  # the element-wise operation the response is read before (not one PFA knows)
    reads_input: bool = False  # read the hooked module's input (attention heads: the output projection's input)
    extract: Any = None  # (module, args, kwargs) -> the tensor to read, computed from the hooked module's call


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
    # the units come in consecutive blocks kept or removed whole (an attention module's heads: head_dim units)
    block: int = 1

    @property
    def coupled(self) -> bool:
        return len(self.producers) > 1

    @property
    def heads(self) -> bool:
        return self.block > 1

    def trial_cut(self) -> list[int]:
        """The smallest legal cut: one position of every group, or the last block."""
        if self.block > 1:
            return list(range(self.width - self.block, self.width))
        return list(range(0, self.width, self.width // self.groups))

    def step(self, round_to: int = 1) -> int:
        """Kept widths are multiples of this (or the full width): the group count, the block and ``round_to``."""
        return math.lcm(self.groups, self.block, round_to)


def _with_grad(inputs: Any) -> Any:
    # Tracing follows grad_fn; an input that requires grad gives every op one even in a frozen model.
    return map_nested(inputs, lambda t: t.detach().clone().requires_grad_(True) if t.is_floating_point() else t)


class ModelGraph:
    """Channel spaces and response points of ``model``, traced on ``example_inputs``.

    The model's train/eval flags are left as they were (Torch-Pruning's tracing sets eval).
    """

    def __init__(self, model: nn.Module, example_inputs: Any) -> None:
        self.model = model
        self._names = {m: n for n, m in model.named_modules()}
        state = ModelState(model)
        hooks = {m: set(m._forward_hooks) for m in model.modules()}  # Torch-Pruning's, left behind by a failed trace
        try:
            with torch.enable_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # forward_fn: Torch-Pruning would otherwise try model(*tensor), unpacking a batch into rows
                self.dg = FencedGraph().build_dependency(
                    model, example_inputs=_with_grad(clone_inputs(example_inputs, 2)), forward_fn=run_model,
                    customized_pruners=customized_pruners() or None, verbose=False,
                )
        except MAPPING_ERRORS as err:
            raise PFAError(untraceable(model, self._names, err)) from err
        except RuntimeError as err:  # the inputs may not fit the model at all: say so in its words, not torch's
            check_inputs_fit(model, example_inputs, err)
            raise
        finally:
            state.restore_training_flags()
            for module, own in hooks.items():
                for key in set(module._forward_hooks) - own:
                    del module._forward_hooks[key]
        self._used = False
        self._example = clone_inputs(example_inputs, 2)

    @cached_property
    def custom_readers(self) -> dict[str, list[str]]:
        """User-defined leaf modules reading each layer's output (see :func:`~pfa_lightning.sharing.custom_readers`)."""
        return custom_readers(self.model, self._example, (*layer_types(), *_NORM_TYPES, nn.PReLU))

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
        kinds = layer_types()
        # the layers inside an attention module PFA cuts by heads (its qkv) belong to the heads' space
        inside_attention = {m for a in self.model.modules() if (k := attention_kind(a)) is not None
                            for m in a.modules() if m is not a and m is not k.projection(a)}
        layers = sorted((m for m in self.dg.module2node if isinstance(m, kinds)), key=order.__getitem__)
        for layer in layers:
            if layer in seen:
                continue
            pruner = self.dg.get_pruner_of_module(layer)
            width = pruner.get_out_channels(layer)
            try:
                group = self.dg.get_pruning_group(layer, pruner.prune_out_channels, list(range(width)))
            except MAPPING_ERRORS as err:
                raise PFAError(untraceable(self.model, self._names, err, self._names[layer])) from err
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
                if is_out and isinstance(module, kinds):
                    maps.setdefault(module, {}).update(zip(item.root_idxs, item.idxs))
                if is_out and not dep.target.outputs:
                    reaches_output = True
                if crosses_fence(self.dg, dep, kinds):
                    reaches_output = fenced = True
                g = channel_groups(module)
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
            if inside_attention.intersection(producers):  # cut through the heads' space instead
                reaches_output = True
            names = [self._names[m] for m in producers]
            root = self._names[layer]
            names.remove(root)
            spaces.append(ChannelSpace(root, [root, *names], width, reaches_output, index_map, groups, fenced,
                                       tuple(sorted(tied))))
        return spaces + self._head_spaces()

    def _head_spaces(self) -> list[ChannelSpace]:
        """One space per attention module PFA knows (pfa_lightning.layers): its heads' concatenated outputs,
        cut by whole heads. Left whole when one of its layers shares a parameter with another module."""
        spaces = []
        for name, module in self.model.named_modules():
            kind = attention_kind(module)
            if kind is None:
                continue
            width = unit_count(module)
            tied = sorted({t for m in module.modules() for t in self.tied_parameters.get(m, [])})
            spaces.append(ChannelSpace(name, [name], width, bool(tied), {name: list(range(width))},
                                       tied=tuple(tied), block=int(kind.head_dim(module))))
        return spaces

    def spaces_of(self, layer_name: str) -> list[ChannelSpace]:
        return [space for space in self.spaces if layer_name in space.producers]

    def prunable_layers(self) -> list[str]:
        """Conv/Linear layers whose outputs do not reach the model output, in module order."""
        names = {p for s in self.spaces if not s.reaches_output for p in s.producers}
        names -= {p for s in self.spaces if s.reaches_output for p in s.producers}
        return [n for n, m in self.model.named_modules() if n in names]

    def response_point(self, layer_name: str) -> ResponsePoint:
        """Follow ``layer -> [BatchNorm] -> activation`` and say which tensor to read (for an attention
        module: the input of its output projection, the heads' concatenated outputs)."""
        module = self.model.get_submodule(layer_name)
        kind = attention_kind(module)
        if kind is not None:
            proj = kind.projection(module)
            heads = int(kind.heads(module))
            if kind.read is not None:  # the projection is not called as a module: recompute the heads' outputs
                return ResponsePoint(layer_name, None, -1, f"{layer_name}: its {heads} heads' outputs (read from "
                                     "its call)", extract=kind.read)
            return ResponsePoint(self._names[proj], None, -1, f"{layer_name}: its {heads} heads' outputs "
                                 f"(input of {self._names[proj]})", reads_input=True)
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
        unit_dim = layer_kind(layer).unit_dim
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
        if attention_kind(self.model.get_submodule(layer_name)) is not None:
            return None  # heads mix through the attention: no linear path
        _, start = self._walk(layer_name)
        consumers: list[str] = []
        stack = list(start.outputs)
        if not stack:
            return None
        while stack:
            node = stack.pop()
            module = node.module
            kind = layer_kind(module)
            if kind is not None and module in self._names:
                if kind.foldable and channel_groups(module) == 1 and getattr(module, "groups", 1) == 1:
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
        A graph prunes once (its shapes are then the cut model's); :meth:`trial` cuts and restores as
        often as needed.
        """
        if self._used:
            raise RuntimeError("This ModelGraph already performed a surgery; build a new one.")
        self._used = True
        state = ModelState(self.model)
        try:
            self._cut(removals)
        except BaseException:
            state.restore()
            raise
        state.restore_training_flags()

    @contextmanager
    def trial(self, removals: Mapping[str, Sequence[int]]) -> Iterator[nn.Module]:
        """Cut ``removals`` for the duration of the block, then restore the model and this graph's own
        records of its shapes (Torch-Pruning's concat/split nodes) exactly: one trace serves any number
        of trial cuts (footprint probes, the search for cuts that break the model)."""
        if self._used:
            raise RuntimeError("This ModelGraph already performed a surgery; build a new one.")
        dg = self.dg
        state = ModelState(self.model, extra=[m for m in dg.module2node if isinstance(m, nn.Module) and m not in self._names])
        # a cut of an unwrapped parameter (a layer scale, a position embedding) re-keys the graph with the new one
        module2node, param_to_name, history = dict(dg.module2node), dict(dg._param_to_name), list(dg._pruning_history)
        nodes = [(node, node.module) for node in dg.module2node.values()]
        try:
            self._cut(removals)
            yield self.model
        finally:
            state.restore()
            dg.module2node, dg._param_to_name, dg._pruning_history = module2node, param_to_name, history
            for node, module in nodes:
                node.module = module

    def _cut(self, removals: Mapping[str, Sequence[int]]) -> None:
        for root, idxs in removals.items():
            idxs = sorted(int(i) for i in idxs)
            if not idxs:
                continue
            layer = self.model.get_submodule(root)
            kind = attention_kind(layer)
            if kind is not None:  # whole heads, by the attention kind's own cut
                kind.cut(layer, heads_of([u for u in range(unit_count(layer)) if u not in set(idxs)],
                                         int(kind.head_dim(layer))))
                continue
            pruner = self.dg.get_pruner_of_module(layer)
            group = self.dg.get_pruning_group(layer, pruner.prune_out_channels, idxs)
            group.prune()


def output_shapes(model: nn.Module, inputs: Any) -> Any:
    with evaluating(model), torch.no_grad():
        return map_nested(run_model(model, inputs), lambda t: tuple(t.shape), other=lambda _: None)


def module_width(module: nn.Module) -> int:
    """Number of output units of a layer (see :func:`pfa_lightning.layers.unit_count`)."""
    return unit_count(module)
