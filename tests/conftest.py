import os
import tempfile

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
# latency tables (metric="latency") are cached on disk: in a temporary directory, never the user's cache
os.environ["PFA_CACHE_DIR"] = tempfile.mkdtemp(prefix="pfa-cache-")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_environment():
    """Lightning's DDP setup writes MASTER_PORT, WORLD_SIZE, ... into os.environ: undo it after each test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
