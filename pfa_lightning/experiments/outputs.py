"""What a run leaves behind: results.json, recipe.txt/.json, the plots, the summary line, and the same to W&B
(the resolved config, metrics, the recipe as a table, the plots, the checkpoint and recipe as artifacts)."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import WandbLogger

from pfa_lightning.recipe import Recipe

log = logging.getLogger("pfa_lightning")


def print_summary(out: Path, results: dict[str, Any]) -> None:
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f}%"

    def epochs(n: int) -> str:
        return f"{n} epoch" + ("s" if n != 1 else "")

    full = f"after {epochs(results['epochs_full'])}" if results["epochs_full"] else "as given"
    log.info(
        "%s: params %s -> %s (%.1f%%), FLOPs %s -> %s (%.1f%%); test accuracy: full network %s %s, "
        "right after surgery %s, after BatchNorm recalibration %s, compressed network after %s in all %s. "
        "Results in %s", results["name"], f"{results['params_full']:,}", f"{results['params_compressed']:,}",
        100 * results["params_ratio"], f"{results['flops_full']:,}", f"{results['flops_compressed']:,}",
        100 * results["flops_ratio"], full, pct(results["acc_full"]),
        pct(results["acc_after_surgery"]), pct(results.get("acc_after_recalibration")), epochs(results["epochs_final"]),
        pct(results["acc_final"]), out,
    )


def write_outputs(out: Path, results: dict[str, Any], pfa_cb: Any, loggers: list) -> None:
    from rich.console import Console

    from pfa_lightning.experiments.plots import plot_accuracy_vs_footprint, plot_spectra

    (out / "results.json").write_text(json.dumps(results, indent=2))
    if results["recipe"]:  # the last recipe alone: Recipe.from_dict(json.load(...)) reads it
        (out / "recipe.json").write_text(json.dumps(results["recipe"], indent=1))
    figures = {}
    if results["recipes"]:
        console = Console(record=True, width=140, file=io.StringIO())  # record only, the callback printed it
        for i, recipe in enumerate(results["recipes"]):
            console.print(Recipe.from_dict(recipe).table(title=f"PFA compression {i + 1}"))
        (out / "recipe.txt").write_text(console.export_text())
    if pfa_cb is not None and pfa_cb.spectra:
        first = Recipe.from_dict(results["recipes"][0])
        figures["spectra"] = plot_spectra(pfa_cb.spectra[0], {l.name: l.kept for l in first.layers})
    points = [(1.0, results["acc_full"], f"full ({results['epochs_full']} epochs)")]
    for i, c in enumerate(results["compressions"]):
        ratio = c["params_after"] / results["params_full"]
        when = f"after surgery {i + 1}" + (" + BatchNorm recalibration" if c.get("recalibrated") else "")
        points += [(ratio, c.get("acc_after"), when)]
    points.append((results["params_ratio"], results["acc_final"], f"final ({results['epochs_final']} epochs in all)"))
    points = [p for p in points if p[1] is not None]
    if points:
        f, a, labels = zip(*points)
        figures["accuracy_vs_footprint"] = plot_accuracy_vs_footprint(f, a, labels, title=results["name"])
    for name, fig in figures.items():
        fig.savefig(out / f"{name}.png", dpi=120)
    log_to_wandb(loggers, results, figures, out)
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)


def log_to_wandb(loggers: list, results: dict[str, Any], figures: dict[str, Any], out: Path) -> None:
    wandb_loggers = [l for l in loggers if isinstance(l, WandbLogger)]
    if not wandb_loggers:
        return
    import wandb

    run = wandb_loggers[0].experiment
    payload: dict[str, Any] = {f"pfa/{name}": wandb.Image(fig) for name, fig in figures.items()}
    if results["recipe"]:
        recipe = Recipe.from_dict(results["recipe"])
        payload["pfa/recipe"] = wandb.Table(
            columns=["layer", "group", "units", "kept", "kept_fraction", "response"],
            data=[[l.name, l.group, l.original, l.kept, l.kept / l.original, l.response] for l in recipe.layers])
    run.log(payload)
    for key in ("params_full", "params_compressed", "params_ratio", "flops_full", "flops_compressed", "flops_ratio",
                "acc_full", "acc_after_surgery", "acc_after_recalibration", "acc_final"):
        if results.get(key) is not None:
            run.summary[f"results/{key}"] = results[key]
    # the deliverables, versioned, with what they are worth as metadata (offline: uploaded by `wandb sync`)
    metadata = {k: results.get(k) for k in ("name", "params_ratio", "flops_ratio", "acc_full", "acc_final",
                                              "epochs_full", "epochs_final")}
    base = re.sub(r"[^A-Za-z0-9._-]", "_", str(run.name or run.id))[:100]  # W&B allows these characters only
    model = wandb.Artifact(f"{base}-model", type="model", metadata=metadata)
    model.add_file(str(out / "final.ckpt"))
    run.log_artifact(model)
    if results["recipe"]:
        recipe_artifact = wandb.Artifact(f"{base}-recipe", type="recipe", metadata=metadata)
        recipe_artifact.add_file(str(out / "recipe.json"))
        run.log_artifact(recipe_artifact)


def finish_wandb(loggers: list) -> None:
    if any(isinstance(l, WandbLogger) for l in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish()


__all__ = ["finish_wandb", "log_to_wandb", "print_summary", "write_outputs"]
