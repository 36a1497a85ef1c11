"""The arithmetic of allocations: PFA-KL's keep ratio, energy counts, widths scaled by one factor, and
the bisection that fits a footprint target."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from pfa_lightning.spectrum import Spectrum

_EPS = np.finfo(float).eps
CEIL_GUARD = 1e-9  # ceil(x - guard): a product like 16 * 0.75 must not become 13
_ENERGY_GUARD = 1e-12




def kl_divergence(eigenvalues: np.ndarray) -> float:
    """KL(p || uniform) of the normalised spectrum: log(m) - H(p), in [0, log m]."""
    total = eigenvalues.sum()
    m = eigenvalues.size
    p = (eigenvalues / total if total > 0 else np.zeros(m)) + _EPS
    p = p / p.sum()
    return float(np.sum(p * np.log(p * m)))


def kl_keep_ratio(spectrum: Spectrum) -> tuple[float, float]:
    """(KL divergence of the spectrum from uniform, PFA-KL's fraction of units to keep ``1 - KL / log m``)."""
    m = spectrum.units
    if m == 1:
        return 0.0, 1.0
    if spectrum.eigenvalues.sum() <= 0:
        return math.log(m), 0.0  # every unit inactive
    kl = kl_divergence(spectrum.eigenvalues)
    return kl, 1.0 - kl / math.log(m)


def largest_fitting(candidates: np.ndarray, size: Callable[[float], int], target: float) -> tuple[int, int]:
    """(index, size) of the largest candidate (ascending) whose ``size`` is at most ``target``, by
    bisection (``size`` must grow with the candidate); each size is measured once. Index -1, with the
    size of the smallest candidate, when even that one is over the target."""
    sizes: dict[int, int] = {}

    def fits(i: int) -> bool:
        if i not in sizes:
            sizes[i] = size(float(candidates[i]))
        return sizes[i] <= target

    lo, hi = 0, len(candidates) - 1
    if not fits(lo):
        return -1, sizes[lo]
    if fits(hi):
        return hi, sizes[hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, sizes[lo]


def scaled_widths(spectra: Sequence[Spectrum], shares: Sequence[float], clamp: Callable[[int, Spectrum], int]
                  ) -> tuple[np.ndarray, Callable[[float], list[int]]]:
    """Widths ``ceil(m * min(1, scale * share))`` per space, and the ascending scales at which they change
    (where ``scale * share * m`` crosses an integer)."""
    candidates = np.unique([k / (sp.units * share) for sp, share in zip(spectra, shares) if share > 0
                            for k in range(1, sp.units + 1)])

    def counts(scale: float) -> list[int]:
        return [clamp(math.ceil(sp.units * min(1.0, scale * share) - CEIL_GUARD), sp)
                for sp, share in zip(spectra, shares)]

    return candidates, counts


def energy_count(fractions: np.ndarray, threshold: float) -> int:
    """Smallest k whose first k eigenvalues hold at least ``threshold`` of the energy."""
    k = int(np.searchsorted(fractions, threshold - _ENERGY_GUARD, side="left")) + 1
    return min(k, fractions.size)


def refine_by_timing(start: int, count: int, timed: Callable[[int], tuple[float, float]], ratio: float,
                     tolerance: float, budget: int = 16, confirmations: int = 3) -> tuple[int, dict[str, float]]:
    """The largest candidate index (of ``count``, ascending) whose timed network takes at most ``ratio`` of the
    full one (``tolerance`` above it allowed for timing noise), by bisection on timings: the prediction's choice
    ``start`` bounds the search from below when it fits, from above when it does not; ``timed(i)`` gives
    (candidate, full) seconds, measured at most ``budget`` times in the search.

    The choice is then timed again, independently, and must fit the target itself (no tolerance): of many noisy
    timings near the target, the largest candidate that fits is likely one whose timing came out low (the winner's
    curse), so while the new timing says it does not fit, the search goes on below it: at most ``confirmations``
    steps down, after which the search below the last refusal ends unconfirmed.
    Returns the index (0, the smallest, when none fits) and the last times measured of the chosen candidate,
    ``timings`` counting every measurement."""
    seen: dict[int, tuple[float, float]] = {}
    timings = searched = 0
    slack = tolerance  # the search's; none once a confirming timing has failed

    def measure(i: int) -> tuple[float, float]:
        nonlocal timings
        timings += 1
        seen[i] = timed(i)
        return seen[i]

    def under(times: tuple[float, float], within: float) -> bool:
        return times[0] <= ratio * times[1] * (1 + within)

    def fits(i: int) -> bool:
        nonlocal searched
        if i not in seen:
            searched += 1
            measure(i)
        return under(seen[i], slack)

    def result(i: int) -> tuple[int, dict[str, float]]:
        return i, {"measured_s": seen[i][0], "measured_full_s": seen[i][1], "timings": timings}

    if fits(start):
        lo, hi = start, count - 1
        if fits(hi):
            lo = hi
    else:
        lo, hi = 0, start
        if lo == hi or not fits(lo):
            return result(0)  # nothing fits: the smallest, for the caller to refuse

    def search(allowed: int) -> None:  # bisect [lo, hi): lo fits, hi does not
        nonlocal lo, hi
        while hi - lo > 1 and searched < allowed:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)

    for attempt in range(confirmations + 1):
        search(budget + 4 * attempt)  # each step down may search a little more
        if lo == 0 or under(measure(lo), 0.0):
            return result(lo)  # confirmed by a fresh timing (or the smallest: the caller judges it)
        hi, slack = lo, 0.0  # timed again, it does not fit: look below it, for the target itself
        below = [i for i in seen if i < hi and under(seen[i], slack)]
        if not below and not fits(0):
            return result(0)
        lo = max(below, default=0)
    search(budget + 4 * (confirmations + 1))  # steps down spent (a noisy machine): the search's last choice
    return result(lo)


__all__ = ["energy_count", "kl_divergence", "kl_keep_ratio", "largest_fitting", "refine_by_timing", "scaled_widths"]
