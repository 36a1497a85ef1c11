"""A literal transcription of DNIKit's unit selection (apple/dnikit,
``src/dnikit/dnikit/introspectors/_pfa/_pfa_units.py``: ``_select_units_abs_given_corr`` and
``_select_units_l1_given_corr`` with ``np.nanmax``), O(units^3), to check ours against, ties included."""

from __future__ import annotations

import numpy as np


def correlation(cov: np.ndarray, inactive: list[int]) -> np.ndarray:
    var = np.abs(np.diag(cov))
    corr = np.abs(cov / np.maximum(np.sqrt(var[:, None] * var[None, :]), 1e-8))
    np.fill_diagonal(corr, np.nan)
    corr[inactive, :] = np.nan
    corr[:, inactive] = np.nan
    return corr


def _greedy(corr: np.ndarray, found: list[int], keep: int, choose) -> list[int]:
    """DNIKit's loop: ``choose`` the next unit, mask its row and column with NaN, until ``keep`` remain."""
    corr = corr.copy()
    found = list(found)
    for _ in range(corr.shape[0] - len(found) - keep):
        unit = int(choose(corr, found))
        found.append(unit)
        corr[unit, :] = np.nan
        corr[:, unit] = np.nan
    return found


def _abs_max_choice(corr: np.ndarray, found: list[int]) -> int:
    selected_coeff = np.nanmax(corr)
    selected_cels = np.where(np.isclose(corr, selected_coeff))
    tmp_corr = corr.copy()
    selected_rows: list[int] = []
    for i, r in enumerate(selected_cels[0]):
        if r in selected_rows:
            continue
        selected_rows.append(r)
        tmp_corr[r][selected_cels[1][i]] = np.nan
    other = tmp_corr[selected_rows, :]
    other_selected_coeff = np.nan if np.isnan(other).all() else np.nanmax(other)
    if np.isnan(other_selected_coeff):
        return selected_cels[0][0]
    other_selected_cels = np.where(np.isclose(other, other_selected_coeff))
    return selected_cels[0][sorted(other_selected_cels[0])[0]]


def _l1_max_choice(corr: np.ndarray, found: list[int]) -> int:
    l1n = np.nansum(corr, axis=0)
    l1n[found] = np.nan
    extreme_val = np.nanmax(l1n)
    extreme_cols = np.where(np.isclose(l1n, extreme_val))[0]
    if len(extreme_cols) > 1:
        selected_coeff = np.nanmax(corr[:, extreme_cols])
        return np.where(np.isclose(corr[:, extreme_cols], selected_coeff))[0][0]
    return extreme_cols[0]


def abs_max(corr: np.ndarray, found: list[int], keep: int) -> list[int]:
    """Removal order (``found`` first) of DNIKit's AbsMax down to ``keep`` units."""
    return _greedy(corr, found, keep, _abs_max_choice)


def l1_max(corr: np.ndarray, found: list[int], keep: int) -> list[int]:
    """Removal order (``found`` first) of DNIKit's L1Max down to ``keep`` units."""
    return _greedy(corr, found, keep, _l1_max_choice)
