"""Read an offline W&B run back from its ``run-*.wandb`` file (LevelDB-log framed protobuf records).

wandb >= 0.19 writes no ``wandb-summary.json`` for offline runs, so tests read the records the
run would upload with ``wandb sync``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

_BLOCK, _HEADER = 32768, 7  # LevelDB log block size; file header ":W&B" + magic + version


def _records(path: Path) -> list[bytes]:
    raw = path.read_bytes()
    if not raw.startswith(b":W&B"):
        raise ValueError(f"{path} is not a W&B run file")
    records, pending, off = [], b"", _HEADER
    while off + 7 <= len(raw):
        left = _BLOCK - off % _BLOCK
        if left < 7:
            off += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[off : off + 7])
        if kind == 0 and length == 0:  # block padding
            off += left
            continue
        chunk, off = raw[off + 7 : off + 7 + length], off + 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
            pending = b""
    return records


def read_offline_run(run_dir: Path) -> dict[str, Any]:
    """``{"history": [row, ...], "summary": {...}, "config": {...}, "artifacts": [...], "tags": [...]}`` of an
    offline run directory."""
    from wandb.proto import wandb_internal_pb2

    def key(item: Any) -> str:
        return item.key or "/".join(item.nested_key)

    (path,) = Path(run_dir).glob("run-*.wandb")
    out: dict[str, Any] = {"history": [], "summary": {}, "config": {}, "artifacts": [], "tags": []}
    for data in _records(path):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(data)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            out["history"].append({key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            out["summary"].update({key(i): json.loads(i.value_json) for i in rec.summary.update})
        elif kind == "config":
            out["config"].update({key(i): json.loads(i.value_json) for i in rec.config.update})
        elif kind == "artifact":
            art = rec.artifact
            out["artifacts"].append({"name": art.name, "type": art.type, "metadata": json.loads(art.metadata or "{}"),
                                     "files": [entry.path for entry in art.manifest.contents]})
        elif kind == "run":
            out["tags"] = list(rec.run.tags)
    return out
