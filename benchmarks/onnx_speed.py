"""ONNX Runtime inference on the CPU: full against PFA-compressed networks, next to the FLOPs cut.

    python benchmarks/onnx_speed.py                 # ~3 min on 2 CPU cores: benchmarks/results/onnx_speed.json, BENCHMARKS.md
    python benchmarks/onnx_speed.py --render-only   # rewrite the BENCHMARKS.md section from the saved results

Full-size VGG-16 and ResNet-56 (CIFAR-style, 32x32, 10 classes, random weights) are compressed as a user
would with the core API (``collect_responses`` on random images, ``make_recipe`` with
``pfa.Footprint(RATIO, metric="flops")`` and ``round_to`` 1 or 8, ``apply_recipe``), every network is
exported with ``pfa_lightning.export.export_model`` (checked against PyTorch with ONNX Runtime), and
each ONNX file is timed in ONNX Runtime's CPU provider with 2 intra-op threads at batch 1 and 64. Only
the widths matter for speed, so random weights and inputs do.

The section it writes into BENCHMARKS.md (``section``) replaces an earlier one; ``RAW`` and ``section``
follow ``architectures.py`` so that ``run_all.py`` can render it too.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

import pfa_lightning as pfa
from pfa_lightning.export import export_model
from pfa_lightning.models import build

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "benchmarks" / "results" / "onnx_speed.json"
REPORT = ROOT / "BENCHMARKS.md"
HEADING = "## ONNX Runtime inference (CPU)"
NETWORKS = ("vgg16", "resnet56")
ROUNDINGS = (1, 8)
BATCHES = (1, 64)
RUNS = {1: 50, 64: 10}  # timed calls per round
THREADS = 2


def compressed_copies(model: torch.nn.Module, ratio: float, samples: int) -> dict[int, torch.nn.Module]:
    """Copies of ``model`` cut to ``ratio`` of its FLOPs by PFA (Footprint, KL allocation), one per ``round_to``."""
    data = [torch.rand(128, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(samples // 128)]
    stats = pfa.collect_responses(model, data, progress=False)
    cuts = {}
    for round_to in ROUNDINGS:
        cut = copy.deepcopy(model)
        recipe = pfa.make_recipe(cut, stats, pfa.Footprint(ratio, metric="flops"), example_inputs=data[0][:2],
                                 round_to=round_to)
        cuts[round_to] = pfa.apply_recipe(cut, recipe, example_inputs=data[0][:2]).eval()
    return cuts


def session(path: Path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def interleaved_ms(full: onnxruntime.InferenceSession, cut: onnxruntime.InferenceSession, x: np.ndarray,
                   runs: int) -> tuple[float, float]:
    """Median wall time (ms) of ``runs`` calls of each session, after 3 warm-up calls each; the two alternate call
    by call, so that a neighbour's load on this shared VM falls on both alike."""
    feeds = [{s.get_inputs()[0].name: x} for s in (full, cut)]
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(runs + 3):
        for model, feed, spent in zip((full, cut), feeds, times):
            start = time.perf_counter()
            model.run(None, feed)
            if i >= 3:
                spent.append(1000 * (time.perf_counter() - start))
    return statistics.median(times[0]), statistics.median(times[1])


def exported_sessions(models: dict[str, torch.nn.Module], directory: Path) -> tuple[dict, dict]:
    """An ONNX Runtime session per model, and what the export check found (next to the outputs' magnitude: the
    check's tolerance is relative too)."""
    directory.mkdir(exist_ok=True)
    example = torch.rand(2, 3, 32, 32)
    sessions, checks = {}, {}
    for name, model in models.items():
        report = export_model(model, example, directory / f"{name}.onnx")
        with torch.no_grad():
            checks[name] = {"max_abs_diff": report.max_abs_diff, "max_abs_output": float(model(example).abs().max())}
        sessions[name] = session(report.path)
    return sessions, checks


def network_rows(net: str, ratio: float, samples: int, rounds: int, directory: Path) -> tuple[list[dict], dict]:
    torch.manual_seed(0)
    full = build(net, num_classes=10, in_channels=3, width=1.0).eval()
    cuts = compressed_copies(full, ratio, samples)
    sessions, checks = exported_sessions({"full": full, **{f"round_to={r}": c for r, c in cuts.items()}},
                                         directory / net)
    x1 = torch.rand(1, 3, 32, 32)
    rows = []
    for round_to, cut in cuts.items():
        for batch in BATCHES:
            x = np.random.default_rng(0).random((batch, 3, 32, 32), dtype=np.float32)
            pairs = [interleaved_ms(sessions["full"], sessions[f"round_to={round_to}"], x, RUNS[batch])
                     for _ in range(rounds)]
            rows.append({"network": net, "round_to": round_to, "batch": batch,
                         "params_ratio": pfa.count_params(cut) / pfa.count_params(full),
                         "flops_ratio": pfa.count_flops(cut, x1) / pfa.count_flops(full, x1),
                         "full_ms": statistics.median(f for f, _ in pairs),
                         "compressed_ms": statistics.median(c for _, c in pairs),
                         "speedup": statistics.median(f / c for f, c in pairs)})
            print(rows[-1], flush=True)
    return rows, checks


def section(data: dict) -> list[str]:
    rows = data["rows"]
    lines = [HEADING, "",
             (f"Produced by `python benchmarks/onnx_speed.py` on: {data['machine']}; onnxruntime {data['onnxruntime']}. "
              "Full-size networks (32x32 inputs, 10 classes, random weights and inputs: only the widths matter for "
              f"speed), compressed with `pfa.Footprint({data['ratio']:g}, metric=\"flops\")` and `round_to` 1 or 8 "
              f"(analysis on {data['samples']} random images), exported with `pfa_lightning.export.export_model` and "
              f"checked against PyTorch by ONNX Runtime ({checked(data['checks'])}). Timed in ONNX Runtime's "
              f"CPUExecutionProvider with intra_op_num_threads={THREADS}: full and compressed called alternately, 3 "
              f"warm-up calls then {RUNS[1]} timed calls each at batch 1 ({RUNS[64]} at batch 64), median per round; "
              f"{data['rounds']} rounds, median of the rounds (speed-up: median of the rounds' ratios). The VM's "
              f"1-minute load average was {data['load_average'][0]:.1f} before the run and "
              f"{data['load_average'][1]:.1f} after it (2 cores: other work shared them)."), "",
             ("| model | round_to | batch | params ratio | FLOPs ratio | full (ms) | compressed (ms) | speed-up "
              "| speed-up / FLOPs cut |"), "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['network']} | {r['round_to']} | {r['batch']} | {r['params_ratio']:.3f} | "
                     f"{r['flops_ratio']:.3f} | {r['full_ms']:.2f} | {r['compressed_ms']:.2f} | {r['speedup']:.2f}x | "
                     f"{r['speedup'] * r['flops_ratio']:.2f} |")
    return lines + ["", reading(rows), ""]


def checked(checks: dict) -> str:
    """The export check's largest difference per file, next to the outputs' magnitude."""
    return "; ".join(f"{net} {name}: max abs difference {c['max_abs_diff']:.1g} on outputs up to {c['max_abs_output']:.2g}"
                     for net, files in checks.items() for name, c in files.items())


def reading(rows: list[dict]) -> str:
    """The honest line: how much of the FLOPs cut ONNX Runtime turns into time, and what ``round_to`` changes."""
    merit = [r["speedup"] * r["flops_ratio"] for r in rows]
    mean = {(rt, b): statistics.mean(m for r, m in zip(rows, merit) if (r["round_to"], r["batch"]) == (rt, b))
            for rt in ROUNDINGS for b in BATCHES}
    text = (f"Reading: ONNX Runtime turns {100 * min(merit):.0f}–{100 * max(merit):.0f}% of the FLOPs cut into time; "
            f"mean speed-up / FLOPs cut at batch 1: {mean[1, 1]:.2f} with `round_to=1`, {mean[8, 1]:.2f} with "
            f"`round_to=8`; at batch 64: {mean[1, 64]:.2f} and {mean[8, 64]:.2f}. ")
    better = [f"batch {b}" for b in BATCHES if mean[8, b] > 1.1 * mean[1, b]]
    if better:
        return text + (f"Unlike in PyTorch eager (the `round_to` section), widths that are multiples of 8 pay off here "
                       f"(at {' and '.join(better)}): ONNX Runtime's CPU convolutions probably work on blocks of 8 "
                       "channels, so other widths cost time their FLOPs do not show; compress with `round_to=8` for "
                       "ONNX Runtime.")
    return text + "`round_to=8` changes little beyond this VM's noise (~10%)."


def write_section(lines: list[str], report: Path = REPORT) -> None:
    """Put the section into ``report``: in place of an earlier one, else before the iterative section (or at the end)."""
    text = report.read_text()
    block = "\n".join(lines) + "\n"
    if HEADING in text:
        start = text.index(HEADING)
        end = text.find("\n## ", start + len(HEADING))
        text = text[:start] + block + (text[end + 1:] if end >= 0 else "")
    elif "\n## Iterative PFA-KL" in text:
        at = text.index("\n## Iterative PFA-KL") + 1
        text = text[:at] + block + text[at:]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    report.write_text(text)


def measure(args: argparse.Namespace) -> dict:
    """Compress, export and time every network; saves the results to ``RAW`` and returns them."""
    from run_all import machine

    torch.set_num_threads(THREADS)
    load_before = os.getloadavg()[0]
    rows, checks = [], {}
    with tempfile.TemporaryDirectory() as directory:
        for net in NETWORKS:
            net_rows, checks[net] = network_rows(net, args.ratio, args.samples, args.rounds, Path(directory))
            rows += net_rows
    data = {"machine": machine(), "onnxruntime": onnxruntime.__version__, "ratio": args.ratio,
            "samples": args.samples, "rounds": args.rounds, "load_average": [load_before, os.getloadavg()[0]],
            "checks": checks, "rows": rows}
    RAW.parent.mkdir(parents=True, exist_ok=True)
    RAW.write_text(json.dumps(data, indent=1))
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description="ONNX Runtime CPU inference: full vs PFA-compressed networks.")
    parser.add_argument("--ratio", type=float, default=0.25, help="FLOPs target of pfa.Footprint")
    parser.add_argument("--samples", type=int, default=1024, help="random images analysed")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of alternating timings of full and compressed")
    parser.add_argument("--render-only", action="store_true", help=f"rewrite the section from {RAW.name} only")
    args = parser.parse_args()
    data = json.loads(RAW.read_text()) if args.render_only else measure(args)
    lines = section(data)
    write_section(lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
