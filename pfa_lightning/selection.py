"""Which units to keep, given how many.

Selections are objects (like strategies): :class:`MaxEnergy` (the default), :class:`AbsMax`, :class:`L1Max`,
:class:`PerSpace`, and the baselines :class:`WeightL1` and :class:`Random`; the names ``"max_energy"``,
``"abs_max"``, ``"l1_max"``, ``"per_space"``, ``"weight_l1"``, ``"random"`` resolve to them. Inactive units always
go first. Then:

- ``max_energy`` (the default): keep, one at a time, the unit with the most response variance left
  unexplained by the units already kept (pivoted Cholesky on the covariance). On Fashion-MNIST it keeps
  better filters than AbsMax at the same widths on VGG-16 and ResNet-20, at parameter and latency budgets
  (BENCHMARKS.md);
- ``abs_max`` (the paper's): until ``k`` units remain, take the pair with the largest |r|; drop the member
  whose next-largest |r| to the remaining units is larger;
- ``l1_max``: until ``k`` units remain, drop the unit with the largest sum of |r| to the remaining units.

For the correlation-based two, ties (``np.isclose``) are broken exactly as Apple's DNIKit reference does
(its quirks included), so their recipes equal the reference implementation's.

- ``per_space``: MaxEnergy in a channel space one layer writes, weight L1 in one several layers add into (a
  residual stream), where the pooled responses describe the stream poorly (:class:`PerSpace`).

Baselines that ignore the responses, for comparisons at the same widths:

- ``weight_l1``: keep the units whose filters have the largest L1 norm (Li et al. 2017);
- ``random``: keep a seeded random subset.
"""

from __future__ import annotations

import dataclasses
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence, Union

import numpy as np
from torch import Tensor

from pfa_lightning.errors import PFAError
from pfa_lightning.spectrum import Spectrum
from pfa_lightning.validation import fail, is_int

def _tolerance(target: float) -> float:
    """``np.isclose``'s default ``atol + rtol * |target|``: how far from ``target`` DNIKit still sees a tie."""
    return 1e-8 + 1e-5 * abs(target)


def _close(values: np.ndarray, target: float) -> np.ndarray:
    """``np.isclose(values, target)`` with NumPy's default tolerances: DNIKit's notion of a tie.

    Written out for a finite ``target`` (NaN never ties): ``np.isclose``'s generality costs more than
    the greedy step it serves."""
    if not np.isfinite(target):
        return np.isclose(values, target)
    with np.errstate(invalid="ignore"):
        return np.abs(values - target) <= _tolerance(target)


def _abs_max_order(r: np.ndarray, n_remove: int) -> list[int]:
    """Removal order of DNIKit's AbsMax on |r| (NaN diagonal), with its tie-breaking.

    Each step takes the largest coefficient; every cell close to it (``np.isclose``) is tied. Of the
    rows holding a tied cell, the one whose largest *other* coefficient (its first tied cell masked)
    is largest goes, the first such row on a tie; as in DNIKit, that position indexes the row-major
    list of tied cells. Row maxima are cached and each step is vectorised over the tied rows only, so a
    step costs O(tied rows x units) in NumPy, not O(units^2) in Python.
    """
    r = r.copy()
    m = r.shape[0]
    row_max = np.full(m, -np.inf)
    for i in range(m):
        row = r[i]
        if not np.isnan(row).all():
            row_max[i] = np.nanmax(row)
    order: list[int] = []
    for _ in range(n_remove):
        top = float(row_max.max())
        floor = top - _tolerance(top)  # nothing exceeds the top: np.isclose(v, top) is v >= floor
        rows = np.flatnonzero(row_max >= floor)  # only these rows can hold a cell close to the top
        block = r[rows]
        with np.errstate(invalid="ignore"):
            tied = block >= floor  # each of these rows holds at least one tied cell: its maximum
        cell_rows = np.repeat(rows, tied.sum(axis=1))  # row-major, with repeats (DNIKit's selected_cels[0])
        block[np.arange(len(rows)), tied.argmax(axis=1)] = np.nan  # mask each row's first tied cell
        alive = ~np.isnan(block).all(axis=1)
        seconds = np.full(len(rows), np.nan)
        if alive.any():
            seconds[alive] = np.nanmax(block[alive], axis=1)
            drop = int(cell_rows[int(np.flatnonzero(_close(seconds, float(np.nanmax(seconds))))[0])])
        else:
            drop = int(cell_rows[0])
        order.append(drop)
        column = r[:, drop].copy()
        r[drop, :] = np.nan
        r[:, drop] = np.nan
        row_max[drop] = -np.inf
        for i in np.flatnonzero(column == row_max):  # rows whose maximum was the removed unit
            row_max[i] = -np.inf if np.isnan(r[i]).all() else np.nanmax(r[i])
    return order


def _l1_max_order(r: np.ndarray, n_remove: int) -> list[int]:
    """Removal order of DNIKit's L1Max on |r| (NaN diagonal), with its tie-breaking.

    Each step drops the unit with the largest sum of |r| to the remaining units. On a tie
    (``np.isclose``), DNIKit takes the largest coefficient in the tied columns and drops the first
    *row* holding it (its partner unit, which need not be one of the tied ones); kept here as is.
    """
    r = np.nan_to_num(r, nan=0.0)
    alive = np.ones(r.shape[0], dtype=bool)
    l1 = r.sum(0)
    order: list[int] = []
    for _ in range(n_remove):
        scores = np.where(alive, l1, np.nan)
        tied = np.flatnonzero(_close(scores, float(np.nanmax(scores))))
        if tied.size > 1:
            block = np.where(alive[:, None], r[:, tied], np.nan)
            drop = int(np.argwhere(_close(block, float(np.nanmax(block))))[0, 0])
        else:
            drop = int(tied[0])
        order.append(drop)
        alive[drop] = False
        l1 -= r[:, drop]
        r[:, drop] = 0.0
        r[drop, :] = 0.0
    return order


class Selection(ABC):
    """Chooses which units of a channel space to keep, given how many.

    A selection is a callable ``selection(spectrum, keep, weights) -> kept indices`` (ascending):
    ``spectrum`` describes the space's responses (covariance, eigenvalues, inactive units),
    ``weights`` holds the weight tensor of every layer whose outputs live in the space, indexed so
    that dim 0 is the space's unit. Any callable with that signature can be passed where a
    selection is expected.

    Example:
        >>> make_recipe(model, stats, KL(), example_inputs=x, selection=pfa.L1Max())
    """

    name: ClassVar[str]

    @abstractmethod
    def __call__(self, spectrum: Spectrum, keep: int, weights: Sequence[Tensor]) -> np.ndarray: ...


class _Correlation(Selection):
    """Inactive units go first, then a greedy order on the |correlation| of the active ones."""

    order: ClassVar[Callable[[np.ndarray, int], list[int]]]

    def __call__(self, spectrum: Spectrum, keep: int, weights: Sequence[Tensor]) -> np.ndarray:
        m = spectrum.units
        inactive = [int(i) for i in spectrum.inactive]
        dead = set(inactive)
        active = np.array([i for i in range(m) if i not in dead], dtype=int)
        removed = inactive[: m - keep]  # dead units go first, lowest index first
        n_more = m - keep - len(removed)
        if n_more > 0:
            removed += [int(active[i]) for i in type(self).order(spectrum.abs_correlation(active), n_more)]
        return np.array(sorted(set(range(m)) - set(removed)), dtype=int)


@dataclass(frozen=True)
class AbsMax(_Correlation):
    """The paper's selection: repeatedly drop one unit of the most correlated pair."""

    name: ClassVar[str] = "abs_max"
    order = staticmethod(_abs_max_order)


@dataclass(frozen=True)
class L1Max(_Correlation):
    """Repeatedly drop the unit with the largest summed |correlation| to the others."""

    name: ClassVar[str] = "l1_max"
    order = staticmethod(_l1_max_order)


@dataclass(frozen=True)
class MaxEnergy(Selection):
    """Keep the units whose responses carry the most of the space's energy, greedily.

    Pivoted Cholesky on the response covariance: repeatedly keep the unit with the largest variance
    left unexplained by the units already kept (its residual after regressing on them). A unit
    correlated with a kept one has little left and goes; so does a near-silent one, which
    correlation-based selections (AbsMax, L1Max) cannot tell from an informative unit. Inactive
    units go first, as in the other selections; ties keep the lower index.
    """

    name: ClassVar[str] = "max_energy"

    def __call__(self, spectrum: Spectrum, keep: int, weights: Sequence[Tensor]) -> np.ndarray:
        cov = spectrum.covariance
        residual = np.clip(np.diag(cov).copy(), 0.0, None)
        residual[np.asarray(spectrum.inactive, dtype=int)] = -1.0
        basis: list[np.ndarray] = []
        kept: list[int] = []
        for _ in range(keep):
            unit = int(np.argmax(residual))  # first maximum: ties keep the lower index
            kept.append(unit)
            if residual[unit] <= 0:
                residual[unit] = -np.inf
                continue
            column = cov[:, unit] - sum(b * b[unit] for b in basis)
            column = column / np.sqrt(residual[unit])
            basis.append(column)
            residual = np.where(np.isfinite(residual) & (residual >= 0), residual - column ** 2, residual)
            residual[kept] = -np.inf
        return np.sort(np.array(kept, dtype=int))


@dataclass(frozen=True)
class WeightL1(Selection):
    """Baseline (Li et al. 2017): keep the units whose filters have the largest L1 norm, summed over
    the layers that share the space; ties keep the lower index. Ignores the responses."""

    name: ClassVar[str] = "weight_l1"

    def __call__(self, spectrum: Spectrum, keep: int, weights: Sequence[Tensor]) -> np.ndarray:
        norms = np.zeros(spectrum.units)
        for w in weights:
            norms += w.detach().abs().flatten(1).sum(1).double().cpu().numpy()
        order = np.argsort(-norms, kind="stable")
        return np.sort(order[:keep])


@dataclass(frozen=True)
class Random(Selection):
    """Baseline: a random subset, seeded by ``seed``, the space's name and size (reproducible)."""

    seed: int = 0
    name: ClassVar[str] = "random"

    def __post_init__(self) -> None:
        if not is_int(self.seed):
            raise fail("seed", "an integer", self.seed)

    def __call__(self, spectrum: Spectrum, keep: int, weights: Sequence[Tensor]) -> np.ndarray:
        rng = np.random.default_rng([self.seed, spectrum.units, keep, zlib.crc32(spectrum.name.encode())])
        return np.sort(rng.choice(spectrum.units, size=keep, replace=False))


@dataclass(frozen=True)
class PerSpace(Selection):
    """One selection where a single layer writes a channel space, another where several layers add into it (a
    residual stream, which every block of a stage reads and adds into; see :func:`adds_into`: a depthwise
    convolution sharing the channels of the layer before it is not one). ``single`` and ``coupled`` are
    selections or their names.

    The default pairs MaxEnergy with weight L1 in the streams, whose pooled responses describe the stream poorly
    (each member adds one part of it). On Fashion-MNIST's ResNet-20 it ties MaxEnergy alone over 5 seeds
    (BENCHMARKS.md): an option, not the default. On a plain network (no coupled space) it is MaxEnergy.

    Example:
        >>> make_recipe(model, stats, Footprint(0.25), example_inputs=x, selection=pfa.PerSpace(coupled="l1_max"))
    """

    single: Any = "max_energy"
    coupled: Any = "weight_l1"
    name: ClassVar[str] = "per_space"

    def __post_init__(self) -> None:
        for key in ("single", "coupled"):  # an unknown name is refused here, not at the first space of its kind
            try:
                resolve_selection(getattr(self, key))
            except PFAError:
                raise fail(f"PerSpace.{key}", f"one of {tuple(SELECTIONS)} or a selection callable",
                           getattr(self, key)) from None

    def __call__(self, spectrum: Spectrum, keep: int, weights: Sequence[Tensor]) -> np.ndarray:
        return resolve_selection(self.coupled if adds_into(weights) else self.single)(spectrum, keep, weights)


def adds_into(weights: Sequence[Tensor]) -> bool:
    """Whether a channel space is written by two or more layers whose filters each read several channels (their
    outputs are added: a residual stream), not by one such layer and the per-channel filters of a depthwise
    convolution that follows it (``(C, 1, k, k)``), which share its channels without adding to them."""
    return sum(w.dim() != 4 or w.shape[1] > 1 for w in weights) > 1


SELECTIONS: dict[str, type[Selection]] = {cls.name: cls for cls in (AbsMax, L1Max, MaxEnergy, WeightL1, Random,
                                                                    PerSpace)}
SelectionLike = Union[str, Selection, Callable[[Spectrum, int, Sequence[Tensor]], np.ndarray]]


def resolve_selection(selection: SelectionLike) -> Callable[[Spectrum, int, Sequence[Tensor]], np.ndarray]:
    """A selection object from a name (``max_energy``, ``abs_max``, ``l1_max``, ``per_space``, ``weight_l1``,
    ``random``) or a callable."""
    if isinstance(selection, str) and selection in SELECTIONS:
        return SELECTIONS[selection]()
    if callable(selection) and not isinstance(selection, (str, type)):
        return selection
    raise fail("selection", f"one of {tuple(SELECTIONS)} or a selection callable (e.g. pfa.Random(seed=1))",
               selection)


def selection_name(selection: Any) -> str:
    """How a recipe records the selection: the built-in name (with its options) or the callable's name."""
    if isinstance(selection, Selection):
        options = ", ".join(f"{f.name}={getattr(selection, f.name)!r}" for f in dataclasses.fields(selection))
        return f"{selection.name}({options})" if options else selection.name
    return getattr(selection, "__name__", type(selection).__name__)


def select_units(spectrum: Spectrum, keep: int, selection: SelectionLike = "max_energy",
                 weights: Sequence[Tensor] = (), groups: int = 1, block: int = 1) -> np.ndarray:
    """Indices (ascending) of the ``keep`` units to keep in the space described by ``spectrum``.

    ``groups > 1``: the units form that many equal, consecutive groups (a grouped convolution's or a
    GroupNorm's) and the same positions must be kept in every group. The selection then chooses
    ``keep`` units freely and each position gets one vote per group that kept it; the ``keep /
    groups`` positions with the most votes are kept in every group (ties: the lower position).

    ``block > 1``: the units come in consecutive blocks kept or removed whole (an attention module's
    heads). The selection chooses ``keep`` units freely; the ``keep / block`` blocks holding the most
    chosen units are kept (ties: the lower block).
    """
    chooser = resolve_selection(selection)
    m = spectrum.units
    if not 1 <= keep <= m:
        raise PFAError(f"Cannot keep {keep} of {m} units in {spectrum.name!r}.")
    if groups < 1 or m % groups or keep % groups:
        raise PFAError(f"Cannot keep {keep} of {m} units in {spectrum.name!r} in {groups} equal groups.")
    if block < 1 or m % block or keep % block:
        raise PFAError(f"Cannot keep {keep} of {m} units in {spectrum.name!r} as whole blocks of {block}.")
    kept = np.asarray(chooser(spectrum, keep, weights), dtype=int)
    if kept.shape != (keep,) or len(set(kept.tolist())) != keep or kept.min() < 0 or kept.max() >= m:
        raise PFAError(f"Selection {selection_name(chooser)} returned {kept.tolist()[:10]} for {spectrum.name!r}: "
                       f"expected {keep} distinct unit indices in [0, {m}).")
    if groups > 1:
        per_group = m // groups
        votes = np.bincount(kept % per_group, minlength=per_group)
        positions = np.sort(np.argsort(-votes, kind="stable")[: keep // groups])
        kept = (np.arange(groups)[:, None] * per_group + positions[None, :]).ravel()
    if block > 1:
        votes = np.bincount(kept // block, minlength=m // block)
        blocks = np.sort(np.argsort(-votes, kind="stable")[: keep // block])
        kept = (blocks[:, None] * block + np.arange(block)[None, :]).ravel()
    return np.sort(kept)


__all__ = ["AbsMax", "L1Max", "MaxEnergy", "PerSpace", "Random", "SELECTIONS", "Selection", "WeightL1", "adds_into",
           "resolve_selection", "select_units", "selection_name"]
