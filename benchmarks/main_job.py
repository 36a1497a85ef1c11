"""The README's main job, timed: ``python run.py model=vgg16 pfa=kl`` must finish in 2 minutes on 2 CPU cores.

    python benchmarks/main_job.py              # 2 runs (~4 min); results in benchmarks/results/main_job.json
    python benchmarks/main_job.py --runs 3

Each run is a fresh process (imports included), as a user starts it; the wall time, the footprint
and the labelled accuracies come from the run's own ``results.json``. ``run_all.py`` renders the
saved results into BENCHMARKS.md. Exits non-zero when a run is over the target.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "benchmarks" / "results" / "main_job.json"
COMMAND = ["run.py", "model=vgg16", "pfa=kl"]
TARGET_S = 120.0


REFERENCE = """
import time, torch
from pfa_lightning.models import build
torch.manual_seed(0)
model, x, y = build("vgg16", num_classes=10).train(), torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
def step():
    opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step()
for _ in range(2): step()
start = time.perf_counter()
for _ in range(5): step()
print((time.perf_counter() - start) / 5 * 1000)
"""


def reference_step_ms() -> float:
    """How fast this (shared) machine is right now: one VGG-16 training step at batch 32, the main job's
    dominant operation, in ms. Recorded next to each run, so that a slow run can be told from a slow VM."""
    proc = subprocess.run([sys.executable, "-c", REFERENCE], cwd=ROOT, capture_output=True, text=True, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def one_run(workdir: Path) -> dict:
    out = workdir / "run"
    step_ms = reference_step_ms()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *COMMAND, f"hydra.run.dir={out}"], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the main job failed:\n{proc.stderr[-3000:]}")
    results = json.loads((out / "results.json").read_text())
    keys = ("params_ratio", "flops_ratio", "acc_full", "acc_after_surgery", "acc_after_recalibration", "acc_final",
            "epochs_full", "epochs_final")
    return {"seconds": seconds, "step_ms": step_ms, **{k: results[k] for k in keys}}


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def section(data: dict) -> list[str]:
    runs = data["runs"]
    worst = max(r["seconds"] for r in runs)
    verdict = "meets" if worst <= data["target_s"] else "MISSES"
    lines = [f"## The main job: `python {' '.join(COMMAND)}`", "",
             f"Produced by `python benchmarks/main_job.py` on: {data['machine']}. Wall time of the whole process "
             f"(imports, training, analysis, surgery, fine-tuning, test, outputs); target {data['target_s']:.0f} s: "
             f"the slowest run {verdict} it.", "",
             "| run | seconds | machine: VGG-16 training step (ms) | params % | FLOPs % | full network (after N epochs) "
             "| right after surgery | after BatchNorm recalibration | compressed network (after N epochs in all) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for i, r in enumerate(runs, 1):
        step = f"{r['step_ms']:.0f}" if "step_ms" in r else "—"
        lines.append(f"| {i} | {r['seconds']:.0f} | {step} | {pct(r['params_ratio'])} | {pct(r['flops_ratio'])} | "
                     f"{pct(r['acc_full'])} ({r['epochs_full']}) | {pct(r['acc_after_surgery'])} | "
                     f"{pct(r['acc_after_recalibration'])} | {pct(r['acc_final'])} ({r['epochs_final']}) |")
    finals = {r["acc_final"] for r in runs}
    lines += ["", "Every run is seed 0" + (" (they differ a little: CPU training here is not bitwise reproducible)."
                                           if len(finals) > 1 else "."),
              "", "The machine column is one VGG-16 training step at batch 32 (the job's dominant operation), timed "
              "right before each run (a 5-step snapshot): this VM is shared and drifts, and the time follows it: "
              "on 2026-11-30, 99 and 106 s (step 692 and 772 ms) an hour before these three; the session before, "
              "108 to 131 s (131 s three times in a row while that step took ~1,090 ms, 121 s once at 1,845 ms). "
              "The margin is thin: on a slow moment of this VM the job takes a little over 2 minutes.",
              "", "Where the time goes (one run, Lightning's simple profiler and cProfile): imports ~9 s (torch, "
              "Lightning, torchmetrics, Hydra), 2 full-width epochs ~70 s (the weight gradient of the 2x2-pixel "
              "512-channel convolutions costs ~4x its FLOPs in oneDNN), the compression ~20 s (the analysis pass over "
              "1,259 images ~10 s; test accuracy before, right after the surgery and after recalibration ~4.5 s; "
              "BatchNorm recalibration ~2.5 s; recipe, graph and surgery ~2.5 s), 1 fine-tuning epoch ~9 s, validation, "
              "test and outputs ~5 s. Inference passes run at batch 64 (`dataset.eval_batch_size` in "
              "`conf/dataset/digits.yaml`): on this CPU VGG-16's forward pass is ~12% cheaper per image at 64 than at "
              "256. The optimizers use torch's fused CPU kernels (the SGD step 11 ms instead of 24, the same update up "
              "to rounding, which moved the seed-0 accuracies a little), and the runner takes the footprints from the "
              "callback instead of counting FLOPs twice more.", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description="Time the README's main job.")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(one_run(Path(tmp)))
        print(f"run {i + 1}: {runs[-1]['seconds']:.1f} s, final accuracy {runs[-1]['acc_final']:.4f}", flush=True)
    data = {"target_s": TARGET_S, "machine": machine(), "runs": runs}
    RAW.parent.mkdir(parents=True, exist_ok=True)
    RAW.write_text(json.dumps(data, indent=1))
    print("\n".join(section(data)))
    if max(r["seconds"] for r in runs) > TARGET_S:
        raise SystemExit(f"the main job took more than {TARGET_S:.0f} s")


if __name__ == "__main__":
    main()
