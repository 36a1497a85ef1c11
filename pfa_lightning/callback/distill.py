"""Knowledge distillation during fine-tuning: the cut network learns from a frozen copy of itself
taken right before the surgery (Hinton et al. 2015)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

from pfa_lightning.errors import PFAError
from pfa_lightning.validation import check_fraction, check_positive, fail


DISTILL_NEEDS_AUTOMATIC = ("`distill` needs automatic optimization: the callback adds the distillation term to the "
                           "loss `training_step` returns, which manual optimization never hands back.")


@dataclass(frozen=True)
class Distillation:
    """The loss becomes ``(1 - weight) * loss + weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))``.

    Args:
        temperature: ``T`` > 0, softening both distributions.
        weight: the distillation term's share of the loss, in (0, 1].
    """

    temperature: float = 4.0
    weight: float = 0.5

    def __post_init__(self) -> None:
        check_positive("distill.temperature", self.temperature)
        object.__setattr__(self, "weight", check_fraction("distill.weight", self.weight))

    @classmethod
    def resolve(cls, value: Any) -> "Distillation | None":
        """``None``/``False`` (off), ``True`` (defaults), a mapping of the fields, or a Distillation."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping) and set(value) <= {"temperature", "weight"}:
            return cls(**value)
        raise fail("distill", "None, True, or a mapping with `temperature` and/or `weight`", value)

    def loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        t = float(self.temperature)
        return F.kl_div(F.log_softmax(student.float() / t, -1), F.softmax(teacher.float() / t, -1),
                        reduction="batchmean") * t * t


class Teacher:
    """Holds the frozen teacher and wraps the module's ``training_step`` to add the distillation term."""

    def __init__(self, module: nn.Module, settings: Distillation) -> None:
        if not getattr(module, "automatic_optimization", True):
            raise PFAError(DISTILL_NEEDS_AUTOMATIC)
        self.settings = settings
        self.network = copy.deepcopy(module).eval()  # LightningModule.__getstate__ leaves the trainer out
        for p in self.network.parameters():
            p.requires_grad_(False)
        self.module = module
        self._original = module.__dict__.get("training_step")
        self._warned = False
        step = module.training_step

        def training_step(batch: Any, *args: Any, **kwargs: Any) -> Any:
            calls: list[tuple[tuple, dict, Any]] = []
            hook = module.register_forward_hook(lambda _m, a, kw, out: calls.append((a, kw, out)), with_kwargs=True)
            try:
                result = step(batch, *args, **kwargs)
            finally:
                hook.remove()
            return self._add_term(result, calls)

        module.training_step = training_step  # type: ignore[method-assign]

    def _add_term(self, result: Any, calls: list[tuple[tuple, dict, Any]]) -> Any:
        """The loss plus the distillation term, the teacher run on the inputs of the step's last forward."""
        loss = result["loss"] if isinstance(result, Mapping) else result
        if not isinstance(loss, Tensor):
            return result
        if calls:
            args, kwargs, student = calls[-1]
            with torch.no_grad():
                teacher = self.network(*args, **kwargs)
        if not calls or not (isinstance(student, Tensor) and isinstance(teacher, Tensor) and student.dim() >= 2
                             and student.shape == teacher.shape):
            if not self._warned:
                rank_zero_warn("PFA distillation needs training_step to call the module itself (`self(x)`) and get "
                               "(samples, classes) logits; the loss is left as training_step computes it.")
                self._warned = True
            return result
        term = self.settings.loss(student, teacher)
        total = (1 - self.settings.weight) * loss + self.settings.weight * term
        self.module.log("pfa/distill_loss", term.detach(), on_step=False, on_epoch=True)
        return {**result, "loss": total} if isinstance(result, Mapping) else total

    def release(self) -> None:
        """Give the module its own ``training_step`` back and free the teacher."""
        if self._original is None:
            self.module.__dict__.pop("training_step", None)
        else:
            self.module.training_step = self._original  # type: ignore[method-assign]
        self.network = None  # type: ignore[assignment]


__all__ = ["Distillation", "Teacher"]
