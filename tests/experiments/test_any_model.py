"""Compress what you already have: any torchvision/timm model from config, started from a weights file,
compressed at once (``train.epochs=0``); its checkpoint loads back in a fresh process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pfa_lightning import PFAError, Recipe
from pfa_lightning.experiments.module import ImageClassifier
from pfa_lightning.models.zoo import build_library_model, load_weights
from tests.experiments.test_experiments import ROOT, compose_and_run

AT_ONCE = ["train.epochs=0", "dataset=digits", "dataset.batch_size=32", "train.batch_limit=3", "logger=none",
           "trainer.enable_progress_bar=false", "pfa.verbose=false", "pfa.max_samples=600"]


def _fresh_process_outputs(checkpoint: Path) -> torch.Tensor:
    """``load_compressed(ImageClassifier, checkpoint)`` in a new interpreter: its outputs on fixed inputs."""
    code = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        from pfa_lightning import load_compressed
        from pfa_lightning.experiments.module import ImageClassifier
        model = load_compressed(ImageClassifier, {str(checkpoint)!r}, map_location="cpu")
        x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        torch.save(model(x).detach(), {str(checkpoint.with_suffix(".out"))!r})
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(checkpoint.with_suffix(".out"), weights_only=True)


@pytest.mark.parametrize("library, name, saved_as, finetune, pfa", [
    # a plain state_dict, to half its parameters; just cut, recalibrate, test, save
    ("torchvision", "resnet18", "state_dict", 0, ["pfa=footprint", "pfa.ratio=0.5"]),
    # a Lightning checkpoint ("net." keys), PFA-KL; one epoch of fine-tuning
    ("timm", "lcnet_050", "lightning", 1, ["pfa=kl"]),
])
def test_a_library_model_is_compressed_from_its_weights_file(library, name, saved_as, finetune, pfa, tmp_path):
    if library == "timm":
        pytest.importorskip("timm")
    torch.manual_seed(0)
    given = ImageClassifier(library, name=name, num_classes=10, in_channels=3)
    weights = tmp_path / "weights.pt"
    state = given.net.state_dict()
    torch.save(state if saved_as == "state_dict" else {"state_dict": given.state_dict(), "epoch": 3}, weights)

    out = tmp_path / "run"
    results = compose_and_run([f"model={library}", f"model.name={name}", f"model.weights={weights}",
                               f"train.finetune_epochs={finetune}", *pfa, *AT_ONCE], out)

    [compression] = results["compressions"]
    assert compression["epoch"] == 0 and results["epochs_final"] == finetune
    assert results["params_ratio"] <= (0.5 if "pfa=footprint" in pfa else 0.99) and results["params_full"] == sum(p.numel() for p in given.parameters())
    assert results["settings"]["model"] == f"{library}:{name}"
    # the run started from the given weights: before fine-tuning, the first layer's kept units are the given ones
    first = Recipe.from_dict(results["recipe"]).layers[0]
    kept = torch.load(out / "final.ckpt", weights_only=True)["state_dict"][f"{first.name}.weight"]
    original = state[f"{first.name.removeprefix('net.')}.weight"]
    assert kept.shape == (first.kept, *original.shape[1:])
    if finetune == 0:
        assert torch.equal(kept, original[first.kept_indices])
        # the same network tested on the same (batch-limited) samples: the callback's accuracy and the final test agree
        assert results["acc_final"] == pytest.approx(results["acc_after_recalibration"], abs=1e-6)
    # the checkpoint is plain data: a fresh process rebuilds the compressed network without the weights file
    weights.unlink()
    from pfa_lightning import load_compressed

    here = load_compressed(ImageClassifier, out / "final.ckpt", map_location="cpu")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    # float32 to a few ulps: another process may pick other CPU kernels (seen: 5e-6 relative on lcnet_050)
    torch.testing.assert_close(_fresh_process_outputs(out / "final.ckpt"), here(x).detach(), rtol=2e-5, atol=1e-4)


def test_hydra_model_kwargs_are_kept_as_plain_data(tmp_path):
    from omegaconf import OmegaConf

    module = ImageClassifier("torchvision", name="resnet18", model_kwargs=OmegaConf.create({"zero_init_residual": True}))
    assert type(module.hparams.model_kwargs) is dict and torch.all(module.net.layer1[0].bn2.weight == 0)
    torch.save({"hyper_parameters": dict(module.hparams)}, tmp_path / "h.ckpt")
    assert torch.load(tmp_path / "h.ckpt", weights_only=True)["hyper_parameters"]["model_kwargs"] == {
        "zero_init_residual": True}


def test_weights_files_that_do_not_fit_are_one_clear_error(tmp_path):
    net = build_library_model("torchvision", "resnet18", num_classes=10, in_channels=1)
    assert net.conv1.in_channels == 1
    with pytest.raises(PFAError, match=r"`model.weights` .* is not a file"):
        load_weights(net, tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save(build_library_model("torchvision", "resnet18", num_classes=100, in_channels=1).state_dict(), other)
    with pytest.raises(PFAError, match=r"fc.weight has shape \(100, 512\), the model \(10, 512\)"):
        load_weights(net, other)
    torch.save({"state_dict": {"something.else": torch.zeros(2)}}, other)
    with pytest.raises(PFAError, match=r"does not fit the model: missing keys .*unexpected keys \['something.else'\]"):
        load_weights(net, other)
    other.write_bytes(b"not a checkpoint")
    with pytest.raises(PFAError, match=r"cannot be read with torch.load\(weights_only=True\)"):
        load_weights(net, other)
    torch.save([1, 2], other)
    with pytest.raises(PFAError, match="holds no state_dict"):
        load_weights(net, other)


def test_library_model_settings_are_checked():
    with pytest.raises(PFAError, match=r"'resnet19' is not one of torchvision's classification .*Closest: resnet18"):
        ImageClassifier("torchvision", name="resnet19")
    with pytest.raises(PFAError, match=r"'fcn_resnet50' is not one of torchvision's classification models"):
        ImageClassifier("torchvision", name="fcn_resnet50")  # a segmentation model
    with pytest.raises(PFAError, match=r"resnet18 cannot be built with the arguments .*'colour'.*model.model_kwargs"):
        ImageClassifier("torchvision", name="resnet18", model_kwargs={"colour": "red"})
    with pytest.raises(PFAError, match=r"`model_kwargs` must be null for arch='vgg11'"):
        ImageClassifier("vgg11", model_kwargs={"dropout": 0.1})
    with pytest.raises(PFAError, match=r"`width` must be 1.0 for a torchvision model"):
        ImageClassifier("torchvision", name="resnet18", width=0.5)
    with pytest.raises(PFAError, match=r"`name` must be null for arch='vgg11'"):
        ImageClassifier("vgg11", name="resnet18")
    with pytest.raises(PFAError, match="`arch` must be one of .*'torchvision', 'timm'"):
        ImageClassifier("alexnet")
    vit = build_library_model("torchvision", "vit_b_16", num_classes=10, in_channels=1, image_size=32)
    assert vit.conv_proj.in_channels == 1 and vit(torch.randn(2, 1, 32, 32)).shape == (2, 10)
