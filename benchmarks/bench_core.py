"""Core benchmark: cost of PFA's analysis and surgery on a full-size VGG-16 (32x32 inputs).

Prints, for this machine:
  - collection pass time / plain inference pass time over the same batches (target <= 1.10);
  - recipe (PFA-KL) + surgery time (target < 1 s);
  - memory of the response statistics (float64 accumulators) and the process's peak RSS growth.

    python benchmarks/bench_core.py [--batches 16 --batch-size 64 --repeats 5 --device cpu]
"""

from __future__ import annotations

import argparse
import copy
import platform
import resource
import time

import torch

import pfa_lightning as pfa
from pfa_lightning.models import build


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build(args.model, num_classes=10).to(device).eval()
    batches = [torch.rand(args.batch_size, 3, 32, 32, device=device) for _ in range(args.batches)]
    x = batches[0][:8]

    def plain() -> None:
        with torch.no_grad():
            for b in batches:
                model(b)

    stats_box = {}

    def collect() -> None:
        stats_box["stats"] = pfa.collect_responses(model, batches, progress=False)

    plain()  # warm-up (allocator, kernels)
    collect()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # interleaved, best of each: slow drifts of a shared machine hit both passes alike
    t_plain = t_collect = float("inf")
    for _ in range(args.repeats):
        t_plain = min(t_plain, timed(plain, 1))
        t_collect = min(t_collect, timed(collect, 1))
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stats = stats_box["stats"]
    stats_bytes = sum(t.numel() * t.element_size() for t in stats.tensors())

    def recipe_and_surgery() -> None:
        m = copy.deepcopy(model)
        recipe = pfa.make_recipe(m, stats, pfa.KL(), example_inputs=x)
        pfa.apply_recipe(m, recipe, example_inputs=x)

    recipe_and_surgery()  # warm-up
    copies = timed(lambda: copy.deepcopy(model), args.repeats)  # not part of the measured work
    t_surgery = timed(recipe_and_surgery, args.repeats) - copies

    n = args.batches * args.batch_size
    print(f"# PFA core benchmark: {args.model}, {n} samples of 3x32x32 in {args.batches} batches, device={device}")
    print(f"# machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"plain inference pass   : {t_plain:.3f} s")
    print(f"collection pass        : {t_collect:.3f} s (includes tracing the model once)")
    print(f"collection / plain     : {t_collect / t_plain:.3f}  (target <= 1.10)")
    print(f"recipe (KL) + surgery  : {t_surgery:.3f} s  (target < 1 s)")
    print(f"statistics memory      : {stats_bytes / 2**20:.1f} MiB in float64 accumulators "
          f"({len(stats)} layers, independent of the number of samples)")
    print(f"peak RSS growth        : {(rss1 - rss0) / 1024:.1f} MiB during the timed passes")


if __name__ == "__main__":
    main()
