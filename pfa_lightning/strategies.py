"""How many units each channel space keeps: PFA-KL, PFA-Energy, or a footprint target."""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from pfa_lightning.allocation import (CEIL_GUARD, energy_count, kl_keep_ratio, largest_fitting, refine_by_timing,
                                      scaled_widths)
from pfa_lightning.errors import PFAError
from pfa_lightning.footprint import METRICS
from pfa_lightning.latency import TOLERANCE as LATENCY_TOLERANCE, check_timing
from pfa_lightning.spectrum import Spectrum
from pfa_lightning.validation import check_choice, check_fraction, fail, is_int

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
    depth = False  # whether whole residual blocks go too (Footprint(depth=True): see pfa_lightning.blocks)

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
            counts.append(clamp(math.ceil(sp.units * ratio - CEIL_GUARD), sp))
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
DEPTH_HINT = ", or depth=True (residual blocks go too)"  # what Footprint suggests where widths fall short


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

    With ``depth=True`` the network also loses whole residual blocks (``x + branch(x)`` with an identity
    shortcut), those that change their stream least on the analysis data first, as many as bring it to
    ``sqrt(ratio)`` of its footprint; the widths then meet ``ratio`` (see :mod:`pfa_lightning.blocks`).
    For targets that widths alone cannot reach: a latency at batch 1, where every layer costs a fixed
    overhead that no width removes.

    The common factor (or threshold) is found by bisection over its breakpoints, measuring each
    candidate on the network that would really result (consumers' input channels, BatchNorm,
    flatten -> Linear included): the result is at most the target and as close as the breakpoints allow.

    Example:
        >>> Footprint(0.25, metric="flops")
        >>> Footprint(0.25, allocation="energy")   # the paper's allocation
        >>> Footprint(0.25, metric="latency", depth=True)   # residual blocks go too
    """

    ratio: float | None = None
    metric: str = "params"
    allocation: str = "kl"
    steps: int = 1
    runtime: str = "torch"  # metric="latency": where the time is measured ("torch" eager, "onnxruntime")
    batch_size: int = 1  # metric="latency": the batch the time is measured at
    timer: Callable[[Any, Any], float] | None = dataclasses.field(default=None, compare=False, repr=False)
    depth: bool = False  # also remove whole residual blocks (their geometric share of the target)
    name: ClassVar[str] = "footprint"

    @property
    def probe_metric(self) -> str | None:
        return self.metric

    def __post_init__(self) -> None:
        if self.ratio is None:  # no silent default: the budget is the user's decision
            raise PFAError("Footprint needs `ratio`: the fraction of the network's parameters (metric='params'), "
                           "FLOPs (metric='flops') or inference time (metric='latency') to keep, in (0, 1], e.g. "
                           "Footprint(0.25) or "
                           "PFACallback('footprint', ratio=0.25).")
        object.__setattr__(self, "ratio", check_fraction("ratio", self.ratio))
        check_choice("metric", self.metric, METRICS)
        check_choice("allocation", self.allocation, ALLOCATIONS)
        check_timing(self.runtime, self.batch_size, self.metric, self.timer)
        if not is_int(self.steps) or self.steps < 1:
            raise fail("steps", "an integer >= 1 (the number of compressions that reach the ratio)", self.steps)
        if not isinstance(self.depth, bool):
            raise fail("depth", "True (remove residual blocks too) or False", self.depth)

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

        full = getattr(probe, "full", None)  # what the ratio is of: the network before any block went
        full = probe({}) if full is None else full
        target = self.ratio * full
        index, achieved = largest_fitting(candidates, lambda v: size(counts_at(v)), target)
        checks: dict[str, float] = {}
        verify = getattr(probe, "verify", None)
        if index < 0 and verify is None:
            self.check(achieved, full, "(every layer at its floor)")
        index = max(index, 0)  # a predicted latency out of reach is timed before it is refused
        if verify is not None:  # a predicted latency: the real candidates are timed, from the prediction's choice
            def timed(i: int) -> tuple[float, float]:
                return verify({sp.name: k for sp, k in zip(spectra, counts_at(float(candidates[i])))})

            index, checks = refine_by_timing(index, len(candidates), timed, self.ratio, LATENCY_TOLERANCE)
            checks["predicted_s"] = size(counts_at(float(candidates[index]))) / 1e9
            if checks["measured_s"] > self.ratio * checks["measured_full_s"] * (1 + LATENCY_TOLERANCE):
                raise PFAError(f"Footprint ratio {self.ratio:g} (latency on {self.runtime}, batch {self.batch_size}) "
                               f"is out of reach: the smallest network timed takes "
                               f"{checks['measured_s'] / checks['measured_full_s']:.2f} of the full network's time "
                               "(costs that do not shrink with the widths). Use a larger ratio or batch_size"
                               + ("" if self.depth else DEPTH_HINT) + ".")
        value = float(candidates[index])
        counts = counts_at(value)
        diags = [{"energy_kept": float(sp.energy_fractions()[k - 1]), "units_ratio": k / sp.units}
                 for sp, k in zip(spectra, counts)]
        summary = {"allocation": self.allocation, "threshold" if self.allocation == "energy" else "scale": value,
                   "metric": self.metric, "full": full, "target": target, "achieved": achieved,
                   "achieved_ratio": achieved / full, **checks}
        return Decision(counts, diags, summary)

    def check(self, floor: int, full: int, where: str = "") -> None:
        if floor > self.ratio * full:
            raise PFAError(
                f"Footprint ratio {self.ratio:g} ({self.metric}) is out of reach{f' {where}' if where else ''}: the "
                f"smallest network it can produce keeps {floor / full:.4f} of the {self.metric}. Use a larger ratio, "
                "a smaller `min_units`, or analyse more layers" + ("" if self.depth else DEPTH_HINT) + "."
            )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ratio": self.ratio, "metric": self.metric, "allocation": self.allocation,
                **({"steps": self.steps} if self.steps > 1 else {}), **({"depth": True} if self.depth else {}),
                **({"runtime": self.runtime, "batch_size": self.batch_size} if self.metric == "latency" else {})}

    @property
    def label(self) -> str:
        return f"footprint={self.ratio:g}" + ("" if self.metric == "params" else f" {self.metric}")


@dataclass(frozen=True)
class Uniform(Strategy):
    """Baseline: every channel space keeps the same fraction of its units (uniform width scaling).

    Give ``ratio`` (the fraction of each layer's units), or ``params``: the largest common fraction whose
    network has at most that many parameters (e.g. the parameter count of a PFA-compressed model, to
    compare at equal footprint). With ``metric`` ``"params"``, ``"flops"`` or ``"latency"``, ``ratio`` is
    a share of the network's footprint in that metric instead: the largest common fraction within it
    (``Footprint(ratio, metric, allocation="uniform")``, latency measured on ``runtime`` at ``batch_size``).

    Example:
        >>> Uniform(params=pfa.count_params(kl_model))
        >>> Uniform(0.5, metric="latency", runtime="onnxruntime")   # half the time, by width scaling
    """

    ratio: float | None = None
    params: int | None = None
    metric: str = "units"
    runtime: str = "torch"
    batch_size: int = 1
    timer: Callable[[Any, Any], float] | None = dataclasses.field(default=None, compare=False, repr=False)
    name: ClassVar[str] = "uniform"

    def __post_init__(self) -> None:
        if (self.ratio is None) == (self.params is None):
            raise PFAError("Uniform takes exactly one of `ratio` (a fraction in (0, 1]) or `params` (a target count).")
        check_choice("metric", self.metric, ("units", *METRICS))
        check_timing(self.runtime, self.batch_size, self.metric, self.timer)
        if self.ratio is not None:
            object.__setattr__(self, "ratio", check_fraction("ratio", self.ratio))
        elif not is_int(self.params) or self.params < 1:
            raise fail("params", "a positive integer", self.params)
        elif self.metric != "units":
            raise PFAError(f"Uniform(params=...) counts parameters: give `ratio` with metric={self.metric!r} instead.")

    def _as_footprint(self, method: str, *args: Any) -> Any:
        """``ratio`` of the network's ``metric`` is the footprint target with the uniform allocation: its ``method``,
        its messages naming Uniform, the strategy the user gave."""
        target = Footprint(self.ratio, metric=self.metric, allocation="uniform", runtime=self.runtime,
                           batch_size=self.batch_size, timer=self.timer)
        try:
            return getattr(target, method)(*args)
        except PFAError as err:
            raise PFAError(str(err).replace("Footprint ratio", "Uniform ratio", 1).replace(DEPTH_HINT, "")) from None

    @property
    def probe_metric(self) -> str | None:
        if self.params is not None:
            return "params"
        return None if self.metric == "units" else self.metric

    def decide(self, spectra, clamp, probe) -> Decision:
        if self.metric != "units":
            return self._as_footprint("decide", spectra, clamp, probe)
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
        if self.metric != "units":
            return self._as_footprint("check", floor, full, where)
        if self.params is not None and floor > self.params:
            raise PFAError(f"Uniform(params={self.params}) is out of reach{f' {where}' if where else ''}: the smallest "
                           f"uniform network has {floor} parameters.")

    def to_dict(self) -> dict[str, Any]:
        if self.metric != "units":  # Uniform(**options) rebuilds it
            return {"name": self.name, "ratio": self.ratio, "metric": self.metric,
                    **({"runtime": self.runtime, "batch_size": self.batch_size} if self.metric == "latency" else {})}
        return {"name": self.name, **({"ratio": self.ratio} if self.ratio is not None else {"params": self.params})}

    @property
    def label(self) -> str:
        if self.metric != "units":
            return f"uniform={self.ratio:g} {self.metric}"
        return super().label

    @classmethod
    def describe(cls, diagnostics: Mapping[str, Any]) -> str:
        return f"units {diagnostics['units_ratio']:.0%}" if "units_ratio" in diagnostics else ""


def resolve_strategy(strategy: str | Strategy, **options: Any) -> Strategy:
    """A :class:`Strategy` from an instance or a name (``kl``, ``energy``, ``footprint``, ``uniform``) plus options.

    Raises:
        PFAError: unknown name, or options that the strategy does not take / a value out of range.
    """
    target = REGISTRY.get(strategy.lower()) if isinstance(strategy, str) else strategy
    options = {k: v for k, v in options.items()  # depth=False: a feature the strategy lacks or has off, turned off
               if v is not None and not (k == "depth" and v is False and not getattr(target, "depth", False))}
    if isinstance(strategy, Strategy):  # an option that only repeats the instance's own value is fine
        own = {**strategy.to_dict(), **({f.name: getattr(strategy, f.name) for f in dataclasses.fields(strategy)}
                                        if dataclasses.is_dataclass(strategy) else {})}
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
        raise PFAError(f"Strategy {cls.name!r} takes {sorted(allowed) or 'no options'}, got unexpected "
                       f"{sorted(extra)}.")
    return cls(**options)
