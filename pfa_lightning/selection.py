"""Which units to keep, given how many: greedy removal of the most correlated units.

Selections are objects (like strategies): :class:`AbsMax`, :class:`L1Max`, and the baselines
:class:`WeightL1` and :class:`Random`; the names ``"abs_max"``, ``"l1_max"``, ``"weight_l1"``,
``"random"`` resolve to them. Inactive units always go first. Then, until ``k`` units remain:

- ``abs_max`` (the paper's): take the pair with the largest |r|; drop the member whose
  next-largest |r| to the remaining units is larger (ties: the next coefficient, then the
  higher index);
- ``l1_max``: drop the unit with the largest sum of |r| to the remaining units (ties: the
  larger maximum |r|, then the higher index).

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

_TIE_RTOL = 1e-9


def _row_sorted(r: np.ndarray, unit: int, alive: np.ndarray, skip: int) -> np.ndarray:
    mask = alive.copy()
    mask[skip] = False
    mask[unit] = False
    return np.sort(r[unit, mask])[::-1]


def _first_larger(a: np.ndarray, b: np.ndarray) -> int:
    """+1 if ``a`` is lexicographically larger than ``b`` (beyond float noise), -1 if smaller, 0 if tied."""
    for x, y in zip(a, b):
        if abs(x - y) > _TIE_RTOL * max(abs(x), abs(y), 1e-300):
            return 1 if x > y else -1
    return 0


def _abs_max_order(r: np.ndarray, n_remove: int) -> list[int]:
    m = r.shape[0]
    r = r.copy()
    alive = np.ones(m, dtype=bool)
    row_arg = r.argmax(1)
    row_max = r[np.arange(m), row_arg]
    order: list[int] = []
    for _ in range(n_remove):
        i = int(np.argmax(np.where(alive, row_max, -np.inf)))
        j = int(row_arg[i])
        a, b = (i, j) if i < j else (j, i)
        cmp = _first_larger(_row_sorted(r, a, alive, b), _row_sorted(r, b, alive, a))
        drop = a if cmp > 0 else b  # tie -> the higher index goes
        order.append(drop)
        alive[drop] = False
        r[drop, :] = -1.0
        r[:, drop] = -1.0
        row_max[drop] = -np.inf
        stale = np.flatnonzero(alive & (row_arg == drop))
        if stale.size:
            row_arg[stale] = r[stale].argmax(1)
            row_max[stale] = r[stale, row_arg[stale]]
    return order


def _l1_max_order(r: np.ndarray, n_remove: int) -> list[int]:
    m = r.shape[0]
    r = np.where(r < 0, 0.0, r)  # diagonal contributes nothing
    alive = np.ones(m, dtype=bool)
    l1 = r.sum(1)
    order: list[int] = []
    for _ in range(n_remove):
        scores = np.where(alive, l1, -np.inf)
        top = scores.max()
        tied = np.flatnonzero(alive & (np.abs(scores - top) <= _TIE_RTOL * max(abs(top), 1e-300)))
        if tied.size > 1:
            peak = np.array([r[t, alive].max() for t in tied])
            best = tied[np.abs(peak - peak.max()) <= _TIE_RTOL]
            drop = int(best.max())
        else:
            drop = int(tied[0])
        order.append(drop)
        alive[drop] = False
        l1 -= r[:, drop]
        r[:, drop] = 0.0
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


SELECTIONS: dict[str, type[Selection]] = {cls.name: cls for cls in (AbsMax, L1Max, WeightL1, Random)}
SelectionLike = Union[str, Selection, Callable[[Spectrum, int, Sequence[Tensor]], np.ndarray]]


def resolve_selection(selection: SelectionLike) -> Callable[[Spectrum, int, Sequence[Tensor]], np.ndarray]:
    """A selection object from a name (``abs_max``, ``l1_max``, ``weight_l1``, ``random``) or a callable."""
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


def select_units(spectrum: Spectrum, keep: int, selection: SelectionLike = "abs_max",
                 weights: Sequence[Tensor] = ()) -> np.ndarray:
    """Indices (ascending) of the ``keep`` units to keep in the space described by ``spectrum``."""
    chooser = resolve_selection(selection)
    m = spectrum.units
    if not 1 <= keep <= m:
        raise PFAError(f"Cannot keep {keep} of {m} units in {spectrum.name!r}.")
    kept = np.asarray(chooser(spectrum, keep, weights), dtype=int)
    if kept.shape != (keep,) or len(set(kept.tolist())) != keep or kept.min() < 0 or kept.max() >= m:
        raise PFAError(f"Selection {selection_name(chooser)} returned {kept.tolist()[:10]} for {spectrum.name!r}: "
                       f"expected {keep} distinct unit indices in [0, {m}).")
    return np.sort(kept)


__all__ = ["AbsMax", "L1Max", "Random", "SELECTIONS", "Selection", "WeightL1", "resolve_selection", "select_units",
           "selection_name"]
