"""Spectral analysis of one channel space: eigenvalues, inactive units, correlations."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INACTIVE_RTOL = 1e-9  # a unit is inactive when its variance is below this fraction of the layer's largest


@dataclass
class Spectrum:
    """What the strategies and the selection need to know about one channel space."""

    name: str
    covariance: np.ndarray  # (units, units), float64
    num_samples: int
    eigenvalues: np.ndarray = None  # type: ignore[assignment]  # descending, clamped at 0
    inactive: np.ndarray = None  # type: ignore[assignment]  # indices of zero-variance units
    frozen: bool = False  # too few samples: keep every unit

    def __post_init__(self) -> None:
        cov = np.asarray(self.covariance, dtype=np.float64)
        self.covariance = cov
        if self.eigenvalues is None:
            eig = np.linalg.eigvalsh(cov)[::-1]
            self.eigenvalues = np.clip(eig, 0.0, None)
        if self.inactive is None:
            self.inactive = inactive_units(cov)

    @property
    def units(self) -> int:
        return int(self.covariance.shape[0])

    def energy_fractions(self) -> np.ndarray:
        """Cumulative spectral energy kept by the first k eigenvalues, k = 1..units."""
        total = self.eigenvalues.sum()
        if total <= 0:
            return np.ones(self.units)
        return np.cumsum(self.eigenvalues) / total

    def abs_correlation(self, active: np.ndarray) -> np.ndarray:
        """|Pearson r| between the ``active`` units, diagonal set to -1 (never the maximum)."""
        cov = self.covariance[np.ix_(active, active)]
        std = np.sqrt(np.diag(cov))
        r = np.abs(cov / np.outer(std, std))
        np.clip(r, 0.0, 1.0, out=r)
        np.fill_diagonal(r, -1.0)
        return r


def inactive_units(cov: np.ndarray) -> np.ndarray:
    """Units whose variance is ~0 compared with the largest variance of the layer."""
    var = np.diag(cov)
    top = var.max() if var.size else 0.0
    if top <= 0:
        return np.arange(var.size)
    return np.flatnonzero(var <= top * INACTIVE_RTOL)
