"""Which filters to keep, at equal widths: PFA's selections against weight L1 and random on Fashion-MNIST.

The budget sweep compares selections after fine-tuning at the default footprint's widths (3 seeds).
This study isolates the selection itself, cheaply and with more seeds: for each network and seed,
the trained full network (shared with ``budget_sweep.py --dataset fashion_mnist``, trained here when
missing) is cut to a set of fixed widths — uniform fractions of every layer and the default footprint's
widths at some parameter budgets — by each selection; each copy gets BatchNorm recalibration on the
training images, then is tested, and optionally fine-tuned for ``--finetune-epochs`` and tested again.

Results go to ``benchmarks/results/selection_study.json`` after every cell (a rerun resumes);
``--render-only`` prints the table that ``run_all.py`` puts into BENCHMARKS.md.

    python benchmarks/selection_study.py                    # 5 seeds, both networks (~25 min on 2 CPU cores
                                                            #   once the sweep's networks exist)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch.optim.swa_utils import update_bn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pfa_lightning as pfa  # noqa: E402
from budget_sweep import NETS, PROTOCOLS, _FixedWidths, base_network  # noqa: E402
from common import RESULTS, accuracy, analysis_loader, load_data, machine, mean, pm, run_or_render, train  # noqa: E402

RAW = RESULTS / "selection_study.json"
SELECTIONS = {"abs_max": pfa.AbsMax(), "l1_max": pfa.L1Max(), "max_energy": pfa.MaxEnergy(),
              "weight_l1": pfa.WeightL1(), "random": None}  # random: pfa.Random(seed)
# each also "+comp": the removed units folded into the kept ones by least squares, before the recalibration
CHOICES = [*SELECTIONS, *(f"{name}+comp" for name in ("abs_max", "max_energy", "weight_l1"))]
WIDTHS = ["uniform:0.9", "uniform:0.75", "uniform:0.5", "footprint:0.25", "footprint:0.1"]


def widths_for(spec: str, base, stats, x) -> dict[str, int]:
    kind, value = spec.split(":")
    strategy = pfa.Uniform(ratio=float(value)) if kind == "uniform" else pfa.Footprint(float(value))
    recipe = pfa.make_recipe(base, stats, strategy, example_inputs=x, selection="weight_l1")
    return {layer.group: layer.kept for layer in recipe.layers}


def run(args) -> dict:
    data = json.loads(RAW.read_text()) if RAW.exists() else {"runs": {}}
    data["args"] = {k: v for k, v in vars(args).items() if k != "render_only"}
    data["machine"] = machine()
    started = time.time()

    def save():
        tmp = RAW.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(RAW)

    protocol = argparse.Namespace(dataset="fashion_mnist", **{k: PROTOCOLS["fashion_mnist"][k]
                                                              for k in ("epochs", "lr", "train_size")})
    for seed in args.seeds:
        for net in args.nets:
            cells = [(w, s) for w in args.widths for s in args.selections if f"{net}|{seed}|{w}|{s}" not in data["runs"]]
            if not cells:
                continue
            dm = load_data("fashion_mnist", seed, "data", protocol.train_size)
            base = base_network(protocol, net, seed, dm, {"runs": {}}, started)
            x = next(iter(dm.test_dataloader()))[0][:8]
            analysis = analysis_loader(dm)
            stats = pfa.collect_responses(base, analysis, max_samples=PROTOCOLS["fashion_mnist"]["max_samples"],
                                          progress=False, per_position=any(s.endswith("+comp") for s in args.selections))
            widths = {}
            for spec, name in cells:
                counts = widths.setdefault(spec, widths_for(spec, base, stats, x))
                selection = SELECTIONS[name.removesuffix("+comp")] or pfa.Random(seed)
                recipe = pfa.make_recipe(base, stats, _FixedWidths(counts), example_inputs=x, selection=selection)
                cut = copy.deepcopy(base)
                pfa.apply_recipe(cut, recipe, example_inputs=x, compensate_with=stats if name.endswith("+comp") else None)
                update_bn(analysis, cut)
                cell = {"after_recalibration": accuracy(cut, dm), "params": pfa.count_params(cut) / pfa.count_params(base)}
                if args.finetune_epochs:
                    torch.manual_seed(seed)
                    train(cut, dm, args.finetune_epochs, PROTOCOLS["fashion_mnist"]["lr"] * 0.2)
                    cell["finetuned"] = accuracy(cut, dm)
                data["runs"][f"{net}|{seed}|{spec}|{name}"] = cell
                save()
                print(f"[{time.time() - started:5.0f}s] {net} seed {seed} {spec} {name}: "
                      f"{cell['after_recalibration']:.4f}" + (f" -> {cell['finetuned']:.4f}" if "finetuned" in cell else ""),
                      flush=True)
    return data


def section(data: dict) -> list[str]:
    args = data["args"]
    runs = data["runs"]
    seeds = sorted({k.split("|")[1] for k in runs})
    fields = ["after_recalibration"] + (["finetuned"] if args.get("finetune_epochs") else [])
    out = ["## Selection at equal widths (Fashion-MNIST)", "",
           f"Produced by `python benchmarks/selection_study.py` on: {data['machine']}. The budget sweep's trained "
           f"full networks (seeds {', '.join(seeds)}), cut to the same widths by each selection, BatchNorm "
           "recalibrated on the training images, tested on the 10,000 test images"
           + (f", then fine-tuned {args['finetune_epochs']} epoch(s)" if args.get("finetune_epochs") else "")
           + ". `+comp`: the removed units folded into the kept ones by least squares before the recalibration "
           "(`apply_recipe(..., compensate_with=stats)`). `uniform:f`: every layer keeps a fraction f of its units; "
           "`footprint:r`: the default "
           "`Footprint(r)`'s widths. Accuracy in %, mean ± std over seeds; the best mean of each row in bold.", ""]
    for field in fields:
        for net in args["nets"]:
            out += [f"### {net} {NETS[net]}: {field.replace('_', ' ')}", "",
                    "| widths | " + " | ".join(args["selections"]) + " |",
                    "| --- | " + " | ".join("---:" for _ in args["selections"]) + " |"]
            for spec in args["widths"]:
                values = {s: [runs[k][field] for k in sorted(runs) if k.startswith(f"{net}|")
                              and k.endswith(f"|{spec}|{s}") and field in runs[k]] for s in args["selections"]}
                if not any(values.values()):
                    continue
                best = max((mean(v), s) for s, v in values.items() if v)[1]
                cells = [(f"**{pm(v)}**" if s == best else pm(v)) for s, v in values.items()]
                out.append(f"| {spec} | " + " | ".join(cells) + " |")
            out.append("")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(5)),
                        help="which seeds (the sweep's networks 0-2 are reused once it has trained them)")
    parser.add_argument("--widths", nargs="+", default=WIDTHS)
    parser.add_argument("--selections", nargs="+", default=CHOICES, choices=CHOICES)
    parser.add_argument("--finetune-epochs", type=int, default=0)
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 when other work shares the CPU)")
    run_or_render(parser.parse_args(), RAW, run, section)


if __name__ == "__main__":
    main()
