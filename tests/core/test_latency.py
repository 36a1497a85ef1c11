"""Budgets in time: ``Footprint(r, metric="latency")`` decides from a per-layer latency table and checks the
candidate by timing it. A deterministic fake timer stands in for the clock, so the target is met in its units."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

import pfa_lightning as pfa
from pfa_lightning.errors import PFAError
from pfa_lightning.allocation import refine_by_timing
from pfa_lightning.latency import LatencyProbe
from pfa_lightning.strategies import resolve_strategy
from pfa_lightning.models import build


class FakeTimer:
    """'Seconds' = parameters / 1e8 + a fixed overhead: deterministic, and not additive over the layers' cuts (a
    convolution between two cut spaces shrinks with both), as real time is not."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model, inputs) -> float:
        self.calls += 1
        return pfa.count_params(model) / 1e8 + 1e-4


def _resnet():
    torch.manual_seed(0)
    return build("resnet20", num_classes=10, in_channels=3).eval()


def _stats(model):
    x = torch.randn(192, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pfa.collect_responses(model, [x], progress=False), x[:2]


@pytest.mark.parametrize("ratio", [0.5, 0.25])
def test_a_latency_target_is_met_in_the_timers_units(tmp_path, monkeypatch, ratio):
    monkeypatch.setenv("PFA_CACHE_DIR", str(tmp_path))
    model = _resnet()
    stats, x = _stats(model)
    timer = FakeTimer()
    full = timer(model, x[:1])
    strategy = pfa.Footprint(ratio, metric="latency", timer=timer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        recipe = pfa.make_recipe(model, stats, strategy, example_inputs=x)
    summary = recipe.summary
    assert summary["measured_s"] <= ratio * summary["measured_full_s"] * 1.05
    assert summary["measured_full_s"] == pytest.approx(full)
    pfa.apply_recipe(model, recipe, example_inputs=x)
    after = timer(model, x[:1])
    assert after == pytest.approx(summary["measured_s"])  # what was checked is what the cut network takes
    assert ratio * 0.6 * full < after <= ratio * 1.05 * full  # and it is close to the target, not far below
    assert recipe.strategy["metric"] == "latency" and recipe.strategy["runtime"] == "torch"
    assert "latency timed" in str(recipe.table().caption)


def test_the_latency_table_is_cached_and_measured_again_when_the_structure_changes(tmp_path):
    model = _resnet()
    x = torch.randn(1, 3, 32, 32)
    first = FakeTimer()
    probe = LatencyProbe(model, x, timer=first, cache=tmp_path)
    assert first.calls > 1 + len(probe.spaces)  # the full network and a few widths per space
    again = FakeTimer()
    reused = LatencyProbe(model, x, timer=again, cache=tmp_path)
    assert again.calls == 0 and reused.table == probe.table
    other = FakeTimer()
    LatencyProbe(build("resnet20", num_classes=10, in_channels=3, width=0.5).eval(), x, timer=other, cache=tmp_path)
    assert other.calls > 0  # another structure: another table
    bigger = FakeTimer()
    LatencyProbe(model, x, batch_size=4, timer=bigger, cache=tmp_path)
    assert bigger.calls > 0  # another batch size: another table


@pytest.mark.parametrize("given, batch_size", [(1, 4), (8, 2), (3, 3)])
def test_the_network_is_timed_at_the_batch_size_asked_whatever_the_example(tmp_path, given, batch_size):
    model = build("simplecnn", num_classes=10, in_channels=3, width=0.25).eval()
    x = torch.randn(given, 3, 32, 32)
    seen = []

    def timer(model, inputs) -> float:
        seen.append(inputs.shape[0])
        return pfa.count_params(model) / 1e8

    probe = LatencyProbe(model, x, batch_size=batch_size, timer=timer, cache=tmp_path)
    probe.verify({next(iter(probe.spaces)): 1})
    assert seen and set(seen) == {batch_size}
    assert torch.equal(probe.inputs[:min(given, batch_size)], x[:batch_size])  # the example's own samples first


def test_a_prediction_follows_the_table_and_the_probe_leaves_the_model_alone(tmp_path):
    model = _resnet()
    x = torch.randn(1, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe = LatencyProbe(model, x, timer=FakeTimer(), cache=tmp_path)
    root, space = next(iter(probe.spaces.items()))
    k, seconds = probe.table["spaces"][root][0]
    assert probe.predict({root: k}) == pytest.approx(seconds)
    assert probe.predict({}) == probe.full_s == pytest.approx(probe({}) / 1e9) and probe.full == probe({})
    assert all(torch.equal(before[n], v) for n, v in model.state_dict().items())


def test_a_missing_runtime_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    model = _resnet()
    stats, x = _stats(model)
    with pytest.raises(PFAError, match="needs ONNX Runtime, which is not installed: pip install"):
        pfa.make_recipe(model, stats, pfa.Footprint(0.5, metric="latency", runtime="onnxruntime"), example_inputs=x)


@pytest.mark.parametrize("options, message", [({"runtime": "tensorrt"}, "runtime"),
                                              ({"batch_size": 0}, "batch_size"),
                                              ({"metric": "seconds"}, "metric")])
def test_bad_latency_options_name_the_value(options, message):
    with pytest.raises(PFAError, match=message):
        pfa.Footprint(0.5, **{"metric": "latency", **options})


def test_the_torch_runtime_times_a_real_network(tmp_path):
    """No fake: the table is measured with PyTorch eager and a cut network is predicted faster."""
    model = build("vgg16", num_classes=10, in_channels=3, width=0.125).eval()
    probe = LatencyProbe(model, torch.randn(1, 3, 32, 32), cache=tmp_path)
    half = {root: max(space.step(), space.width // 2) for root, space in probe.spaces.items()}
    assert 0 < probe.predict(half) < probe.full_s


def test_a_latency_target_out_of_reach_when_timed_is_refused():
    """Fixed costs that no cut removes: even the smallest network takes more than the target."""
    model = _resnet()
    stats, x = _stats(model)

    def slow(model, inputs):  # 'seconds': mostly a fixed overhead
        return pfa.count_params(model) / 1e8 + 1.0

    with pytest.raises(PFAError, match="out of reach"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pfa.make_recipe(model, stats, pfa.Footprint(0.5, metric="latency", timer=slow), example_inputs=x)


def test_an_unwritable_cache_warns_and_the_table_still_serves(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.warns(UserWarning, match="could not cache the latency table"):
        probe = LatencyProbe(_resnet(), torch.randn(1, 3, 32, 32), timer=FakeTimer(), cache=blocker)
    assert probe.full > 0


def _timings(true_ratio, outliers=()):
    """A candidate's (time, full time): ``true_ratio(i)`` of a full network taking 1 s; the first timing of each
    index in ``outliers`` comes out 20% low (one lucky measurement)."""
    seen: list[int] = []

    def timed(i: int) -> tuple[float, float]:
        lucky = i in outliers and i not in seen
        seen.append(i)
        return true_ratio(i) * (0.8 if lucky else 1.0), 1.0

    return timed, seen


def test_the_timed_search_finds_the_largest_candidate_within_the_target():
    timed, seen = _timings(lambda i: (i + 1) / 100)  # candidate i takes (i + 1)% of the full time
    index, checks = refine_by_timing(10, 100, timed, ratio=0.5, tolerance=0.0)
    assert index == 49 and checks["measured_s"] == pytest.approx(0.5)
    assert checks["timings"] == len(seen) <= 16 + 1  # the search, then one confirming timing
    assert seen[-1] == 49  # the choice is timed again before it is final


def test_a_choice_that_fit_by_one_lucky_timing_steps_down_when_timed_again():
    # candidate 54 takes 0.55 of the time but its first timing says 0.44: it would be chosen, and is not
    timed, seen = _timings(lambda i: (i + 1) / 100, outliers={54})
    index, checks = refine_by_timing(10, 100, timed, ratio=0.5, tolerance=0.0)
    assert index <= 49 and checks["measured_s"] <= 0.5
    assert seen.count(54) == 2  # chosen on its lucky timing, refused on the next
    assert index == 49 or checks["timings"] >= 16  # the search below it goes on while timings are left


def test_the_confirming_timing_must_fit_the_target_itself():
    # candidate 52 takes 0.53 of the time: within the search's 10% tolerance of 0.5, not within the target itself
    timed, seen = _timings(lambda i: (i + 1) / 100)
    index, checks = refine_by_timing(10, 100, timed, ratio=0.5, tolerance=0.1)
    assert index == 49 and checks["measured_s"] <= 0.5


def test_a_failed_confirmation_never_falls_to_an_untimed_smallest_network():
    # a huge family, the whole search budget spent on the first search: the step down uses what was timed
    timed, seen = _timings(lambda i: (i + 1) / 30000, outliers=set(range(15000, 15100)))
    index, checks = refine_by_timing(15074, 30000, timed, ratio=0.5, tolerance=0.0)
    assert index > 10000  # near the target, not the smallest network
    assert (index + 1) / 30000 <= 0.5 * 1.05  # its true time: what the caller accepts (its timing tolerance)


def test_spent_confirmations_fall_back_to_a_candidate_within_the_tolerance_not_a_refusal():
    # two lucky first timings on the search's path, one confirmation: the search must not end on a candidate over
    # the target (the caller would refuse an achievable target) nor far below it
    timed, seen = _timings(lambda i: (i + 1) / 100, outliers={99, 54})
    index, checks = refine_by_timing(10, 100, timed, ratio=0.5, tolerance=0.0, confirmations=1)
    assert index == 49 and checks["measured_s"] == pytest.approx(0.5)


def test_nothing_fitting_returns_the_smallest_for_the_caller_to_refuse():
    timed, _ = _timings(lambda i: 0.4 + i / 100)
    index, checks = refine_by_timing(5, 50, timed, ratio=0.25, tolerance=0.05)
    assert index == 0 and checks["measured_s"] == pytest.approx(0.4)


def test_the_uniform_baseline_takes_a_latency_target(tmp_path, monkeypatch):
    monkeypatch.setenv("PFA_CACHE_DIR", str(tmp_path))
    model = _resnet()
    stats, x = _stats(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = pfa.make_recipe(model, stats, pfa.Uniform(0.5, metric="latency", timer=FakeTimer()), example_inputs=x)
        theirs = pfa.make_recipe(model, stats, pfa.Footprint(0.5, metric="latency", allocation="uniform",
                                                             timer=FakeTimer()), example_inputs=x)
    assert ours.widths == theirs.widths  # the largest common fraction within half the time
    assert ours.summary["measured_s"] <= 0.5 * ours.summary["measured_full_s"]
    fractions = {round(layer.kept / layer.original, 1) for layer in ours.layers}
    assert len(fractions) <= 2 and ours.strategy["name"] == "uniform" and ours.strategy["metric"] == "latency"
    assert pfa.Uniform(0.5, metric="latency").label == "uniform=0.5 latency"
    named = resolve_strategy("uniform", ratio=0.5, metric="latency", runtime="onnxruntime", batch_size=4)
    assert named == pfa.Uniform(0.5, metric="latency", runtime="onnxruntime", batch_size=4)
    rebuilt = dict(named.to_dict())
    assert resolve_strategy(rebuilt.pop("name"), **rebuilt) == named  # its record rebuilds it


@pytest.mark.parametrize("options, message", [
    ({"ratio": 0.5, "metric": "time"}, "metric"),
    ({"params": 1000, "metric": "flops"}, "give `ratio` with metric='flops'"),
    ({"ratio": 0.5, "metric": "latency", "runtime": "tvm"}, "runtime"),
    ({"ratio": 0.5, "batch_size": 0}, "batch_size"),
])
def test_bad_uniform_targets_name_the_value(options, message):
    with pytest.raises(PFAError, match=message):
        pfa.Uniform(**options)


def test_an_onnx_runtime_session_is_made_per_structure_and_batch(monkeypatch):
    import pfa_lightning.latency as latency

    made = []
    monkeypatch.setattr(latency, "_onnx_runner", lambda model, inputs: made.append(inputs.shape[0]) or (lambda: None))
    timer = latency.runtime_timer("onnxruntime")
    model = build("simplecnn", num_classes=10, in_channels=3, width=0.25).eval()
    for batch in (1, 1, 4, 4, 1):
        timer(model, torch.randn(batch, 3, 32, 32))
    assert made == [1, 4]  # reused for the same batch, a new session (its own feed) for another
