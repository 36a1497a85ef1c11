"""One compression PFACallback made, as a typed record: written by the callback, read by the report, the
checkpoint and the experiments; stored in checkpoints as plain data (``to_dict``), versioned by the checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from pfa_lightning.errors import PFAError
from pfa_lightning.recipe import Recipe

ACCURACIES = ("before", "cut", "after")  # before the surgery, right after it, after BatchNorm recalibration


@dataclass
class Compression:
    """When (``epoch``: after that many epochs, 0 before training; ``global_step``), what (``recipe``), and the
    network around it: its parameters and FLOPs before and after, and its accuracy before the surgery, right
    after it and after BatchNorm recalibration (None where not measured) on ``accuracy_on`` data."""

    epoch: int
    global_step: int
    recipe: Recipe
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    acc_before: float | None = None
    acc_cut: float | None = None
    acc_after: float | None = None
    recalibrated: bool = False
    accuracy_on: str | None = None

    def footprint(self, metric: str, when: str) -> int:
        """``params`` or ``flops``, ``before`` or ``after`` the surgery."""
        return int(getattr(self, f"{metric}_{when}"))

    def accuracy(self, when: str) -> float | None:
        """The accuracy ``before``, right after the ``cut``, or ``after`` recalibration."""
        return getattr(self, f"acc_{when}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (``torch.load(weights_only=True)`` reads it back), the recipe as its dict."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["recipe"] = self.recipe.to_dict()
        return data

    def measures(self) -> dict[str, Any]:
        """Everything but the recipe: the numbers, as results.json lists them per compression."""
        return {k: v for k, v in self.to_dict().items() if k != "recipe"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Compression":
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        if not isinstance(data, Mapping) or not required <= set(data):
            missing = sorted(required - set(data)) if isinstance(data, Mapping) else sorted(required)
            raise PFAError(f"A PFA compression record lacks {missing}: the checkpoint's history is not PFACallback's.")
        values = {k: v for k, v in data.items() if k in names}
        recipe = values["recipe"]
        values["recipe"] = recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe)
        return cls(**values)


__all__ = ["ACCURACIES", "Compression"]
