"""Which units to keep, given how many: greedy removal of the most correlated units.

Inactive units always go first. Then, until ``k`` units remain:

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

from typing import Callable

import numpy as np

from pfa_lightning.spectrum import Spectrum

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


_ORDERS: dict[str, Callable[[np.ndarray, int], list[int]]] = {
    "abs_max": _abs_max_order,
    "l1_max": _l1_max_order,
}
BASELINES: tuple[str, ...] = ("weight_l1", "random")
SELECTIONS: tuple[str, ...] = (*_ORDERS, *BASELINES)


def check_selection(selection: str) -> str:
    if selection not in SELECTIONS:
        raise ValueError(f"Unknown selection {selection!r}; allowed: {', '.join(SELECTIONS)}.")
    return selection


def select_units(spectrum: Spectrum, keep: int, selection: str = "abs_max", *,
                 weight_norms: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Indices (ascending) of the ``keep`` units to keep in the space described by ``spectrum``.

    ``weight_norms`` (one per unit) is needed by ``weight_l1``; ``seed`` drives ``random``.
    """
    check_selection(selection)
    m = spectrum.units
    if not 1 <= keep <= m:
        raise ValueError(f"Cannot keep {keep} of {m} units in {spectrum.name!r}.")
    if selection == "weight_l1":
        if weight_norms is None or len(weight_norms) != m:
            raise ValueError(f"Selection 'weight_l1' needs one weight norm per unit ({m}) for {spectrum.name!r}.")
        order = np.argsort(-np.asarray(weight_norms, dtype=float), kind="stable")  # largest first, ties: lower index
        return np.sort(order[:keep])
    if selection == "random":
        rng = np.random.default_rng([seed, m, keep, _stable_hash(spectrum.name)])
        return np.sort(rng.choice(m, size=keep, replace=False))
    inactive = [int(i) for i in spectrum.inactive]
    dead = set(inactive)
    active = np.array([i for i in range(m) if i not in dead], dtype=int)
    removed = inactive[: m - keep]  # dead units go first, lowest index first
    n_more = m - keep - len(removed)
    if n_more > 0:
        order = _ORDERS[selection](spectrum.abs_correlation(active), n_more)
        removed += [int(active[i]) for i in order]
    return np.array(sorted(set(range(m)) - set(removed)), dtype=int)


def _stable_hash(text: str) -> int:
    import zlib

    return zlib.crc32(text.encode())
