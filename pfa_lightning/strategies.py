"""How many units each channel space keeps: PFA-KL, PFA-Energy, or a footprint target."""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from pfa_lightning.errors import PFAError
from pfa_lightning.footprint import METRICS
from pfa_lightning.spectrum import Spectrum
from pfa_lightning.validation import check_choice, check_fraction, fail, is_int

_EPS = np.finfo(float).eps
_CEIL_GUARD = 1e-9  # ceil(x - guard): a product like 16 * 0.75 must not become 13
_ENERGY_GUARD = 1e-12


@dataclass
class Decision:
    """Units to keep per channel space, with per-space and global diagnostics."""

    counts: list[int]
    diagnostics: list[dict[str, float]]
    summary: dict[str, Any]


REGISTRY: dict[str, type["Strategy"]] = {}  # every Strategy class with a name, its own file or ours


class Strategy(ABC):
    """Decides how many units each analysed channel space keeps; the one place for its options.

    A new strategy is one subclass (a frozen dataclass whose fields are its options) with a ``name`` and
    ``decide``; it registers itself by that name, so recipes and tables describe it. It may override
    ``check`` (refuse, before training, a target it can never reach), ``describe`` (a layer's diagnostic in
    the recipe table) and ``label`` (its short name in sweeps and plots); ``to_dict`` records its options.
    """

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if isinstance(name, str):
            taken = REGISTRY.get(name)
            if taken is not None and taken.__module__ == __name__ and taken.__qualname__ != cls.__qualname__:
                raise PFAError(f"Strategy name {name!r} is {taken.__qualname__}'s, built into pfa_lightning: "
                               f"give {cls.__name__} another `name`.")
            REGISTRY[name] = cls

    @abstractmethod
    def decide(self, spectra: Sequence[Spectrum], clamp: Callable[[int, Spectrum], int],
               probe: Callable[[Mapping[str, int]], int] | None) -> Decision:
        """``clamp`` applies the floor (``min_units``) and keeps too-small-sample spaces whole;
        ``probe`` gives the real footprint of a width assignment (only footprint targets use it)."""

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., option: value, ...}``: the dataclass fields (plain data, as recipes store it)."""
        options = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)} if dataclasses.is_dataclass(self) else {}
        return {"name": self.name, **options}

    @property
    def probe_metric(self) -> str | None:
        """The footprint metric this strategy measures candidates in (``None``: it needs no probe)."""
        return None

    def check(self, floor: int, full: int, where: str = "") -> None:
        """Refuse a target this strategy can never reach: ``floor`` is the footprint (in ``probe_metric``) of the
        smallest network it may produce (every analysed layer at ``min_units``), ``full`` the network's now;
        ``where`` says where that was measured (for the message). Nothing by default."""

    @classmethod
    def describe(cls, diagnostics: Mapping[str, Any]) -> str:
        """One layer's diagnostic for the recipe table, from what ``decide`` recorded for it."""
        if "kl" in diagnostics:
            return f"KL {diagnostics['kl']:.3g} / {diagnostics['kl_max']:.3g}"
        if "energy_kept" in diagnostics:
            return f"energy {diagnostics['energy_kept']:.3f}"
        return ""

    @property
    def label(self) -> str:
        """A short name for sweeps and plots: the name and its first option, e.g. ``energy=0.95``."""
        options = [v for k, v in self.to_dict().items() if k != "name" and isinstance(v, (int, float))
                   and not isinstance(v, bool)]
        return f"{self.name}={options[0]:g}" if options else self.name


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
        return [clamp(math.ceil(sp.units * min(1.0, scale * share) - _CEIL_GUARD), sp)
                for sp, share in zip(spectra, shares)]

    return candidates, counts


def energy_count(fractions: np.ndarray, threshold: float) -> int:
    """Smallest k whose first k eigenvalues hold at least ``threshold`` of the energy."""
    k = int(np.searchsorted(fractions, threshold - _ENERGY_GUARD, side="left")) + 1
    return min(k, fractions.size)


@dataclass(frozen=True)
class KL(Strategy):
    """PFA-KL, parameter-free: keep ``ceil(m * (1 - KL(p || u) / log m))`` units.

    Example:
        >>> recipe = make_recipe(model, stats, KL(), example_inputs=x)
    """

    name: ClassVar[str] = "kl"

    def decide(self, spectra, clamp, probe) -> Decision:
        counts, diags = [], []
        for sp in spectra:
            kl, ratio = kl_keep_ratio(sp)
            counts.append(clamp(math.ceil(sp.units * ratio - _CEIL_GUARD), sp))
            diags.append({"kl": kl, "kl_max": math.log(sp.units) if sp.units > 1 else 0.0, "units_ratio": ratio})
        return Decision(counts, diags, {})


@dataclass(frozen=True)
class Energy(Strategy):
    """PFA-Energy: keep the fewest units whose eigenvalues hold ``threshold`` of the spectral energy.

    Example:
        >>> Energy(0.95)
    """

    threshold: float = 0.95
    name: ClassVar[str] = "energy"

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", check_fraction("threshold", self.threshold))

    def decide(self, spectra, clamp, probe) -> Decision:
        counts, diags = [], []
        for sp in spectra:
            fr = sp.energy_fractions()
            k = clamp(energy_count(fr, self.threshold), sp)
            counts.append(k)
            diags.append({"energy_kept": float(fr[k - 1])})
        return Decision(counts, diags, {"threshold": self.threshold})


ALLOCATIONS = ("kl", "energy", "uniform")


@dataclass(frozen=True)
class Footprint(Strategy):
    """Meet a footprint target: the largest network with at most ``ratio`` times the current number
    of parameters (``metric="params"``) or FLOPs (``"flops"``), widths shaped by ``allocation``:

    - ``"kl"`` (default): PFA-KL's per-layer keep fractions, scaled by one common factor (capped at
      the full width): layers keep what their spectra say relative to each other, and no layer is
      starved by another's concentrated spectrum;
    - ``"energy"``: the paper's common spectral-energy threshold (every layer keeps the same
      fraction of its energy);
    - ``"uniform"``: every layer the same fraction of its units (the width-scaling baseline, for
      any metric).

    The common factor (or threshold) is found by bisection over its breakpoints, measuring each
    candidate on the network that would really result (consumers' input channels, BatchNorm,
    flatten -> Linear included): the result is at most the target and as close as the breakpoints allow.

    Example:
        >>> Footprint(0.25, metric="flops")
        >>> Footprint(0.25, allocation="energy")   # the paper's allocation
    """

    ratio: float | None = None
    metric: str = "params"
    allocation: str = "kl"
    steps: int = 1
    name: ClassVar[str] = "footprint"

    @property
    def probe_metric(self) -> str | None:
        return self.metric

    def __post_init__(self) -> None:
        if self.ratio is None:  # no silent default: the budget is the user's decision
            raise PFAError("Footprint needs `ratio`: the fraction of the network's parameters (metric='params') or "
                           "FLOPs (metric='flops') to keep, in (0, 1], e.g. Footprint(0.25) or "
                           "PFACallback('footprint', ratio=0.25).")
        object.__setattr__(self, "ratio", check_fraction("ratio", self.ratio))
        check_choice("metric", self.metric, METRICS)
        check_choice("allocation", self.allocation, ALLOCATIONS)
        if not is_int(self.steps) or self.steps < 1:
            raise fail("steps", "an integer >= 1 (the number of compressions that reach the ratio)", self.steps)

    def step(self, left: float, steps_left: int) -> "Footprint":
        """The one-cut Footprint of a gradual schedule's next step: with ``left`` the fraction of the original
        footprint the network has now and ``steps_left`` cuts to go (this one included), every step keeps the
        same share, ``(ratio / left) ** (1 / steps_left)`` of the current network, so the last one lands at
        ``ratio`` of the original whatever the earlier steps reached (AGP's and DepGraph's idea: reach an
        aggressive budget in several cuts with training in between)."""
        if not 1 <= steps_left <= self.steps:
            raise PFAError(f"Footprint(steps={self.steps}) has no step {self.steps - steps_left + 1}: it takes "
                           f"{self.steps} compressions (as many `compress_at` epochs).")
        share = min(1.0, (self.ratio / left) ** (1.0 / steps_left)) if left > 0 else 1.0
        return dataclasses.replace(self, ratio=share, steps=1)

    def _family(self, spectra: Sequence[Spectrum], clamp: Callable[[int, Spectrum], int]
                ) -> tuple[np.ndarray, Callable[[float], list[int]]]:
        """Ascending candidate values of the allocation's one parameter, and the widths at a value."""
        if self.allocation == "energy":
            fractions = [sp.energy_fractions() for sp in spectra]
            return (np.unique(np.concatenate(fractions + [np.array([1.0])])),
                    lambda tau: [clamp(energy_count(fr, tau), sp) for fr, sp in zip(fractions, spectra)])
        shares = [kl_keep_ratio(sp)[1] if self.allocation == "kl" else 1.0 for sp in spectra]
        candidates, counts = scaled_widths(spectra, shares, clamp)
        return np.concatenate([[1e-12], candidates]), counts  # 1e-12: every layer at its floor

    def decide(self, spectra, clamp, probe) -> Decision:
        assert probe is not None, "Footprint needs a footprint probe"
        if self.steps > 1:
            raise PFAError(f"Footprint(steps={self.steps}) is a schedule of {self.steps} compressions with training "
                           f"in between: give it to PFACallback with {self.steps} `compress_at` epochs; for one cut "
                           f"here, use Footprint({self.ratio:g}) or Footprint.step().")
        candidates, counts_at = self._family(spectra, clamp)

        def size(counts: list[int]) -> int:
            return probe({sp.name: k for sp, k in zip(spectra, counts)})

        full = probe({})
        target = self.ratio * full
        index, achieved = largest_fitting(candidates, lambda v: size(counts_at(v)), target)
        if index < 0:
            self.check(achieved, full, "(every layer at its floor)")
        value = float(candidates[index])
        counts = counts_at(value)
        diags = [{"energy_kept": float(sp.energy_fractions()[k - 1]), "units_ratio": k / sp.units}
                 for sp, k in zip(spectra, counts)]
        summary = {"allocation": self.allocation, "threshold" if self.allocation == "energy" else "scale": value,
                   "metric": self.metric, "full": full, "target": target, "achieved": achieved,
                   "achieved_ratio": achieved / full}
        return Decision(counts, diags, summary)

    def check(self, floor: int, full: int, where: str = "") -> None:
        if floor > self.ratio * full:
            raise PFAError(
                f"Footprint ratio {self.ratio:g} ({self.metric}) is out of reach{f' {where}' if where else ''}: the "
                f"smallest network it can produce keeps {floor / full:.4f} of the {self.metric}. Use a larger ratio, "
                "a smaller `min_units`, or analyse more layers."
            )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ratio": self.ratio, "metric": self.metric, "allocation": self.allocation,
                **({"steps": self.steps} if self.steps > 1 else {})}

    @property
    def label(self) -> str:
        return f"footprint={self.ratio:g}" + ("" if self.metric == "params" else f" {self.metric}")


@dataclass(frozen=True)
class Uniform(Strategy):
    """Baseline: every channel space keeps the same fraction of its units (uniform width scaling).

    Give ``ratio`` (the fraction), or ``params``: the largest common fraction whose network has at
    most that many parameters (e.g. the parameter count of a PFA-compressed model, to compare at
    equal footprint).

    Example:
        >>> Uniform(params=pfa.count_params(kl_model))
    """

    ratio: float | None = None
    params: int | None = None
    name: ClassVar[str] = "uniform"

    def __post_init__(self) -> None:
        if (self.ratio is None) == (self.params is None):
            raise PFAError("Uniform takes exactly one of `ratio` (a fraction in (0, 1]) or `params` (a target count).")
        if self.ratio is not None:
            object.__setattr__(self, "ratio", check_fraction("ratio", self.ratio))
        elif not is_int(self.params) or self.params < 1:
            raise fail("params", "a positive integer", self.params)

    @property
    def probe_metric(self) -> str | None:
        return "params" if self.params is not None else None

    def decide(self, spectra, clamp, probe) -> Decision:
        candidates, counts_at = scaled_widths(spectra, [1.0] * len(spectra), clamp)
        ratio = self.ratio
        summary: dict[str, Any] = {}
        if ratio is None:
            assert probe is not None, "Uniform(params=...) needs a footprint probe"

            def size(ratio: float) -> int:
                return probe({sp.name: k for sp, k in zip(spectra, counts_at(ratio))})

            index, achieved = largest_fitting(candidates, size, self.params)
            if index < 0:
                self.check(achieved, 0)
            ratio = float(candidates[index])
            summary = {"ratio": ratio, "target_params": self.params, "achieved_params": achieved}
        counts = counts_at(ratio)
        return Decision(counts, [{"units_ratio": k / sp.units} for k, sp in zip(counts, spectra)], summary)

    def check(self, floor: int, full: int, where: str = "") -> None:
        if self.params is not None and floor > self.params:
            raise PFAError(f"Uniform(params={self.params}) is out of reach{f' {where}' if where else ''}: the smallest "
                           f"uniform network has {floor} parameters.")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **({"ratio": self.ratio} if self.ratio is not None else {"params": self.params})}

    @classmethod
    def describe(cls, diagnostics: Mapping[str, Any]) -> str:
        return f"units {diagnostics['units_ratio']:.0%}" if "units_ratio" in diagnostics else ""


def resolve_strategy(strategy: str | Strategy, **options: Any) -> Strategy:
    """A :class:`Strategy` from an instance or a name (``kl``, ``energy``, ``footprint``, ``uniform``) plus options.

    Raises:
        PFAError: unknown name, or options that the strategy does not take / a value out of range.
    """
    options = {k: v for k, v in options.items() if v is not None}
    if isinstance(strategy, Strategy):
        own = strategy.to_dict()  # an option that only repeats the instance's own value (a config's shortcut) is fine
        differing = sorted(k for k, v in options.items() if own.get(k) != v)
        if differing:
            raise PFAError(f"Options {differing} only apply to a strategy given by name, not to {strategy!r}.")
        return strategy
    if not isinstance(strategy, str) or strategy.lower() not in REGISTRY:
        raise fail("strategy", f"one of {tuple(REGISTRY)} or a Strategy instance", strategy)
    cls = REGISTRY[strategy.lower()]
    allowed = {f.name for f in dataclasses.fields(cls)}
    extra = set(options) - allowed
    if extra:
        raise PFAError(
            f"Strategy {cls.name!r} takes {sorted(allowed) or 'no options'}, got unexpected {sorted(extra)}."
        )
    return cls(**options)
