"""Network footprint: parameter and FLOP counts, and the footprint a set of widths would give."""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
from torch import nn

from pfa_lightning.graph import ModelGraph, module_width
from pfa_lightning.nested import call_arguments, clone_inputs, run_model
from pfa_lightning.pruning import count_timm_attention, tp

METRICS = ("params", "flops", "latency")


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; BatchNorm running statistics are buffers, not counted)."""
    return int(sum(p.numel() for p in model.parameters()))


def count_flops(model: nn.Module, example_inputs: Any) -> int:
    """FLOPs of one forward pass on a single sample shaped like ``example_inputs[0]``.

    Counted by Torch-Pruning's operation counter, where a multiply-accumulate counts as one
    operation (the convention of the pruning literature, the PFA paper included), plus
    BatchNorm, activation and pooling operations. The model is not modified.
    """
    inputs = clone_inputs(example_inputs, 1)
    count_timm_attention()
    # the counter calls model(*inputs) for a tuple: wrap a lone tensor so it is not unpacked into rows
    inputs = call_arguments(model, inputs)
    flops, _ = tp.utils.count_ops_and_params(model, (inputs,) if not isinstance(inputs, (tuple, list, dict)) else inputs)
    return int(flops)


def measure(model: nn.Module, example_inputs: Any, metric: str) -> int:
    return count_params(model) if metric == "params" else count_flops(model, example_inputs)


def _weightless(model: nn.Module, example_inputs: Any) -> tuple[nn.Module, Any]:
    """A copy of ``model`` (on PyTorch's ``meta`` device; on the CPU if it cannot run there) and inputs for it."""
    try:
        template = copy.deepcopy(model).to("meta")
        inputs = clone_inputs(example_inputs, 1, "meta")
        with torch.no_grad():
            run_model(template, inputs)
    except Exception:  # data-dependent control flow etc.: use a real CPU copy instead
        template = copy.deepcopy(model).cpu()
        inputs = clone_inputs(example_inputs, 1, "cpu")
    return template, inputs


class FootprintProbe:
    """The exact footprint of the network that given widths would produce.

    Each query cuts a weightless copy of the model (on PyTorch's ``meta`` device; on the CPU
    if the model cannot run there), counts, and restores it, so the count includes everything
    surgery changes: the consumers' input channels, BatchNorm parameters, flatten -> Linear
    features. The copy is traced once for all queries. ``full`` is the footprint a ratio is of: the model's,
    or the ``reference``'s (the network ``model`` was made from, e.g. by removing blocks).
    """

    def __init__(self, model: nn.Module, example_inputs: Any, metric: str, reference: nn.Module | None = None) -> None:
        self.metric = metric
        self._cache: dict[tuple[tuple[str, int], ...], int] = {}
        self.template, self.inputs = _weightless(model, example_inputs)
        self.full = measure(*(_weightless(reference, example_inputs) if reference is not None else
                              (self.template, self.inputs)), metric)
        self.graph = ModelGraph(self.template, self.inputs)  # traced once; every query cuts it and restores it

    def __call__(self, keep: Mapping[str, int]) -> int:
        key = tuple(sorted(keep.items()))
        if key not in self._cache:
            widths = {root: module_width(self.template.get_submodule(root)) for root in keep}  # wholly in its space
            with self.graph.trial({root: range(k, widths[root]) for root, k in keep.items() if k < widths[root]}):
                self._cache[key] = measure(self.template, self.inputs, self.metric)
        return self._cache[key]


def probe_for(strategy: Any, model: nn.Module, example_inputs: Any, progress: bool = False,
              reference: nn.Module | None = None) -> Any:
    """The probe of ``strategy.probe_metric``: counted parameters or FLOPs, or a measured latency
    (:class:`~pfa_lightning.latency.LatencyProbe` on the strategy's ``runtime`` and ``batch_size``); its ``full``
    is the ``reference``'s footprint when one is given."""
    if strategy.probe_metric == "latency":
        from pfa_lightning.latency import LatencyProbe

        return LatencyProbe(model, example_inputs, getattr(strategy, "runtime", "torch"),
                            getattr(strategy, "batch_size", 1), timer=getattr(strategy, "timer", None), progress=progress,
                            reference=reference)
    return FootprintProbe(model, example_inputs, strategy.probe_metric, reference)
