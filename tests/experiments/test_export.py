"""pfa-export: compressed checkpoints to ONNX, TorchScript and torch.export programs, checked; clear errors."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pfa_lightning import PFACallback, PFAError, load_compressed
from pfa_lightning import export as export_module
from pfa_lightning.experiments import export_command
from pfa_lightning.experiments.export_command import DEFAULT_MODULE, export_checkpoint, main
from pfa_lightning.experiments.module import ImageClassifier
from pfa_lightning.export import EXPORT_FORMATS, SUFFIXES, ExportSuffixWarning, export_model, suffix_mismatch
from tests.callback.test_checkpoint_files import BAD_FILES, Settings, WithSettings, bad_checkpoint, save
from tests.helpers.callback_models import ResidualNet, loaders, quiet_trainer

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}
NETWORKS = {"vgg11": {"width": 0.125, "input_size": 32}, "resnet20": {"width": 0.25, "input_size": 16}}
OTHER_BATCH = 5  # pfa-export traces a batch of 2


def fit_compressed(arch: str, directory: Path) -> SimpleNamespace:
    """``ImageClassifier(arch)`` fitted one epoch on random 1-channel images, cut to half its parameters, saved;
    with the reloaded model and the full network's weight shapes."""
    torch.manual_seed(0)
    options = NETWORKS[arch]
    size = options["input_size"]
    module = ImageClassifier(arch, num_classes=10, in_channels=1, width=options["width"], input_size=size)
    full = weight_shapes(module)
    data = TensorDataset(torch.randn(96, 1, size, size), torch.randint(0, 10, (96,)))  # more samples than units
    pfa = PFACallback("footprint", ratio=0.5, compress_at=[1], max_samples=96, validate_after=False, verbose=False)
    trainer = quiet_trainer(max_epochs=1, callbacks=[pfa])
    trainer.fit(module, DataLoader(data, batch_size=32))
    path = directory / f"{arch}.ckpt"
    trainer.save_checkpoint(path)
    return SimpleNamespace(path=path, size=size, full_shapes=full,
                           model=load_compressed(ImageClassifier, path, map_location="cpu"))


def weight_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(m.weight.shape) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """``fitted(arch)``: the compressed checkpoint of ``arch``, fitted once per module."""
    runs: dict[str, SimpleNamespace] = {}

    def get(arch: str) -> SimpleNamespace:
        if arch not in runs:
            runs[arch] = fit_compressed(arch, tmp_path_factory.mktemp(arch))
        return runs[arch]

    return get


@pytest.fixture(scope="module")
def vgg(fitted) -> SimpleNamespace:
    return fitted("vgg11")


def export(*args: str) -> tuple[int, str, str]:
    """``pfa-export ARGS`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def load_exported(path: Path, format: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, tuple[int, ...]]]:
    """An exported file read back on its own runtime (ONNX Runtime, TorchScript, torch.export): (its forward, the
    shapes of the weights it stores, by name)."""
    if format == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        shapes = {i.name: tuple(i.dims) for i in onnx.load(str(path)).graph.initializer}
        return lambda x: torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]), shapes
    module = torch.jit.load(str(path)) if format == "torchscript" else torch.export.load(str(path)).module()
    return module, {name: tuple(t.shape) for name, t in module.state_dict().items()}


@pytest.fixture(scope="module", params=[(arch, format) for arch in NETWORKS for format in EXPORT_FORMATS],
                ids=lambda p: "-".join(p))
def exported(request, fitted, tmp_path_factory) -> SimpleNamespace:
    """Each compressed network through ``pfa-export`` in each format, and read back."""
    arch, format = request.param
    run = fitted(arch)
    output = tmp_path_factory.mktemp("export") / f"model{SUFFIX[format]}"
    code, stdout, stderr = export(run.path, "--format", format, "--output", output)
    assert code == 0, stderr
    forward, shapes = load_exported(output, format)
    return SimpleNamespace(run=run, format=format, output=output, stdout=stdout, forward=forward, shapes=shapes)


# -- the compressed networks, every format ------------------------------------------------------------
def test_the_export_matches_pytorch_at_another_batch_size(exported):
    assert f"Exported {exported.format}: {exported.output}" in exported.stdout
    assert "batch sizes 1, 2, 5" in exported.stdout
    assert [p.name for p in exported.output.parent.iterdir()] == [exported.output.name]  # no temporary file left
    run = exported.run
    x = torch.randn(OTHER_BATCH, 1, run.size, run.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = run.model(x), exported.forward(x)
    assert got.shape == (OTHER_BATCH, 10)
    assert (got - expected).abs().max() <= 1e-4


def test_the_exported_file_holds_the_compressed_widths(exported):
    cut = weight_shapes(exported.run.model)
    assert {name: exported.shapes[f"{name}.weight"] for name in cut} == cut
    narrower = [name for name, shape in cut.items() if shape[0] < exported.run.full_shapes[name][0]]
    assert len(narrower) >= len(cut) // 2, f"only {narrower} were cut"


def test_the_console_script_exports(vgg, tmp_path):
    output = tmp_path / "model.pt2"
    script = shutil.which("pfa-export") or str(Path(sys.executable).with_name("pfa-export"))
    result = subprocess.run([script, str(vgg.path), "--format", "exported-program", "--output", str(output)],
                            check=False, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert output.is_file() and "Exported exported-program" in result.stdout


# -- a user's own LightningModule, checkpoints without an input spec ----------------------------------------
@pytest.fixture(scope="module")
def residual(tmp_path_factory) -> SimpleNamespace:
    """tests.helpers' ResidualNet: fitted with PFACallback (``compressed.ckpt``) and without (``plain.ckpt``)."""
    root = tmp_path_factory.mktemp("residual")
    paths = {}
    for name, callbacks in (("compressed", [PFACallback(compress_at=[1], validate_after=False, verbose=False)]),
                            ("plain", [])):
        torch.manual_seed(0)
        trainer = quiet_trainer(max_epochs=1, callbacks=callbacks)
        trainer.fit(ResidualNet(), loaders(n=32)[0])
        paths[name] = root / f"{name}.ckpt"
        trainer.save_checkpoint(paths[name])
    return SimpleNamespace(**paths)


MODULE = "tests.helpers.callback_models:ResidualNet"


def test_a_users_own_lightning_module_exports_with_module(residual, tmp_path):
    output = tmp_path / "model.pt2"
    code, stdout, stderr = export(residual.compressed, "--module", MODULE, "--format", "exported-program",
                                  "--output", output)
    assert code == 0, stderr
    model = load_compressed(ResidualNet, residual.compressed)
    assert f"{sum(p.numel() for p in model.parameters()):,} parameters" in stdout
    assert model.conv1.out_channels < 12  # compressed
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert (load_exported(output, "exported-program")[0](x) - model(x)).abs().max() <= 1e-4


def test_input_shape_exports_a_checkpoint_that_records_no_input(residual, tmp_path):
    output = tmp_path / "model.onnx"
    code, stdout, stderr = export(residual.plain, "--module", MODULE, "--input-shape", "3,8,8", "--format", "onnx",
                                  "--output", output, "--no-check")
    assert code == 0, stderr
    assert "not checked" in stdout and output.is_file()


# -- user errors: exit 1, one line, nothing written -------------------------------------------------------
@pytest.fixture(scope="module")
def nested_checkpoint(vgg, tmp_path_factory) -> Path:
    """The VGG checkpoint, its recorded example input turned into a one-element list."""
    checkpoint = torch.load(vgg.path, weights_only=True)
    checkpoint["pfa"]["example_inputs"] = {"sequence": [checkpoint["pfa"]["example_inputs"]]}
    path = tmp_path_factory.mktemp("nested") / "nested.ckpt"
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("case, extra, match", [
    ("vgg", ["--format", "tflite"], "`format` must be one of ('onnx', 'torchscript', 'exported-program'), got 'tflite'"),
    ("missing", ["--format", "onnx"], "missing.ckpt' is not a file"),
    ("vgg", ["--format", "onnx", "--module", "no_such_package.models:Net"],
     "`module` 'no_such_package.models:Net' cannot be imported (ModuleNotFoundError"),
    ("vgg", ["--format", "onnx", "--module", "pfa_lightning.experiments.module:Nothing"], "has no attribute 'Nothing'"),
    ("vgg", ["--format", "onnx", "--module", "torch.nn:Linear"], "`module` must be a LightningModule subclass"),
    ("vgg", ["--format", "onnx", "--module", "ImageClassifier"], "`module` must be 'package.module:ClassName'"),
    ("vgg", ["--format", "onnx", "--module", MODULE], f"`module` {MODULE} cannot load"),
    ("vgg", ["--format", "onnx", "--input-shape", "1x32x32"], "`input_shape` must be positive integers separated"),
    ("nested", ["--format", "onnx"], "records nested example inputs (a sequence of 1)"),
    ("plain", ["--format", "onnx", "--module", MODULE], "records no example input"),
    ("vgg", ["--format", "onnx", "--input-shape", "1,8,8"], "The model cannot run on example inputs of shape (2, 1, 8, 8)"),
], ids=["format", "missing checkpoint", "no such module", "no such class", "not a LightningModule", "no colon",
        "wrong class", "bad input shape", "nested inputs", "no input shape", "input shape the model refuses"])
def test_user_errors_exit_1_with_one_line_and_write_nothing(case, extra, match, vgg, nested_checkpoint, residual,
                                                             tmp_path):
    checkpoint = {"vgg": vgg.path, "missing": tmp_path / "missing.ckpt", "nested": nested_checkpoint,
                  "plain": residual.plain}[case]
    output = tmp_path / "out" / "model.onnx"
    output.parent.mkdir()
    code, _, stderr = export(checkpoint, *extra, "--output", output)
    assert code == 1
    assert stderr.startswith("Error: ") and stderr.count("\n") == 1, stderr
    assert match in stderr
    assert not any(output.parent.iterdir())


@pytest.mark.parametrize("kind", BAD_FILES)
def test_a_file_that_is_no_checkpoint_is_one_line_without_weights_only_advice(kind, tmp_path):
    path = bad_checkpoint(kind, tmp_path)
    output = tmp_path / "model.onnx"
    with pytest.raises(PFAError) as info:
        export_checkpoint(path, output)
    assert str(info.value) == f"`checkpoint` {str(path)!r} {BAD_FILES[kind]}"
    assert "weights_only" not in str(info.value) and not output.exists()


def test_a_checkpoint_holding_objects_weights_only_refuses_is_named_as_such(tmp_path):
    path = save(WithSettings(Settings(depth=3)), tmp_path / "settings.ckpt")
    code, _, stderr = export(path, "--format", "onnx", "--output", tmp_path / "model.onnx")
    assert code == 1 and stderr == (f"Error: `checkpoint` {str(path)!r} holds objects torch.load(weights_only=True) "
                                    "refuses; pfa-export reads checkpoints of tensors and plain values only.\n")


class Wide(pl.LightningModule):
    """A user's module with ``width=48``: as ImageClassifier's hyperparameters, a VGG-16 48 times as wide."""

    def __init__(self, width: int = 48, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Linear(4, width)


class Seq(pl.LightningModule):
    """A user's sequence model with an ``arch`` of its own."""

    def __init__(self, arch: str = "seq", width: int = 4, hidden: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=[] if hidden is not None else ["hidden"])
        self.body = nn.Linear(4, width)


class SeqUnderNet(pl.LightningModule):
    """A user's module that looks like ImageClassifier's (an ``arch``, its weights under ``net.``) until it is built."""

    def __init__(self, arch: str = "seq", width: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Linear(4, width)


NOT_IMAGE_CLASSIFIER = "was not written by pfa_lightning.experiments.module:ImageClassifier (the default --module): "
SUGGESTION = "; name the LightningModule class that wrote it with --module package.module:ClassName.\n"


@pytest.mark.parametrize("module, expected", [
    (Wide(), NOT_IMAGE_CLASSIFIER + "its hyperparameters (width, lr) have no `arch`"),
    (Seq(hidden=8), NOT_IMAGE_CLASSIFIER + "its hyperparameters hidden are not ImageClassifier's"),
    (Seq(), NOT_IMAGE_CLASSIFIER + "its weights (body.weight, body.bias) are not under ImageClassifier's `net.`"),
], ids=["width 48", "an argument ImageClassifier lacks", "weights elsewhere"])
def test_another_modules_checkpoint_without_module_is_refused_before_anything_is_built(module, expected, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setattr(export_command, "load_compressed", lambda *a, **k: pytest.fail("built a module"))
    path = save(module, tmp_path / "user.ckpt")
    code, _, stderr = export(path, "--format", "onnx", "--output", tmp_path / "model.onnx", "--input-shape", "4")
    assert code == 1 and stderr == f"Error: `checkpoint` {str(path)!r} {expected}{SUGGESTION}"


def test_a_checkpoint_imageclassifier_cannot_be_built_from_suggests_module(tmp_path):
    path = save(SeqUnderNet(), tmp_path / "seq.ckpt")
    code, _, stderr = export(path, "--format", "onnx", "--output", tmp_path / "model.onnx", "--input-shape", "4")
    assert code == 1 and stderr.count("\n") == 1
    assert stderr.startswith(f"Error: `module` {DEFAULT_MODULE} cannot load {str(path)!r}: the checkpoint's "
                             "hyperparameters do not fit that class (building it from them fails: `arch` must be one "
                             "of ('vgg11',")
    assert stderr.endswith(f"got 'seq'){SUGGESTION}")
    assert not (tmp_path / "model.onnx").exists()


def test_an_output_that_is_not_a_regular_file_is_refused_before_the_checkpoint_is_read(tmp_path):
    output = tmp_path / "model.onnx"
    os.mkfifo(output)
    code, _, stderr = export(tmp_path / "missing.ckpt", "--format", "onnx", "--output", output)
    assert code == 1
    assert stderr.startswith(f"Error: `output` {str(output)!r} is a FIFO (named pipe), not a regular file")
    assert stat.S_ISFIFO(output.stat().st_mode)


def test_an_output_suffix_that_is_not_the_formats_is_noted_once(residual, tmp_path):
    output = tmp_path / "model.onnx"
    code, stdout, stderr = export(residual.plain, "--module", MODULE, "--input-shape", "3,8,8", "--format",
                                  "torchscript", "--output", output, "--no-check")
    assert code == 0 and f"Exported torchscript: {output}" in stdout
    assert stderr == (f"Warning: `output` {str(output)!r} ends in .onnx, but it will hold torchscript: name it *.pt or "
                      "*.pth or *.torchscript or *.ts.\n")


def test_a_file_that_fails_the_check_is_an_error_and_is_not_written(vgg, tmp_path, monkeypatch):
    load = export_module._LOADERS["exported-program"]
    monkeypatch.setitem(export_module._LOADERS, "exported-program",
                        lambda path, device: lambda x: [y + 1e-3 for y in load(path, device)(x)])
    output = tmp_path / "model.pt2"
    code, _, stderr = export(vgg.path, "--format", "exported-program", "--output", output)
    assert code == 1
    assert stderr.startswith("Error: The exported-program export differs from the PyTorch model at batch size 1: "
                             "max abs difference 0.001") and stderr.count("\n") == 1, stderr
    assert not any(tmp_path.iterdir())


# -- export_model: the check, atomic writes, modes, missing packages -----------------------------------------
class Noisy(nn.Module):
    """Adds fresh noise at every call: no export of it can match the module's own outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x) + torch.rand(x.shape[0], 3)


@pytest.mark.parametrize("format", EXPORT_FORMATS)
def test_an_export_that_differs_leaves_the_old_file_untouched(format, tmp_path):
    output = tmp_path / f"model{SUFFIX[format]}"
    output.write_bytes(b"the good one")
    with pytest.raises(PFAError, match=rf"The {format} export differs from the PyTorch model at batch size 1: "
                                       r"max abs difference [0-9.e-]+ on outputs up to [0-9.e-]+ \(allowed: atol 0.0001"):
        export_model(Noisy(), torch.randn(4, 4), output, format)
    assert output.read_bytes() == b"the good one"
    assert [p.name for p in tmp_path.iterdir()] == [output.name]


class BatchOfTwo(nn.Module):
    """A forward that branches on the batch size."""

    def forward(self, x):
        return x * 2 if x.shape[0] == 2 else x


@pytest.mark.parametrize("format, match", [
    ("exported-program", "The model cannot be exported to exported-program with a dynamic batch size"),
    ("torchscript", "The torchscript export differs from the PyTorch model at batch size 1"),
])
def test_a_forward_that_fixes_the_batch_size_is_refused(format, match, tmp_path):
    with pytest.raises(PFAError, match=match):
        export_model(BatchOfTwo(), torch.randn(2, 3), tmp_path / f"model{SUFFIX[format]}", format)
    assert not any(tmp_path.iterdir())


def test_the_mode_is_restored_and_a_batch_of_one_exports(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2)).train()
    report = export_model(model, torch.randn(1, 4), tmp_path / "model.pt2", "exported-program")
    assert model.training and all(m.training for m in model)
    assert report.batch_sizes == (1, 2, 5) and report.max_abs_diff <= 1e-4
    assert report.params == sum(p.numel() for p in model.parameters())
    assert report.bytes == (tmp_path / "model.pt2").stat().st_size


def test_missing_onnx_packages_name_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(PFAError, match=r"onnxruntime cannot be imported.*install pfa_lightning\[export\]"):
        export_model(nn.Linear(4, 2), torch.randn(2, 4), tmp_path / "model.onnx")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("kwargs, match", [
    ({"format": "tflite"}, r"`format` must be one of \('onnx', 'torchscript', 'exported-program'\), got 'tflite'"),
    ({"atol": -1.0}, r"`atol` must be a number >= 0, got -1.0"),
    ({"example_inputs": [torch.randn(2, 4)]}, r"`example_inputs` must be one tensor .*got 'list'"),
    ({"output": "no/such/dir/model.onnx"}, r"its directory 'no/such/dir' does not exist"),
])
def test_bad_arguments(kwargs, match, tmp_path):
    arguments = {"model": nn.Linear(4, 2), "example_inputs": torch.randn(2, 4), "output": tmp_path / "model.onnx"}
    with pytest.raises(PFAError, match=match):
        export_model(**(arguments | kwargs))


def test_an_output_through_a_symbolic_link_replaces_its_target_and_stays_a_link(tmp_path, tmp_path_factory):
    shared = tmp_path_factory.mktemp("shared") / "model.onnx"
    shared.write_bytes(b"the old model")
    link = tmp_path / "link.onnx"
    link.symlink_to(shared)
    model = nn.Linear(4, 2)
    report = export_model(model, torch.randn(2, 4), link)
    assert link.is_symlink() and link.resolve() == shared.resolve()
    assert report.path == link and report.bytes == shared.stat().st_size
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert (load_exported(shared, "onnx")[0](x) - model(x)).abs().max() <= 1e-5  # the target holds the new model
    assert [p.name for p in tmp_path.iterdir()] == ["link.onnx"]  # no temporary file on either side
    assert [p.name for p in shared.parent.iterdir()] == ["model.onnx"]


@pytest.mark.parametrize("kind", ["FIFO", "directory", "link to a FIFO"])
def test_an_output_that_is_not_a_regular_file_is_refused_before_any_export_and_left_alone(kind, tmp_path):
    output = tmp_path / "model.onnx"
    fifo = tmp_path / "pipe"
    if kind == "directory":
        output.mkdir()
    elif kind == "FIFO":
        os.mkfifo(output)
    else:
        os.mkfifo(fifo)
        output.symlink_to(fifo)
    shown = {"FIFO": f"{str(output)!r} is a FIFO (named pipe)", "directory": f"{str(output)!r} is a directory",
             "link to a FIFO": f"{str(output)!r} (a link to {str(fifo)!r}) is a FIFO (named pipe)"}[kind]
    with pytest.raises(PFAError) as info:  # an example the model refuses: the output is checked first
        export_model(nn.Linear(4, 2), torch.randn(2, 5), output)
    assert str(info.value) == (f"`output` {shown}, not a regular file: give the path of a file to write (a regular "
                               "file there is replaced).")
    assert output.is_dir() if kind == "directory" else stat.S_ISFIFO(output.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.onnx"] + (["pipe"] if "link" in kind else []))


@pytest.mark.parametrize("format, name, found", [("onnx", "model.pt", "ends in .pt"),
                                                 ("torchscript", "model.onnx", "ends in .onnx"),
                                                 ("exported-program", "model", "has no suffix")])
def test_an_output_suffix_that_is_not_the_formats_warns(format, name, found, tmp_path):
    allowed = {"onnx": "*.onnx", "torchscript": "*.pt or *.pth or *.torchscript or *.ts", "exported-program": "*.pt2"}
    output = tmp_path / name
    with pytest.warns(ExportSuffixWarning) as record:
        export_model(nn.Linear(4, 2), torch.randn(2, 4), output, format, check=False)
    assert [str(w.message) for w in record if w.category is ExportSuffixWarning] == [
        f"`output` {str(output)!r} {found}, but it will hold {format}: name it {allowed[format]}."]
    assert output.is_file()
    assert all(suffix_mismatch(f"m{s.upper()}", f) is None for f, suffixes in SUFFIXES.items() for s in suffixes)


class LargeAndNoisy(nn.Module):
    """Outputs near 1000 with a wobble of 1e-3 (1e-6 of them): float32 kernels summing in another order."""

    def forward(self, x):
        return 1000.0 + x + 1e-3 * torch.rand_like(x)


def test_the_tolerance_scales_with_the_outputs_not_each_element(tmp_path):
    x = torch.randn(4, 4)
    report = export_model(LargeAndNoisy(), x, tmp_path / "large.pt2", "exported-program")  # passes: 1e-3 of 1000
    assert 1e-4 < report.max_abs_diff < 1e-4 + 1e-4 * 1000
    with pytest.raises(PFAError, match="differs"):
        export_model(LargeAndNoisy(), x, tmp_path / "strict.pt2", "exported-program", rtol=0.0)
    assert not (tmp_path / "strict.pt2").exists()
