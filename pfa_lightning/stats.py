"""Streaming second-order statistics of layer responses.

For every analysed layer we keep the sample count ``n``, the sum of responses
``s`` and the sum of outer products ``S`` in float64 on the model's device:
memory is O(units^2) per layer whatever the number of samples, and the three
sums simply add up across data-parallel workers.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from pfa_lightning.blocks import BlockMeter, contribution, residual_blocks
from pfa_lightning.errors import PFAError
from pfa_lightning.candidates import analysable_layers
from pfa_lightning.graph import ResponsePoint, evaluating, module_width
from pfa_lightning.tracing import traced
from pfa_lightning.progress import progress_bar
from pfa_lightning.nested import batch_size, clone_inputs, first_input, model_inputs, run_model
from pfa_lightning.validation import check_bool, check_choice, check_int

POOLINGS = ("max", "avg")


@dataclass
class LayerStats:
    """Count, sum and sum of outer products of one layer's responses (float64)."""

    name: str
    count: Tensor  # 0-d float64, a tensor so that it can be all-reduced like the others
    sum: Tensor  # (units,)
    outer: Tensor  # (units, units)
    response: str = ""  # which tensor the responses were read from
    positions: "LayerStats | None" = None  # per-position (unpooled) statistics, for compensation

    @classmethod
    def empty(cls, name: str, units: int, device: torch.device | str = "cpu", response: str = "") -> "LayerStats":
        z = partial_zeros(device)
        return cls(name, z(()), z((units,)), z((units, units)), response)

    @property
    def units(self) -> int:
        return int(self.sum.shape[0])

    @property
    def num_samples(self) -> int:
        return int(round(float(self.count)))

    def update(self, responses: Tensor) -> None:
        """Add a batch of responses shaped (samples, units)."""
        r = responses.detach().to(torch.float64)
        self.count += r.shape[0]
        self.sum += r.sum(0)
        self.outer.addmm_(r.T, r)

    def covariance(self) -> np.ndarray:
        """Unbiased covariance ``(S - s s^T / n) / (n - 1)`` as a float64 numpy array."""
        return pooled_covariance([self])

    def tensors(self) -> list[Tensor]:
        own = [self.count, self.sum, self.outer]
        return own + (self.positions.tensors() if self.positions is not None else [])

    def select(self, units: list[int]) -> "LayerStats":
        """The statistics of a subset of units, in the given order."""
        if list(units) == list(range(self.units)):  # every unit in order: nothing to copy
            return LayerStats(self.name, self.count, self.sum, self.outer, self.response)
        idx = torch.as_tensor(units, device=self.sum.device)
        return LayerStats(self.name, self.count, self.sum[idx], self.outer[idx][:, idx], self.response)

    def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        n = float(self.count)
        return (self.sum.double().cpu() / n).numpy(), self.covariance()


def partial_zeros(device: torch.device | str) -> Callable[[tuple[int, ...]], Tensor]:
    return lambda shape: torch.zeros(shape, dtype=torch.float64, device=device)


def pooled_covariance(members: Iterable[LayerStats]) -> np.ndarray:
    """Pooled within-member covariance of layers that share one channel space.

    Each member is centred on its own mean (``sum_j (S_j - s_j s_j^T / n_j) / (sum_j n_j - J)``),
    so a difference of means between members does not pose as correlation.
    """
    members = list(members)
    scatter = None
    dof = 0.0
    for m in members:
        n = float(m.count)
        if n < 2:
            raise PFAError(f"Layer {m.name!r} has {n:g} response samples; at least 2 are needed.")
        s = m.sum.double().cpu()
        part = m.outer.double().cpu() - torch.outer(s, s) / n
        scatter = part if scatter is None else scatter + part
        dof += n - 1
    assert scatter is not None
    return ((scatter + scatter.T) / (2 * dof)).numpy()  # exact symmetry for eigvalsh (torch: multithreaded)


@dataclass
class ResponseStats(Mapping[str, LayerStats]):
    """Per-layer response statistics returned by :func:`collect_responses`.

    A read-only mapping ``layer name -> LayerStats``. For data-parallel collection,
    all-reduce (sum) every tensor of :meth:`tensors` across ranks.
    """

    layers: dict[str, LayerStats]
    pooling: str = "max"
    # residual block name -> float64 [sum ||block(x) - post(x)||^2, sum ||block(x)||^2]; None: not measured (blocks=False)
    blocks: dict[str, Tensor] | None = None

    def __getitem__(self, name: str) -> LayerStats:
        return self.layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def num_samples(self) -> int:
        return max((s.num_samples for s in self.layers.values()), default=0)

    def tensors(self) -> list[Tensor]:
        """Every accumulator, in a fixed order (the same on every rank)."""
        blocks = self.blocks or {}
        return [t for name in sorted(self.layers) for t in self.layers[name].tensors()] + [
            blocks[name] for name in sorted(blocks)]

    def block_contributions(self) -> dict[str, float] | None:
        """How much each residual block changes the stream, ``||block(x) - post(x)||^2 / ||block(x)||^2``
        summed over the analysis data (see :mod:`pfa_lightning.blocks`); None unless collected with
        ``blocks=True``."""
        return None if self.blocks is None else {name: contribution(totals) for name, totals in self.blocks.items()}

    def check_finite(self) -> None:
        for name, s in self.layers.items():
            if not (torch.isfinite(s.sum).all() and torch.isfinite(s.outer).all()):
                raise PFAError(
                    f"Layer {name!r} produced NaN or Inf responses ({s.response}); "
                    "check the model's weights and inputs before compressing."
                )


def check_max_samples(value: Any) -> int | None:
    return check_int("max_samples", value, 2, optional=True, hint=" (None analyses all the data)")


def model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _pool(x: Tensor, unit_dim: int, pooling: str) -> Tensor:
    """(N, C, *spatial) or (N, *, C) -> (N, C) by max or mean over everything but samples and units."""
    if unit_dim != 1:
        x = x.movedim(unit_dim, 1)
    if x.dim() == 2:
        return x
    flat = x.flatten(2)
    return flat.amax(-1) if pooling == "max" else flat.mean(-1)


class _Collector:
    """Forward hook: pools the hooked tensor into (samples, units) responses and accumulates them.

    Pooled responses are buffered (at most ``rows`` samples, O(rows * units) memory) and added to
    the float64 sums in larger blocks: a few big matrix products instead of one small per batch.
    """

    def __init__(self, stats: LayerStats, point: ResponsePoint, pooling: str, rows: int = 256) -> None:
        self.stats, self.point, self.pooling, self.rows = stats, point, pooling, rows
        self._buffer: list[Tensor] = []
        self._buffered = 0

    def with_kwargs(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        """The hook for a point that computes its tensor from the whole call (``register_forward_hook(...,
        with_kwargs=True)``): an attention module whose heads' outputs are never a module's input."""
        self(module, self.point.extract(module, args, kwargs), output)

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> None:
        read = inputs if self.point.reads_input or self.point.extract is not None else output
        x = read[0] if isinstance(read, (tuple, list)) else read
        x = x.detach()
        act = self.point.activation
        if self.stats.positions is not None:  # every position of the activated map, then pool that
            y = act.fn(x.clone()) if act is not None else x
            self.stats.positions.update(y.movedim(self.point.unit_dim, -1).reshape(-1, y.shape[self.point.unit_dim]))
            pooled = _pool(y, self.point.unit_dim, self.pooling)
        elif act is not None and act.monotone and self.pooling == "max":
            # max commutes with a non-decreasing activation: pool first, activate C numbers, not C*H*W
            pooled = act.fn(_pool(x, self.point.unit_dim, "max"))
        else:
            pooled = _pool(act.fn(x) if act is not None else x, self.point.unit_dim, self.pooling)
        self._buffer.append(pooled)
        self._buffered += pooled.shape[0]
        if self._buffered >= self.rows:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self.stats.update(torch.cat(self._buffer) if len(self._buffer) > 1 else self._buffer[0])
            self._buffer, self._buffered = [], 0


def collect_responses(
    model: nn.Module,
    dataloader: Iterable[Any],
    *,
    max_samples: int | None = None,
    pooling: str = "max",
    layers: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    description: str = "Collecting PFA responses",
    per_position: bool = False,
    blocks: bool = False,
) -> ResponseStats:
    """Run ``model`` over ``dataloader`` and accumulate the responses of its prunable layers.

    Every Conv/Linear layer whose outputs do not reach the model output is analysed; its
    response is read after the non-linearity that follows it (conv -> BN -> ReLU: after the
    ReLU) and reduced to one number per unit and sample by spatial ``pooling``.

    Args:
        model: any ``nn.Module``; its train/eval mode is restored afterwards.
        dataloader: iterable of batches (tensor, ``(input, target, ...)`` or dict with ``"x"``).
        max_samples: stop after this many samples (``None``: the whole loader).
        pooling: ``"max"`` (the paper's) or ``"avg"``.
        layers: module names or glob patterns to analyse (default: all prunable layers).
        exclude: module names or glob patterns to leave out.
        device: where to run (default: the model's device).
        progress: show a progress bar.
        per_position: also accumulate the statistics of every spatial position (unpooled), which
            ``apply_recipe(..., compensate_with=stats)`` uses to fold removed units into the kept ones.
        blocks: also measure how much each residual block changes the stream (``Footprint(..., depth=True)``
            removes the blocks that change it least; see :mod:`pfa_lightning.blocks`).

    Returns:
        :class:`ResponseStats`, a mapping from layer name to :class:`LayerStats`.

    Raises:
        PFAError: for a bad ``pooling``/``max_samples``, an unknown layer pattern, a model
            with no prunable layer, an empty loader, or NaN/Inf responses (naming the layer).
    """
    check_choice("pooling", pooling, POOLINGS)
    check_bool("blocks", blocks)
    check_max_samples(max_samples)
    if isinstance(dataloader, torch.Tensor):  # iterating it would give single samples, not batches
        raise PFAError(f"`dataloader` must be an iterable of batches (a DataLoader, or a list of tensors), got a "
                       f"Tensor of shape {tuple(dataloader.shape)}: pass [x] for one batch, or "
                       "DataLoader(TensorDataset(x), batch_size=...).")
    device = torch.device(device) if device is not None else model_device(model)
    iterator = iter(dataloader)
    try:
        first = next(iterator)
    except StopIteration:
        raise PFAError("The analysis dataloader is empty; PFA needs response samples.") from None
    x0 = clone_inputs(first_input(first), device=device)

    graph = traced(model, x0)
    candidates, chosen = analysable_layers(model, graph, layers, exclude)

    stats: dict[str, LayerStats] = {}
    hooks, collectors = [], []
    meter = None
    try:
        # every response point first: finding one may run the model (custom_readers), which must not feed a collector
        points = {name: graph.response_point(name) for name in candidates if name in chosen}
        found = residual_blocks(model, x0) if blocks else {}  # (it runs the model too)
        for name, point in points.items():
            units = module_width(model.get_submodule(name))
            stats[name] = LayerStats.empty(name, units, device, point.description)
            if per_position:
                stats[name].positions = LayerStats.empty(name, units, device, point.description)
            collectors.append(_Collector(stats[name], point, pooling))
            hooked = model.get_submodule(point.module_name)
            hooks.append(hooked.register_forward_hook(collectors[-1].with_kwargs, with_kwargs=True)
                         if point.extract is not None else hooked.register_forward_hook(collectors[-1]))
        meter = BlockMeter(model, found, device) if blocks else None
        unread = [f"{c.stats.name} ({c.point.unrecognised})" for c in collectors if c.point.unrecognised]
        if unread:
            warnings.warn(f"PFA reads the responses of {', '.join(unread)} before an activation it does not know: "
                          "the statistics are pre-activation.", stacklevel=2)
        _run(model, first, iterator, device, max_samples, progress, description, dataloader)
        for collector in collectors:
            collector.flush()
    finally:
        for h in hooks:
            h.remove()
        if meter is not None:
            meter.remove()

    result = ResponseStats(stats, pooling, meter.totals if meter is not None else None)
    result.check_finite()
    return result


def _run(model: nn.Module, first: Any, rest: Iterator[Any], device: torch.device, max_samples: int | None,
         progress: bool, description: str, dataloader: Iterable[Any]) -> None:
    try:
        total_batches = len(dataloader)  # type: ignore[arg-type]
    except TypeError:
        total_batches = None
    per_batch = batch_size(first_input(first))
    if max_samples is not None and per_batch:
        needed = math.ceil(max_samples / per_batch)
        total_batches = needed if total_batches is None else min(total_batches, needed)

    seen = 0
    with evaluating(model), torch.no_grad(), progress_bar(description, total_batches, enabled=progress) as advance:
        for x, n in model_inputs(itertools.chain([first], rest), max_samples, device):
            run_model(model, x)
            seen += n
            advance()
    if seen < 2:
        raise PFAError(f"The analysis data gave {seen} sample(s); PFA needs at least 2.")


def warn_small(stats: LayerStats, units: int) -> None:
    """Warn that a layer has no more samples than the ``units`` of its channel space: the covariance is
    rank-deficient. With fewer samples the space is left whole; with exactly as many it is analysed, as Apple's
    DNIKit does (its regression tests analyse a 128-unit layer on 128 images), although ``n`` samples give a
    covariance of rank at most ``n - 1``."""
    what = ("so it is left uncompressed" if stats.num_samples < units else
            "it is analysed (as DNIKit does), but its spectrum is less reliable")
    warnings.warn(
        f"Layer {stats.name!r} has {stats.num_samples} response samples for {units} units; its covariance "
        f"is rank-deficient, {what}. Collect more samples (raise `max_samples`) to compress it reliably.",
        stacklevel=3,
    )
