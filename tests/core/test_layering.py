"""The layers: the core imports nothing of Lightning, Hydra or W&B; modules stay small."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UPPER_LAYERS = ("pytorch_lightning", "lightning", "hydra", "wandb")


def _run_fresh(code: str, check_layers: bool = True) -> subprocess.CompletedProcess:
    prelude = f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n"
    check = textwrap.dedent(f"""
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {UPPER_LAYERS!r})
        assert not loaded, f"the core loaded {{loaded}}"
        print("CLEAN")
    """) if check_layers else ""
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code) + check], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_core_round_trip_loads_no_upper_layer():
    result = _run_fresh("""
        import torch
        from torch.utils.data import DataLoader, TensorDataset
        import pfa_lightning as pfa
        from pfa_lightning.models import build

        model = build("resnet20", width=0.25)
        x = torch.randn(48, 3, 16, 16)
        stats = pfa.collect_responses(model, DataLoader(TensorDataset(x), batch_size=16), progress=False)
        recipe = pfa.make_recipe(model, stats, pfa.Footprint(0.6), example_inputs=x[:2], selection=pfa.L1Max())
        pfa.apply_recipe(model, recipe, example_inputs=x[:2])
        assert pfa.count_params(model) < pfa.count_params(build("resnet20", width=0.25))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CLEAN" in result.stdout


def test_the_plain_pytorch_example_needs_no_lightning():
    example = ROOT / "examples" / "compress_digits.py"
    result = _run_fresh(f"""
        import runpy
        sys.argv = ["compress_digits.py", "--epochs", "1", "--finetune-epochs", "0", "--width", "0.125"]
        runpy.run_path({str(example)!r}, run_name="__main__")
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CLEAN" in result.stdout


def test_core_modules_do_not_import_upper_layers():
    """Imports point downwards: no core module names the callback or experiments packages at all."""
    package = ROOT / "pfa_lightning"
    core = [p for p in package.rglob("*.py") if not {"callback", "experiments"} & set(p.relative_to(package).parts)]
    upward = ("pfa_lightning.callback", "pfa_lightning.experiments", *UPPER_LAYERS)
    for path in core:
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1:
                assert not words[1].startswith(upward), f"{path}: {line.strip()}"
    callback = [p for p in (package / "callback").rglob("*.py")]
    for path in callback:
        assert "pfa_lightning.experiments" not in path.read_text(), f"{path} imports the experiments layer"


def test_modules_stay_small():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in (ROOT / "pfa_lightning").rglob("*.py")}
    assert not {name: n for name, n in sizes.items() if n > 400}


def test_timm_is_not_loaded_by_the_core_and_its_attention_is_still_counted():
    """Torch-Pruning imports timm when installed (and timm imports wandb): the core hides it, then gives
    the FLOP counter timm's attention hooks once timm is loaded — the same count either way."""
    import pytest

    pytest.importorskip("timm")
    count = """
        import timm, torch
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32,
                                  patch_size=8, depth=1)
        print("FLOPS", pfa.count_flops(model, torch.randn(1, 3, 32, 32)))
    """
    core_first = _run_fresh("""
        import pfa_lightning as pfa
        assert "timm" not in sys.modules, "importing the core loaded timm"
    """ + count, check_layers=False)  # timm itself loads wandb
    timm_first = _run_fresh("""
        import timm
        import pfa_lightning as pfa
    """ + count, check_layers=False)
    for result in (core_first, timm_first):
        assert result.returncode == 0, result.stderr[-3000:]
    flops = [next(line for line in r.stdout.splitlines() if line.startswith("FLOPS")) for r in (core_first, timm_first)]
    assert flops[0] == flops[1]
