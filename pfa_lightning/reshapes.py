"""Reshapes that reorder channels, which Torch-Pruning cannot map: its dependency graph is cut there.

ShuffleNet's channel shuffle is ``view(N, g, C/g, H, W) -> transpose(1, 2) -> view(N, C, H, W)``:
channel ``i`` after it is some other channel before it. Torch-Pruning maps a reshape only when it
flattens or unflattens channels in order (``Conv -> flatten -> Linear``); on a shuffle it crashes
(``ZeroDivisionError``) or, on lower-rank variants, maps indices wrongly without a word.
:class:`FencedGraph` therefore removes every *reshape -> permute -> reshape* run from the traced graph
before the dependencies are built (whatever the tensors' rank: which axis is the channel one is not
known there, so any permutation between two reshapes may reorder channels), and remembers the nodes on
either side; :func:`crosses_fence` then tells which channel spaces would change channels through it,
and those are left whole. This is conservative: Swin's window partition (``view -> permute -> view``,
channels last and in order) is fenced too, so its residual stream stays whole while its MLPs are cut.
Everything else in the model (e.g. the layers inside each ShuffleNet branch) is cut as usual.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from pfa_lightning.pruning import tp

_PERMUTES = ("TransposeBackward", "PermuteBackward")
_MAX_RUN = 8  # ops between the two reshapes (a permute, a contiguous copy, ...)


def _mixing_run(end: Any) -> list[Any] | None:
    """The nodes from a reshape back to the reshape before it, when a permute lies between them (and
    nothing else reads the tensors in between)."""
    run, node, permuted = [end], end, False
    while len(node.inputs) == 1 and len(run) <= _MAX_RUN:
        node = node.inputs[0]
        if len(node.outputs) != 1:
            return None
        if node.type == tp.ops.OPTYPE.RESHAPE:
            return [*run, node] if permuted else None
        if node.type != tp.ops.OPTYPE.ELEMENTWISE:
            return None
        permuted |= type(node.grad_fn).__name__.startswith(_PERMUTES)
        run.append(node)
    return None


class FencedGraph(tp.DependencyGraph):
    """Torch-Pruning's dependency graph without the channel-mixing reshapes.

    ``upstream`` holds the nodes whose output fed a removed run, ``downstream`` the nodes that read
    one; ``fences`` counts the runs removed.
    """

    upstream: set
    downstream: set
    fences: int

    def _build_dependency(self, module2node: dict) -> None:
        self.upstream, self.downstream, self.fences = set(), set(), 0
        ends = [n for n in module2node.values() if n.type == tp.ops.OPTYPE.RESHAPE]
        for end in ends:
            run = _mixing_run(end)
            if run is None:
                continue
            members = set(run)
            for node in run:
                for before in node.inputs:
                    if before not in members:
                        self.upstream.add(before)
                        before.outputs = [o for o in before.outputs if o not in members]
                for after in node.outputs:
                    if after not in members:
                        self.downstream.add(after)
                        after.inputs = [i for i in after.inputs if i not in members]
            for key in [k for k, n in module2node.items() if n in members]:
                del module2node[key]
            self.fences += 1
        super()._build_dependency(module2node)


def crosses_fence(graph: tp.DependencyGraph, dep: Any, prunable: tuple[type[nn.Module], ...]) -> bool:
    """Whether the channels that ``dep`` prunes pass through a removed run (so they cannot change)."""
    node = dep.target
    upstream, downstream = getattr(graph, "upstream", ()), getattr(graph, "downstream", ())
    if node not in upstream and node not in downstream:
        return False
    module = node.module
    if not isinstance(module, prunable):  # an element-wise op, a norm, a concat...: its channels are the fenced ones
        return True
    is_out = graph.is_out_channel_pruning_fn(dep.handler)
    if node in upstream and is_out:
        return True
    grouped = isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1  # may tie its inputs to its outputs
    return node in downstream and (not is_out or grouped)


MAPPING_ERRORS = (ArithmeticError, IndexError, KeyError, AssertionError)


def untraceable(model: nn.Module, names: Mapping[nn.Module, str], err: BaseException, layer: str = "") -> str:
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
