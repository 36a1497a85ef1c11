"""The composed configs: presets keep their own values, every group base and option composes, and the
`pfa` keys are exactly PFACallback's arguments."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from pfa_lightning.experiments.runner import PFA_OPTIONS

CONF = Path(__file__).resolve().parents[2] / "conf"


def composed(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


# what each preset says about itself; the primary config (2 + 1 epochs) must not override it
PRESETS = {
    "vgg16_cifar10_kl": {"train.epochs": 160, "train.finetune_epochs": 40, "pfa.max_samples": 10000,
                         "pfa.strategy._target_": "pfa_lightning.KL", "model.arch": "vgg16", "model.lr": 0.05, "dataset.name": "cifar10",
                         "model.restarts": [160]},
    "resnet56_cifar10": {"train.epochs": 160, "train.finetune_epochs": 40, "pfa.max_samples": 10000,
                         "model.arch": "resnet56", "model.lr": 0.1, "dataset.name": "cifar10"},
    "cifar100_subsets": {"train.epochs": 160, "train.finetune_epochs": 40, "pfa.max_samples": 5000,
                         "dataset.name": "cifar100", "dataset.specialize_from_epoch": 160,
                         "dataset.specialize_classes": [3, 42, 7, 11, 19, 55, 61, 73, 88, 95], "pfa.compress_at": [160]},
    "energy_sweep": {"pfa.strategy._target_": "pfa_lightning.Energy", "pfa.strategy.threshold": 0.95,
                     "train.epochs": 2},
}


def test_every_preset_is_listed_here():
    assert sorted(PRESETS) == sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_keep_their_own_values(preset):
    cfg = composed(f"experiment={preset}")
    for key, expected in PRESETS[preset].items():
        value = OmegaConf.select(cfg, key)
        value = list(value) if OmegaConf.is_list(value) else value  # iterating resolves interpolations
        assert value == expected, f"experiment={preset}: {key} is {value!r}, the preset says {expected!r}"


def test_command_line_overrides_still_win_over_presets():
    cfg = composed("experiment=vgg16_cifar10_kl", "train.epochs=2")
    assert cfg.train.epochs == 2 and cfg.pfa.compress_at == [2]


def test_pfa_keys_are_the_callbacks_arguments():
    base = OmegaConf.load(CONF / "pfa" / "default.yaml")
    assert set(base) == set(PFA_OPTIONS)
    assert {"keep_scheduler_progress", "verbose", "selection"} <= set(PFA_OPTIONS)
    assert "dataloader" not in PFA_OPTIONS  # the data module gives the analysis data


@pytest.mark.parametrize("group", ["model", "dataset", "pfa"])
def test_group_bases_hold_the_shared_keys_and_variants_only_their_difference(group):
    base = set(OmegaConf.load(CONF / group / "default.yaml"))
    for path in (CONF / group).glob("*.yaml"):
        raw = OmegaConf.load(path)
        if path.stem in ("default", "none"):
            continue
        parents = list(raw.get("defaults", []))
        assert parents in (["default"], ["cifar10"]), f"{path.name} does not build on the group base"
        cfg = composed(f"{group}={path.stem}")[group]
        assert base <= set(cfg), f"{group}={path.stem} lacks shared keys {base - set(cfg)}"


@pytest.mark.parametrize("group, missing", [("pfa", "pfa.strategy"), ("model", "model.arch"),
                                            ("dataset", "dataset._target_")])
def test_a_base_alone_is_not_a_choice(group, missing):
    cfg = composed(f"{group}=default")
    with pytest.raises(MissingMandatoryValue, match=missing.split(".")[-1]):
        OmegaConf.to_container(cfg[group], resolve=True, throw_on_missing=True)


def test_selection_objects_come_from_the_config():
    cfg = composed("pfa=kl", "pfa.selection={_target_:pfa_lightning.Random,seed:4}")
    import pfa_lightning as pfa

    assert instantiate(cfg.pfa.selection) == pfa.Random(seed=4)


def test_a_latency_budget_comes_from_the_command_line_shortcuts():
    import pfa_lightning as pfa
    from pfa_lightning.experiments.runner import _pfa_callback

    cfg = composed("pfa=footprint", "pfa.metric=latency", "pfa.ratio=0.4", "pfa.runtime=onnxruntime", "pfa.batch_size=8")
    callback = _pfa_callback(cfg, datamodule=None)
    assert callback.strategy == pfa.Footprint(0.4, metric="latency", runtime="onnxruntime", batch_size=8)
    plain = _pfa_callback(composed("pfa=footprint"), datamodule=None)  # the shortcuts' defaults fit a params target
    assert plain.strategy == pfa.Footprint(0.5)
    deeper = _pfa_callback(composed("pfa=footprint", "pfa.metric=latency", "pfa.ratio=0.25", "pfa.depth=true"),
                           datamodule=None)
    assert deeper.strategy == pfa.Footprint(0.25, metric="latency", depth=True)


def test_the_uniform_baseline_is_a_choice_and_latency_options_given_to_another_metric_are_refused():
    import pfa_lightning as pfa
    from pfa_lightning.experiments.runner import _pfa_callback

    assert _pfa_callback(composed("pfa=uniform"), datamodule=None).strategy == pfa.Uniform(0.5)
    flops = _pfa_callback(composed("pfa=uniform", "pfa.metric=flops", "pfa.ratio=0.25"), datamodule=None)
    assert flops.strategy == pfa.Uniform(0.25, metric="flops")
    with pytest.raises(Exception, match=r"runtime only applies to metric='latency'.*not to metric='params'"):
        instantiate(composed("pfa=footprint", "pfa.runtime=onnxruntime").pfa.strategy)


@pytest.mark.parametrize("overrides, match", [
    (["pfa=kl", "pfa.ratio=0.3"], r"pfa.ratio=0.3 does not apply to KL\(\), which takes no options: choose the "
                                  r"variant that takes it, e.g. pfa=footprint pfa.ratio=0.3\.$"),
    (["pfa=kl", "pfa.threshold=0.9"], r"pfa.threshold=0.9 does not apply to KL\(\).*e.g. pfa=energy pfa.threshold=0.9"),
    (["pfa=energy", "pfa.metric=flops"], r"pfa.metric=flops does not apply to Energy\(threshold=0.95\), which takes "
                                         r"\['threshold'\]"),
    (["pfa=uniform", "pfa.depth=true"], r"pfa.depth=true does not apply to Uniform.*e.g. pfa=footprint pfa.depth=true"),
    (["pfa=kl", "pfa.ratio=0.3", "pfa.threshold=0.9"],
     r"pfa.threshold=0.9 pfa.ratio=0.3 do not apply to KL\(\).*takes them, e.g. pfa=energy pfa.threshold=0.9; "
     r"pfa=footprint pfa.ratio=0.3\.$"),
])
def test_a_shortcut_the_chosen_variant_does_not_take_is_named_in_the_command_lines_words(overrides, match):
    from pfa_lightning import PFAError
    from pfa_lightning.experiments.runner import _pfa_callback

    with pytest.raises(PFAError, match=match):
        _pfa_callback(composed(*overrides), datamodule=None)


def test_turning_off_a_feature_the_variant_lacks_is_fine():
    import pfa_lightning as pfa
    from pfa_lightning.experiments.runner import _pfa_callback

    assert _pfa_callback(composed("pfa=kl", "pfa.depth=false"), datamodule=None).strategy == pfa.KL()


def test_the_callbacks_group_adds_lightning_callbacks_and_refuses_a_second_pfa_callback():
    from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

    from pfa_lightning import PFAError
    from pfa_lightning.experiments.runner import _extra_callbacks

    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["callbacks=[model_checkpoint,lr_monitor,early_stopping]"],
                      return_hydra_config=True)
    cfg.hydra.runtime.output_dir = "/tmp/pfa-test"  # what a Hydra run sets
    HydraConfig.instance().set_config(cfg)
    built = _extra_callbacks(cfg)
    assert [type(c) for c in built] == [ModelCheckpoint, LearningRateMonitor, EarlyStopping]
    assert built[0].monitor == "val/acc" and built[2].monitor == "val/acc"
    with pytest.raises(PFAError, match="`callbacks.pfa` builds a PFACallback, but run.py builds its own"):
        _extra_callbacks(composed("callbacks=pfa"))


def test_a_callback_that_cannot_be_built_is_one_clear_error():
    from pfa_lightning import PFAError
    from pfa_lightning.experiments.runner import _extra_callbacks

    with pytest.raises(PFAError, match=r"`callbacks.bad` could not be built: .*nowhere.Nothing"):
        _extra_callbacks(OmegaConf.create({"callbacks": {"bad": {"_target_": "nowhere.Nothing"}}}))
