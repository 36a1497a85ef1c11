"""A compression runs inside one Lightning hook and can take minutes on a large model: a SIGTERM (a
scheduler's stop, ``kill``) must stop it within seconds, not after it."""

from __future__ import annotations

import functools
import signal
import threading
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class CompressionInterrupted(KeyboardInterrupt):
    """A SIGTERM arrived while PFA was analysing or cutting: the model is left as it was before the cut
    (the surgery undoes itself), and Lightning ends the fit as interrupted."""


def interruptible(method: F) -> F:
    """Run ``method`` with a SIGTERM handler that calls the one in place (Lightning's records the signal and
    forwards it to DDP workers) and then raises :class:`CompressionInterrupted` at once. Only in the main thread,
    where Python runs signal handlers; elsewhere ``method`` runs as it is."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return method(*args, **kwargs)
        previous = signal.getsignal(signal.SIGTERM)

        def handler(signum: int, frame: Any) -> None:
            if callable(previous):
                previous(signum, frame)
            raise CompressionInterrupted("SIGTERM during a PFA compression: stopped, the model left as it was")

        signal.signal(signal.SIGTERM, handler)
        try:
            return method(*args, **kwargs)
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper  # type: ignore[return-value]


__all__ = ["CompressionInterrupted", "interruptible"]
