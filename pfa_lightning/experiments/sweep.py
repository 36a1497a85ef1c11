"""Hydra callback: after each job of a multirun, and at its end, summarise the sweep.

Writes ``sweep_summary.csv`` (one row per finished job) and ``accuracy_vs_footprint.png``
(Pareto front marked) into the sweep directory and, when the jobs log to W&B, logs both to a
``sweep-summary`` run of the same group. Rows come from each job's ``results.json``, so the
summary of an interrupted sweep still holds every job that finished.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("pfa_lightning")

COLUMNS = ["job", "name", "model", "width", "dataset", "pfa_strategy", "pfa_label", "pfa_threshold", "pfa_ratio",
           "pfa_metric", "pfa_selection", "seed", "params_full", "params_compressed", "params_ratio", "flops_full",
           "flops_compressed", "flops_ratio", "acc_full", "acc_after_surgery", "acc_after_recalibration", "acc_final",
           "overrides"]


def collect_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(sweep_dir.glob("*/results.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        try:
            results = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a job still writing, or a broken file: skip it, keep the others
        row = {"job": path.parent.name, **results.get("settings", {}), **results}
        rows.append({c: row.get(c) for c in COLUMNS})
    return rows


def write_summary(sweep_dir: Path) -> tuple[Path, Path | None]:
    """(Re)write the CSV and the plot from the finished jobs; returns their paths."""
    from pfa_lightning.experiments.plots import plot_accuracy_vs_footprint

    rows = collect_rows(sweep_dir)
    csv_path = sweep_dir / "sweep_summary.csv"
    tmp = csv_path.with_suffix(f".tmp{os.getpid()}")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(csv_path)
    points = [r for r in rows if r["acc_final"] is not None and r["params_ratio"] is not None]
    if not points:
        return csv_path, None
    import matplotlib.pyplot as plt

    labels = [_label(r) for r in points]
    fig = plot_accuracy_vs_footprint([r["params_ratio"] for r in points], [r["acc_final"] for r in points], labels,
                                     title=f"Sweep {sweep_dir.name}: accuracy versus parameters")
    png = sweep_dir / "accuracy_vs_footprint.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return csv_path, png


def _label(row: dict[str, Any]) -> str:
    if row.get("pfa_label"):  # the strategy's own short name
        return str(row["pfa_label"])
    strategy = row.get("pfa_strategy") or "?"
    value = {"energy": row.get("pfa_threshold"), "footprint": row.get("pfa_ratio")}.get(strategy)
    return f"{strategy}{'=' + format(value, 'g') if value is not None else ''}"


class SweepSummary(Callback):
    """Summarise a multirun in its sweep directory (``hydra.callbacks.sweep_summary``)."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        sweep_dir = self._sweep_dir(config)
        if sweep_dir is not None and sweep_dir.is_dir():
            write_summary(sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        csv_path, png = write_summary(sweep_dir)
        log.info(f"Sweep summary: {csv_path}" + (f", {png}" if png else ""))
        logger_cfg = config.get("logger") or {}
        if "wandb" in logger_cfg:
            self._log_wandb(config, sweep_dir, csv_path, png)
        failed = sorted((p.parent.name for p in sweep_dir.glob("*/error.txt")), key=lambda n: (len(n), n))
        if failed:
            print(f"Error: {len(failed)} job(s) of the sweep failed ({', '.join(failed)}): see their error.txt; "
                  f"the others are summarised in {csv_path}", file=sys.stderr)
            sys.exit(1)

    @staticmethod
    def _sweep_dir(config: DictConfig) -> Path | None:
        try:
            from hydra.core.hydra_config import HydraConfig

            hc = HydraConfig.get()
            if hc.mode is None or hc.mode.name != "MULTIRUN":
                return None
            return Path(hc.sweep.dir)
        except ValueError:
            return None

    @staticmethod
    def _log_wandb(config: DictConfig, sweep_dir: Path, csv_path: Path, png: Path | None) -> None:
        import wandb

        wcfg = config.logger.wandb
        mode = os.environ.get("WANDB_MODE") or wcfg.get("mode") or "offline"
        run = wandb.init(project=wcfg.get("project", "pfa_lightning"), group=wcfg.get("group") or sweep_dir.name,
                         job_type="sweep-summary", name=f"summary-{sweep_dir.name}", dir=str(sweep_dir), mode=mode,
                         reinit="finish_previous")
        try:
            rows = collect_rows(sweep_dir)
            payload: dict[str, Any] = {"sweep/summary": wandb.Table(columns=COLUMNS, data=[[r[c] for c in COLUMNS] for r in rows])}
            if png is not None:
                payload["sweep/accuracy_vs_footprint"] = wandb.Image(str(png))
            run.log(payload)
            run.save(str(csv_path), base_path=str(sweep_dir))
        finally:
            run.finish()
