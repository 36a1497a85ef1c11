"""Edges where a user could get a silently wrong result (issue 20): weight tying, dict inputs, degenerate recipes."""

from __future__ import annotations

import io
import json
import warnings

import pytest
import pytorch_lightning as pl
import torch
from rich.console import Console

import pfa_lightning as pfa
from pfa_lightning import PFACallback
from tests.callback.test_callback import run_python
from tests.helpers.callback_models import TiedLM, quiet_trainer, token_loader


def test_a_tied_embedding_language_model_stays_tied_through_a_fit_and_load_compressed(tmp_path):
    module = TiedLM()
    callback = PFACallback("energy", threshold=0.6, compress_at=[1], verbose=False)
    trainer = quiet_trainer(max_epochs=2, callbacks=[callback])
    with pytest.warns(UserWarning, match=r"Parameters dec\.weight, emb\.weight are shared \(weight tying\)"):
        trainer.fit(module, token_loader())
    assert module.dec.weight is module.emb.weight
    assert module.body[0].out_features < 32  # the hidden layer was cut
    assert module.body[2].out_features == 16  # the tied space was left whole
    ckpt = tmp_path / "lm.ckpt"
    trainer.save_checkpoint(ckpt)
    tokens = torch.randint(0, 40, (3, 6), generator=torch.Generator().manual_seed(1))
    module.eval()
    with torch.no_grad():
        expected = module(tokens)
    torch.save({"tokens": tokens, "expected": expected}, tmp_path / "io.pt")
    script = f"""
import json, torch
from pfa_lightning import load_compressed
from tests.helpers.callback_models import TiedLM
m = load_compressed(TiedLM, {str(ckpt)!r}).eval()
io = torch.load({str(tmp_path / 'io.pt')!r})
with torch.no_grad():
    out = m(io["tokens"])
print(json.dumps({{"tied": m.dec.weight is m.emb.weight, "hidden": m.body[0].out_features,
                  "equal": bool(torch.allclose(out, io["expected"], atol=1e-6))}}))
"""
    result = json.loads(run_python(["-c", script]).stdout.strip().splitlines()[-1])
    assert result == {"tied": True, "hidden": module.body[0].out_features, "equal": True}


def test_tied_parameters_are_found_by_storage_too():
    module = TiedLM()
    module.dec.weight = torch.nn.Parameter(module.emb.weight.data)  # another Parameter, the same storage
    x = torch.randint(0, 40, (64, 6))
    stats = pfa.collect_responses(module, [x], progress=False)
    with pytest.warns(UserWarning, match="weight tying"):
        recipe = pfa.make_recipe(module, stats, pfa.Energy(0.6), example_inputs=x[:2])
    assert "body.2" not in [layer.name for layer in recipe.layers]


class DictNet(torch.nn.Module):
    """A model whose forward takes one dict (as many multi-input models do)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, batch):
        x = torch.relu(self.conv(batch["image"]))
        return self.head(x.mean((2, 3)) * batch["scale"][:, None])


def test_a_model_whose_forward_takes_one_dict_is_called_with_it():
    net = DictNet()
    data = [({"image": torch.randn(32, 3, 8, 8), "scale": torch.ones(32)}, torch.zeros(32, dtype=torch.long))
            for _ in range(2)]
    stats = pfa.collect_responses(net, data, progress=False)
    example = data[0][0]
    recipe = pfa.make_recipe(net, stats, pfa.Footprint(0.5), example_inputs=example)
    assert pfa.count_flops(net, example) > 0
    pfa.apply_recipe(net, recipe, example_inputs=example)
    assert net.conv.out_channels < 8 and net(example).shape == (32, 4)


def test_keyword_inputs_still_go_as_keywords():
    from pfa_lightning.nested import takes_one_dict

    class Keywords(torch.nn.Module):
        def forward(self, image, mask=None):
            return image

    class Batch(torch.nn.Module):
        def forward(self, batch, flag: bool = False):
            return batch

    class BatchAndOptions(torch.nn.Module):
        def forward(self, batch, **options):
            return batch

    class Anything(torch.nn.Module):
        def forward(self, *args, **kwargs):
            return args

    assert not takes_one_dict(Keywords(), {"image": 1, "mask": 2})
    assert not takes_one_dict(Keywords(), {"image": 1})
    assert takes_one_dict(Batch(), {"image": 1})
    assert not takes_one_dict(Batch(), {"batch": 1})  # the dict's keys name the parameters: keywords
    assert takes_one_dict(BatchAndOptions(), {"image": 1, "mask": 2})
    assert not takes_one_dict(Anything(), {"image": 1})  # nothing to tell: keywords, as Torch-Pruning does


class QuickGELU(torch.nn.Module):
    """CLIP's activation: a module of the user's own that PFA cannot recognise as one non-linearity."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


def test_a_custom_activation_module_is_named_in_a_warning_and_the_table():
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), QuickGELU(), torch.nn.Linear(16, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 2))
    x = torch.randn(64, 6)
    with pytest.warns(UserWarning, match=r"PFA reads the responses of 0 \(1 \(QuickGELU\)\) before an activation it "
                                         r"does not know"):
        stats = pfa.collect_responses(net, [x], progress=False)
    assert "read before 1 (QuickGELU)" in stats["0"].response and "no non-linearity" not in stats["0"].response
    assert stats["2"].response == "2 -> ReLU"  # a known activation is applied, no warning about it
    recipe = pfa.make_recipe(net, stats, pfa.Energy(0.9), example_inputs=x[:2])
    console = Console(width=200, file=io.StringIO(), record=True)
    console.print(recipe.table())
    assert "read before its activation" in console.export_text()


def test_a_footprint_needs_its_ratio():
    with pytest.raises(pfa.PFAError, match=r"Footprint needs `ratio`"):
        PFACallback("footprint", compress_at=1)
    with pytest.raises(pfa.PFAError, match=r"Footprint needs `ratio`"):
        pfa.Footprint(metric="flops")


def test_a_recipe_that_starves_layers_warns_and_says_so_in_the_table():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 2))
    x = torch.randn(256, 4)  # 4 input dimensions: the 32-unit layers' responses span ~4 directions
    stats = pfa.collect_responses(net, [x], progress=False)
    with pytest.warns(UserWarning) as caught:
        recipe = pfa.make_recipe(net, stats, pfa.Energy(0.5), example_inputs=x[:2])
    messages = " ".join(str(w.message) for w in caught)
    assert "with fewer than 4 units: 0 (" in messages and "of 32)" in messages
    assert "analysed units" in messages and "Footprint(ratio)" in messages
    assert recipe["0"].diagnostics["note"] == f"only {recipe['0'].kept} kept"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a milder decision is quiet
        pfa.make_recipe(net, stats, pfa.Energy(0.999), example_inputs=x[:2])


SIGTERM_SCRIPT = """
import os, sys, time, torch
from pfa_lightning import PFACallback
from tests.helpers.callback_models import ResidualNet, loaders, quiet_trainer

class Slow(PFACallback):
    def on_statistics(self, trainer, pl_module, stats):
        print("analysing", flush=True)
        time.sleep(60)  # stands for minutes of analysis on a large model

module = ResidualNet()
widths = [m.out_channels for m in (module.stem, module.conv1)]
start = None
try:
    quiet_trainer(max_epochs=2, callbacks=[Slow(compress_at=[1], verbose=False)]).fit(module, *loaders())
except SystemExit as stop:
    print("exit", stop.code, "untouched", [m.out_channels for m in (module.stem, module.conv1)] == widths, flush=True)
"""


def test_sigterm_during_a_compression_stops_it_within_seconds_and_leaves_the_model_whole():
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.callback.test_callback import LAUNCHER_VARIABLES, REPO_DIR

    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT], cwd=REPO_DIR, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "analysing"
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        proc.kill()
    assert elapsed < 15, f"took {elapsed:.0f} s"
    assert "exit 1 untouched True" in out, (out, err[-2000:])


# -- gradual compression (issue 19) ----------------------------------------------------------------
def test_a_gradual_footprint_reaches_its_target_in_equal_steps():
    from tests.helpers.callback_models import ResidualNet, loaders

    module = ResidualNet(width=16)
    full = pfa.count_params(module)
    callback = PFACallback(pfa.Footprint(0.3, steps=3), compress_at=[1, 2, 3], verbose=False)
    quiet_trainer(max_epochs=4, callbacks=[callback]).fit(module, *loaders())
    ratios = [h.params_after / h.params_before for h in callback.history]
    assert len(ratios) == 3 and pfa.count_params(module) <= 0.3 * full
    assert pfa.count_params(module) >= 0.2 * full  # close to the target, not far below it
    assert all(r < 0.95 for r in ratios) and max(ratios) - min(ratios) < 0.25  # three real, similar cuts
    assert callback.history[0].recipe.strategy["ratio"] == pytest.approx(0.3 ** (1 / 3))


def test_a_gradual_footprint_needs_as_many_epochs_and_the_callback():
    with pytest.raises(pfa.PFAError, match=r"takes 3 compressions: give as many `compress_at` epochs \(got \[5\]\)"):
        PFACallback(pfa.Footprint(0.1, steps=3), compress_at=5)
    with pytest.raises(pfa.PFAError, match=r"`steps` must be an integer >= 1"):
        pfa.Footprint(0.1, steps=0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    x = torch.randn(64, 4)
    stats = pfa.collect_responses(net, [x], progress=False)
    with pytest.raises(pfa.PFAError, match=r"is a schedule of 3 compressions"):
        pfa.make_recipe(net, stats, pfa.Footprint(0.5, steps=3), example_inputs=x[:2])
    assert pfa.Footprint(0.1, steps=3).step(0.5, 2).ratio == pytest.approx((0.1 / 0.5) ** 0.5)
    assert pfa.Footprint(0.1, steps=3).step(0.5, 1).ratio == pytest.approx(0.2)  # the last step lands on the target


class DictModule(pl.LightningModule):
    """A Lightning module whose forward takes the batch's input dict whole."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 12, 3, padding=1)
        self.head = torch.nn.Linear(12, 4)

    def forward(self, inputs):
        return self.head(torch.relu(self.conv(inputs["image"])).amax((2, 3)))

    def training_step(self, batch, batch_idx):
        inputs, y = batch
        return torch.nn.functional.cross_entropy(self(inputs), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class DictImages(torch.utils.data.Dataset):
    def __init__(self, n: int = 64) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {"image": self.x[i]}, self.y[i]


def test_a_lightning_module_whose_forward_takes_a_dict_is_compressed_in_a_fit():
    module = DictModule()
    callback = PFACallback(pfa.Footprint(0.5), compress_at=[1], verbose=False)
    quiet_trainer(max_epochs=2, callbacks=[callback]).fit(module, torch.utils.data.DataLoader(DictImages(), batch_size=16))
    assert module.conv.out_channels < 12 and len(callback.history) == 1


def test_a_recipe_that_cuts_nothing_says_why_and_long_steps_show_progress(capsys):
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.ReLU(),
                              torch.nn.Linear(8, 2))
    x = torch.randn(64, 4)
    stats = pfa.collect_responses(net, [x], progress=False)
    with pytest.warns(UserWarning, match=r"The recipe cuts nothing: of the model's 3 channel spaces, 1 reaching the "
                                         r"model output; 2 kept whole by min_units=8\.$"):
        recipe = pfa.make_recipe(net, stats, pfa.KL(), example_inputs=x[:2], min_units=8, progress=True)
    assert all(layer.kept == layer.original for layer in recipe.layers)
    assert "PFA trial cuts" in capsys.readouterr().out
    with pytest.warns(UserWarning, match=r"cuts nothing: .* 1 reaching the model output; 2 kept whole by Uniform\("
                                         r"ratio=1.0, .*\) \(its target holds every unit\)"):
        pfa.make_recipe(net, stats, pfa.Uniform(ratio=1.0), example_inputs=x[:2])
    with pytest.warns(UserWarning, match=r"2 kept whole by Footprint\(ratio=1.0, .*\) \(its target holds every unit\)"):
        pfa.make_recipe(net, stats, pfa.Footprint(1.0), example_inputs=x[:2])
    recipe = pfa.make_recipe(net, stats, pfa.Footprint(0.6), example_inputs=x[:2], progress=True)
    assert "PFA measuring candidate networks (params)" in capsys.readouterr().out


def test_a_compression_reports_each_long_step(caplog):
    from tests.helpers.callback_models import ResidualNet, loaders

    with caplog.at_level("INFO"):
        quiet_trainer(max_epochs=1, callbacks=[PFACallback(compress_at=[1])]).fit(ResidualNet(), *loaders())
    text = caplog.text
    assert "deciding the recipe" in text and "PFA cut the network to" in text and "recalibrating BatchNorm" in text


def test_one_layer_under_two_names_is_not_weight_tying():
    class Aliased(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16),
                                           torch.nn.ReLU(), torch.nn.Linear(16, 2))
            self.first, self.body = self.net[0], self.net[:4]  # aliases, as LightningModules often hold

        def forward(self, x):
            return self.net(x)

    from pfa_lightning.sharing import tied_parameters

    model = Aliased()
    assert tied_parameters(model) == {}
    stats = pfa.collect_responses(model, [torch.randn(64, 4)], progress=False)
    assert sorted(stats.keys()) == ["net.0", "net.2"]
    with torch.device("meta"):
        assert tied_parameters(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))) == {}
    lm = TiedLM()
    assert {tuple(v) for v in tied_parameters(lm).values()} == {("dec.weight", "emb.weight")}


def test_prompt_sigterm_respects_an_ignored_signal_and_restores_the_handler():
    import signal

    from pfa_lightning.callback.interrupts import prompt_sigterm

    before = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with prompt_sigterm():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # the user's choice stands
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with prompt_sigterm():
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        with prompt_sigterm(enabled=False):  # under DDP
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, before)


def test_the_recipe_table_never_cuts_a_layer_name_short(capsys):
    """In a narrow terminal names wrap whole; printed to a pipe or a log (no terminal), the table is wide."""
    from pfa_lightning.callback.record import Compression
    from pfa_lightning.callback.report import print_compression

    net = torch.nn.Sequential()
    net.add_module("a_rather_long_block_name_conv1", torch.nn.Linear(6, 16))
    net.add_module("relu", torch.nn.ReLU())
    net.add_module("a_rather_long_block_name_conv2", torch.nn.Linear(16, 2))
    x = torch.randn(64, 6)
    stats = pfa.collect_responses(net, [x], progress=False)
    recipe = pfa.make_recipe(net, stats, pfa.Energy(0.9), example_inputs=x[:2])
    console = Console(width=50, file=io.StringIO(), record=True)
    console.print(recipe.table())
    cells = "".join(line.split("│")[1].strip() for line in console.export_text().splitlines() if line.count("│") > 2)
    assert "a_rather_long_block_name_conv1" in cells and "…" not in console.export_text()
    capsys.readouterr()
    print_compression(Compression(1, 10, recipe, 100, 50, 1000, 500), 1,
                      {"pfa/params_ratio": 0.5, "pfa/flops_ratio": 0.5})
    assert "a_rather_long_block_name_conv1" in capsys.readouterr().out


def test_a_module_without_forward_is_told_to_define_it():
    class NoForward(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))

        def training_step(self, batch, _):
            return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
    with pytest.raises(pfa.PFAError, match=r"PFACallback runs NoForward\(inputs\).*Define `forward` to run the network"):
        quiet_trainer(max_epochs=1, callbacks=[PFACallback(compress_at=[1])]).fit(
            NoForward(), torch.utils.data.DataLoader(data, batch_size=8))
