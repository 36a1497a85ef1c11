"""Reading checkpoint and weights files safely: tensors and plain values only, nothing executed."""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any

import torch

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6: a zip archive with a `<name>/data.pkl` record
# The older format: a pickle (PROTO 0x80, a protocol byte, a FRAME for protocols >= 4) whose first object is torch's
# magic number 0x1950a86a20f9469cfc6c, pickled as a LONG1 (0x8a) of 10 bytes.
LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_HEAD = 32  # bytes read to tell the formats apart


def load_plain(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, memory-mapped where the format allows it (reading a
    checkpoint's keys then does not read its tensors)."""
    return torch.load(path, map_location="cpu", mmap=zipfile.is_zipfile(path), weights_only=True)


def torch_file_format(path: str | os.PathLike) -> str | None:
    """``"zip"`` or ``"legacy"`` when ``path`` starts as a file ``torch.save`` writes (it may still be cut short);
    ``None`` for anything else (empty, text, random bytes, another pickle or zip archive)."""
    with open(path, "rb") as file:
        head = file.read(_HEAD)
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head[:1] == b"\x80" and LEGACY_MAGIC in head[2:]:
        return "legacy"
    return None


def not_a_torch_file(path: str | os.PathLike) -> str | None:
    """What ``path`` holds instead of a file ``torch.save`` wrote (e.g. ``"an empty file"``, ``"text"``), or
    ``None`` when it starts like one. A zip archive counts only with a ``data.pkl`` record; one cut short is left
    to :func:`truncated_torch_file`."""
    kind = torch_file_format(path)
    if kind == "legacy":
        return None
    if kind == "zip":
        if not zipfile.is_zipfile(path):
            return None  # cut short: its records cannot be listed (see truncated_torch_file)
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
            return None
        return f"a zip archive of {', '.join(names[:3]) or 'nothing'}, without torch's data.pkl record"
    with open(path, "rb") as file:
        head = file.read(512)
    if not head:
        return "an empty file"
    if head[:1] == b"\x80":
        return "a pickle that does not start with torch's magic number"
    binary = "binary data, neither torch.save's zip archive nor its legacy pickle"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # (a multi-byte character cut at the end of the head is still text)
            return binary
        text = head[:err.start].decode("utf-8")
    if any(ord(c) < 32 and c not in "\t\n\r\f\v" for c in text):
        return binary
    start = text.strip().split("\n")[0][:40]
    return f"text, starting {start!r}" if start else "blank text"


def truncated_torch_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts as torch.save's zip archive but its end (the archive's directory) is missing."""
    return torch_file_format(path) == "zip" and not zipfile.is_zipfile(path)


def refused_as_unsafe(err: BaseException, path: str | os.PathLike | None = None) -> bool:
    """Whether ``err`` is ``weights_only`` refusing a readable file that holds more than tensors and plain values
    (a class it does not allow, e.g. a pickled custom object), rather than bytes that are no checkpoint at all:
    torch words both as "Weights only load failed", so the refusal must name an unsupported global, and
    ``path`` (when given) must start as a file torch.save wrote."""
    if not isinstance(err, pickle.UnpicklingError) or "Unsupported global" not in str(err):
        return False
    return path is None or torch_file_format(path) is not None


def first_line(err: BaseException) -> str:
    """``"TypeName: first line of the message"``, without torch's advice to load with ``weights_only=False``."""
    text = str(err).strip()
    if "WeightsUnpickler error:" in text:  # the cause, not the advice that precedes it
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


__all__ = ["LEGACY_MAGIC", "ZIP_MAGIC", "first_line", "load_plain", "not_a_torch_file", "refused_as_unsafe",
           "torch_file_format", "truncated_torch_file"]
