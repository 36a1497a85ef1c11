"""Export a (compressed) network to ONNX, TorchScript or a ``torch.export`` program, checked before it is kept.

The batch dimension stays dynamic, the file is written atomically (a temporary file in the same
directory, renamed into place; through a symbolic link, next to its target and renamed over the
target), and by default the written file is loaded back — ONNX Runtime on the CPU,
``torch.jit.load``, ``torch.export.load`` — and its outputs compared with the PyTorch model's on
the exported batch size and on two others. An export that fails, or differs by more than the
tolerance, leaves nothing at the output path (and an older file there untouched). An existing
output that is not a regular file (a directory, a device, a FIFO) is refused before any work.
"""

from __future__ import annotations

import importlib
import os
import stat
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pfa_lightning.errors import PFAError
from pfa_lightning.footprint import count_params
from pfa_lightning.graph import evaluating
from pfa_lightning.nested import tensors_in
from pfa_lightning.stats import model_device
from pfa_lightning.validation import check_bool, check_choice, fail

EXPORT_FORMATS = ("onnx", "torchscript", "exported-program")
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
ONNX_MAX_BYTES = 2 * 1024**3  # protobuf's limit for one self-contained .onnx file
SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".pth", ".torchscript", ".ts"), "exported-program": (".pt2",)}

Runner = Callable[[Tensor], list[Tensor]]  # a loaded export: input batch -> its outputs, flattened


class ExportSuffixWarning(UserWarning):
    """The output file's name ends in a suffix other than its format's (e.g. ``model.pt`` for ONNX)."""


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_model` wrote and how it was checked.

    Attributes:
        format: one of :data:`EXPORT_FORMATS`.
        path: the written file.
        bytes: its size.
        params: the model's parameter count.
        batch_sizes: the batch sizes at which the file's outputs were compared with PyTorch's (empty when
            not checked).
        max_abs_diff: the largest absolute difference over those outputs (None when not checked).
    """

    format: str
    path: Path
    bytes: int
    params: int
    batch_sizes: tuple[int, ...]
    max_abs_diff: float | None


def export_model(model: nn.Module, example_inputs: Tensor, output: str | os.PathLike, format: str = "onnx", *,
                 check: bool = True, atol: float = 1e-4, rtol: float = 1e-4) -> ExportReport:
    """Export ``model`` with a dynamic batch dimension, load the file back and compare it with PyTorch.

    The model is exported as a whole (a LightningModule through its ``forward``) in eval mode; each
    submodule's train/eval flag is restored afterwards. ``example_inputs`` is one tensor whose dim 0 is
    the batch (a batch of one is repeated to two: ``torch.export`` would fix a batch of one as a
    constant). With ``check``, random inputs of its shape and dtype (a fixed seed) at the example's
    batch size, at 1 and at the example's + 3 go through the model and the written file, and for every
    output tensor ``max |exported - pytorch| <= atol + rtol * max |pytorch|`` (float32 kernels sum in
    another order: the rounding error grows with the outputs' scale, not with each element's size).

    ``output`` may be a symbolic link: the file it points to is replaced (the link stays). A name whose
    suffix is not the format's (:data:`SUFFIXES`) gets an :class:`ExportSuffixWarning`.

    Example:
        >>> report = export_model(model, torch.randn(8, 3, 32, 32), "model.onnx")
        >>> report.batch_sizes, report.max_abs_diff
        ((1, 8, 11), 1.2e-06)

    Raises:
        PFAError: a bad ``format``, example or tolerance; an output path in a missing directory, or one that
            exists and is not a regular file (a directory, a device, a FIFO, a socket: left untouched); the
            ONNX packages missing (``pip install "pfa_lightning[export]"``); a model that cannot be
            exported with a dynamic batch size; or a written file whose outputs differ from the model's.
    """
    check_choice("format", format, EXPORT_FORMATS)
    check_bool("check", check)
    _check_tolerance("atol", atol)
    _check_tolerance("rtol", rtol)
    target = check_output(output)
    output = Path(output)
    if note := suffix_mismatch(output, format):
        warnings.warn(note, ExportSuffixWarning, stacklevel=2)
    example = _example_batch(example_inputs).to(model_device(model))
    if format == "onnx":
        _require_onnx(check)
        _check_onnx_size(model)
    temporary = _temporary_path(target, format)
    batches = sorted({1, len(example), len(example) + 3})
    try:
        with evaluating(model), torch.no_grad():
            _run_example(model, example)
            _EXPORTERS[format](model, example, temporary)
            worst = _compare(model, _LOADERS[format](temporary, model_device(model)), example, batches, format,
                             atol, rtol) if check else None
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return ExportReport(format=format, path=output, bytes=output.stat().st_size, params=count_params(model),
                        batch_sizes=tuple(batches) if check else (), max_abs_diff=worst)


def _check_tolerance(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise fail(name, "a number >= 0", value)


def _example_batch(example_inputs: Any) -> Tensor:
    """The example as a batch of two or more samples (one sample is repeated: torch.export would fix a batch of one)."""
    if not isinstance(example_inputs, Tensor) or example_inputs.dim() == 0 or len(example_inputs) == 0:
        what = f"shape {tuple(example_inputs.shape)}" if isinstance(example_inputs, Tensor) else type(example_inputs).__name__
        raise fail("example_inputs", "one tensor holding a batch of samples along dim 0 (export takes a single input)",
                   what)
    x = example_inputs.detach()
    return x.repeat(2, *[1] * (x.dim() - 1)) if len(x) == 1 else x


def check_output(output: Any) -> Path:
    """The regular file an export to ``output`` replaces or creates: ``output`` itself, or the file a symbolic link
    there points to (the link stays a link). One PFAError, leaving the path untouched, for an existing directory,
    device, FIFO or socket, a link loop, or a missing directory."""
    if not isinstance(output, (str, os.PathLike)) or not str(output):
        raise fail("output", "a file path", output)
    path = Path(output)
    target = path
    if path.is_symlink():
        try:
            target = path.resolve(strict=False)
        except (OSError, RuntimeError) as err:  # a loop of links
            raise PFAError(f"`output` {str(path)!r} is a symbolic link that resolves to no file ({err}).") from None
    shown = repr(str(path)) if target == path else f"{str(path)!r} (a link to {str(target)!r})"
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as err:
        raise PFAError(f"`output` {shown} cannot be examined ({err}).") from None
    if mode is not None and not stat.S_ISREG(mode):
        raise PFAError(f"`output` {shown} is {_file_kind(mode)}, not a regular file: give the path of a file to "
                       "write (a regular file there is replaced).")
    if not target.parent.is_dir():
        raise PFAError(f"`output` {shown}: its directory {str(target.parent)!r} does not exist.")
    return target


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "a special file"


def suffix_mismatch(output: str | os.PathLike, format: str) -> str | None:
    """A one-line note when ``output``'s suffix is not one of ``format``'s (:data:`SUFFIXES`), else None."""
    suffix = Path(output).suffix
    if suffix.lower() in SUFFIXES[format]:
        return None
    found = f"ends in {suffix}" if suffix else "has no suffix"
    return f"`output` {str(output)!r} {found}, but it will hold {format}: name it *{' or *'.join(SUFFIXES[format])}."


def _run_example(model: nn.Module, example: Tensor) -> None:
    """One forward pass on the example: a shape the model refuses is the example's fault, not the exporter's."""
    try:
        model(example)
    except Exception as err:  # whatever the model raises on this input
        raise PFAError(f"The model cannot run on example inputs of shape {tuple(example.shape)} and dtype "
                       f"{str(example.dtype).removeprefix('torch.')} ({_first_line(err)}).") from err


def _temporary_path(output: Path, format: str) -> Path:
    """A fresh name next to ``output``: renamed into place, it is atomic. A program keeps torch.export's .pt2 suffix."""
    suffix = ".pt2" if format == "exported-program" else output.suffix
    return output.parent / f".{output.name}.{uuid.uuid4().hex[:8]}.partial{suffix}"


def _require_onnx(check: bool) -> None:
    """Import the ONNX packages the export (and its check) needs, or one PFAError saying how to get them."""
    for name in ONNX_PACKAGES if check else ONNX_PACKAGES[:-1]:  # ONNX Runtime only runs the check
        try:
            importlib.import_module(name)
        except ImportError:
            raise PFAError(f"ONNX export needs the packages {', '.join(ONNX_PACKAGES)} ({name} cannot be imported): "
                           "install pfa_lightning[export], e.g. pip install 'pfa_lightning[export]'.") from None


def _check_onnx_size(model: nn.Module) -> None:
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    if size > ONNX_MAX_BYTES:
        raise PFAError(f"The model's weights take {size / 1024**3:.1f} GiB: more than one ONNX file can hold (2 GiB); "
                       "export it with format 'exported-program' or 'torchscript'.")


def _batch_dim() -> dict[int, Any]:
    return {0: torch.export.Dim("batch", min=1)}


@contextmanager
def _unattached_lightning(model: nn.Module) -> Iterator[None]:
    """Let TorchScript probe a LightningModule outside a fit.

    Tracing reads every attribute of every submodule, and a LightningModule's ``trainer`` property
    raises when no trainer is attached unless its class flag ``_jit_is_scripting`` is set — which is
    what ``LightningModule.to_torchscript`` does. Found by name, so the core need not import Lightning.
    """
    owners = {klass for module in model.modules() for klass in type(module).__mro__ if "_jit_is_scripting" in vars(klass)}
    saved = {klass: klass._jit_is_scripting for klass in owners}
    for klass in owners:
        klass._jit_is_scripting = True
    try:
        yield
    finally:
        for klass, flag in saved.items():
            klass._jit_is_scripting = flag


@contextmanager
def _without_jit_deprecation() -> Iterator[None]:
    """TorchScript is deprecated in favour of torch.export; exporting to it on request is not news to the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


@contextmanager
def _exporting(format: str) -> Iterator[None]:
    """Turn an exporter's failure into one PFAError (the cause stays chained for a traceback)."""
    try:
        yield
    except Exception as err:  # any exporter failure is the model's, reported the same way
        raise PFAError(f"The model cannot be exported to {format} with a dynamic batch size ({_first_line(err)}).") from err


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _export_onnx(model: nn.Module, example: Tensor, path: Path) -> None:
    with _exporting("onnx"):
        program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=(_batch_dim(),), verbose=False)
        program.save(str(path), external_data=False)


def _export_torchscript(model: nn.Module, example: Tensor, path: Path) -> None:
    with _exporting("torchscript"), _unattached_lightning(model), _without_jit_deprecation():
        # a trace records one batch size's shapes only where the code reads them: the check runs other sizes
        torch.jit.trace(model, example, check_trace=False).save(str(path))


def _export_program(model: nn.Module, example: Tensor, path: Path) -> None:
    with _exporting("exported-program"):
        torch.export.save(torch.export.export(model, (example,), dynamic_shapes=(_batch_dim(),)), str(path))


def _load_onnx(path: Path, device: torch.device) -> Runner:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: [torch.from_numpy(y) for y in session.run(None, {name: x.cpu().numpy()})]


def _load_torchscript(path: Path, device: torch.device) -> Runner:
    with _without_jit_deprecation():
        module = torch.jit.load(str(path), map_location=device)
    return lambda x: list(tensors_in(module(x)))


def _load_program(path: Path, device: torch.device) -> Runner:
    module = torch.export.load(str(path)).module()
    return lambda x: list(tensors_in(module(x)))


_EXPORTERS: dict[str, Callable[[nn.Module, Tensor, Path], None]] = {
    "onnx": _export_onnx, "torchscript": _export_torchscript, "exported-program": _export_program}
_LOADERS: dict[str, Callable[[Path, torch.device], Runner]] = {
    "onnx": _load_onnx, "torchscript": _load_torchscript, "exported-program": _load_program}


def random_batch(example: Tensor, batch: int, generator: torch.Generator) -> Tensor:
    """``batch`` random samples shaped like ``example``'s, of its dtype: normal for floating point, else
    integers within the example's range (e.g. token ids)."""
    shape = (batch, *example.shape[1:])
    if example.is_floating_point():
        return torch.randn(shape, generator=generator).to(example.dtype)
    low, high = int(example.min()), int(example.max())
    return torch.randint(low, high + 1, shape, generator=generator).to(example.dtype)


def _compare(model: nn.Module, exported: Runner, example: Tensor, batches: list[int], format: str,
             atol: float, rtol: float) -> float:
    """The largest absolute difference between ``model`` and its export over ``batches``; a PFAError past tolerance."""
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for batch in batches:
        x = random_batch(example, batch, generator).to(example.device)
        expected = [t.detach().cpu() for t in tensors_in(model(x))]
        try:
            got = [t.detach().cpu() for t in exported(x)]
        except Exception as err:  # any failure of the written file at this batch size
            raise PFAError(f"The {format} export fails at batch size {batch} ({_first_line(err)}); "
                           "does the model's forward fix the batch size?") from err
        shapes = ([tuple(t.shape) for t in got], [tuple(t.shape) for t in expected])
        if shapes[0] != shapes[1]:
            raise PFAError(f"The {format} export gives outputs of shapes {shapes[0]} at batch size {batch}, "
                           f"the PyTorch model {shapes[1]}.")
        for a, b in zip(got, expected):
            if not a.numel():
                continue
            a, b = a.double(), b.double()
            if not torch.equal(a.isnan(), b.isnan()):
                raise PFAError(f"The {format} export gives NaN where the PyTorch model does not (batch size {batch}).")
            diff = float((a - b).nan_to_num().abs().max())
            scale = float(b.nan_to_num().abs().max())
            worst = max(worst, diff)
            if diff > atol + rtol * scale:
                raise PFAError(f"The {format} export differs from the PyTorch model at batch size {batch}: max abs "
                               f"difference {diff:.3g} on outputs up to {scale:.3g} (allowed: atol {atol:g} + rtol "
                               f"{rtol:g} x {scale:.3g}); loosen atol/rtol if that is float32 rounding.")
    return worst


__all__ = ["EXPORT_FORMATS", "SUFFIXES", "ExportReport", "ExportSuffixWarning", "check_output", "export_model",
           "random_batch", "suffix_mismatch"]
