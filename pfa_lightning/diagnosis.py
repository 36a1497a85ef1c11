"""What a recipe's user is told about it: why it cuts nothing, or that it leaves layers with a handful of units."""

from __future__ import annotations

import warnings
from typing import Any, Mapping, NoReturn

from torch import nn

from pfa_lightning.blocks import residual_blocks
from pfa_lightning.errors import PFAError

from pfa_lightning.graph import ChannelSpace, ModelGraph
from pfa_lightning.spectrum import Spectrum
from pfa_lightning.stats import ResponseStats
from pfa_lightning.strategies import DEPTH_HINT, Strategy
from pfa_lightning.validation import listed


def warn_nothing_cut(graph: ModelGraph, spectra: list[Spectrum], broken: Mapping[str, str], stats: ResponseStats,
                     min_units: int, coupled: str, strategy: Strategy | None = None) -> None:
    """Say why a recipe cuts nothing, with counts: which channel spaces were never candidates, and why."""
    spaces = graph.spaces
    sized = strategy is not None and (strategy.probe_metric is not None or getattr(strategy, "ratio", None) is not None)
    whole = (f"kept whole by {strategy!r} (its target holds every unit)" if sized
             else "kept whole by the strategy (their spectra call for every unit)")
    floor = sum(not sp.frozen and min_units >= sp.units for sp in spectra)
    reasons = {
        "fenced (a reshape -> permute -> reshape)": sum(s.fenced for s in spaces),
        "sharing a tied parameter": sum(bool(s.tied) and not s.fenced for s in spaces),
        "reaching the model output": sum(s.reaches_output and not s.fenced and not s.tied for s in spaces),
        "without statistics (excluded or not collected)": sum(
            not s.reaches_output and any(p not in stats for p in s.producers) for s in spaces),
        "coupled, left whole by coupled='skip'": sum(
            coupled == "skip" and s.coupled and not s.reaches_output for s in spaces),
        "broken by a trial cut (a width hard-coded in the model)": len(broken),
        "with fewer samples than units": sum(sp.frozen for sp in spectra),
        f"kept whole by min_units={min_units}": floor,
        whole: sum(not sp.frozen for sp in spectra) - floor,
    }
    counts = "; ".join(f"{n} {why}" for why, n in reasons.items() if n)
    warnings.warn(f"The recipe cuts nothing: of the model's {len(spaces)} channel spaces, {counts}.", stacklevel=3)


STARVED_UNITS, STARVED_WIDTH = 4, 16  # a layer of 16+ units cut below 4 is left with "a handful"
TINY_FRACTION = 0.1  # a decision keeping less than this fraction of the analysed units is suspicious


def starved(k: int, spectrum: Spectrum, space: ChannelSpace) -> bool:
    """Whether keeping ``k`` units leaves an analysed space of 16+ units with a handful."""
    return not spectrum.frozen and k < STARVED_UNITS and space.width >= STARVED_WIDTH


def warn_degenerate(spaces: list[ChannelSpace], counts: list[int], spectra: list[Spectrum], strategy: Strategy,
                    blocks: tuple[int, int] = (0, 0)) -> None:
    """Warn when a decision leaves layers with a handful of units, (a strategy that was not given a size)
    keeps a tiny fraction of all the analysed units, or removes every one of several residual blocks
    (``blocks``: removed, candidates): the network would be near chance before fine-tuning."""
    if blocks[0] == blocks[1] > 1:
        warnings.warn(f"{strategy!r} removes every residual block ({blocks[0]} of {blocks[1]}): with fewer, the "
                      "widths had no room within the target. A network without its blocks rarely keeps its "
                      "accuracy; a larger ratio keeps some.", stacklevel=3)
    few = [f"{space.root} ({k} of {space.width})" for space, k, sp in zip(spaces, counts, spectra)
           if starved(k, sp, space)]
    if few:
        warnings.warn(f"The recipe leaves {len(few)} layer(s) with fewer than {STARVED_UNITS} units: {listed(few)}. "
                      "Check the spectra; a milder strategy (a higher energy threshold, PFA-KL, or a Footprint "
                      "ratio) or `min_units` keeps more.", stacklevel=3)
    total, kept = sum(s.width for s in spaces), sum(counts)
    if strategy.probe_metric is None and total and kept < TINY_FRACTION * total:
        warnings.warn(f"The recipe keeps {kept} of {total} analysed units ({100 * kept / total:.1f}%) with "
                      f"{strategy!r}: the compressed network will be a tiny fraction of the original. State the "
                      "size you want with Footprint(ratio) if that is not intended.", stacklevel=3)


def raise_depth_hint_checked(err: PFAError, model: nn.Module, example_inputs: Any) -> NoReturn:
    """Raise ``err`` (call it in an ``except`` block), without its suggestion of ``depth=True`` where ``model``
    has no residual block to remove."""
    if DEPTH_HINT in str(err):
        try:
            found = residual_blocks(model, example_inputs)
        except Exception:  # noqa: BLE001 - the model cannot be searched: the hint may still help
            found = True
        if not found:
            raise PFAError(str(err).replace(DEPTH_HINT, "")) from None
    raise err


__all__ = ["STARVED_UNITS", "STARVED_WIDTH", "TINY_FRACTION", "raise_depth_hint_checked", "starved", "warn_degenerate",
           "warn_nothing_cut"]
