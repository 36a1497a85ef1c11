"""Spectral analysis of one channel space: eigenvalues, inactive units, correlations."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pfa_lightning.errors import PFAError

_CORRELATION_EPS = 1e-8  # DNIKit's floor on the normaliser of a correlation coefficient
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
    step: int = 1  # kept widths are multiples of this (grouped layers, ``round_to``), or the full width

    def __post_init__(self) -> None:
        cov = np.asarray(self.covariance, dtype=np.float64)
        if not np.isfinite(cov).all():
            raise PFAError(f"The response covariance of {self.name!r} holds NaN or Inf values: check the model's "
                           "weights and inputs (and that the statistics were summed, not averaged, across ranks).")
        self.covariance = cov
        if self.eigenvalues is None:
            # torch's LAPACK (MKL on x86) is 2-3x faster than numpy's on the 3,000-4,000-unit spaces of VGG-16
            # or ViT-B's MLPs, with the same float64 eigenvalues
            eig = torch.linalg.eigvalsh(torch.from_numpy(cov)).numpy()[::-1]
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
        """|Pearson r| between the ``active`` units, NaN on the diagonal (never a candidate pair).

        Computed as DNIKit does (``|C_ij| / max(sqrt(C_ii C_jj), 1e-8)``), so that ties fall alike.
        """
        cov = self.covariance[np.ix_(active, active)]
        var = np.abs(np.diag(cov))
        r = np.abs(cov / np.maximum(np.sqrt(var[:, None] * var[None, :]), _CORRELATION_EPS))
        np.fill_diagonal(r, np.nan)
        return r


def inactive_units(cov: np.ndarray) -> np.ndarray:
    """Units whose variance is ~0 compared with the largest variance of the layer."""
    var = np.diag(cov)
    top = var.max() if var.size else 0.0
    if top <= 0:
        return np.arange(var.size)
    return np.flatnonzero(var <= top * INACTIVE_RTOL)
