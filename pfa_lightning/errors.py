"""The one error type of pfa_lightning."""

from __future__ import annotations


class PFAError(ValueError):
    """An error the user can cause: a bad argument or config value, missing data, an unsupported model.

    Every message names the value and what is allowed. A subclass of ``ValueError``, so code that
    catches ``ValueError`` keeps working; anything else pfa_lightning raises is a bug.

    Example:
        >>> try:
        ...     pfa.Energy(1.5)
        ... except pfa.PFAError as err:
        ...     print(err)
        `threshold` must be a number in (0, 1], got 1.5.
    """


__all__ = ["PFAError"]
