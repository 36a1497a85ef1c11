"""Whole residual blocks: found, measured and removed (depth, for targets that widths alone cannot reach).

A *residual block* is a submodule whose forward is ``post(x + branch(x))``: its one input added back to
what a branch computes from it (through nothing but ``nn.Identity``), followed by a chain of one-input
operations ``post`` (a ReLU, say), with an output shaped like its input. Removing it keeps ``post(x)``:
the branch and its parameters go, the stream goes on. Blocks whose shortcut changes the shape (a
projection) are not residual blocks in this sense: they are never removed.

A block's *contribution* is how much it changes the stream, measured on the analysis data
(``collect_responses(..., blocks=True)``): ``sum ||block(x) - post(x)||^2 / sum ||block(x)||^2``. The
blocks that change it least go first (Veit et al. 2016: a trained residual network behaves like an
ensemble of shallower paths, and most single blocks can go at a small cost).

Found by tracing each submodule with ``torch.fx`` (in training and in evaluation mode); a module that does
not trace, takes more than one input, is called more than once per forward, whose branch writes ``x`` in
place, or whose ``post`` reads the training flag (a trace freezes it) is not a candidate (left whole, never
guessed at). What a removed block leaves is its own copy of ``post``, made not to write ``x`` in place.
"""

from __future__ import annotations

import copy
import math
import operator
import warnings
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, fx, nn

from pfa_lightning.errors import PFAError
from pfa_lightning.nested import run_model
from pfa_lightning.state import evaluating

_ADDS = (operator.add, torch.add, Tensor.add)


def _inplace(node: fx.Node, gm: fx.GraphModule) -> bool:
    """Whether ``node`` writes its input in place (``ReLU(inplace=True)``, ``F.relu(x, inplace=True)``, ``x.relu_()``)."""
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(str(node.target)), "inplace", False))
    if node.op == "call_method":
        return str(node.target).endswith("_") and not str(node.target).endswith("__")
    return node.op == "call_function" and bool(node.kwargs.get("inplace", False))


def _trace(block: nn.Module, training: bool) -> fx.GraphModule | None:
    """``block`` traced by ``torch.fx`` with every submodule in the given mode (its flags restored after)."""
    flags = [(m, m.training) for m in block.modules()]
    block.train(training)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fx.symbolic_trace(block)
    except Exception:  # data-dependent control flow, unsupported calls: not a candidate
        return None
    finally:
        for module, flag in flags:
            module.training = flag


def _post(gm: fx.GraphModule) -> fx.GraphModule | None:
    """``post(x)`` of a traced ``post(x + branch(x))``, or None if the graph is not one."""
    graph = gm.graph
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    outputs = [n for n in graph.nodes if n.op == "output"]
    if len(inputs) != 1 or len(outputs) != 1 or not isinstance(outputs[0].args[0], fx.Node):
        return None
    x = inputs[0]

    def through_identity(node: Any) -> bool:
        while isinstance(node, fx.Node) and node.op == "call_module" and isinstance(
                gm.get_submodule(str(node.target)), nn.Identity):
            node = node.args[0]
        return node is x

    readers = [n for n in graph.nodes if n.op != "output" and n.args and through_identity(n.args[0])]
    if any(_inplace(n, gm) for n in readers):
        return None  # the branch writes the block's input: removing it would not leave the stream it read

    def node_args(node: fx.Node) -> list[fx.Node]:
        return [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)]

    node = outputs[0].args[0]
    while True:  # walk back through post: one-input operations
        is_add = (node.op == "call_function" and node.target in _ADDS) or (
            node.op == "call_method" and node.target in ("add", "__add__"))
        if is_add and len(node.args) == 2 and not node.kwargs:
            stream = [a for a in node.args if through_identity(a)]
            if len(stream) == 1 and all(isinstance(a, fx.Node) for a in node.args):  # x + a computed branch
                break
        args = node_args(node)
        if node.op == "placeholder" or len(args) != 1 or len(args[0].users) != 1:
            return None
        node = args[0]
    node.replace_all_uses_with(stream[0])
    graph.eliminate_dead_code()
    post = copy.deepcopy(fx.GraphModule(gm, graph))  # only what the graph uses, owned: the block keeps its own
    for n in post.graph.nodes:  # post(x) must not write x, which the block's caller may read again
        if n.op == "call_module" and getattr(post.get_submodule(str(n.target)), "inplace", False):
            post.get_submodule(str(n.target)).inplace = False
        elif n.op == "call_function" and n.kwargs.get("inplace", False):
            n.kwargs = {**n.kwargs, "inplace": False}
        elif _inplace(n, post) and hasattr(Tensor, str(n.target)[:-1]):
            n.target = str(n.target)[:-1]
        elif _inplace(n, post):
            return None
    post.recompile()
    return post


def _skip_graph(block: nn.Module) -> fx.GraphModule | None:
    """``post(x)`` for a block whose forward is ``post(x + branch(x))``, or None if it is not one: traced in
    training and in evaluation mode, ``post`` must be the same (a mode read while tracing is frozen into it)."""
    if not any(True for _ in block.parameters()):
        return None
    traced = [_trace(block, training) for training in (True, False)]
    posts = [_post(gm) if gm is not None else None for gm in traced]
    if posts[0] is None or posts[1] is None or posts[0].code != posts[1].code:
        return None
    post = posts[1]
    if sum(p.numel() for p in post.parameters()) >= sum(p.numel() for p in block.parameters()):
        return None  # the branch held no parameters: nothing to remove
    return post.train(block.training)


class RemovedBlock(nn.Module):
    """What a removed residual block leaves: ``post(x)`` (``post``: its own copy of the block's operations after
    the addition, a ``torch.fx.GraphModule``)."""

    def __init__(self, post: fx.GraphModule) -> None:
        super().__init__()
        self.post = post

    def forward(self, x: Tensor) -> Tensor:
        return self.post(x)


def skipped(block: nn.Module) -> RemovedBlock:
    """The module that replaces a residual block: ``post(x)``, with its own copy of ``post``.

    Raises:
        PFAError: ``block`` is not a residual block.
    """
    gm = _skip_graph(block)
    if gm is None:
        raise PFAError(f"{type(block).__name__} is not a residual block (a forward `post(x + branch(x))` with one "
                       "input and an identity shortcut): it cannot be removed.")
    return RemovedBlock(gm)


def is_removed(module: nn.Module) -> bool:
    """Whether ``module`` is what a removed residual block left (:func:`skipped`)."""
    return isinstance(module, RemovedBlock)


def residual_blocks(model: nn.Module, example_inputs: Any) -> dict[str, nn.Module]:
    """The removable residual blocks of ``model`` (outermost only: a block inside another goes with it), in
    module order, each with its ``post`` (what removing it leaves). Checked on ``example_inputs``: a block
    must be called exactly once, with one tensor shaped like its output."""
    found = {name: gm for name, m in model.named_modules() if name and (gm := _skip_graph(m)) is not None}
    found = {n: gm for n, gm in found.items() if not any(n.startswith(o + ".") for o in found if o != n)}
    calls: dict[str, list[bool]] = {name: [] for name in found}

    def watch(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            calls[name].append(len(args) == 1 and isinstance(args[0], Tensor) and isinstance(output, Tensor)
                               and args[0].shape == output.shape)
        return hook

    hooks = [model.get_submodule(n).register_forward_hook(watch(n)) for n in found]
    try:
        with evaluating(model), torch.no_grad():
            run_model(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return {n: gm for n, gm in found.items() if calls[n] == [True]}


class BlockMeter:
    """Forward hooks accumulating each block's contribution (see the module's docstring) in float64."""

    def __init__(self, model: nn.Module, blocks: Mapping[str, nn.Module], device: torch.device | str) -> None:
        self.totals = {name: torch.zeros(2, dtype=torch.float64, device=device) for name in blocks}
        self._hooks = [model.get_submodule(name).register_forward_hook(self._hook(name, skip))
                       for name, skip in blocks.items()]

    def _hook(self, name: str, skip: nn.Module) -> Callable[..., None]:
        skip.eval()  # (its own copy of post: the model's eval mode during collection does not reach it)

        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            out = output.detach().double()
            change = (out - skip(args[0].detach()).double()).pow(2).sum()
            self.totals[name] += torch.stack([change, out.pow(2).sum()])
        return hook

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()


def contribution(totals: Tensor) -> float:
    change, energy = (float(v) for v in totals)
    if energy > 0:
        return change / energy
    return 0.0 if change == 0 else math.inf  # a silent output that post(x) would not give: it goes last


def remove_blocks(model: nn.Module, names: Iterable[str], posts: Mapping[str, fx.GraphModule] | None = None
                  ) -> dict[str, nn.Module]:
    """Replace the named residual blocks of ``model`` by what they leave (:func:`skipped`), in place; returns
    the removed modules by name (to put back). Nothing changes if one of them is not a residual block.
    ``posts``: the blocks' ``post`` already found (:func:`residual_blocks`), not traced again."""
    names = list(names)
    nested = [n for n in names if any(n != o and n.startswith(o + ".") for o in names)]
    if nested or len(set(names)) != len(names):
        raise PFAError(f"Recipe does not fit the model: its blocks {names} repeat a name or hold one another "
                       f"({', '.join(nested) or 'repeated'}); a recipe removes distinct, outermost blocks.")
    replacements = {}
    for name in names:
        try:
            block = model.get_submodule(name)
        except AttributeError:
            raise PFAError(f"Recipe does not fit the model: it has no block {name!r} to remove.") from None
        try:
            replacements[name] = RemovedBlock(posts[name]) if posts and name in posts else skipped(block)
        except PFAError as err:
            raise PFAError(f"Recipe does not fit the model: {name!r}: {err}") from None
    removed = {}
    for name, replacement in replacements.items():
        removed[name] = model.get_submodule(name)
        _set(model, name, replacement)
    return removed


def restore_blocks(model: nn.Module, removed: Mapping[str, nn.Module]) -> None:
    for name, block in reversed(list(removed.items())):
        _set(model, name, block)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def blocks_to_remove(order: Sequence[str], without: Callable[[list[str]], Any],
                     wishes: Sequence[Callable[[Any], bool]]) -> tuple[list[str], Any]:
    """The fewest blocks, taken in ``order``, whose removal meets the first of ``wishes`` that removing every block
    in ``order`` meets (``without(names)`` measures the network without them; each wish must only come closer to
    being met as blocks go), by bisection, every count measured once; every block when none is met. Returns the
    blocks and their measurement."""
    measured: dict[int, Any] = {}

    def at(k: int) -> Any:
        if k not in measured:
            measured[k] = without(list(order[:k]))
        return measured[k]

    for fits in wishes:
        if not fits(at(len(order))):
            continue
        if fits(at(0)):
            return [], at(0)
        lo, hi = 0, len(order)  # lo does not fit, hi does
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fits(at(mid)) else (mid, hi)
        return list(order[:hi]), at(hi)
    return list(order), at(len(order))


FLOOR_ROOM = 0.75  # after the blocks go, the widths' floor may take at most this share of the target


def cut_depth(model: nn.Module, contributions: Mapping[str, float] | None, strategy: Any, example_inputs: Any,
              floor_widths: Callable[[Any], Mapping[str, int]]) -> tuple[nn.Module, list[str], dict[str, Any]]:
    """A copy of ``model`` without the residual blocks that change the stream least: the fewest that bring it
    to ``sqrt(ratio)`` of its footprint (depth takes its geometric share of the target, widths the rest) and
    leave the widths room, their floor (``floor_widths(graph)``: every analysed channel space at its smallest
    width) at most ``FLOOR_ROOM`` of the target; where removing every block cannot do that, the fewest that leave
    that room, else the fewest that bring the floor within the target, else every one. ``strategy``: a
    :class:`~pfa_lightning.Footprint` with ``depth=True``; a latency is timed on its runtime, the copy and the
    model alternately. Returns the copy (``model`` itself when no block goes), the blocks removed and what was
    measured."""
    from pfa_lightning.footprint import measure
    from pfa_lightning.graph import ModelGraph, module_width
    from pfa_lightning.latency import compare_times, runtime_timer
    from pfa_lightning.nested import batch_of, clone_inputs

    if contributions is None:
        raise PFAError("Footprint(depth=True) removes the residual blocks that change their stream least, measured "
                       "on the analysis data: collect the statistics with collect_responses(..., blocks=True) (the "
                       "callback does).")
    found = residual_blocks(model, example_inputs)  # traced once: every trial removal below reuses their posts
    unknown = sorted(set(contributions) - set(found))
    if unknown:
        raise PFAError(f"The statistics measured residual blocks {unknown} that {type(model).__name__} does not have: "
                       "they were collected on a different model.")
    if not contributions:
        warnings.warn(f"Footprint(depth=True): {type(model).__name__} has no residual block PFA can remove (a forward "
                      "`post(x + branch(x))` with an identity shortcut): only the widths are cut.", stacklevel=3)
    if not contributions or strategy.ratio >= 1:
        return model, [], {}
    order = sorted(contributions, key=lambda n: (contributions[n], n))
    share = math.sqrt(strategy.ratio)
    work = copy.deepcopy(model)
    if strategy.metric == "latency":
        inputs = batch_of(example_inputs, strategy.batch_size)
        timer = strategy.timer or runtime_timer(strategy.runtime)
        full_model = copy.deepcopy(model).eval()

        def footprint() -> float:
            own, full = compare_times(timer, work.eval(), full_model, inputs)
            return own / full
    else:
        inputs = clone_inputs(example_inputs, 1)
        full = measure(model, inputs, strategy.metric)

        def footprint() -> float:
            return measure(work, inputs, strategy.metric) / full

    def floor() -> float:
        graph = ModelGraph(work, example_inputs)
        cut = {root: range(k, module_width(work.get_submodule(root))) for root, k in floor_widths(graph).items()}
        try:
            with graph.trial(cut):
                return footprint()
        except Exception:  # a space whose cut breaks the model: this floor cannot be had
            return math.inf

    def without(names: list[str]) -> tuple[float, float]:
        removed = remove_blocks(work, names, found)
        try:
            return footprint(), floor()
        finally:
            restore_blocks(work, removed)

    room = FLOOR_ROOM * strategy.ratio
    names, (achieved, least) = blocks_to_remove(order, without, [
        lambda m: m[0] <= share and m[1] <= room, lambda m: m[1] <= room, lambda m: m[1] <= strategy.ratio])
    remove_blocks(work, names, found)
    return work, names, {"share": share, "achieved": achieved, "floor": least, "candidates": len(order),
                         "contributions": {n: contributions[n] for n in order}}


__all__ = ["BlockMeter", "RemovedBlock", "blocks_to_remove", "contribution", "cut_depth", "is_removed", "remove_blocks",
           "residual_blocks", "restore_blocks", "skipped"]
