"""A strategy of a user's own, with one option of its own: everything it needs is this class (and, for run.py, one
config file the test writes). Keeps ``share`` of every layer's units, at least ``floor``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import pfa_lightning as pfa
from pfa_lightning.strategies import Decision


@dataclass(frozen=True)
class Share(pfa.Strategy):
    share: float = 0.5
    floor: int = 2
    name: ClassVar[str] = "share"

    def decide(self, spectra, clamp, probe) -> Decision:
        counts = [clamp(max(self.floor, math.ceil(self.share * sp.units)), sp) for sp in spectra]
        return Decision(counts, [{"kept_share": k / sp.units} for k, sp in zip(counts, spectra)], {})

    @classmethod
    def describe(cls, diagnostics: Mapping[str, Any]) -> str:
        return f"share {diagnostics['kept_share']:.2f}"
