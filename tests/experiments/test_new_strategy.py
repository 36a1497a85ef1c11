"""A new strategy is one class (tests/helpers/my_strategy.py) plus, for run.py, one config file: through the API,
the callback and run.py, with its own option, its own table diagnostic and its own label (issue 21, item 1)."""

from __future__ import annotations

import io
import json

import torch
from rich.console import Console

import pfa_lightning as pfa
from tests.callback.test_edges import quiet_trainer
from tests.experiments.test_experiments import FAST, _cli
from tests.helpers.callback_models import ResidualNet, loaders
from tests.helpers.my_strategy import Share


def test_a_new_strategy_works_through_the_api_the_callback_and_run_py(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    x = torch.randn(64, 4)
    stats = pfa.collect_responses(net, [x], progress=False)
    recipe = pfa.make_recipe(net, stats, Share(share=0.25), example_inputs=x[:2])
    assert recipe["0"].kept == 4 and recipe.strategy == {"name": "share", "share": 0.25, "floor": 2}
    console = Console(width=200, file=io.StringIO(), record=True)
    console.print(recipe.table())
    assert "share 0.25" in console.export_text()  # the strategy describes its own layers

    module = ResidualNet()
    callback = pfa.PFACallback(Share(share=0.5), compress_at=[1], verbose=False)
    quiet_trainer(max_epochs=1, callbacks=[callback]).fit(module, *loaders())
    assert module.conv1.out_channels == 6 and callback.history[0].recipe.strategy["share"] == 0.5

    conf = tmp_path / "conf" / "pfa"
    conf.mkdir(parents=True)
    (conf / "share.yaml").write_text("defaults:\n  - default\n\nstrategy:\n  _target_: tests.helpers.my_strategy.Share\n"
                                     "  share: 0.5\n")
    out = tmp_path / "run"
    proc = _cli([f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "pfa=share", "pfa.strategy.share=0.25",
                 "model=simplecnn", "dataset=synthetic", "dataset.num_samples=64", "logger=none",
                 f"hydra.run.dir={out}", *FAST], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["pfa_strategy"] == "share" and results["settings"]["pfa_share"] == 0.25
    assert results["settings"]["pfa_label"] == "share=0.25"
    assert results["recipe"]["strategy"] == {"name": "share", "share": 0.25, "floor": 2}


def test_a_new_strategy_cannot_take_a_built_in_name():
    import dataclasses
    from typing import ClassVar

    import pytest

    with pytest.raises(pfa.PFAError, match=r"Strategy name 'kl' is KL's, built into pfa_lightning: give Mine another"):
        @dataclasses.dataclass(frozen=True)
        class Mine(pfa.Strategy):
            name: ClassVar[str] = "kl"

            def decide(self, spectra, clamp, probe):
                raise NotImplementedError
