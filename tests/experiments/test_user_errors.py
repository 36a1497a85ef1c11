"""run.py's rule: a PFAError (however Hydra wraps it) is one clear line; any other exception is a bug."""

from __future__ import annotations

from hydra.errors import InstantiationException

from pfa_lightning import PFAError
from pfa_lightning.experiments.datamodules import DataError
from pfa_lightning.experiments.runner import user_error_message


def _wrapped(inner: BaseException) -> InstantiationException:
    try:
        try:
            raise inner
        except BaseException as err:
            raise InstantiationException("Error in call to target 'X'") from err
    except InstantiationException as outer:
        return outer


def test_pfa_errors_are_user_errors_even_when_wrapped():
    assert user_error_message(PFAError("`ratio` must be a number in (0, 1], got 2.")) == \
        "`ratio` must be a number in (0, 1], got 2."
    assert user_error_message(_wrapped(DataError("cifar10 was not found"))) == "cifar10 was not found"


def test_other_errors_are_bugs_whatever_their_type():
    assert user_error_message(ValueError("math domain error")) is None
    assert user_error_message(_wrapped(ZeroDivisionError("integer division or modulo by zero"))) is None
    assert user_error_message(RuntimeError("CUDA error")) is None
