"""Files that are no checkpoint, and checkpoints of another module: one clear line from load_compressed and
check_checkpoint_file, never a traceback or torch's advice to load with weights_only=False."""

from __future__ import annotations

import pickle
import random
import warnings
import zipfile
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from pfa_lightning import PFAError, load_compressed
from pfa_lightning.callback.checkpoint import CheckpointMismatch, check_checkpoint_file
from pfa_lightning.files import refused_as_unsafe
from tests.helpers.callback_models import quiet_trainer

NOT_TORCH = "; torch.save writes a zip archive with a data.pkl record)."
BAD_FILES = {  # what is in the file -> the end of the one-line message (after "`name` 'path' ")
    "random bytes": "is not a PyTorch checkpoint (binary data, neither torch.save's zip archive nor its legacy pickle"
                    + NOT_TORCH,
    "text": "is not a PyTorch checkpoint (text, starting 'epoch 3: val_acc 0.91'" + NOT_TORCH,
    "empty": "is not a PyTorch checkpoint (an empty file" + NOT_TORCH,
    "truncated": "cannot be read as a PyTorch checkpoint (truncated or not a checkpoint: it starts as torch.save's zip "
                 "archive but its end, the archive's directory, is missing).",
}


class Scaled(pl.LightningModule):
    """A user's module whose ``width`` is a multiplier."""

    def __init__(self, arch: str = "mlp", width: float = 0.5) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Linear(4, int(16 * width))

    def forward(self, x):
        return self.body(x)


class Plain(pl.LightningModule):
    """Another user's module whose ``width`` is a number of units."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Linear(4, width)

    def forward(self, x):
        return self.body(x)


class Renamed(pl.LightningModule):
    """``Plain``'s hyperparameters, its layer under another name."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.head = nn.Linear(4, width)


class Settings:
    """A user's object among the hyperparameters: a real checkpoint that weights_only refuses."""

    def __init__(self, depth: int = 2) -> None:
        self.depth = depth


class WithSettings(pl.LightningModule):
    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Linear(4, 2 if settings is None else settings.depth)


def save(module: pl.LightningModule, path: Path) -> Path:
    """``module``'s Lightning checkpoint at ``path``, without a fit."""
    trainer = quiet_trainer(max_epochs=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def bad_checkpoint(kind: str, directory: Path) -> Path:
    """A file of one of the ``BAD_FILES`` kinds, named like a checkpoint."""
    path = directory / f"{kind.replace(' ', '_')}.ckpt"
    if kind == "random bytes":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "text":
        path.write_text("epoch 3: val_acc 0.91\nepoch 4: val_acc 0.92\n")
    elif kind == "empty":
        path.write_bytes(b"")
    else:  # a real checkpoint cut in half
        full = save(Plain(), directory / "full.ckpt").read_bytes()
        path.write_bytes(full[: len(full) // 2])
    return path


@pytest.mark.parametrize("kind", BAD_FILES)
def test_a_file_that_is_no_checkpoint_is_one_line_through_load_compressed(kind, tmp_path):
    path = bad_checkpoint(kind, tmp_path)
    with pytest.raises(PFAError) as info:
        load_compressed(Plain, path)
    assert str(info.value) == f"`checkpoint_path` {str(path)!r} {BAD_FILES[kind]}"
    assert "weights_only=False" not in str(info.value)


@pytest.mark.parametrize("kind", BAD_FILES)
def test_a_file_that_is_no_checkpoint_is_one_line_through_check_checkpoint_file(kind, tmp_path):
    path = bad_checkpoint(kind, tmp_path)
    with pytest.raises(PFAError) as info:
        check_checkpoint_file(path, "train.ckpt_path", resume=True)
    assert str(info.value) == f"`train.ckpt_path` {str(path)!r} {BAD_FILES[kind]}"
    assert "weights_only" not in str(info.value)


def test_other_files_torch_did_not_write_are_named_for_what_they_are(tmp_path):
    pickled = tmp_path / "plain.pkl"
    pickled.write_bytes(pickle.dumps({"state_dict": {}}))
    with zipfile.ZipFile(tmp_path / "bundle.zip", "w") as archive:
        archive.writestr("notes.txt", "hello")
    legacy = tmp_path / "legacy.ckpt"  # torch's pre-1.6 format, cut short
    torch.save({"state_dict": {"w": torch.zeros(100)}}, legacy, _use_new_zipfile_serialization=False)
    legacy.write_bytes(legacy.read_bytes()[:400])
    for path, match in [(pickled, "is not a PyTorch checkpoint (a pickle that does not start with torch's magic "
                                  "number;"),
                        (tmp_path / "bundle.zip", "is not a PyTorch checkpoint (a zip archive of notes.txt, without "
                                                  "torch's data.pkl record;"),
                        (legacy, "cannot be read as a PyTorch checkpoint (truncated or not a checkpoint: RuntimeError: "
                                 "unexpected EOF")]:
        with pytest.raises(PFAError) as info:
            check_checkpoint_file(path)
        assert match in str(info.value) and "\n" not in str(info.value) and "weights_only" not in str(info.value)


def test_a_real_checkpoint_holding_objects_weights_only_refuses_is_still_left_to_lightning(tmp_path):
    path = save(WithSettings(Settings(depth=3)), tmp_path / "settings.ckpt")
    with pytest.raises(pickle.UnpicklingError) as info:
        torch.load(path, weights_only=True)
    assert refused_as_unsafe(info.value, path)
    assert check_checkpoint_file(path) == str(path)  # Lightning decides: it refuses too, unless told otherwise
    with pytest.raises(pickle.UnpicklingError, match="Unsupported global"):
        load_compressed(WithSettings, path)
    assert load_compressed(WithSettings, path, weights_only=False).body.out_features == 3
    garbage = bad_checkpoint("random bytes", tmp_path)  # torch words its refusal of garbage the same way
    with pytest.raises(pickle.UnpicklingError) as info:
        torch.load(garbage, weights_only=True)
    assert "weights_only" in str(info.value) and not refused_as_unsafe(info.value, garbage)


def test_load_compressed_with_another_modules_checkpoint_names_the_class_and_the_checkpoint(tmp_path):
    path = save(Scaled(), tmp_path / "scaled.ckpt")
    with pytest.raises(CheckpointMismatch) as info:  # Plain(width=0.5): torch's "empty(): argument 'size'"
        load_compressed(Plain, path)
    message = str(info.value)
    assert message.startswith(f"The hyperparameters in checkpoint {str(path)!r} do not fit Plain (building it from "
                              "them fails: TypeError: empty(): argument 'size'")
    assert message.endswith("; its __init__ takes no arch): load it with the LightningModule class that wrote it.")
    assert "\n" not in message and info.value.part == "hyperparameters"


def test_load_compressed_with_weights_of_other_names_is_one_line(tmp_path):
    path = save(Plain(), tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointMismatch) as info:
        load_compressed(Renamed, path)
    assert str(info.value) == (f"The weights in checkpoint {str(path)!r} do not fit Renamed (Missing key(s) in "
                               'state_dict: "head.weight", "head.bias".): load it with the LightningModule class '
                               "that wrote it.")
    assert isinstance(info.value, PFAError) and info.value.part == "weights"


def test_load_compressed_of_the_right_class_still_loads_with_overrides(tmp_path, capfd, caplog):
    path = save(Plain(width=5), tmp_path / "plain.ckpt")
    capfd.readouterr()
    caplog.clear()  # (saving it said so: Lightning's save_checkpoint)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        model = load_compressed(Plain, path, map_location="cpu")
    # plain data: read with weights_only=True, so Lightning has no "`weights_only` was not set" to say
    assert "weights_only" not in "".join(capfd.readouterr()) + caplog.text + "".join(str(w.message) for w in said)
    assert type(model) is Plain and model.body.out_features == 5 and not model.training
    with pytest.raises(CheckpointMismatch, match="with your overrides of width"):
        load_compressed(Plain, path, width=0.5)
