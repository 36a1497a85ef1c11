"""Latency: a footprint in time, measured on the runtime that will serve the model.

``Footprint(0.5, metric="latency", runtime="onnxruntime", batch_size=1)`` bisects in time as it bisects
in FLOPs. A candidate's time is predicted from a per-layer table: for every channel space, the whole
network's inference time with only that space cut to a few widths (1/8, 1/4, 1/2, 3/4 of its units),
interpolated linearly in between; a candidate's predicted time is the full network's scaled by what each space's cut
alone scaled it (a product: a sum of the savings counts twice what two cut spaces save on the layer
between them). The table is measured once per
model structure, runtime, batch size, thread count and machine, and cached on disk. The prediction
chooses where to start; the decision is then made on timings of the whole candidate network against
the full one (alternately, medians), bisecting for the largest candidate that meets the target on the
side of the predicted choice its timing says (``allocation.refine_by_timing``, at most 16 timed candidates);
the choice is timed once more and must fit the target itself, else the search steps below it (the largest of
many noisy timings under a target tends to be a lucky one).

Timing: a warm-up, then the median of repeated runs. A ``timer(model, inputs) -> seconds`` may be
injected (tests use a deterministic one).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from pfa_lightning.errors import PFAError
from pfa_lightning.graph import ModelGraph
from pfa_lightning.nested import batch_of, batch_size as samples_in, run_model
from pfa_lightning.progress import progress_bar
from pfa_lightning.tracing import fingerprint
from pfa_lightning.validation import check_choice, fail, is_int

RUNTIMES = ("torch", "onnxruntime")
LEVELS = (0.125, 0.25, 0.5, 0.75)  # widths of each space's table rows, as fractions of its units
TOLERANCE = 0.05  # a measured candidate this much over the target (timing noise) is accepted
TABLE_VERSION = 2  # in the cache key: tables of earlier versions (v1 timed batch 1 whatever batch_size said) go
Timer = Callable[[nn.Module, Any], float]


def check_timing(runtime: Any, batch_size: Any, metric: str = "latency", timer: Any = None) -> None:
    """The options of a latency target (checked for any metric: a typo is named where it is made). With another
    ``metric`` they would be ignored: a value other than their default is refused (one message naming it)."""
    check_choice("runtime", runtime, RUNTIMES)
    if not is_int(batch_size) or batch_size < 1:
        raise fail("batch_size", "an integer >= 1 (the batch a latency is measured at)", batch_size)
    if metric != "latency":
        given = [name for name, value, default in (("runtime", runtime, "torch"), ("batch_size", batch_size, 1),
                                                   ("timer", timer, None)) if value != default]
        if given:
            raise PFAError(f"{', '.join(given)} only {'applies' if len(given) == 1 else 'apply'} to metric='latency' "
                           f"(a time is measured), not to metric={metric!r}: give metric='latency' or leave "
                           f"{'it' if len(given) == 1 else 'them'} out.")


def median_time(run: Callable[[], Any], warmup: int = 2, repeats: int = 7, min_seconds: float = 0.2) -> float:
    """Seconds of one call of ``run``: the median of at least ``repeats`` calls (more, up to 200, until
    ``min_seconds`` have passed: millisecond networks need many) after ``warmup`` unmeasured ones."""
    for _ in range(warmup):
        run()
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < 200):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compare_times(timer: Timer, model: nn.Module, other: nn.Module, inputs: Any, rounds: int = 3
                  ) -> tuple[float, float]:
    """Seconds of ``model`` and of ``other``, timed alternately (drift hits both alike): medians of ``rounds``."""
    times = [(float(timer(model, inputs)), float(timer(other, inputs))) for _ in range(rounds)]
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise PFAError("metric='latency' with runtime='onnxruntime' needs ONNX Runtime, which is not installed: "
                       "pip install \"pfa_lightning[export]\" (or pip install onnxruntime), or use runtime='torch'."
                       ) from None
    return onnxruntime


def _onnx_runner(model: nn.Module, inputs: Any) -> Callable[[], Any]:
    onnxruntime = _onnxruntime()
    from pfa_lightning.export import export_model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "candidate.onnx"
        export_model(model, inputs, path, format="onnx", check=False)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle sessions must not spin
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: inputs.detach().cpu().numpy()}
    return lambda: session.run(None, feed)


def runtime_timer(runtime: str) -> Timer:
    """The timer of ``runtime``: PyTorch eager on the model's device (synchronised on CUDA), or ONNX Runtime's CPU
    provider with as many threads as torch has."""

    sessions: dict[str, Callable[[], Any]] = {}  # by structure and batch: the full network is timed again and again

    def timer(model: nn.Module, inputs: Any) -> float:
        if runtime == "onnxruntime":
            key = repr((fingerprint(model, inputs), samples_in(inputs)))  # a session feeds the batch it was made with
            if key not in sessions:
                if len(sessions) >= 4:
                    sessions.pop(next(iter(sessions)))
                sessions[key] = _onnx_runner(model, inputs)
            return median_time(sessions[key])

        def run() -> None:
            with torch.no_grad():
                run_model(model, inputs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()

        model.eval()
        return median_time(run)

    return timer


def _machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    return f"{platform.processor() or platform.machine()} {gpu}".strip()


def cache_dir() -> Path:
    """Where latency tables are kept: ``$PFA_CACHE_DIR`` or ``~/.cache/pfa_lightning`` (``$XDG_CACHE_HOME``)."""
    if os.environ.get("PFA_CACHE_DIR"):
        return Path(os.environ["PFA_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pfa_lightning"


class LatencyProbe:
    """The inference time (in nanoseconds, as an int: a footprint) of the network given widths would produce.

    ``probe(keep)`` predicts it from the per-space table; ``probe.verify(keep)`` times the real candidate and
    the full network alternately (median of 3 rounds) and returns (candidate, full) in seconds. With a
    ``reference`` (the network ``model`` was made from, e.g. by removing blocks), ``full`` and the second
    time of ``verify`` are the reference's: a target is a share of its time.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, runtime: str = "torch", batch_size: int = 1,
                 timer: Timer | None = None, cache: Path | str | None = None, progress: bool = False,
                 reference: nn.Module | None = None) -> None:
        if runtime not in RUNTIMES:
            raise PFAError(f"`runtime` must be one of {RUNTIMES}, got {runtime!r}.")
        if runtime == "onnxruntime" and timer is None:
            _onnxruntime()  # missing: one line, before any work
        self.model = copy.deepcopy(model).eval()  # a copy with its weights: cut and restored, never the user's
        self.inputs = batch_of(example_inputs, batch_size)
        self.graph = ModelGraph(self.model, self.inputs)
        self.timer = timer or runtime_timer(runtime)
        self.spaces = {s.root: s for s in self.graph.spaces if not s.reaches_output}
        key = json.dumps([TABLE_VERSION, repr(fingerprint(self.model, self.inputs)), runtime, batch_size,
                          torch.get_num_threads(),
                          _machine(), "" if timer is None else getattr(timer, "__qualname__", type(timer).__qualname__)])
        self.path = Path(cache if cache is not None else cache_dir()) / "latency" / (
            hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")
        self.table = self._load() or self._build(progress)
        self.full_s = float(self.table["full"])  # this network's, which predictions scale
        self.reference = copy.deepcopy(reference).eval() if reference is not None else None
        scale = 1.0
        if self.reference is not None:  # the reference's time, in the table's terms
            own, other = compare_times(self.timer, self.model, self.reference, self.inputs)
            scale = other / own
        self.full = int(round(self.full_s * scale * 1e9))  # nanoseconds, what a ratio is of (FootprintProbe.full's role)

    def _time(self, removals: Mapping[str, Any]) -> float:
        with self.graph.trial(removals):
            return float(self.timer(self.model, self.inputs))

    def _rows(self, root: str) -> list[int]:
        space = self.spaces[root]
        step = space.step()
        widths = {max(step, int(round(f * space.width / step)) * step) for f in LEVELS}
        return sorted(w for w in widths if w < space.width)

    def _load(self) -> dict | None:
        try:
            table = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return table if set(table.get("spaces", {})) == set(self.spaces) else None

    def _build(self, progress: bool) -> dict:
        rows = {root: self._rows(root) for root in self.spaces}
        total = 1 + sum(len(r) for r in rows.values())
        table: dict[str, Any] = {"spaces": {}}
        with progress_bar("PFA measuring the latency table", total, progress) as advance:
            table["full"] = self._time({})
            advance()
            for root, widths in rows.items():
                entries = []
                for k in widths:
                    entries.append([k, self._time({root: range(k, self.spaces[root].width)})])
                    advance()
                entries.append([self.spaces[root].width, table["full"]])
                for i in range(len(entries) - 2, -1, -1):  # fewer units never take longer: noise gives way
                    entries[i][1] = min(entries[i][1], entries[i + 1][1])
                table["spaces"][root] = entries
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(table))
            tmp.replace(self.path)
        except OSError as err:  # an unwritable cache costs a re-measurement next time, not the decision
            warnings.warn(f"PFA could not cache the latency table under {self.path.parent} ({err.strerror or err}); "
                          "set PFA_CACHE_DIR to a writable directory to reuse it.", stacklevel=2)
        return table

    def predict(self, keep: Mapping[str, int]) -> float:
        """Seconds the candidate network should take: each space's cut scales the full network's time by what it
        scaled it alone (interpolated in the table; below its smallest row, that row's time)."""
        scale = 1.0
        for root, k in keep.items():
            entries = self.table["spaces"].get(root)
            if entries is None or k >= self.spaces[root].width:
                continue
            widths, times = zip(*entries)
            scale *= min(1.0, float(np.interp(k, widths, times)) / self.full_s)  # slower than full: noise
        return self.full_s * scale

    def __call__(self, keep: Mapping[str, int]) -> int:
        return int(round(self.predict(keep) * 1e9))

    def verify(self, keep: Mapping[str, int]) -> tuple[float, float]:
        removals = {root: range(k, self.spaces[root].width) for root, k in keep.items()
                    if root in self.spaces and k < self.spaces[root].width}
        if self.reference is not None:
            with self.graph.trial(removals):
                return compare_times(self.timer, self.model, self.reference, self.inputs)
        rounds = [(self._time(removals), self._time({})) for _ in range(3)]  # alternately: drift hits both alike
        return statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)


__all__ = ["LEVELS", "RUNTIMES", "LatencyProbe", "cache_dir", "check_timing", "compare_times", "median_time", "runtime_timer"]
