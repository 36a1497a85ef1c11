"""Evidence: PFA against baselines at equal footprint, real speed-up, measured overhead.

One command runs everything and writes ``BENCHMARKS.md`` (tables, the command, the machine) and
plots under ``benchmarks/results/``:

    python benchmarks/run_all.py                       # defaults: VGG-16 x0.25 on digits, 3 seeds (~20 min on 2 CPU cores)
    python benchmarks/run_all.py --model resnet56 --width 1 --dataset cifar10 --epochs 30 --finetune-epochs 10

Sections:
- quality: full model; PFA-KL; PFA-Energy at 3 thresholds; at PFA-KL's widths: random and
  weight_l1 selection; uniform width scaling at PFA-KL's parameter count; PFA-KL's architecture
  trained from scratch; PFA-KL with least-squares compensation. Every arm gets the same training
  budget (epochs + finetune-epochs).
- speed: inference throughput of compressed vs full models next to the FLOPs ratio; collection
  pass vs plain inference; recipe + surgery time; statistics memory vs number of samples.
- iterative PFA-KL: footprint and accuracy over 4 compress/fine-tune rounds.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

import pfa_lightning as pfa
from pfa_lightning.models import build

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


# -- data and training ----------------------------------------------------------------------------
def load_data(name: str, seed: int, data_dir: str):
    from pfa_lightning.data import CIFARDataModule, DigitsDataModule

    dm = DigitsDataModule(seed=seed, batch_size=64) if name == "digits" else CIFARDataModule(
        name, data_dir=data_dir, batch_size=128, seed=seed, num_workers=2)
    dm.prepare_data() if name != "digits" else None
    dm.setup()
    return dm


def train(model: nn.Module, dm, epochs: int, lr: float, eval_each_epoch: bool = False) -> list[float]:
    """SGD + cosine over ``epochs``; returns the test accuracy after each epoch when asked."""
    if epochs <= 0:
        return []
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    loader = dm.train_dataloader()
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
    curve = []
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
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
    return DataLoader(dm.split("train"), batch_size=256, shuffle=False)


# -- the quality arms -----------------------------------------------------------------------------
@dataclass
class Arm:
    name: str
    params: list[float] = field(default_factory=list)
    flops: list[float] = field(default_factory=list)
    after_surgery: list[float] = field(default_factory=list)
    final: list[float] = field(default_factory=list)
    curves: list[list[float]] = field(default_factory=list)


def compress_copy(model, stats, strategy, x, selection="abs_max", seed=0, compensate=False):
    cut = copy.deepcopy(model)
    recipe = pfa.make_recipe(cut, stats, strategy, example_inputs=x, selection=selection, seed=seed)
    pfa.apply_recipe(cut, recipe, example_inputs=x, compensate_with=stats if compensate else None)
    return cut, recipe


def quality(args, log) -> tuple[dict[str, Arm], dict]:
    arms: dict[str, Arm] = {}
    keep: dict = {}
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        dm = load_data(args.dataset, seed, args.data_dir)
        x = next(iter(dm.test_dataloader()))[0][:8]
        base = build(args.model, num_classes=dm.num_classes, in_channels=dm.in_channels, width=args.width)
        fresh_state = copy.deepcopy(base.state_dict())
        t0 = time.time()
        train(base, dm, args.epochs, args.lr)
        params0, flops0 = pfa.count_params(base), pfa.count_flops(base, x)

        def record(name, model, after, final, curve=None):
            arm = arms.setdefault(name, Arm(name))
            arm.params.append(pfa.count_params(model) / params0)
            arm.flops.append(pfa.count_flops(model, x) / flops0)
            arm.after_surgery.append(after)
            arm.final.append(final)
            if curve:
                arm.curves.append(curve)

        full = copy.deepcopy(base)
        train(full, dm, args.finetune_epochs, args.lr * 0.2)  # same total budget as the compressed arms
        record("full model", full, float("nan"), accuracy(full, dm))

        stats = pfa.collect_responses(base, analysis_loader(dm), max_samples=args.max_samples, progress=False,
                                      per_position=True)
        kl_model, kl_recipe = compress_copy(base, stats, pfa.KL(), x)
        arms_to_run = [("PFA-KL", kl_model)]
        for tau in args.thresholds:
            arms_to_run.append((f"PFA-Energy {tau:g}", compress_copy(base, stats, pfa.Energy(tau), x)[0]))
        kl_widths = pfa.Recipe.from_dict(kl_recipe.to_dict())
        for sel in ("random", "weight_l1"):
            arms_to_run.append((f"{sel} @ KL widths", compress_copy(base, stats, pfa.KL(), x, selection=sel, seed=seed)[0]))
        arms_to_run.append(("uniform @ KL params", compress_copy(base, stats, pfa.Uniform(params=pfa.count_params(kl_model)), x)[0]))
        arms_to_run.append(("PFA-KL + compensation", compress_copy(base, stats, pfa.KL(), x, compensate=True)[0]))
        for name, model in arms_to_run:
            after = accuracy(model, dm)
            curve = train(model, dm, args.finetune_epochs, args.lr * 0.2, eval_each_epoch=name == "PFA-KL")
            record(name, model, after, curve[-1] if curve else accuracy(model, dm), curve)
            if name == "PFA-KL" and seed == 0:
                keep["kl_model"], keep["kl_recipe"], keep["base"], keep["x"], keep["dm"] = model, kl_recipe, base, x, dm
                keep["stats"] = stats

        scratch = build(args.model, num_classes=dm.num_classes, in_channels=dm.in_channels, width=args.width)
        scratch.load_state_dict(fresh_state)
        pfa.apply_recipe(scratch, kl_widths, example_inputs=x)  # the KL architecture, random weights
        curve = train(scratch, dm, args.epochs + args.finetune_epochs, args.lr, eval_each_epoch=True)
        record("KL architecture from scratch", scratch, float("nan"), curve[-1], curve)
        log(f"seed {seed}: {time.time() - t0:.0f} s")
    return arms, keep


# -- speed ----------------------------------------------------------------------------------------
def throughput(model: nn.Module, batch: int, device: torch.device, seconds: float = 2.0) -> float:
    model = model.to(device).eval()
    x = torch.rand(batch, 3, 32, 32, device=device)
    with torch.no_grad():
        for _ in range(3):
            model(x)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(x)
            n += 1
            if device.type == "cuda":
                torch.cuda.synchronize()
    return n * batch / (time.perf_counter() - start)


def speed(args, keep, log) -> dict:
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    x = torch.rand(8, 3, 32, 32)
    full_size = build("vgg16")
    stats = pfa.collect_responses(full_size, [torch.rand(256, 3, 32, 32) for _ in range(3)], progress=False)
    fs_cut, _ = compress_copy(full_size, stats, pfa.Footprint(0.25, metric="flops"), x)
    pairs = [(f"{args.model} x{args.width:g}, PFA-KL (trained, seed 0)", keep["base"], keep["kl_model"]),
             ("vgg16 x1, Footprint(0.25, flops) (random weights)", full_size, fs_cut)]
    for label, full, cut in pairs:
        flops_ratio = pfa.count_flops(full, x) / pfa.count_flops(cut, x)
        for device in devices:
            for batch in (1, 64):
                tf = throughput(copy.deepcopy(full), batch, device)
                tc = throughput(copy.deepcopy(cut), batch, device)
                rows.append({"model": label, "device": device.type, "batch": batch, "full_per_s": tf,
                             "compressed_per_s": tc, "speedup": tc / tf, "flops_reduction": flops_ratio})
    log("throughput done")
    bench = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_core.py"), "--batches", "16"],
                           capture_output=True, text=True, check=True).stdout
    memory = []
    for n in (256, 1024, 4096):
        out = subprocess.run([sys.executable, __file__, "--_memory-probe", str(n)], capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]
        memory.append(json.loads(out))
    log("overhead and memory done")
    return {"throughput": rows, "bench_core": bench, "memory": memory}


def memory_probe(n: int) -> None:
    """(Subprocess) collect VGG-16 statistics over n samples; print accumulator bytes and peak RSS."""
    import resource

    model = build("vgg16").eval()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    batches = (torch.rand(min(128, n - i), 3, 32, 32) for i in range(0, n, 128))
    stats = pfa.collect_responses(model, batches, progress=False)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    acc = sum(t.numel() * t.element_size() for t in stats.tensors())
    print(json.dumps({"samples": n, "stats_mib": acc / 2**20, "peak_rss_growth_mib": (rss1 - rss0) / 1024}))


# -- iterative ------------------------------------------------------------------------------------
def iterative(args, keep, log) -> list[dict]:
    dm, x = keep["dm"], keep["x"]
    model = copy.deepcopy(keep["base"])
    params0, flops0 = pfa.count_params(model), pfa.count_flops(model, x)
    rows = [{"round": 0, "params": 1.0, "flops": 1.0, "after_surgery": float("nan"), "final": accuracy(model, dm)}]
    for r in range(1, args.rounds + 1):
        stats = pfa.collect_responses(model, analysis_loader(dm), max_samples=args.max_samples, progress=False)
        recipe = pfa.make_recipe(model, stats, pfa.KL(), example_inputs=x)
        pfa.apply_recipe(model, recipe, example_inputs=x)
        after = accuracy(model, dm)
        train(model, dm, args.finetune_epochs, args.lr * 0.2)
        rows.append({"round": r, "params": pfa.count_params(model) / params0, "flops": pfa.count_flops(model, x) / flops0,
                     "after_surgery": after, "final": accuracy(model, dm)})
        log(f"iterative round {r}: params {rows[-1]['params']:.3f}")
    return rows


# -- report ---------------------------------------------------------------------------------------
def pm(values: list[float], pct: bool = True) -> str:
    values = [v for v in values if v == v]  # drop NaN
    if not values:
        return "—"
    scale = 100 if pct else 1
    mean = statistics.mean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


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


def plots(arms: dict[str, Arm], iter_rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pfa_lightning.plots import plot_accuracy_vs_footprint

    fig = plot_accuracy_vs_footprint([statistics.mean(arms[a].params) for a in arms],
                                     [statistics.mean(arms[a].final) for a in arms], list(arms),
                                     title="Final test accuracy versus parameters (mean over seeds)")
    fig.savefig(RESULTS / "quality.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name in ("PFA-KL", "KL architecture from scratch"):
        curves = arms[name].curves
        if curves:
            n = min(len(c) for c in curves)
            mean = [statistics.mean(c[i] for c in curves) for i in range(n)]
            ax.plot(range(1, n + 1), mean, "-o", label=name)
    ax.set_xlabel("epochs of training of the compressed architecture")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Filter selection + fine-tuning vs training from scratch")
    fig.tight_layout()
    fig.savefig(RESULTS / "scratch_vs_finetune.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot([r["round"] for r in iter_rows], [r["params"] for r in iter_rows], "-o", label="parameters (fraction)")
    ax.plot([r["round"] for r in iter_rows], [r["final"] for r in iter_rows], "-s", label="test accuracy")
    ax.set_xlabel("PFA-KL round")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Iterative PFA-KL")
    fig.tight_layout()
    fig.savefig(RESULTS / "iterative.png", dpi=120)
    plt.close(fig)


def report(args, arms, speed_rows, iter_rows, elapsed: float) -> str:
    command = "python benchmarks/run_all.py " + " ".join(sys.argv[1:])
    lines = [
        "# Benchmarks", "",
        f"Produced by `{command.strip()}` in {elapsed / 60:.0f} min on: {machine()}.",
        f"Model {args.model} (width x{args.width:g}) on {args.dataset}; {args.seeds} seeds; every arm trains "
        f"{args.epochs} + {args.finetune_epochs} epochs (SGD, cosine); PFA analysis on at most {args.max_samples} "
        "training samples. Numbers are measured on this machine, not quoted from the paper.", "",
        "## Quality (accuracy in %, mean ± std over seeds)", "",
        "| arm | params % | FLOPs % | accuracy right after surgery | final accuracy |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for arm in arms.values():
        lines.append(f"| {arm.name} | {pm(arm.params)} | {pm(arm.flops)} | {pm(arm.after_surgery)} | {pm(arm.final)} |")
    lines += ["", "Plots: [accuracy vs parameters](benchmarks/results/quality.png), "
              "[fine-tuning vs scratch per epoch](benchmarks/results/scratch_vs_finetune.png).", ""]
    kl, scratch = arms["PFA-KL"], arms["KL architecture from scratch"]
    if kl.curves and scratch.curves:
        n = len(scratch.curves[0])
        lines += ["Fine-tuning from the kept filters vs the same architecture from scratch (test accuracy %, mean "
                  "over seeds, after each epoch of training the compressed architecture; fine-tuning gets "
                  f"{args.finetune_epochs} epochs after the full network's {args.epochs}, scratch all {n}):", "",
                  "| epoch | " + " | ".join(str(i + 1) for i in range(n)) + " |", "| --- |" + " ---: |" * n]
        for arm in (kl, scratch):
            cells = [f"{100 * statistics.mean(c[i] for c in arm.curves):.1f}" for i in range(len(arm.curves[0]))]
            lines.append(f"| {arm.name} | " + " | ".join(cells + [""] * (n - len(cells))) + " |")
        lines.append("")
    lines += ["## Compensation", "",
              "| arm | accuracy right after surgery | final accuracy |", "| --- | ---: | ---: |"]
    for name in ("PFA-KL", "PFA-KL + compensation"):
        lines.append(f"| {name} | {pm(arms[name].after_surgery)} | {pm(arms[name].final)} |")
    lines += ["", "## Speed", "",
              "| model | device | batch | full (img/s) | compressed (img/s) | speed-up | FLOPs reduction | speed-up / FLOPs reduction |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in speed_rows["throughput"]:
        lines.append(f"| {r['model']} | {r['device']} | {r['batch']} | {r['full_per_s']:.0f} | {r['compressed_per_s']:.0f} "
                     f"| {r['speedup']:.2f}x | {r['flops_reduction']:.2f}x | {r['speedup'] / r['flops_reduction']:.2f} |")
    lines += ["", "Target: speed-up >= 0.8 x the FLOPs reduction.", "",
              "Collection overhead and surgery time (`benchmarks/bench_core.py`, full-size VGG-16, 32x32):", "",
              "```", speed_rows["bench_core"].strip(), "```", "",
              "Statistics memory against the number of analysed samples (VGG-16, a fresh process each):", "",
              "| samples | float64 accumulators (MiB) | peak RSS growth of the process (MiB) |", "| ---: | ---: | ---: |"]
    for m in speed_rows["memory"]:
        lines.append(f"| {m['samples']} | {m['stats_mib']:.1f} | {m['peak_rss_growth_mib']:.0f} |")
    lines += ["", "## Iterative PFA-KL (seed 0)", "",
              "| round | params % | FLOPs % | accuracy right after surgery | accuracy after fine-tuning |",
              "| ---: | ---: | ---: | ---: | ---: |"]
    for r in iter_rows:
        after = "—" if r["after_surgery"] != r["after_surgery"] else f"{100 * r['after_surgery']:.1f}"
        lines.append(f"| {r['round']} | {100 * r['params']:.1f} | {100 * r['flops']:.1f} | {after} | {100 * r['final']:.1f} |")
    lines += ["", "Plot: [iterative](benchmarks/results/iterative.png).", ""]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--_memory-probe":
        memory_probe(int(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description="PFA benchmarks: quality, speed, iterative, compensation.")
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--dataset", default="digits", choices=["digits", "cifar10", "cifar100"])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6, help="training of the full network")
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--max-samples", type=int, default=1500)
    parser.add_argument("--thresholds", type=float, nargs=3, default=[0.9, 0.95, 0.99])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - start:6.0f} s] {message}", flush=True)

    arms, keep = quality(args, log)
    iter_rows = iterative(args, keep, log)
    speed_rows = speed(args, keep, log)
    plots(arms, iter_rows)
    text = report(args, arms, speed_rows, iter_rows, time.time() - start)
    Path(args.output).write_text(text)
    (RESULTS / "raw.json").write_text(json.dumps({
        "args": vars(args), "arms": {k: vars(v) for k, v in arms.items()}, "iterative": iter_rows,
        "throughput": speed_rows["throughput"], "memory": speed_rows["memory"]}, indent=1))
    log(f"wrote {args.output}")


if __name__ == "__main__":
    main()
