"""Figures people would rather look at than tables: eigenvalue spectra, accuracy versus footprint."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)  # headless: files, not windows
    import matplotlib.pyplot as plt

    return plt


def plot_spectra(spectra: Mapping[str, np.ndarray], kept: Mapping[str, int] | None = None, title: str = ""):
    """Cumulative spectral energy of each layer against the fraction of its units, kept widths marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("viridis")
    for i, (name, eig) in enumerate(spectra.items()):
        eig = np.asarray(eig, dtype=float)
        total = eig.sum()
        if eig.size == 0 or total <= 0:
            continue
        frac = np.arange(1, eig.size + 1) / eig.size
        energy = np.cumsum(eig) / total
        color = cmap(i / max(1, len(spectra) - 1))
        ax.plot(frac, energy, color=color, lw=1.2, label=name)
        if kept and name in kept:
            k = kept[name]
            ax.plot(k / eig.size, energy[k - 1], "o", color=color, ms=4)
    ax.set_xlabel("fraction of the layer's units (eigenvalues, largest first)")
    ax.set_ylabel("cumulative spectral energy")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title or "Response spectra (dots: kept widths)")
    if len(spectra) <= 16:
        ax.legend(fontsize=6, ncol=2, loc="lower right")
    fig.tight_layout()
    return fig


def pareto_front(footprint: Sequence[float], accuracy: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats (smaller or equal footprint and higher or equal accuracy)."""
    points = list(zip(footprint, accuracy))
    front = []
    for i, (f, a) in enumerate(points):
        dominated = any(f2 <= f and a2 >= a and (f2, a2) != (f, a) for f2, a2 in points)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def plot_accuracy_vs_footprint(footprint: Sequence[float], accuracy: Sequence[float], labels: Sequence[str] = (),
                               xlabel: str = "parameters (fraction of the full model)", title: str = ""):
    """Scatter of accuracy against footprint with the Pareto front drawn and its points labelled."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter(footprint, accuracy, color="tab:blue", alpha=0.7, label="runs")
    front = pareto_front(footprint, accuracy)
    if front:
        ax.plot([footprint[i] for i in front], [accuracy[i] for i in front], "-o", color="tab:red", label="Pareto front")
    for i, label in enumerate(labels):
        if label:
            ax.annotate(label, (footprint[i], accuracy[i]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title or "Accuracy versus footprint")
    fig.tight_layout()
    return fig
