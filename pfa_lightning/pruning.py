"""Torch-Pruning, imported without timm: ``from pfa_lightning.pruning import tp``.

Torch-Pruning's operation counter imports timm whenever timm is installed, only to count the
attention of timm's ViT and Swin; timm in turn imports wandb and torch.fx, so in an environment
with timm every ``import pfa_lightning`` took ~4 s longer. Here Torch-Pruning is imported with timm
hidden (unless the program has imported timm already), and :func:`count_timm_attention` gives the
counter timm's attention hooks, Torch-Pruning's own, once a model is counted after timm was imported.
(So ``pfa.count_flops`` counts timm's attention either way; calling Torch-Pruning's
``count_ops_and_params`` directly, before any ``pfa.count_flops``, would not.)
"""

from __future__ import annotations

import sys

if "timm" in sys.modules or "torch_pruning" in sys.modules:
    import torch_pruning as tp
else:
    sys.modules["timm"] = None  # type: ignore[assignment]  # `import timm` raises ImportError meanwhile
    try:
        import torch_pruning as tp
    finally:
        if sys.modules.get("timm", 0) is None:  # (another thread may have imported the real timm meanwhile)
            del sys.modules["timm"]

from torch_pruning.utils import op_counter


def count_timm_attention() -> None:
    """Register Torch-Pruning's counter for timm's attention modules if timm is loaded (what Torch-Pruning
    does at import time when timm is importable)."""
    timm = sys.modules.get("timm")
    if timm is None or getattr(op_counter, "has_timm", True):
        return
    hook = getattr(op_counter, "timm_multihead_attention_counter_hook", None)
    models = getattr(timm, "models", None)
    for module, name in (("vision_transformer", "Attention"), ("swin_transformer", "WindowAttention")):
        cls = getattr(getattr(models, module, None), name, None)
        if hook is not None and cls is not None:
            op_counter.MODULES_MAPPING.setdefault(cls, hook)


__all__ = ["count_timm_attention", "tp"]
