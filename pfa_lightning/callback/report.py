"""What the callback tells about a compression: metrics for every logger, a table and a line on the console."""

from __future__ import annotations

from typing import Any

from pytorch_lightning.utilities import rank_zero_info

from pfa_lightning.footprint import count_flops, count_params
from pfa_lightning.callback.record import ACCURACIES, Compression



def footprint_of(module: Any, inputs: Any) -> dict[str, int]:
    """The module's parameters and FLOPs (one sample shaped like ``inputs``)."""
    return {"params": count_params(module), "flops": count_flops(module, inputs)}


def compression_metrics(entry: Compression, count: int) -> dict[str, float]:
    """``pfa/...`` metrics of one compression (``count``: compressions so far)."""
    metrics: dict[str, float] = {"pfa/compressions": count}
    for metric in ("params", "flops"):
        before, after = entry.footprint(metric, "before"), entry.footprint(metric, "after")
        metrics.update({f"pfa/{metric}_before": before, f"pfa/{metric}_after": after,
                        f"pfa/{metric}_ratio": after / before if before else 1.0})
    metrics.update({f"pfa/acc_{when}": entry.accuracy(when) for when in ACCURACIES
                    if entry.accuracy(when) is not None})
    metrics.update({f"pfa/kept_units/{layer.name}": layer.kept for layer in entry.recipe.layers})
    return metrics


def log_to_loggers(trainer: Any, metrics: dict[str, float]) -> None:
    """Log to every attached logger, on rank zero, at the current global step."""
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)


def monitored_metrics(history: list[Compression]) -> dict[str, float]:
    """What a ``ModelCheckpoint``/``EarlyStopping`` can monitor (or put in a file name), logged every epoch
    through ``LightningModule.log``: the network's size now relative to the full one, the number of
    compressions so far (1.0, 1.0 and 0 before the first), and the last compression's accuracies."""
    if not history:
        return {"pfa/params_ratio": 1.0, "pfa/flops_ratio": 1.0, "pfa/compressions": 0.0}
    first, last = history[0], history[-1]
    accuracies = {f"pfa/acc_{when}": float(last.accuracy(when)) for when in ACCURACIES  # type: ignore[arg-type]
                  if last.accuracy(when) is not None}  # of the last compression, from the first one on
    return {"pfa/params_ratio": last.params_after / first.params_before,
            "pfa/flops_ratio": last.flops_after / first.flops_before,
            "pfa/compressions": float(len(history)), **accuracies}


def print_compression(entry: Compression, count: int, metrics: dict[str, float]) -> None:
    """The recipe table and a summary line (call on rank zero)."""
    from rich.console import Console

    when = f"after epoch {entry.epoch}" if entry.epoch else "before training"
    console = Console()
    if not console.is_terminal and not console.is_jupyter:  # a log file or a pipe: no width to fit, no name cut
        console = Console(width=max(console.width, 160))
    console.print(entry.recipe.table(title=f"PFA compression {count} {when}"))
    accuracy = ""
    if "pfa/acc_before" in metrics and "pfa/acc_after" in metrics:
        recalibrated = entry.recalibrated
        cut = f" -> {metrics['pfa/acc_cut']:.4f} (cut)" if recalibrated and "pfa/acc_cut" in metrics else ""
        recalibrated = " (BatchNorm recalibrated)" if recalibrated else ""
        accuracy = (f", {entry.accuracy_on or 'validation'} accuracy {metrics['pfa/acc_before']:.4f}{cut} -> "
                    f"{metrics['pfa/acc_after']:.4f}{recalibrated}")
    rank_zero_info(
        f"PFA {when}: params {entry.params_before:,} -> {entry.params_after:,} "
        f"({metrics['pfa/params_ratio']:.1%}), FLOPs {entry.flops_before:,} -> {entry.flops_after:,} "
        f"({metrics['pfa/flops_ratio']:.1%}){accuracy}."
    )


__all__ = ["ACCURACIES", "compression_metrics", "footprint_of", "log_to_loggers", "monitored_metrics", "print_compression"]
