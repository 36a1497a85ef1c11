"""Decision and surgery time on full-size networks: ``make_recipe`` + ``apply_recipe``, the analysis pass excluded.

Each network (torchvision's, random weights, one 224x224 image to trace) gets synthetic response
statistics (rank-deficient responses of every analysable layer, 4,096 samples: as if collected), then
``pfa.make_recipe(model, stats, pfa.Footprint(0.5))`` and ``pfa.apply_recipe`` are timed, and the model
traces (``ModelGraph`` builds) they made are counted. Results go to
``benchmarks/results/trace_cost.json`` under a label (``--label before`` / ``--label after``), so a change's
effect is one table; ``run_all.py`` puts it into BENCHMARKS.md.

    python benchmarks/trace_cost.py --label after            # ~5 min on 2 CPU cores
    python benchmarks/trace_cost.py --models vgg16 --label after
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pfa_lightning as pfa  # noqa: E402
from pfa_lightning import graph as graph_module  # noqa: E402
from pfa_lightning.candidates import analysable_layers  # noqa: E402
from pfa_lightning.stats import LayerStats, ResponseStats  # noqa: E402
from common import RESULTS, machine, save_json  # noqa: E402

RAW = RESULTS / "trace_cost.json"
MODELS = ("vgg16", "regnet_y_400mf", "swin_t", "vit_b_16")
TARGET_S = 10.0


def synthetic_stats(model: torch.nn.Module, x: torch.Tensor, samples: int = 4096, rank: int = 64) -> ResponseStats:
    """Statistics of every analysable layer from random responses of rank ``rank`` (as a collection would give)."""
    g = graph_module.ModelGraph(model, x)
    names, chosen = analysable_layers(model, g, None, None)
    gen = torch.Generator().manual_seed(0)
    layers = {}
    for name in (n for n in names if n in chosen):
        units = graph_module.module_width(model.get_submodule(name))
        s = LayerStats.empty(name, units, torch.device("cpu"), g.response_point(name).description)
        basis = torch.randn(rank, units, generator=gen)
        for _ in range(samples // 1024):
            s.update((torch.randn(1024, rank, generator=gen) @ basis).relu())
        layers[name] = s
    return ResponseStats(layers, "max")


def measure(name: str) -> dict:
    from torchvision import models

    torch.manual_seed(0)
    model = getattr(models, name)(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    stats = synthetic_stats(model, x)
    builds = {"n": 0, "s": 0.0}
    original = graph_module.ModelGraph.__init__

    def counted(self, *args, **kwargs):
        t0 = time.perf_counter()
        original(self, *args, **kwargs)
        builds["n"] += 1
        builds["s"] += time.perf_counter() - t0

    params0 = pfa.count_params(model)
    graph_module.ModelGraph.__init__ = counted
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            recipe = pfa.make_recipe(model, stats, pfa.Footprint(0.5), example_inputs=x)
            t1 = time.perf_counter()
            pfa.apply_recipe(model, recipe, example_inputs=x)
            t2 = time.perf_counter()
    finally:
        graph_module.ModelGraph.__init__ = original
    return {"make_recipe_s": t1 - t0, "apply_recipe_s": t2 - t1, "total_s": t2 - t0, "traces": builds["n"],
            "tracing_s": builds["s"], "params": pfa.count_params(model) / params0, "layers": len(stats.keys())}


def section(data: dict) -> list[str]:
    out = ["## Decision and surgery time on full-size networks", "",
           f"Produced by `python benchmarks/trace_cost.py --label <label>` on: {data.get('machine', '?')}. torchvision's "
           "networks with random weights, one 224x224 image to trace, synthetic statistics for every analysable layer "
           "(the analysis pass excluded); `make_recipe(model, stats, Footprint(0.5))` then `apply_recipe`. Traces: "
           f"`ModelGraph` builds (Torch-Pruning dependency graphs) in both calls. Target: under {TARGET_S:g} s each.", "",
           "| network | label | layers analysed | make_recipe (s) | apply_recipe (s) | total (s) | traces | "
           "of which tracing (s) | params kept |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for model in MODELS:
        for label, runs in data.get("labels", {}).items():
            r = runs.get(model)
            if r:
                out.append(f"| {model} | {label} | {r['layers']} | {r['make_recipe_s']:.1f} | {r['apply_recipe_s']:.1f} | "
                           f"{r['total_s']:.1f} | {r['traces']} | {r['tracing_s']:.1f} | {r['params']:.2f} |")
    over = [m for m in MODELS if (r := data.get("labels", {}).get("after", {}).get(m)) and r["total_s"] >= TARGET_S]
    out += ["", "`before`: a new Torch-Pruning trace for every footprint query and every trial cut; `after`: one trace "
            "for the decision (its trial cuts cut and restore it), one for the footprint probe's weightless copy (each "
            "query cuts and restores it), one for the surgery; eigenvalues through torch's LAPACK. ViT-B/16's layers "
            "`after` include its 12 attention modules (heads are cut since this change; `before` analysed its MLPs "
            "only)."]
    if over:
        out.append(f"Over the {TARGET_S:g} s target: {', '.join(over)}. What remains is the analysis itself, not tracing: "
                   "the eigenvalues and the AbsMax selection of the 3,072-unit MLP spaces (float64, about 0.7 s and "
                   "0.4 s each on this CPU).")
    return out + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="names this run's row (e.g. before, after)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = json.loads(RAW.read_text()) if RAW.exists() else {}
    data["machine"] = machine()
    for name in args.models:
        result = measure(name)
        data.setdefault("labels", {}).setdefault(args.label, {})[name] = result
        print(name, {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}, flush=True)
        save_json(RAW, data)
    print("\n".join(section(data)))


if __name__ == "__main__":
    main()
