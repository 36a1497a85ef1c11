"""Checks for user-given values, with one message format: "`name` must be <allowed>, got <value>."

Each check returns the (normalised) value or raises :class:`~pfa_lightning.PFAError`. Sequences are
any non-string ``Sequence`` (``list``, ``tuple``, OmegaConf's ``ListConfig``...), returned as lists.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from pfa_lightning.errors import PFAError


def fail(name: str, allowed: str, value: Any) -> PFAError:
    """The error for ``name`` (a setting) holding ``value`` where ``allowed`` was expected."""
    return PFAError(f"`{name}` must be {allowed}, got {value!r}.")


def listed(names: Iterable[Any], most: int = 6) -> str:
    """``"a, b, c and 4 more"``: the first ``most`` names, for a message that stays one line."""
    names = [str(n) for n in names]
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_sequence(value: Any) -> bool:
    """A list-like value (not a string or a mapping)."""
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise fail(name, f"one of {allowed}", value)
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise fail(name, "True or False", value)
    return value


def check_int(name: str, value: Any, minimum: int, *, optional: bool = False, hint: str = "") -> int | None:
    """An integer >= ``minimum`` (or None when ``optional``)."""
    if value is None and optional:
        return None
    if not is_int(value) or value < minimum:
        raise fail(name, f"an integer >= {minimum}{' or None' if optional else ''}{hint}", value)
    return value


def check_positive(name: str, value: Any) -> float:
    """A number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise fail(name, "a number > 0", value)
    return float(value)


def check_fraction(name: str, value: Any) -> float:
    """A number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise fail(name, "a number in (0, 1]", value)
    return float(value)


def check_patterns(name: str, value: Any) -> list[str] | None:
    """None, a module name / glob pattern, or a non-empty sequence of them."""
    if value is None:
        return None
    patterns = [value] if isinstance(value, str) else value
    if not is_sequence(patterns) or not patterns or not all(isinstance(p, str) for p in patterns):
        raise fail(name, "None, a module name/glob pattern or a list of them", value)
    return list(patterns)


def check_epochs(name: str, value: Any, minimum: int = 1, note: str = "") -> list[int]:
    """One epoch number >= ``minimum`` or a non-empty sequence of distinct ones, sorted."""
    epochs = [value] if is_int(value) else value
    ok = (is_sequence(epochs) and len(epochs) > 0 and all(is_int(e) and e >= minimum for e in epochs)
          and len(set(epochs)) == len(epochs))
    if not ok:
        raise fail(name, f"an epoch number >= {minimum} or a non-empty list of distinct ones{note}",
                   list(value) if is_sequence(value) else value)
    return sorted(int(e) for e in epochs)


__all__ = ["listed", "check_bool", "check_choice", "check_epochs", "check_fraction", "check_int", "check_patterns", "check_positive", "fail",
           "is_int", "is_sequence"]
