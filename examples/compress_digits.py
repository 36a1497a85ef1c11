"""Train a small VGG-16 on the handwritten digits, compress it with PFA-KL, fine-tune, compare.

Runs offline on a laptop CPU in about a minute:

    python examples/compress_digits.py --epochs 6 --finetune-epochs 3

Only the core library is used (no Lightning): collect_responses -> make_recipe -> apply_recipe.
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader

import pfa_lightning as pfa
from pfa_lightning.experiments.datasets import digits_splits
from pfa_lightning.models import MODEL_NAMES, build


def train(model: nn.Module, loader: DataLoader, epochs: int, lr: float) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * len(loader)))
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = sum((model(x).argmax(1) == y).sum().item() for x, y in loader)
    return correct / len(loader.dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16", choices=MODEL_NAMES)
    parser.add_argument("--width", type=float, default=0.25, help="width multiplier of the model")
    parser.add_argument("--strategy", default="kl", choices=["kl", "energy", "footprint"])
    parser.add_argument("--threshold", type=float, default=None, help="energy threshold (strategy=energy)")
    parser.add_argument("--ratio", type=float, default=None, help="footprint ratio (strategy=footprint)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    console = Console()
    torch.manual_seed(args.seed)

    train_set, _, test_set = digits_splits(size=32, channels=3, seed=args.seed)
    train_loader = DataLoader(train_set, batch_size=64, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=256)
    model = build(args.model, num_classes=10, width=args.width)
    x = test_set.tensors[0][:8]

    start = time.time()
    train(model, train_loader, args.epochs, lr=0.05)
    acc_full, params_full, flops_full = accuracy(model, test_loader), pfa.count_params(model), pfa.count_flops(model, x)

    strategy = pfa.resolve_strategy(args.strategy, threshold=args.threshold, ratio=args.ratio)
    stats = pfa.collect_responses(model, DataLoader(train_set, batch_size=256))
    recipe = pfa.make_recipe(model, stats, strategy, example_inputs=x)
    pfa.apply_recipe(model, recipe, example_inputs=x)
    console.print(recipe.table())
    acc_cut = accuracy(model, test_loader)
    train(model, train_loader, args.finetune_epochs, lr=0.01)
    acc_final = accuracy(model, test_loader)

    params, flops = pfa.count_params(model), pfa.count_flops(model, x)
    console.print(
        f"[bold]{args.model}[/] x{args.width} on digits ({time.time() - start:.0f} s): "
        f"params {params_full:,} -> {params:,} ({params / params_full:.1%}), "
        f"FLOPs {flops_full:,} -> {flops:,} ({flops / flops_full:.1%})\n"
        f"test accuracy: full {acc_full:.2%}, right after surgery {acc_cut:.2%}, after fine-tuning {acc_final:.2%}"
    )


if __name__ == "__main__":
    main()
