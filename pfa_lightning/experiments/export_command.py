"""``pfa-export``: a compressed Lightning checkpoint to ONNX, TorchScript or a ``torch.export`` program, checked.

    pfa-export outputs/run/final.ckpt --format onnx --output model.onnx
    pfa-export last.ckpt --format exported-program --output model.pt2 --module mypkg.models:MyModule --input-shape 3,224,224

The checkpoint is loaded with :func:`~pfa_lightning.callback.checkpoint.load_compressed` (the compressed
architecture is rebuilt from the checkpoint's PFA history, then the weights load) and exported with
:func:`~pfa_lightning.export.export_model`: dynamic batch size, written atomically, and (unless
``--no-check``) loaded back and compared with the PyTorch model before success is reported.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import pickle
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from pfa_lightning.callback.checkpoint import (CHECKPOINT_KEY, CheckpointMismatch, check_checkpoint_file,
                                               check_module_class, inputs_from_spec, load_compressed)
from pfa_lightning.errors import PFAError
from pfa_lightning.export import (EXPORT_FORMATS, ExportReport, ExportSuffixWarning, check_output, export_model,
                                  suffix_mismatch)
from pfa_lightning.files import first_line, load_plain
from pfa_lightning.validation import check_choice, fail, listed

DEFAULT_MODULE = "pfa_lightning.experiments.module:ImageClassifier"
EXAMPLE_BATCH = 2  # the batch size traced; the check runs others


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike, format: str = "onnx", *,
                      module: str | type = DEFAULT_MODULE, input_shape: Sequence[int] | None = None,
                      check: bool = True, atol: float = 1e-4, rtol: float = 1e-4) -> ExportReport:
    """Load a compressed checkpoint of ``module`` and export it with :func:`~pfa_lightning.export.export_model`.

    The example input comes from ``input_shape`` (one sample's shape, without the batch dimension) or else
    from the example-input spec a fit with ``PFACallback`` stores in the checkpoint; it must be one tensor.

    Example:
        >>> report = export_checkpoint("outputs/run/final.ckpt", "model.onnx")
        >>> report.params, report.max_abs_diff
        (74482, 2.3e-06)

    Args:
        module: the checkpoint's LightningModule class, or its ``"package.module:ClassName"``.
        check, atol, rtol: as in :func:`~pfa_lightning.export.export_model`.

    Raises:
        PFAError: a bad ``format``, ``module`` or ``input_shape``; a checkpoint that is not a readable Lightning
            checkpoint, does not fit ``module``, or has no single-tensor input spec while ``input_shape`` is
            None; and everything :func:`~pfa_lightning.export.export_model` refuses.
    """
    check_choice("format", format, EXPORT_FORMATS)
    module_class = module_class_of(module) if isinstance(module, str) else check_module_class(module, "module")
    shape = check_input_shape(input_shape) if input_shape is not None else None
    check_output(output)  # before the checkpoint is read: a directory or a device there is refused at once
    if "://" in str(checkpoint):
        raise fail("checkpoint", "a local file (download a remote checkpoint first)", str(checkpoint))
    path = check_checkpoint_file(checkpoint, "checkpoint")
    saved = read_checkpoint(path)
    if _class_name(module_class) == DEFAULT_MODULE:
        check_image_classifier(saved, path)
    spec = shape_spec(shape) if shape is not None else single_input_spec(saved, path)
    model = load_module(module_class, path)
    return export_model(model, inputs_from_spec(spec, model, batch=EXAMPLE_BATCH), output, format, check=check,
                        atol=atol, rtol=rtol)


def module_class_of(name: str) -> type:
    """The LightningModule class ``"package.module:ClassName"`` names."""
    module_name, _, class_name = name.partition(":")
    if not module_name or not class_name.isidentifier():
        raise fail("module", "'package.module:ClassName'", name)
    try:
        found = getattr(importlib.import_module(module_name), class_name, None)
    except ImportError as err:
        raise PFAError(f"`module` {name!r} cannot be imported ({type(err).__name__}: {err}).") from None
    if found is None:
        raise PFAError(f"`module` {name!r}: {module_name} has no attribute {class_name!r}.")
    return check_module_class(found, "module", name)


def check_input_shape(shape: Any) -> tuple[int, ...]:
    """One sample's shape: a non-empty sequence of positive integers (no batch dimension)."""
    if isinstance(shape, str) or not isinstance(shape, Sequence) or not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise fail("input_shape", "positive integers, one sample's shape without the batch dimension (e.g. 3,32,32)",
                   shape)
    return tuple(shape)


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"3,32,32"`` -> ``(3, 32, 32)``."""
    try:
        return check_input_shape([int(d) for d in text.split(",")])
    except ValueError:
        raise fail("input_shape", "positive integers separated by commas, one sample's shape without the batch "
                   "dimension (e.g. 3,32,32)", text) from None


def shape_spec(shape: tuple[int, ...]) -> dict[str, Any]:
    """The spec of float inputs of one sample's ``shape`` (as ``input_spec`` writes it)."""
    return {"shape": list(shape), "dtype": "float32"}


def read_checkpoint(path: str) -> dict[str, Any]:
    """The checkpoint's contents (tensors memory-mapped); one PFAError if they are more than tensors and plain
    values."""
    try:
        return load_plain(path)
    except pickle.UnpicklingError:
        raise PFAError(f"`checkpoint` {path!r} holds objects torch.load(weights_only=True) refuses; pfa-export reads "
                       "checkpoints of tensors and plain values only.") from None


def check_image_classifier(checkpoint: dict[str, Any], path: str) -> None:
    """Refuse a checkpoint that ImageClassifier (the default ``--module``) did not write, before building anything:
    built from another module's hyperparameters it could be any network (a user's ``width=48`` made a VGG-16 48
    times as wide, and the kernel killed the process). ImageClassifier saves all its arguments but ``weights``,
    ``arch`` among them, and keeps its network under ``net.``; Lightning records nothing of the class itself."""
    from pfa_lightning.experiments.module import ImageClassifier

    hyperparameters = checkpoint.get(ImageClassifier.CHECKPOINT_HYPER_PARAMS_KEY)
    weights = [str(k) for k in checkpoint.get("state_dict") or {}]
    arguments = inspect.signature(ImageClassifier.__init__).parameters
    if not isinstance(hyperparameters, dict) or not hyperparameters:
        reason = "it records no hyperparameters"
    elif "arch" not in hyperparameters:
        reason = f"its hyperparameters ({listed(hyperparameters)}) have no `arch`"
    elif unknown := [str(k) for k in hyperparameters if k not in arguments]:
        reason = f"its hyperparameters {listed(unknown)} are not ImageClassifier's"
    elif foreign := [k for k in weights if not k.startswith("net.")]:
        reason = f"its weights ({listed(foreign)}) are not under ImageClassifier's `net.`"
    else:
        return
    raise PFAError(f"`checkpoint` {path!r} was not written by {DEFAULT_MODULE} (the default --module): {reason}; name "
                   "the LightningModule class that wrote it with --module package.module:ClassName.")


def _class_name(module_class: type) -> str:
    return f"{module_class.__module__}:{module_class.__qualname__}"


def single_input_spec(checkpoint: dict[str, Any], path: str) -> dict[str, Any]:
    """The checkpoint's example-input spec: one tensor's shape and dtype; a PFAError if it has none or a nested one."""
    spec = (checkpoint.get(CHECKPOINT_KEY) or {}).get("example_inputs")
    if spec is None:
        raise PFAError(f"`checkpoint` {path!r} records no example input (it was not written by a fit with "
                       "PFACallback): give one sample's shape with --input-shape, e.g. --input-shape 3,32,32.")
    if "shape" not in spec:
        raise PFAError(f"`checkpoint` {path!r} records nested example inputs ({_describe(spec)}): export takes a "
                       "module whose forward takes one tensor.")
    return spec


def _describe(spec: dict[str, Any]) -> str:
    if "sequence" in spec:
        return f"a sequence of {len(spec['sequence'])}"
    return f"a mapping with keys {sorted(spec['mapping'])}"


def load_module(module_class: type, path: str) -> Any:
    """``load_compressed(module_class, path)`` on the CPU; a class the checkpoint does not fit is one PFAError
    suggesting ``--module``."""
    advice = "name the LightningModule class that wrote it with --module package.module:ClassName"
    try:
        return load_compressed(module_class, path, map_location="cpu")
    except CheckpointMismatch as err:  # its hyperparameters do not build the class, or its weights do not load
        raise PFAError(f"`module` {_class_name(module_class)} cannot load {path!r}: the checkpoint's {err.part} do not "
                       f"fit that class ({err.detail}); {advice}.") from None
    except PFAError as err:
        if "does not fit" in str(err):  # the checkpoint's compressions name layers this class does not have
            raise PFAError(f"{err} Is the checkpoint of another LightningModule? Name its class with "
                           "--module package.module:ClassName.") from None
        raise
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError, ImportError, pickle.UnpicklingError) as err:
        # hyperparameters torch.load(weights_only=True) refuses, or Lightning failing before the class is built
        raise PFAError(f"`module` {_class_name(module_class)} cannot load {path!r} ({first_line(err)}): pass the "
                       "LightningModule class the checkpoint was written by.") from None


def summary(report: ExportReport) -> str:
    """One line: what was written, and how it compared with PyTorch."""
    checked = (f"outputs match PyTorch at batch sizes {', '.join(map(str, report.batch_sizes))} "
               f"(max abs difference {report.max_abs_diff:.2g})" if report.max_abs_diff is not None
               else "not checked (--no-check)")
    return (f"Exported {report.format}: {report.path} ({report.bytes / 1e6:.2f} MB, {report.params:,} parameters, "
            f"dynamic batch size); {checked}.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pfa-export", description="Export a (compressed) Lightning checkpoint to ONNX, TorchScript or a "
        "torch.export program, with a dynamic batch size; the file is loaded back and checked against PyTorch.")
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a Lightning checkpoint, e.g. a run's final.ckpt")
    parser.add_argument("--format", required=True, metavar="{" + ",".join(EXPORT_FORMATS) + "}",
                        help="ONNX (checked with ONNX Runtime on the CPU), TorchScript (traced) or torch.export's .pt2")
    parser.add_argument("--output", required=True, metavar="PATH",
                        help="the file to write (e.g. model.onnx, model.pt, model.pt2); its directory must exist")
    parser.add_argument("--module", default=DEFAULT_MODULE, metavar="package.module:ClassName",
                        help=f"the checkpoint's LightningModule class (default: {DEFAULT_MODULE})")
    parser.add_argument("--input-shape", metavar="C,H,W", help="one sample's input shape (no batch dimension); "
                        "by default the example input the checkpoint records")
    parser.add_argument("--no-check", action="store_true", help="skip loading the file back and comparing outputs")
    parser.add_argument("--atol", type=float, default=1e-4, help="allowed absolute difference (default 1e-4) ...")
    parser.add_argument("--rtol", type=float, default=1e-4, help="... plus this times the largest |output| (1e-4)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``pfa-export`` command: 0 on success; 1, with one ``Error:`` line on stderr, for a user's mistake."""
    args = build_parser().parse_args(argv)
    if os.getcwd() not in sys.path:  # as `python -m` has it: --module may name a package in the working directory
        sys.path.insert(0, os.getcwd())
    if args.format in EXPORT_FORMATS and (note := suffix_mismatch(args.output, args.format)):
        print(f"Warning: {note}", file=sys.stderr)  # at once, not after the checkpoint is loaded
    try:
        shape = parse_input_shape(args.input_shape) if args.input_shape is not None else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExportSuffixWarning)  # (printed above)
            report = export_checkpoint(args.checkpoint, args.output, args.format, module=args.module,
                                       input_shape=shape, check=not args.no_check, atol=args.atol, rtol=args.rtol)
    except PFAError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    print(summary(report))
    return 0


__all__ = ["DEFAULT_MODULE", "export_checkpoint", "main"]


if __name__ == "__main__":
    sys.exit(main())
