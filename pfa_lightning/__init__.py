"""Principal Filter Analysis for PyTorch: analyse layer responses, decide smaller widths, cut the model.

The core (this namespace) knows nothing of Lightning or Hydra; :class:`PFACallback` and
:func:`load_compressed` (``pfa_lightning.callback``) are imported on first use.

Example:
    >>> import pfa_lightning as pfa
    >>> stats = pfa.collect_responses(model, dataloader, max_samples=2000)
    >>> recipe = pfa.make_recipe(model, stats, pfa.KL(), example_inputs=x)
    >>> pfa.apply_recipe(model, recipe, example_inputs=x)   # the model is now smaller
"""

from pfa_lightning.errors import PFAError
from pfa_lightning.footprint import count_flops, count_params
from pfa_lightning.layers import register_layer, unregister_layer
from pfa_lightning.recalibration import recalibrate_batchnorm
from pfa_lightning.recipe import LayerRecipe, Recipe, make_recipe, spectra_of
from pfa_lightning.selection import (SELECTIONS, AbsMax, L1Max, MaxEnergy, PerSpace, Random, Selection, WeightL1,
                                     select_units)
from pfa_lightning.spectrum import Spectrum
from pfa_lightning.stats import LayerStats, ResponseStats, collect_responses
from pfa_lightning.strategies import KL, Energy, Footprint, Strategy, Uniform, resolve_strategy
from pfa_lightning.surgery import apply_recipe
from pfa_lightning.tracing import one_trace

__version__ = "0.1.0"

_LIGHTNING_EXPORTS = ("PFACallback", "load_compressed")


def __getattr__(name: str):
    # The Lightning layer is imported on first use, so that the core does not pay for importing Lightning.
    if name in _LIGHTNING_EXPORTS:
        from pfa_lightning import callback

        return getattr(callback, name)
    raise AttributeError(f"module 'pfa_lightning' has no attribute {name!r}")


__all__ = [
    "KL", "SELECTIONS", "AbsMax", "Energy", "Footprint", "L1Max", "LayerRecipe", "LayerStats", "MaxEnergy", "PerSpace", "PFACallback", "PFAError",
    "Random", "Recipe", "ResponseStats", "Selection", "Spectrum", "Strategy", "Uniform", "WeightL1", "apply_recipe",
    "collect_responses", "count_flops", "count_params", "load_compressed", "make_recipe", "one_trace", "recalibrate_batchnorm", "register_layer",
    "resolve_strategy", "select_units", "spectra_of", "unregister_layer",
]
