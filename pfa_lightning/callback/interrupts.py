"""A compression runs inside one Lightning hook, and its analysis and decision can take minutes on a large model:
a SIGTERM (a scheduler's stop, ``kill``) must stop them within seconds, not after them."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator


class CompressionInterrupted(KeyboardInterrupt):
    """A SIGTERM arrived while PFA was analysing or deciding, before the cut: the model is as it was, and
    Lightning ends the fit as interrupted."""


@contextmanager
def prompt_sigterm(enabled: bool = True) -> Iterator[None]:
    """Within the block, a SIGTERM calls the handler in place (Lightning's records the signal) and then raises
    :class:`CompressionInterrupted` at once. Only in the main thread (where Python runs signal handlers), when
    ``enabled`` (the callback enables it for one process: under DDP a rank raising while the others wait in a
    collective would hang them, so there Lightning's handler stops the fit after the compression), and unless
    SIGTERM is ignored. Wrap only work that changes nothing: the model must be whole when it raises."""
    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if not enabled or previous is None or previous is signal.SIG_IGN:  # None: a handler installed outside Python
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if callable(previous):
            previous(signum, frame)
        raise CompressionInterrupted("SIGTERM while PFA analysed the network: stopped before the cut")

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = ["CompressionInterrupted", "prompt_sigterm"]
