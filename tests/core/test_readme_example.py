"""docs/core.md's plain-PyTorch screen runs as written (a tiny trained network stands in for the user's)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pfa_lightning.models import build

README = Path(__file__).resolve().parents[2] / "docs" / "core.md"


def _plain_pytorch_block() -> str:
    text = README.read_text()
    start = text.index("## Compress a network you already trained, in plain PyTorch")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_the_plain_pytorch_screen_compresses_and_exports(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build("resnet20", num_classes=10, width=0.25)
    torch.save(model, tmp_path / "trained.pt")
    loader = DataLoader(TensorDataset(torch.randn(96, 3, 16, 16), torch.randint(0, 10, (96,))), batch_size=32)
    monkeypatch.chdir(tmp_path)
    scope = {"train_loader": loader}
    exec(compile(_plain_pytorch_block(), "docs/core.md", "exec"), scope)  # noqa: S102 - our own docs

    small = scope["model"]
    assert scope["pfa"].count_params(small) <= 0.25 * scope["pfa"].count_params(model)
    assert (tmp_path / "small.onnx").is_file()
