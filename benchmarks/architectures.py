"""Hardware-friendly widths and full-size architectures: what ``round_to`` buys, and swin_t at full size.

    python benchmarks/architectures.py            # ~6 min on 2 CPU cores; results in benchmarks/results/architectures.json

1. ``round_to``: a plain (VGG-16) and a residual (ResNet-56) network, each compressed to
   ``Footprint(r, metric="flops")`` for r in 0.5 and 0.25 with ``round_to=1`` and ``round_to=8``;
   inference time (median of torch.utils.benchmark's blocked autorange) at batch 1 and 64 next to the
   FLOPs cut. The figure of merit is speed-up / FLOPs cut: 1.0 means the time fell as much as the FLOPs.
   Random weights and inputs: only the widths matter for speed (the recipe's spread over the layers comes
   from random-weight spectra, so read the widths, not the accuracy, from here).
2. Full-size ``torchvision.models.swin_t`` (the test suite uses its layout at a quarter of the width):
   ``Footprint(0.5, metric="params")`` reached, the MLPs' share, and the time the whole compression takes.

``run_all.py`` renders the saved results into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from pathlib import Path

import torch
from torch.utils import benchmark

import pfa_lightning as pfa
from pfa_lightning.graph import PRUNABLE_TYPES, module_width
from pfa_lightning.models import build

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "benchmarks" / "results" / "architectures.json"
NETWORKS = {"vgg16": {}, "resnet56": {}}
RATIOS = (0.5, 0.25)
ROUNDINGS = (1, 8)


def seconds_per_batch(model: torch.nn.Module, x: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        timer = benchmark.Timer("model(x)", globals={"model": model, "x": x}, num_threads=torch.get_num_threads())
        return timer.blocked_autorange(min_run_time=0.5).median


def speedup(full: torch.nn.Module, cut: torch.nn.Module, x: torch.Tensor, repeats: int = 3) -> float:
    """Median over ``repeats`` of full time / cut time, the two timed back to back each time (a shared VM
    drifts: timing the full network once, apart from the cuts, biased the ratios)."""
    ratios = []
    for _ in range(repeats):
        ratios.append(seconds_per_batch(full, x) / seconds_per_batch(cut, x))
    return sorted(ratios)[len(ratios) // 2]


def round_to_rows(samples: int) -> list[dict]:
    rows = []
    for net, kwargs in NETWORKS.items():
        torch.manual_seed(0)
        model = build(net, **kwargs).eval()
        data = [torch.rand(128, 3, 32, 32) for _ in range(samples // 128)]
        stats = pfa.collect_responses(model, data, progress=False)
        x1 = data[0][:1]
        for ratio in RATIOS:
            for round_to in ROUNDINGS:
                cut = copy.deepcopy(model)
                recipe = pfa.make_recipe(cut, stats, pfa.Footprint(ratio, metric="flops"), example_inputs=data[0][:2],
                                         round_to=round_to)
                pfa.apply_recipe(cut, recipe, example_inputs=data[0][:2])
                widths = [module_width(m) for m in cut.modules() if isinstance(m, PRUNABLE_TYPES)]
                flops_cut = pfa.count_flops(model, x1) / pfa.count_flops(cut, x1)
                for batch in (1, 64):
                    gain = speedup(model, cut, data[0][:batch])
                    rows.append({"network": net, "ratio": ratio, "round_to": round_to, "batch": batch,
                                 "flops_cut": flops_cut, "speedup": gain, "merit": gain / flops_cut,
                                 "multiples_of_8": sum(w % 8 == 0 for w in widths) / len(widths)})
                    print(rows[-1], flush=True)
    return rows


def swin_row() -> dict:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.swin_t(num_classes=10).eval()
    widest = max(module_width(m) for m in model.modules() if isinstance(m, PRUNABLE_TYPES))
    x = torch.randn(widest + 16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    before = {n: m.weight.numel() for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    full = pfa.count_params(model)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # attention widths are left whole, with a warning
        stats = pfa.collect_responses(model, [x[i:i + 128] for i in range(0, len(x), 128)], progress=False)
        recipe = pfa.make_recipe(model, stats, pfa.Footprint(0.5, metric="params"), example_inputs=x[:2])
    pfa.apply_recipe(model, recipe, example_inputs=x[:2])
    seconds = time.perf_counter() - start
    after = {n: m.weight.numel() for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    mlp = [n for n in before if ".mlp." in n]
    return {"params_ratio": pfa.count_params(model) / full, "seconds": seconds, "samples": len(x),
            "mlp_weights_kept": sum(after[n] for n in mlp) / sum(before[n] for n in mlp),
            "other_weights_kept": sum(after[n] for n in before if n not in mlp) / sum(
                before[n] for n in before if n not in mlp)}


def section(data: dict) -> list[str]:
    lines = ["## Hardware-friendly widths (`round_to`) and full-size swin_t", "",
             f"Produced by `python benchmarks/architectures.py` on: {data['machine']}. Random weights and inputs "
             f"({data['samples']} analysis samples): only the widths matter for speed. CPU inference, 2 threads. "
             "Speed-up = full network's time / compressed network's time, the two timed back to back (median of "
             "torch.utils.benchmark's blocked autorange each), median of 3 such pairs; merit = speed-up / FLOPs cut "
             "(1.0: the time fell as much as the FLOPs).", "",
             "| network | FLOPs target | round_to | widths that are multiples of 8 | FLOPs cut | batch | speed-up "
             "| speed-up / FLOPs cut |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in data["round_to"]:
        lines.append(f"| {r['network']} | {r['ratio']:g} | {r['round_to']} | {100 * r['multiples_of_8']:.0f}% | "
                     f"{r['flops_cut']:.2f}x | {r['batch']} | {r['speedup']:.2f}x | {r['merit']:.2f} |")
    rows = data["round_to"]
    merit = {(r, b): sum(x["merit"] for x in rows if (x["round_to"], x["batch"]) == (r, b)) / max(1, sum(
        (x["round_to"], x["batch"]) == (r, b) for x in rows)) for r in ROUNDINGS for b in (1, 64)}
    worse = [f"{x['network']} at {x['ratio']:g}, batch {x['batch']} ({x['merit']:.2f} against {y['merit']:.2f})"
             for x in rows if x["round_to"] == 8 for y in rows
             if (y["network"], y["ratio"], y["batch"], y["round_to"]) == (x["network"], x["ratio"], x["batch"], 1)
             and x["merit"] < y["merit"]]
    lines += ["", f"Mean speed-up / FLOPs cut over both networks and both targets (CPU): at batch 64, "
              f"{merit[(1, 64)]:.2f} with `round_to=1` and {merit[(8, 64)]:.2f} with `round_to=8`; at batch 1, "
              f"{merit[(1, 1)]:.2f} and {merit[(8, 1)]:.2f}. Where `round_to=8` turned FLOPs into less time than "
              f"`round_to=1`: {'; '.join(worse) if worse else 'nowhere'}. On a shared VM: read differences under ~10% "
              "as noise."]
    s = data["swin_t"]
    lines += ["", f"Full-size `torchvision.models.swin_t` (28M parameters, random weights, {s['samples']} samples at "
              f"32x32): `Footprint(0.5, metric=\"params\")` reaches {100 * s['params_ratio']:.2f}% of the parameters "
              f"in {s['seconds']:.0f} s (analysis, recipe and surgery); the MLPs keep "
              f"{100 * s['mlp_weights_kept']:.0f}% of their Conv/Linear weights, the other Conv/Linear layers "
              f"{100 * s['other_weights_kept']:.0f}% (attention widths are left whole, and the residual stream, "
              "which passes through the window partition's reshape -> permute -> reshape, too).", ""]
    return lines


def main() -> None:
    from run_all import machine

    parser = argparse.ArgumentParser(description="round_to speed-ups and full-size swin_t.")
    parser.add_argument("--samples", type=int, default=1024)
    args = parser.parse_args()
    data = {"machine": machine(), "samples": args.samples, "round_to": round_to_rows(args.samples),
            "swin_t": swin_row()}
    RAW.parent.mkdir(parents=True, exist_ok=True)
    RAW.write_text(json.dumps(data, indent=1))
    print("\n".join(section(data)))


if __name__ == "__main__":
    main()
