"""A callback that SIGKILLs its own process at a given batch of a given epoch: a crash, mid-epoch, for
the resume tests (added to a run with `+callbacks.killer=...`)."""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl


class KillAt(pl.Callback):
    def __init__(self, epoch: int, batch: int = 1) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


class InterruptAt(KillAt):
    """Sends its own process SIGINT (Ctrl-C) at the given batch: an interrupted run, for the resume hint."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGINT)
