"""After a surgery, forget the scores Lightning's ``ModelCheckpoint`` and ``EarlyStopping`` remember.

Those scores were earned by the network before the cut. Kept, a "best" checkpoint would be a file of
the full network (which the compressed module cannot load), or — at the compression epoch, where
``ModelCheckpoint`` saves after the surgery with the validation score from before it — the just-cut
network under the full network's score; and ``EarlyStopping`` would stop fine-tuning because the cut
network has not yet beaten the full one. So best-model tracking restarts with the cut network, and
the compression epoch's own score is not used to save.
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_info

from pfa_lightning.callback.namespace import lightning_of


def restart_monitors(trainer: Any, verbose: bool = True) -> list[str]:
    """Reset every monitoring ``ModelCheckpoint`` and ``EarlyStopping`` of ``trainer``; returns what was reset."""
    callbacks = lightning_of(trainer).callbacks
    inf = torch.tensor(float("inf"))
    restarted = []
    for cb in trainer.callbacks:
        if isinstance(cb, callbacks.ModelCheckpoint) and cb.monitor is not None:
            cb.best_k_models, cb.kth_best_model_path, cb.best_model_path, cb.best_model_score = {}, "", "", None
            cb.kth_value = inf if cb.mode == "min" else -inf
            cb._last_global_step_saved = trainer.global_step  # this epoch's score predates the surgery: no save now
            restarted.append(f"ModelCheckpoint(monitor={cb.monitor!r})")
        elif isinstance(cb, callbacks.EarlyStopping):
            cb.wait_count = 0
            cb.best_score = inf if cb.monitor_op == torch.lt else -inf
            restarted.append(f"EarlyStopping(monitor={cb.monitor!r})")
    if restarted and verbose:
        rank_zero_info(f"PFA: {', '.join(restarted)} start over with the compressed network (earlier scores were "
                       "another network's; earlier files load with load_compressed).")
    return restarted


__all__ = ["restart_monitors"]
