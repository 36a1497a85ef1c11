"""Budget sweep: PFA's footprint mode against the baselines at the budgets users ask for.

For each data set, network and seed the full model is trained once (its weights kept under
``benchmarks/results/bases/``, so every arm of a seed starts from the same network, also after an
interruption); then, for every budget (a fraction of the parameters or of the FLOPs) and every arm,
a copy is cut, its BatchNorm statistics recomputed on the training images (torch's ``update_bn``),
fine-tuned for the same number of epochs, and tested:

- ``footprint``: ``pfa.Footprint(r, metric)``, the library's default allocation, with the paper's AbsMax selection
  (the library's default selection until MaxEnergy replaced it on this sweep's evidence);
- ``footprint-energy``: the paper's common energy threshold, ``Footprint(r, metric, allocation="energy")``;
- ``uniform``: every layer the same fraction of its units, at the same budget, filters by weight L1 norm
  (the naive baseline: width scaling + magnitude pruning);
- ``weight_l1``, ``random``, ``max_energy``: the default footprint's widths, filters chosen by weight L1
  norm / at random / by ``pfa.MaxEnergy`` (the response energy left unexplained by the kept units):
  ``max_energy`` is what ``pfa.Footprint(r, metric)`` gives with the library's defaults;
- ``per_space``: the default footprint's widths, filters by ``pfa.MaxEnergy`` in a channel space one layer writes
  and by weight L1 norm in one several layers add into (a residual stream), where weight L1 led on ResNet-20;
- ``footprint+comp``, ``weight_l1+comp``, ``max_energy+comp``: the same cuts with the removed units folded into the kept ones by least
  squares (``apply_recipe(..., compensate_with=stats)``), before the BatchNorm recalibration;
- ``skip``: ``pfa.Footprint(r, metric)`` with MaxEnergy and ``make_recipe(..., coupled="skip")``: channel spaces several
  layers add into (residual streams) stay whole, the rest meets the budget (the same as ``max_energy`` on a plain net);
- ``max_energy+kd``: ``max_energy``'s cut fine-tuned with distillation from the full network (the callback's
  ``distill=True``: temperature 4, half of the loss);
- ``gradual``: ``pfa.Footprint(r, metric, steps=3)`` with ``pfa.PerSpace()``: three cuts, each analysed afresh on the
  network the last one left, BatchNorm-recalibrated and fine-tuned for its share of the same epochs (1, 1, 2 of 4);
- ``scratch``: ``uniform``'s architecture trained from random weights for the same total epochs as the
  full network plus its fine-tuning (Liu et al. 2019, "Rethinking the value of network pruning").

Results go to ``benchmarks/results/budget_sweep[_<dataset>].json`` after every run (a rerun skips
finished runs, so an interrupted sweep resumes), plots to ``benchmarks/results/budget_<dataset>_*.png``;
``run_all.py`` puts the sections into BENCHMARKS.md.

    python benchmarks/budget_sweep.py --dataset fashion_mnist      # the benchmark (~3 h on 2 CPU cores)
    python benchmarks/budget_sweep.py                              # digits, the fast smoke sweep (~1 h)
    python benchmarks/budget_sweep.py --nets vgg16 --seeds 1 --budgets params:0.1
    # two at once on 2 cores, sharing the results file (each save merges under a lock):
    python benchmarks/budget_sweep.py --dataset fashion_mnist --nets vgg16 --only-seeds 1 2 --threads 1 &
    python benchmarks/budget_sweep.py --dataset fashion_mnist --nets resnet20 --threads 1 &
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.optim.swa_utils import update_bn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pfa_lightning as pfa  # noqa: E402
from pfa_lightning.blocks import remove_blocks  # noqa: E402
from pfa_lightning.models import build  # noqa: E402
from common import RESULTS, accuracy, analysis_loader, load_data, machine, mean, pm, run_or_render, train  # noqa: E402

NETS = {"vgg16": {"width": 0.25}, "resnet20": {}}
ARMS = ("footprint", "footprint-energy", "uniform", "weight_l1", "random", "max_energy", "scratch",
        "footprint+comp", "weight_l1+comp", "max_energy+comp",  # +comp: removed units folded into kept ones
        "per_space",  # a candidate default: MaxEnergy where one layer writes the channels, weight L1 where several add
        "skip", "max_energy+kd",  # residual streams kept whole; the default fine-tuned with distillation
        "gradual")  # per_space's cut reached in 3 steps, fine-tuning between them (the same epochs in all)
GRADUAL_STEPS = 3
DEFAULT_ARM = "max_energy"  # the library's default: pfa.Footprint(r, metric), MaxEnergy selection
LONG_ARMS = ("footprint", "uniform", "weight_l1")
# per data set: the protocol's defaults (each a command-line option)
PROTOCOLS = {
    "digits": {"budgets": ["params:0.5", "params:0.25", "params:0.1", "params:0.05", "flops:0.5", "flops:0.25",
                           "flops:0.1"],
               "long": ["params:0.25", "params:0.1"], "arms": list(ARMS[:5]), "epochs": 6, "finetune_epochs": 3,
               "long_epochs": 10, "lr": 0.05, "max_samples": 1500, "train_size": None},
    "fashion_mnist": {"budgets": ["params:0.5", "params:0.25", "params:0.1", "params:0.05", "flops:0.25", "flops:0.1"],
                      "long": [], "arms": list(ARMS), "epochs": 15, "finetune_epochs": 4, "long_epochs": 15,
                      "lr": 0.05, "max_samples": 2000, "train_size": 10000},
}
# published full-size references (zalandoresearch/fashion-mnist's benchmark table; ../shared/QUALITY.md)
REFERENCES = {"fashion_mnist": "published full-size, all 60,000 images: VGG-16 93.5%, ResNet-18 94.9%"}


def raw_path(dataset: str) -> Path:
    return RESULTS / ("budget_sweep.json" if dataset == "digits" else f"budget_sweep_{dataset}.json")


def parse_budget(text: str) -> tuple[str, float]:
    metric, ratio = text.split(":")
    return metric, float(ratio)


def recipe_for(arm: str, model, stats, x, metric: str, ratio: float, seed: int, default_recipe=None) -> pfa.Recipe:
    arm = arm.removesuffix("+comp").removesuffix("+kd")  # the same recipe; apply_recipe compensates, training distils
    if arm in ("weight_l1", "random", "max_energy", "per_space"):  # the default footprint's widths, another selection
        assert default_recipe is not None
        counts = {layer.group: layer.kept for layer in default_recipe.layers}
        selection = {"weight_l1": pfa.WeightL1(), "random": pfa.Random(seed), "max_energy": pfa.MaxEnergy(),
                     "per_space": pfa.PerSpace()}[arm]
        if default_recipe.blocks:  # the residual blocks it removed go too: its architecture exactly
            model = copy.deepcopy(model)
            remove_blocks(model, default_recipe.blocks)
        recipe = pfa.make_recipe(model, stats, _FixedWidths(counts), example_inputs=x, selection=selection)
        recipe.blocks = list(default_recipe.blocks)
        return recipe
    if arm == "skip":
        return pfa.make_recipe(model, stats, pfa.Footprint(ratio, metric), example_inputs=x, coupled="skip")
    if arm == "scratch":
        arm = "uniform"  # its architecture, trained from random weights
    allocation = {"footprint": None, "footprint-energy": "energy", "uniform": "uniform"}[arm]
    strategy = pfa.Footprint(ratio, metric) if allocation is None else pfa.Footprint(ratio, metric, allocation=allocation)
    selection = pfa.WeightL1() if arm == "uniform" else "abs_max"  # the naive baseline: uniform width, L1 filters
    return pfa.make_recipe(model, stats, strategy, example_inputs=x, selection=selection)


def gradual(base, stats, analysis, dm, x, metric: str, ratio: float, epochs: int, args):
    """``Footprint(ratio, metric, steps=GRADUAL_STEPS)`` as the callback runs it: each step cuts the share
    ``Footprint.step`` gives, analysed on the network the last step left, then recalibrates and fine-tunes for
    its part of ``epochs`` (the last step the most). Returns the network and the last step's recipe."""
    cut, left = copy.deepcopy(base), 1.0
    full = pfa.count_params(base) if metric == "params" else pfa.count_flops(base, x)
    strategy = pfa.Footprint(ratio, metric, steps=GRADUAL_STEPS)
    shares = [epochs // GRADUAL_STEPS] * GRADUAL_STEPS
    shares[-1] += epochs - sum(shares)
    for i, share in enumerate(shares):
        if i:
            stats = pfa.collect_responses(cut, analysis, max_samples=args.max_samples, progress=False)
        recipe = pfa.make_recipe(cut, stats, strategy.step(left, GRADUAL_STEPS - i), example_inputs=x,
                                 selection=pfa.PerSpace())
        pfa.apply_recipe(cut, recipe, example_inputs=x)
        update_bn(analysis, cut)
        train(cut, dm, share, args.lr * 0.2)
        left = (pfa.count_params(cut) if metric == "params" else pfa.count_flops(cut, x)) / full
    return cut, recipe


def _same_cut(a: pfa.Recipe, b: pfa.Recipe) -> bool:
    """Whether two recipes remove exactly the same units and blocks."""
    return a.blocks == b.blocks and [(l.name, l.kept_indices) for l in a] == [(l.name, l.kept_indices) for l in b]


class _FixedWidths(pfa.Strategy):
    """The widths another recipe chose, per channel space (to compare selections at equal widths)."""

    name = "fixed"

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def decide(self, spectra, clamp, probe):
        from pfa_lightning.strategies import Decision

        counts = [self.counts.get(sp.name, sp.units) for sp in spectra]
        return Decision(counts, [{} for _ in spectra], {})

    def to_dict(self):
        return {"name": self.name}


def arms_for(args, epochs: int) -> list[str]:
    return [a for a in args.arms if epochs == args.finetune_epochs or a in args.long_arms]


def base_network(args, net: str, seed: int, dm, data: dict, started: float):
    """The trained full network of (data set, net, seed): loaded from ``results/bases/`` when an earlier run
    (of this sweep or of ``selection_study.py``) trained it under the same protocol, else trained now and
    kept there (written atomically). Its test accuracy is recorded as run ``<net>|<seed>|full``."""
    path = RESULTS / "bases" / f"{args.dataset}-{net}-{seed}.pt"
    protocol = {"epochs": args.epochs, "lr": args.lr, "train_size": args.train_size}
    torch.manual_seed(seed)
    base = build(net, num_classes=dm.num_classes, in_channels=dm.in_channels, **NETS[net])
    saved = torch.load(path, weights_only=True) if path.exists() else None
    if saved is not None and saved["protocol"] == protocol:
        base.load_state_dict(saved["state_dict"])
        data["runs"][f"{net}|{seed}|full"] = {"final": saved["accuracy"], "seconds": saved["seconds"]}
        return base
    t0 = time.time()
    train(base, dm, args.epochs, args.lr)
    acc, seconds = accuracy(base, dm), time.time() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": base.state_dict(), "protocol": protocol, "accuracy": acc, "seconds": seconds},
               path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    data["runs"][f"{net}|{seed}|full"] = {"final": acc, "seconds": seconds}
    print(f"[{time.time() - started:5.0f}s] {net} seed {seed}: full accuracy {acc:.4f} ({args.epochs} epochs, "
          f"{seconds:.0f} s)", flush=True)
    return base


def reinitialised(model):
    """The same architecture with fresh random weights (every module's own ``reset_parameters``)."""
    fresh = copy.deepcopy(model)
    for module in fresh.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        if hasattr(module, "reset_running_stats"):
            module.reset_running_stats()
    return fresh


PROTOCOL_KEYS = ("dataset", "epochs", "finetune_epochs", "long_epochs", "lr", "max_samples", "train_size")


@contextlib.contextmanager
def _locked(raw: Path):
    """Several sweeps (say one per network, ``--threads 1`` each) may share one results file: each save
    happens under an exclusive lock and merges what the others wrote meanwhile."""
    raw.parent.mkdir(parents=True, exist_ok=True)
    with open(raw.with_suffix(".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _merged_args(old: dict | None, args) -> dict:
    """The file's description of the sweep: this run's protocol; networks, arms and budgets of every run
    that wrote to it (in their canonical order); the largest number of seeds planned."""
    new = {k: v for k, v in vars(args).items() if k not in ("fresh", "render_only", "only_seeds")}
    if not old:
        return new
    for key, order in (("nets", list(NETS)), ("arms", list(ARMS)), ("budgets", None), ("long_arms", list(ARMS))):
        union = set(old.get(key, [])) | set(new[key])
        order = order or list(dict.fromkeys(old.get(key, []) + new[key]))
        new[key] = [x for x in order if x in union]
    new["seeds"] = max(old.get("seeds", 0), new["seeds"])
    return new


def _check_protocol(old: dict | None, args, raw: Path) -> None:
    if not old:
        return
    differ = [f"{k}={old.get(k)!r} there, {getattr(args, k)!r} now" for k in PROTOCOL_KEYS
              if k in old and old.get(k) != getattr(args, k)]
    if differ:
        raise SystemExit(f"{raw} holds results of another protocol ({'; '.join(differ)}): rerun with its settings to "
                         "go on, or pass --fresh to start over (its results are then forgotten)")


def run(args) -> dict:
    raw = raw_path(args.dataset)
    with _locked(raw):
        data = json.loads(raw.read_text()) if raw.exists() and not args.fresh else {"runs": {}}
    if not args.fresh:
        _check_protocol(data.get("args"), args, raw)
    data["machine"] = machine()
    started = time.time()

    def save():
        with _locked(raw):
            on_disk = json.loads(raw.read_text()) if raw.exists() else {"runs": {}}
            if args.fresh and not save.merged_once:
                on_disk = {"runs": {}}  # --fresh: this run's results replace the file's
            save.merged_once = True
            for key, value in on_disk["runs"].items():  # what other sweeps wrote meanwhile
                data["runs"].setdefault(key, value)
            data["args"] = _merged_args(on_disk.get("args"), args)
            data["seconds"] = on_disk.get("seconds", 0) + (time.time() - save.last)
            save.last = time.time()
            tmp = raw.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1))
            tmp.replace(raw)
    save.last = started
    save.merged_once = False

    for seed in (args.only_seeds if args.only_seeds is not None else range(args.seeds)):
        for net in args.nets:
            todo = [(b, e) for b in args.budgets for e in [args.finetune_epochs] + ([args.long_epochs] if b in args.long else [])
                    if any(f"{net}|{seed}|{b}|{arm}|{e}" not in data["runs"] for arm in arms_for(args, e))]
            if not todo:
                continue
            dm = load_data(args.dataset, seed, "data", args.train_size)
            base = base_network(args, net, seed, dm, data, started)
            save()
            x = next(iter(dm.test_dataloader()))[0][:8]
            analysis = analysis_loader(dm)
            compensating = any(arm.endswith("+comp") for arm in args.arms)
            stats = pfa.collect_responses(base, analysis, max_samples=args.max_samples, progress=False,
                                          per_position=compensating)
            params0, flops0 = pfa.count_params(base), pfa.count_flops(base, x)
            for budget, epochs in todo:
                metric, ratio = parse_budget(budget)
                default_recipe = recipe_for("footprint", base, stats, x, metric, ratio, seed)
                for arm in arms_for(args, epochs):
                    key = f"{net}|{seed}|{budget}|{arm}|{epochs}"
                    if key in data["runs"]:
                        continue
                    t0 = time.time()
                    torch.manual_seed(seed)
                    if arm == "gradual":
                        cut, recipe = gradual(base, stats, analysis, dm, x, metric, ratio, epochs, args)
                        data["runs"][key] = {
                            "params": pfa.count_params(cut) / params0, "flops": pfa.count_flops(cut, x) / flops0,
                            "final": accuracy(cut, dm), "widths": [layer.kept for layer in recipe.layers],
                            "seconds": time.time() - t0, "steps": GRADUAL_STEPS,
                        }
                        save()
                        print(f"[{time.time() - started:5.0f}s] {key}: {data['runs'][key]['final']:.4f} "
                              f"({metric} {data['runs'][key][metric]:.3f}, {time.time() - t0:.0f} s)", flush=True)
                        continue
                    try:
                        recipe = default_recipe if arm == "footprint" else recipe_for(arm, base, stats, x, metric,
                                                                                      ratio, seed, default_recipe)
                    except pfa.PFAError as err:  # skip: a budget the streams kept whole put out of reach
                        if arm != "skip":
                            raise
                        data["runs"][key] = {"unreachable": str(err)}  # recorded: a rerun does not try again
                        save()
                        print(f"[{time.time() - started:5.0f}s] {key}: not reachable: {err}", flush=True)
                        continue
                    twin = f"{net}|{seed}|{budget}|max_energy|{epochs}"
                    if arm == "per_space" and twin in data["runs"] and _same_cut(recipe, recipe_for(
                            "max_energy", base, stats, x, metric, ratio, seed, default_recipe)):
                        # no coupled space (a plain net): the very same cut as max_energy, already trained and tested
                        data["runs"][key] = {**data["runs"][twin], "same_as": "max_energy"}
                        save()
                        print(f"[{time.time() - started:5.0f}s] {key}: the same cut as max_energy", flush=True)
                        continue
                    cut = copy.deepcopy(base)
                    pfa.apply_recipe(cut, recipe, example_inputs=x, compensate_with=stats if arm.endswith("+comp") else None)
                    if arm == "scratch":  # the uniform architecture from random weights, the whole training budget
                        cut = reinitialised(cut)
                        cut_acc = recal_acc = float("nan")
                        train(cut, dm, args.epochs + epochs, args.lr)
                    else:
                        cut_acc = accuracy(cut, dm)
                        update_bn(analysis, cut)
                        recal_acc = accuracy(cut, dm)
                        train(cut, dm, epochs, args.lr * 0.2, teacher=base if arm.endswith("+kd") else None)
                    data["runs"][key] = {
                        "params": pfa.count_params(cut) / params0, "flops": pfa.count_flops(cut, x) / flops0,
                        "after_surgery": cut_acc, "after_recalibration": recal_acc, "final": accuracy(cut, dm),
                        "widths": [layer.kept for layer in recipe.layers], "seconds": time.time() - t0,
                    }
                    save()
                    print(f"[{time.time() - started:5.0f}s] {key}: {data['runs'][key]['final']:.4f} "
                          f"({metric} {data['runs'][key][metric]:.3f}, {time.time() - t0:.0f} s)", flush=True)
    save()
    return data


# -- report ---------------------------------------------------------------------------------------
def _values(data: dict, net: str, budget: str, arm: str, epochs: int, field: str) -> list[float]:
    runs = data["runs"]  # (an arm that could not reach the budget has no numbers)
    return [runs[k][field] for k in sorted(runs)
            if k.startswith(f"{net}|") and k.endswith(f"|{budget}|{arm}|{epochs}") and field in runs[k]]


def _nets_with_runs(data: dict) -> list[str]:
    return [net for net in data["args"]["nets"] if any(k.startswith(f"{net}|") for k in data["runs"])]


def verdict(data: dict, net: str, budget: str, epochs: int, min_seeds: int = 3) -> str:
    """The default against uniform and weight-L1: a win or a loss only beyond the larger of the two arms' standard
    deviations, a tie within it; with fewer than ``min_seeds`` seeds on either side, the gap alone (no verdict)."""
    ours = _values(data, net, budget, DEFAULT_ARM, epochs, "final")
    if not ours:
        return "—"
    words = []
    for rival in ("uniform", "weight_l1"):
        theirs = _values(data, net, budget, rival, epochs, "final")
        if not theirs:
            continue
        gap = mean(ours) - mean(theirs)
        if min(len(ours), len(theirs)) < min_seeds:
            words.append(f"{100 * gap:+.1f} vs {rival} ({min(len(ours), len(theirs))} seed(s): no verdict yet)")
            continue
        spread = max(statistics.stdev(v) for v in (ours, theirs))
        if abs(gap) <= spread:
            words.append(f"ties {rival} ({100 * gap:+.1f}, within 1 std)")
        elif gap > 0:
            words.append(f"**wins** vs {rival} ({100 * gap:+.1f})")
        else:
            words.append(f"**loses** to {rival} ({100 * gap:+.1f})")
    return "; ".join(words)


def plots(data: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args = data["args"]
    names = []
    for net in _nets_with_runs(data):
        for metric in ("params", "flops"):
            budgets = [b for b in args["budgets"] if b.startswith(metric)]
            if not budgets:
                continue
            fig, ax = plt.subplots(figsize=(6.5, 4.2))
            for arm in args["arms"]:
                xs, ys, es = [], [], []
                for b in budgets:
                    v = _values(data, net, b, arm, args["finetune_epochs"], "final")
                    if v:
                        xs.append(parse_budget(b)[1])
                        ys.append(100 * mean(v))
                        es.append(100 * statistics.stdev(v) if len(v) > 1 else 0.0)
                if xs:
                    ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=arm)
            full = [r["final"] for k, r in data["runs"].items() if k.startswith(f"{net}|") and k.endswith("|full")]
            if full:
                ax.axhline(100 * mean(full), color="grey", ls="--", lw=1, label="full model")
            ax.set_xscale("log")
            ax.set(xlabel=f"budget (fraction of the {metric})", ylabel="test accuracy after fine-tuning (%)",
                   title=f"{net} on {args.get('dataset', 'digits')}: accuracy versus {metric} budget")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            dataset = args.get("dataset", "digits")
            name = f"budget_{net}_{metric}.png" if dataset == "digits" else f"budget_{dataset}_{net}_{metric}.png"
            fig.savefig(RESULTS / name, dpi=120)
            plt.close(fig)
            names.append(name)
    return names


def section(data: dict) -> list[str]:
    """The BENCHMARKS.md section: one table per network, a computed verdict per budget."""
    args = data["args"]
    dataset = args.get("dataset", "digits")
    seeds_done = {k.split("|")[1] for k in data["runs"] if k.endswith("|full")}
    what = {"digits": "Digits (scikit-learn's 1,797 8x8 images: the fast smoke sweep; it cannot rank methods — "
                      "full networks at 98-99%, 360 test images)",
            "fashion_mnist": f"Fashion-MNIST: a fixed, class-balanced subset of {args.get('train_size')} of the 60,000 "
                             "training images (10% of it held out for validation), resized to 32x32, random 2-pixel "
                             "crops and flips; tested on all 10,000 test images"}.get(dataset, dataset)
    long = (f" ({args['long_epochs']} at {', '.join(args['long'])}, for {', '.join(args['long_arms'])})"
            if args["long"] else "")
    out = [f"## Budget sweep on {dataset}: the footprint mode against the baselines", "",
           f"Produced by `python benchmarks/budget_sweep.py --dataset {dataset}` ({data.get('seconds', 0) / 60:.0f} min "
           f"of compute so far) on: {data['machine']}. {what}. Each network trained {args['epochs']} epochs (SGD, "
           f"cosine, lr {args['lr']}), analysed on at most {args['max_samples']} training images; every arm then gets "
           f"BatchNorm recalibration (torch's update_bn on the training images) and {args['finetune_epochs']} "
           f"fine-tuning epochs at lr {args['lr'] * 0.2:g}{long}"
           + (f"; `scratch` trains `uniform`'s architecture from random weights for {args['epochs']} + "
              f"{args['finetune_epochs']} epochs at lr {args['lr']}" if "scratch" in args["arms"] else "")
           + f". Accuracy in %, mean ± "
           f"std over the seeds run so far ({len(seeds_done)} of {args['seeds']} planned). `footprint` is "
           "`pfa.Footprint(r, metric)` with its default allocation and the paper's AbsMax selection; `weight_l1`, "
           "`random` and `max_energy` use `footprint`'s widths; **`max_energy` is the library's default** "
           "(`pfa.Footprint(r, metric)` as shipped: MaxEnergy replaced AbsMax as the default selection on this "
           "evidence); `+comp`: the same cut with the removed units folded into "
           "the kept ones by least squares (`apply_recipe(..., compensate_with=stats)`, where the path is linear); "
           "`per_space`: `footprint`'s widths, MaxEnergy where one layer writes a channel space and weight L1 where "
           "several add into it (a residual stream; on VGG, which has none, the very cut of `max_energy`, whose runs it "
           "shows); `skip`: `pfa.Footprint(r, metric)` with `coupled=\"skip\"` "
           "(residual streams whole, the rest meets the budget); `max_energy+kd`: `max_energy`'s cut fine-tuned with "
           "distillation from the full network (the callback's `distill=True`); `gradual`: `pfa.Footprint(r, metric, steps=3)` "
           "with `pfa.PerSpace()`, three cuts each analysed afresh and fine-tuned for 1, 1 and 2 of the 4 epochs. "
           f"Verdict: the default (`{DEFAULT_ARM}`) against uniform and weight-L1, "
           "given from 3 seeds on: a win or a loss beyond the larger of the two arms' standard deviations, a tie "
           "within it. Training on this CPU is not bitwise reproducible, so read single cells with their spread.", ""]
    for net in _nets_with_runs(data):
        full = [r["final"] for k, r in data["runs"].items() if k.startswith(f"{net}|") and k.endswith("|full")]
        ref = f" ({REFERENCES[dataset]})" if dataset in REFERENCES else ""
        out += [f"### {net} {NETS.get(net, {})} — full model {pm(full)}{ref}", "",
                "| budget | epochs | " + " | ".join(args["arms"]) + " | size reached | verdict |",
                "| --- | ---: | " + " | ".join("---:" for _ in args["arms"]) + " | ---: | --- |"]
        for budget in args["budgets"]:
            for epochs in [args["finetune_epochs"]] + ([args["long_epochs"]] if budget in args["long"] else []):
                cells = [pm(_values(data, net, budget, arm, epochs, "final")) for arm in args["arms"]]
                if all(c == "—" for c in cells):
                    continue
                metric = parse_budget(budget)[0]
                size = pm(_values(data, net, budget, DEFAULT_ARM, epochs, metric))
                out.append(f"| {budget} | {epochs} | " + " | ".join(cells) + f" | {size} | {verdict(data, net, budget, epochs)} |")
        out.append("")
    recal = [(net, b) for net in args["nets"] for b in args["budgets"]]
    before = [v for net, b in recal for v in _values(data, net, b, DEFAULT_ARM, args["finetune_epochs"], "after_surgery")]
    after = [v for net, b in recal for v in _values(data, net, b, DEFAULT_ARM, args["finetune_epochs"], "after_recalibration")]
    if before:
        out += [f"Accuracy right after surgery (the default, all budgets and seeds): {pm(before)} before "
                f"BatchNorm recalibration, {pm(after)} after.", ""]
    out += ["Plots: " + ", ".join(f"[{n}](benchmarks/results/{n})" for n in plots(data)), ""]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=list(PROTOCOLS),
                        help="sets the protocol's defaults below (fashion_mnist: the benchmark)")
    dataset = parser.parse_known_args()[0].dataset
    protocol = PROTOCOLS[dataset]
    parser.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    parser.add_argument("--budgets", nargs="+", default=protocol["budgets"])
    parser.add_argument("--long", nargs="*", default=protocol["long"],
                        help="budgets that also get --long-epochs of fine-tuning")
    parser.add_argument("--arms", nargs="+", default=protocol["arms"], choices=list(ARMS))
    parser.add_argument("--long-arms", nargs="+", default=list(LONG_ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=protocol["epochs"])
    parser.add_argument("--finetune-epochs", type=int, default=protocol["finetune_epochs"])
    parser.add_argument("--long-epochs", type=int, default=protocol["long_epochs"])
    parser.add_argument("--lr", type=float, default=protocol["lr"])
    parser.add_argument("--max-samples", type=int, default=protocol["max_samples"])
    parser.add_argument("--train-size", type=int, default=protocol["train_size"],
                        help="a fixed subset of the training images (fashion_mnist)")
    parser.add_argument("--only-seeds", type=int, nargs="+", default=None,
                        help="run these seeds only (e.g. one sweep per network and seed, in parallel: they merge)")
    parser.add_argument("--fresh", action="store_true", help="forget earlier results")
    parser.add_argument("--render-only", action="store_true", help="print the section from the saved results")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 when other work shares the CPU)")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    run_or_render(args, raw_path(args.dataset), run, section)


if __name__ == "__main__":
    main()
