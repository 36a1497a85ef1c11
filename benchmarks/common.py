"""What the benchmark scripts share: the data, training and testing, and how numbers are shown. Every script
imports from here; ``run_all.py`` imports the scripts' ``section`` functions to assemble BENCHMARKS.md, and no
script imports ``run_all``."""

from __future__ import annotations

import platform
import statistics
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def load_data(name: str, seed: int, data_dir: str, train_size: int | None = None):
    """``digits`` (split seeded by ``seed``), ``fashion_mnist`` (a fixed, class-balanced subset of
    ``train_size`` training images and a fixed validation split, whatever the seed) or CIFAR."""
    from pfa_lightning.experiments.datamodules import CIFARDataModule, DigitsDataModule, FashionMNISTDataModule

    if name == "digits":
        dm = DigitsDataModule(seed=seed, batch_size=64)
    elif name == "fashion_mnist":
        dm = FashionMNISTDataModule(data_dir=data_dir, train_size=train_size, seed=0, batch_size=128, eval_batch_size=500)
    else:
        dm = CIFARDataModule(name, data_dir=data_dir, batch_size=128, seed=seed, num_workers=2)
    dm.prepare_data()
    dm.setup()
    return dm


def train(model: nn.Module, dm, epochs: int, lr: float, eval_each_epoch: bool = False,
          teacher: nn.Module | None = None) -> list[float]:
    """SGD + cosine over ``epochs``; returns the test accuracy after each epoch when asked. With a ``teacher``
    the loss is the callback's distillation loss (``distill=True``: temperature 4, half the loss from the teacher)."""
    if epochs <= 0:
        return []
    if teacher is not None:
        from pfa_lightning.callback.distill import Distillation

        settings = Distillation()
        teacher.eval()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    loader = dm.train_dataloader()
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
    curve = []
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            opt.zero_grad()
            out = model(x)
            loss = nn.functional.cross_entropy(out, y)
            if teacher is not None:
                with torch.no_grad():
                    target = teacher(x)
                loss = (1 - settings.weight) * loss + settings.weight * settings.loss(out, target)
            loss.backward()
            opt.step()
            sched.step()
        if eval_each_epoch:
            curve.append(accuracy(model, dm))
    return curve


@torch.no_grad()
def accuracy(model: nn.Module, dm) -> float:
    model.eval()
    correct = total = 0
    for x, y in dm.test_dataloader():
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / total


def analysis_loader(dm) -> DataLoader:
    """The training images without augmentation, in a fixed order (PFA's analysis, BatchNorm recalibration)."""
    return dm.analysis_dataloader()


def pm(values: list[float], pct: bool = True) -> str:
    values = [v for v in values if v == v]  # drop NaN
    if not values:
        return "—"
    scale = 100 if pct else 1
    mean = statistics.mean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


def mean(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.mean(values) if values else float("nan")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu}, {torch.get_num_threads()} threads{gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, torch-pruning {__import__('torch_pruning').__version__}")


def save_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file renamed over it): an interrupted run never leaves
    half a results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(to_json(data))
    tmp.replace(path)


def to_json(data: dict) -> str:
    """Indented JSON with every list of numbers on one line (a recipe's kept indices would take a line each)."""
    import json
    import re

    return re.sub(r"\[\s+(-?[\d.eE+-]+(?:,\s+-?[\d.eE+-]+)*)\s+\]",
                  lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", json.dumps(data, indent=1))


def run_or_render(args, raw: Path, run, section) -> None:
    """The end of a resumable benchmark's ``main``: torch on ``args.threads`` threads, then ``run(args)`` (or, with
    ``--render-only``, the results saved in ``raw``), and its BENCHMARKS.md section printed."""
    import json

    torch.set_num_threads(args.threads)
    data = json.loads(raw.read_text()) if args.render_only else run(args)
    print("\n".join(section(data)))


def suffix_options(parts: list[str]) -> dict[str, int]:
    """``["b64", "r8"]`` -> ``{"b": 64, "r": 8}``: the options a result key or a budget carries after its fields."""
    return {part[0]: int(part[1:]) for part in parts}
