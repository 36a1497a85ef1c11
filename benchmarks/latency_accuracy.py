"""Accuracy at a latency budget: PFA against uniform width scaling at the same measured time, on Fashion-MNIST.

The networks are the budget sweep's trained full networks (``budget_sweep.py --dataset fashion_mnist``: the
same protocol, bases kept under ``benchmarks/results/bases/``, trained here when missing). For every seed,
budget (a runtime and a share of the full network's inference time, at batch 1 unless it says) and arm, a copy
is cut to the budget, its BatchNorm statistics recomputed on the training images, fine-tuned as the sweep
fine-tunes, and tested:

- ``pfa``: ``pfa.Footprint(r, metric="latency", runtime=...)``, the library's default allocation, with the paper's
  AbsMax selection;
- ``uniform``: ``pfa.Footprint(r, metric="latency", runtime=..., allocation="uniform")`` with filters chosen by
  weight L1 norm (width scaling + magnitude pruning, the naive baseline, held to the same time target);
- ``max_energy``, ``weight_l1``: ``pfa``'s widths (the same architecture, so the same time), filters chosen by
  ``pfa.MaxEnergy`` / ``pfa.WeightL1``: ``max_energy`` is the library's default as shipped.

Each decision times candidates against the full network (``metric="latency"`` does); the time ratio reported is
the chosen network's, measured alternately with the full one (median of 3 rounds). Timing needs a quiet machine:
``--decide-only`` makes every decision (minutes) and stops, so the fine-tuning (the long part, ``--finetune-only``)
can run beside other work afterwards. Results go to ``benchmarks/results/latency_accuracy.json`` after every step (a rerun
resumes); ``run_all.py`` puts the section into BENCHMARKS.md.

    python benchmarks/latency_accuracy.py                     # ~1.5 h on 2 CPU cores
    python benchmarks/latency_accuracy.py --decide-only       # the timed decisions only (a quiet machine)
    python benchmarks/latency_accuracy.py --finetune-only --threads 1   # then the fine-tuning, beside other work
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.optim.swa_utils import update_bn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pfa_lightning as pfa  # noqa: E402
from budget_sweep import NETS, PROTOCOLS, base_network, recipe_for  # noqa: E402
from common import (RESULTS, accuracy, analysis_loader, load_data, machine, mean, pm, run_or_render,  # noqa: E402
                    save_json, suffix_options, train)

RAW = RESULTS / "latency_accuracy.json"
ARMS = ("pfa", "uniform", "max_energy", "weight_l1")
TIMED_ARMS = ("pfa", "uniform")  # decided by timing; the others are pfa's widths with another selection
# runtime:ratio of the time[:b<batch size, 1 if not given>][:r<round_to>]. At batch 1 in eager PyTorch these small
# networks cannot go below ~30% of their time (per-layer overheads): 25% is asked at batch 64. ONNX Runtime's
# convolutions run fastest on channel counts in blocks of 8 (its NCHWc kernels): unrounded widths make its time jump
# up and down with the widths, so its budget rounds. `:d1`: PFA with depth=True (whole residual blocks go too); the
# uniform baseline has no depth: its row reads the same budget without `:d1` (at batch 1, 25% is out of its reach).
BUDGETS = ("torch:0.5", "torch:0.25:b64", "onnxruntime:0.5:r8", "torch:0.5:d1", "torch:0.25:d1")
DATASET = "fashion_mnist"


def strategy_for(arm: str, budget: str) -> tuple[pfa.Strategy, object, int]:
    """The strategy, selection and ``round_to`` of a timed arm at a budget."""
    runtime, ratio, *extra = budget.split(":")
    options = suffix_options(extra)
    timing = {"metric": "latency", "runtime": runtime, "batch_size": options.get("b", 1)}
    if arm == "pfa":
        return pfa.Footprint(float(ratio), depth=bool(options.get("d")), **timing), "abs_max", options.get("r", 1)
    return pfa.Uniform(float(ratio), **timing), pfa.WeightL1(), options.get("r", 1)


def widths_only(budget: str) -> str:
    """The budget without depth (the uniform baseline's, which removes no block)."""
    return budget.removesuffix(":d1")


def pfa_key(key: str) -> str:
    """The run whose timed widths an untimed arm's run reuses (``net|seed|budget|pfa``)."""
    return key.rsplit("|", 1)[0] + "|pfa"


def run(args) -> dict:
    data = json.loads(RAW.read_text()) if RAW.exists() else {"runs": {}, "recipes": {}}
    if not args.finetune_only:  # the machine the decisions were timed on (fine-tuning times nothing)
        data["machine"] = machine()
    protocol = PROTOCOLS[DATASET]
    sweep_args = SimpleNamespace(dataset=DATASET, epochs=protocol["epochs"], lr=protocol["lr"],
                                 train_size=protocol["train_size"])
    data["protocol"] = {"finetune_epochs": protocol["finetune_epochs"], "lr": round(protocol["lr"] * 0.2, 6),
                        "max_samples": protocol["max_samples"], "train_size": protocol["train_size"]}
    started = time.time()
    for seed in args.seeds:
        for net in args.nets:
            keys = [f"{net}|{seed}|{b}|{arm}" for b in args.budgets for arm in ARMS
                    if not (arm == "uniform" and widths_only(b) != b)]
            if args.finetune_only:  # beside other work: only what was decided (timed) on a quiet machine
                keys = [k for k in keys if (k if k.rsplit("|", 1)[1] in TIMED_ARMS else pfa_key(k)) in data["recipes"]]
            if all(k in data["runs"] or (args.decide_only and k in data["recipes"]) for k in keys):
                continue
            dm = load_data(DATASET, seed, "data", protocol["train_size"])
            base = base_network(sweep_args, net, seed, dm, {"runs": {}}, started)
            x = next(iter(dm.test_dataloader()))[0][:8]
            analysis = analysis_loader(dm)

            @functools.cache
            def analysed() -> pfa.ResponseStats:  # collected once per network, when first needed
                return pfa.collect_responses(base, analysis, max_samples=protocol["max_samples"], progress=False,
                                             blocks=True)

            for key in keys:
                if key in data["runs"]:
                    continue
                _, _, budget, arm = key.split("|")
                if key not in data["recipes"] and arm not in TIMED_ARMS:  # pfa's widths, another selection
                    data["recipes"][key] = with_selection(base, analysed(), x, data["recipes"][pfa_key(key)], arm, seed)
                if key not in data["recipes"]:  # the timed decision
                    strategy, selection, round_to = strategy_for(arm, budget)
                    t0 = time.time()
                    try:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            recipe = pfa.make_recipe(base, analysed(), strategy, example_inputs=x, selection=selection,
                                                     round_to=round_to)
                        data["recipes"][key] = recipe.to_dict()
                    except pfa.PFAError as err:  # out of reach on this runtime
                        data["recipes"][key] = {"refused": str(err)}
                    save_json(RAW, data)
                    print(f"[{time.time() - started:5.0f}s] decided {key} ({time.time() - t0:.0f} s)", flush=True)
                if args.decide_only:
                    continue
                saved = data["recipes"][key]
                if "refused" in saved:
                    data["runs"][key] = {"refused": saved["refused"]}
                    save_json(RAW, data)
                    continue
                recipe = pfa.Recipe.from_dict(saved)
                t0 = time.time()
                torch.manual_seed(seed)
                cut = copy.deepcopy(base)
                pfa.apply_recipe(cut, recipe, example_inputs=x)
                update_bn(analysis, cut)
                train(cut, dm, protocol["finetune_epochs"], protocol["lr"] * 0.2)
                summary = recipe.summary
                data["runs"][key] = {
                    "final": accuracy(cut, dm), "time_ratio": summary["measured_s"] / summary["measured_full_s"],
                    "full_ms": 1e3 * summary["measured_full_s"],
                    "params": pfa.count_params(cut) / pfa.count_params(base),
                    "flops": pfa.count_flops(cut, x) / pfa.count_flops(base, x),
                    "widths": [layer.kept for layer in recipe.layers], "seconds": time.time() - t0,
                }
                save_json(RAW, data)
                print(f"[{time.time() - started:5.0f}s] {key}: {data['runs'][key]['final']:.4f} (time "
                      f"{data['runs'][key]['time_ratio']:.3f}, {time.time() - t0:.0f} s)", flush=True)
    return data


def with_selection(base, stats, x, timed: dict, arm: str, seed: int) -> dict:
    """``timed``'s widths (a recorded recipe) with filters chosen by ``arm``'s selection (the budget sweep's arm of
    that name); its timing is ``timed``'s (the same architecture)."""
    if "refused" in timed:
        return timed
    recipe = recipe_for(arm, base, stats, x, "latency", 1.0, seed, default_recipe=pfa.Recipe.from_dict(timed))
    out = recipe.to_dict()
    out["summary"] = dict(timed["summary"])
    return out


def _values(data: dict, net: str, budget: str, arm: str, field: str) -> list[float]:
    return [r[field] for k, r in sorted(data["runs"].items())
            if k.startswith(f"{net}|") and k.endswith(f"|{budget}|{arm}") and field in r]


def section(data: dict) -> list[str]:
    p = data.get("protocol", {})
    out = ["## Accuracy at a latency budget (Fashion-MNIST): PFA against uniform scaling at the same time target", "",
           f"Produced by `python benchmarks/latency_accuracy.py` on: {data.get('machine', '?')}. The budget sweep's "
           "trained full networks (same data, protocol and seeds); each cut to a share of its inference time "
           "on a runtime (`:b64`: at batch 64), by `pfa.Footprint(r, metric=\"latency\", runtime=...)` (`pfa`: default allocation, "
           "the paper's AbsMax selection) and by the same target with `allocation=\"uniform\"` and weight-L1 filters (`uniform`); "
           "`max_energy` and `weight_l1`: `pfa`'s widths (so its time) with `pfa.MaxEnergy` / `pfa.WeightL1` "
           "selection (**`max_energy` is the library's default**); on ONNX "
           "Runtime both with `round_to=8` (`:r8`: its convolution kernels work in blocks of 8 channels, and unrounded "
           "widths make its time jump up and down with the widths); `:d1`: `pfa` with `depth=True` (whole residual blocks "
           "go too, see docs/core.md; `max_energy` and `weight_l1` its blocks and widths), against the uniform arm of the "
           "same budget without depth (uniform scaling removes no block; at batch 1 it cannot reach 25%: `—`); then "
           f"BatchNorm recalibration and {p.get('finetune_epochs', '?')} fine-tuning epochs at lr {p.get('lr', '?')}. "
           "Accuracy in %, mean ± std over seeds; time: the chosen network's time over the full one's as the "
           "decision measured it (alternately, median of 3 rounds); FLOPs: its share of the full network's. Training on this CPU is not bitwise reproducible.", ""]
    nets = [n for n in NETS if any(k.startswith(f"{n}|") for k in data.get("runs", {}))]

    def ratio(values: list[float]) -> str:
        return f"{mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else (
            f"{values[0]:.3f}" if values else "—")

    for net in nets:
        out += [f"### {net} {NETS[net]}", "",
                "| budget | seeds | pfa | uniform | max_energy (pfa's widths) | weight_l1 (pfa's widths) | "
                "pfa: time, FLOPs | uniform: time, FLOPs | default - uniform |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for budget in BUDGETS:
            ours, theirs = _values(data, net, budget, "pfa", "final"), _values(data, net, widths_only(budget), "uniform", "final")
            if not ours and not _values(data, net, budget, "uniform", "final"):
                if any(k.startswith(f"{net}|") and f"|{budget}|" in k and "refused" in r for k, r in data["runs"].items()):
                    out.append(f"| {budget} | — | refused (out of reach on this runtime) | | | | | | |")
                continue
            default = _values(data, net, budget, "max_energy", "final")
            gap = f"{100 * (mean(default) - mean(theirs)):+.1f}" if default and theirs else "—"
            arms = {arm: budget if arm != "uniform" else widths_only(budget) for arm in ARMS}
            accuracy_cells = " | ".join(pm(_values(data, net, b, arm, "final")) for arm, b in arms.items())
            sizes = " | ".join(f"{ratio(_values(data, net, arms[arm], arm, 'time_ratio'))}, "
                               f"{ratio(_values(data, net, arms[arm], arm, 'flops'))}" for arm in TIMED_ARMS)
            out.append(f"| {budget} | {min(len(ours), len(theirs)) if theirs else len(ours)} | {accuracy_cells} | {sizes} | {gap} |")
        out.append("")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    parser.add_argument("--decide-only", action="store_true",
                        help="make (and time) every decision, then stop: fine-tune later, beside other work")
    parser.add_argument("--finetune-only", action="store_true",
                        help="fine-tune what --decide-only decided and time nothing (beside other work)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (timing: the machine's, quiet)")
    parser.add_argument("--render-only", action="store_true", help="print the section from the saved results")
    run_or_render(parser.parse_args(), RAW, run, section)


if __name__ == "__main__":
    main()
