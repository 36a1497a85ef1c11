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


def test_bad_pfa_settings_are_one_clear_error():
    import pytest
    from omegaconf import OmegaConf

    from pfa_lightning.experiments.runner import _pfa_callback

    base = {"strategy": "kl", "compress_at": [1]}
    cases = [({"foo": 1}, r"`pfa` must be a config whose keys are PFACallback's arguments .*got \['foo'\]"),
             ({"selection": {"_target_": "pfa_lightning.Nope"}}, r"A `pfa` setting could not be built: .*Nope"),
             ({"selection": {"_target_": "pfa_lightning.Random", "seed": 0.5}}, r"`seed` must be an integer, got 0.5")]
    for extra, match in cases:
        with pytest.raises(PFAError, match=match):
            _pfa_callback(OmegaConf.create({"pfa": {**base, **extra}}), None)


def test_a_truncated_or_foreign_resume_checkpoint_is_one_clear_error(tmp_path):
    import pytest
    import torch

    from pfa_lightning.experiments.runner import resume_from

    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 1, "global_step": 10}, good)
    assert resume_from(good) == str(good) and resume_from(None) is None
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    foreign = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(3)}, foreign)
    cases = [(tmp_path / "missing.ckpt", "is not a file"),
             (truncated, "cannot be read as a PyTorch checkpoint \\(truncated or not a checkpoint"),
             (foreign, r"is not a Lightning checkpoint \(it holds a dict with keys \[.conv.weight.\]\)")]
    for path, match in cases:
        with pytest.raises(PFAError, match=match) as info:
            resume_from(path)
        assert "\n" not in str(info.value)


def test_run_py_returns_the_objectives_a_sweeper_asked_for():
    import math

    import pytest
    from omegaconf import OmegaConf

    from pfa_lightning.experiments.runner import objective_values

    results = {"acc_final": 0.9, "params_ratio": 0.25, "flops_ratio": 0.4}
    assert objective_values(OmegaConf.create({"objectives": None}), results) == 0.9
    assert objective_values(OmegaConf.create({"objectives": ["acc_final"]}), results) == 0.9  # one: a number
    both = OmegaConf.create({"objectives": ["acc_final", "params_ratio"]})
    assert objective_values(both, results) == (0.9, 0.25)
    assert all(math.isnan(v) for v in objective_values(both, None))  # a failed trial
    with pytest.raises(PFAError, match=r"`objectives` must be null or a list of \("):
        from pfa_lightning.experiments.runner import check_objectives

        check_objectives(OmegaConf.create({"objectives": ["accuracy"]}))
