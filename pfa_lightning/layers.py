"""Layer kinds: everything PFA needs to know about a module type, in one registry.

A *layer kind* is a module whose outputs are units PFA can analyse and cut (Conv, Linear, or a
user's own module): its width, the axis of its units, the weights that belong to each unit, its
channel groups, whether compensation may fold removed inputs into it, and the Torch-Pruning
pruner that slices it (forwarded to Torch-Pruning's ``customized_pruners``).

An *attention kind* is a module whose heads PFA can cut whole: the heads' concatenated outputs
(the input of the output projection) are analysed as one space of ``heads x head_dim`` units,
and a kept width is a whole number of heads.

    pfa.register_layer(MyLinear, unit_dim=-1)            # weight (out, in), bias (out,): sliced for you
    pfa.register_layer(MyConv, pruner=MyConvPruner())    # or Torch-Pruning's own pruner for it

Built in: Conv1d/2d/3d and Linear; the attention of timm's ViT (``timm...Attention``), matched
by name so that the core does not import timm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from torch import Tensor, nn

from pfa_lightning.errors import PFAError
from pfa_lightning.heads import cut_heads, cuttable, heads_output
from pfa_lightning.pruning import tp


def _weight(module: nn.Module) -> Tensor:
    return module.weight.detach()


def _one(module: nn.Module) -> int:
    return 1


def _conv_groups(module: nn.Module) -> int:
    depthwise = module.groups == module.in_channels == module.out_channels  # Torch-Pruning couples in and out
    return 1 if depthwise else int(module.groups)


@dataclass(frozen=True)
class LayerKind:
    """What PFA knows of one module type whose outputs are units."""

    module_type: type[nn.Module]
    width: Callable[[nn.Module], int]  # number of output units
    unit_dim: int = 1  # axis of the units in the module's output: 1 for (N, C, ...), -1 for (..., C)
    unit_weights: Callable[[nn.Module], Tensor] = _weight  # indexed by unit along dim 0 (weight selections)
    groups: Callable[[nn.Module], int] = _one  # equal consecutive channel groups a cut must respect
    foldable: bool = False  # compensation may fold removed inputs into its weights (dense Conv/Linear)
    pruner: Any = None  # Torch-Pruning pruner for a type Torch-Pruning does not know (None: its own)


@dataclass(frozen=True)
class AttentionKind:
    """What PFA knows of one attention module type whose heads it can cut."""

    heads: Callable[[nn.Module], int]
    head_dim: Callable[[nn.Module], int]
    projection: Callable[[nn.Module], nn.Linear]  # reads the heads' concatenated outputs (its input is analysed)
    cut: Callable[[nn.Module, Sequence[int]], None]  # keep these heads (ascending), in place
    # the heads' concatenated outputs from the module's call (module, args, kwargs) -> (..., heads x head_dim),
    # where the projection is not called as a module (torch's MultiheadAttention); None: read its input
    read: Callable[[nn.Module, tuple, dict], Tensor] | None = None
    applies: Callable[[nn.Module], bool] = lambda m: True  # a module of the type whose heads can be cut


class RowsPruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning pruner for a module holding ``weight`` (out, in, ...) and an optional ``bias`` (out,):
    output units are rows of both, input channels columns of the weight; ``out_attr``/``in_attr`` name
    attributes that hold the two sizes (kept in step when given)."""

    def __init__(self, out_attr: str | None = None, in_attr: str | None = None) -> None:
        super().__init__()
        self.out_attr, self.in_attr = out_attr, in_attr

    @staticmethod
    def _keep(n: int, idxs: Sequence[int]) -> list[int]:
        gone = set(int(i) for i in idxs)
        return [i for i in range(n) if i not in gone]

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = self._keep(layer.weight.shape[0], idxs)
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
        if getattr(layer, "bias", None) is not None:
            layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
        if self.out_attr:
            setattr(layer, self.out_attr, len(keep))
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = self._keep(layer.weight.shape[1], idxs)
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
        if self.in_attr:
            setattr(layer, self.in_attr, len(keep))
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return int(layer.weight.shape[0])

    def get_in_channels(self, layer: nn.Module) -> int:
        return int(layer.weight.shape[1])


_LAYERS: dict[type[nn.Module], LayerKind] = {}
_ATTENTION: dict[str, AttentionKind] = {}  # by qualified class name: the core imports no model library


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_layer(module_type: type[nn.Module], *, width: Callable[[nn.Module], int] | None = None,
                   unit_dim: int = 1, unit_weights: Callable[[nn.Module], Tensor] | None = None,
                   groups: Callable[[nn.Module], int] | None = None, pruner: Any = None,
                   out_attr: str | None = None, in_attr: str | None = None) -> LayerKind:
    """Make ``module_type`` (a user's own leaf module) a layer PFA analyses and cuts.

    Args:
        module_type: an ``nn.Module`` subclass whose outputs are units.
        width: the number of output units (default: ``module.weight.shape[0]``).
        unit_dim: the axis of the units in the module's output: 1 for ``(N, C, ...)``, -1 for ``(..., C)``.
        unit_weights: a tensor indexed by unit along dim 0, for the weight-based selections
            (default: ``module.weight``).
        groups: equal consecutive groups of its output channels that a cut must respect (default: 1).
        pruner: a Torch-Pruning pruner (``tp.pruner.function.BasePruningFunc``) for the type; by default
            :class:`RowsPruner`, which slices ``weight`` rows/columns and ``bias``, and keeps ``out_attr`` /
            ``in_attr`` (attribute names holding the sizes, e.g. ``"out_features"``) in step.

    Registering a type again replaces its kind; the built-in kinds (Conv, Linear) cannot be replaced.
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise PFAError(f"register_layer: module_type must be an nn.Module subclass, got {module_type!r}.")
    if module_type in _BUILT_IN:
        raise PFAError(f"register_layer: {module_type.__name__} is built in; register a subclass of your own instead.")
    if unit_dim not in (1, -1):
        raise PFAError(f"register_layer: unit_dim must be 1 ((N, C, ...) outputs) or -1 ((..., C) outputs), "
                       f"got {unit_dim!r}.")
    if pruner is not None and not isinstance(pruner, tp.pruner.function.BasePruningFunc):
        raise PFAError(f"register_layer: pruner must be a Torch-Pruning pruner (tp.pruner.function.BasePruningFunc), "
                       f"got {type(pruner).__name__}.")
    kind = LayerKind(module_type, width or (lambda m: int(m.weight.shape[0])), unit_dim, unit_weights or _weight,
                     groups or _one, False, pruner or RowsPruner(out_attr, in_attr))
    _LAYERS[module_type] = kind
    return kind


def unregister_layer(module_type: type[nn.Module]) -> None:
    """Forget a kind :func:`register_layer` added (built-in kinds stay)."""
    if module_type not in _BUILT_IN:
        _LAYERS.pop(module_type, None)


def register_attention(qualified_name: str, kind: AttentionKind) -> None:
    """Make the attention modules of class ``qualified_name`` (``module.QualName``) cut by whole heads."""
    _ATTENTION[qualified_name] = kind


def layer_kind(module: nn.Module) -> LayerKind | None:
    """The kind of ``module`` (the nearest registered class in its MRO), or None."""
    for cls in type(module).__mro__:
        if cls in _LAYERS:
            return _LAYERS[cls]
    return None


def attention_kind(module: nn.Module) -> AttentionKind | None:
    """The attention kind of ``module`` if PFA can cut its heads, else None."""
    for cls in type(module).__mro__:
        kind = _ATTENTION.get(_qualified(cls))
        if kind is not None:
            return kind if kind.applies(module) else None
    return None


def layer_types() -> tuple[type[nn.Module], ...]:
    """Every registered layer type (for isinstance checks)."""
    return tuple(_LAYERS)


def customized_pruners() -> dict[type[nn.Module], Any]:
    """The pruners of the registered kinds Torch-Pruning does not know, for its ``customized_pruners``."""
    return {t: k.pruner for t, k in _LAYERS.items() if k.pruner is not None}


def unit_count(module: nn.Module) -> int:
    """Number of output units of a registered layer, or of heads x head_dim of an attention module."""
    kind = layer_kind(module)
    if kind is not None:
        return int(kind.width(module))
    attention = attention_kind(module)
    if attention is not None:
        return int(attention.heads(module) * attention.head_dim(module))
    raise PFAError(f"{type(module).__name__} is not a layer PFA knows (see pfa_lightning.register_layer).")


def unit_weights(module: nn.Module) -> Tensor:
    """Per-unit weights (dim 0: units) of a layer; of an attention module, its projection's input columns."""
    kind = layer_kind(module)
    if kind is not None:
        return kind.unit_weights(module)
    attention = attention_kind(module)
    if attention is not None:
        return attention.projection(module).weight.detach().t()
    raise PFAError(f"{type(module).__name__} is not a layer PFA knows (see pfa_lightning.register_layer).")


def channel_groups(module: nn.Module) -> int:
    """How many groups ``module`` splits its channels into, when a cut must respect them: a registered
    layer's own (a grouped, not depthwise, convolution) or a GroupNorm's; 1 otherwise."""
    if isinstance(module, nn.GroupNorm):
        return int(module.num_groups)
    kind = layer_kind(module)
    return int(kind.groups(module)) if kind is not None else 1


# -- built-in kinds -------------------------------------------------------------------------------
for _conv in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    _LAYERS[_conv] = LayerKind(_conv, lambda m: int(m.out_channels), 1, _weight, _conv_groups, True)
_LAYERS[nn.Linear] = LayerKind(nn.Linear, lambda m: int(m.out_features), -1, _weight, _one, True)
_BUILT_IN = frozenset(_LAYERS)


def _timm_cut(module: nn.Module, keep_heads: Sequence[int]) -> None:
    """Keep heads ``keep_heads`` of a timm ``Attention`` (qkv rows of q, k and v, the optional gate and
    scale norm, the projection's columns), with Torch-Pruning's own Linear/LayerNorm pruners."""
    heads, dim = int(module.num_heads), int(module.head_dim)
    attn_dim = heads * dim
    gone = [h for h in range(heads) if h not in set(keep_heads)]
    channels = [h * dim + i for h in gone for i in range(dim)]
    tp.prune_linear_out_channels(module.qkv, [part * attn_dim + c for part in range(3) for c in channels])
    if getattr(module, "gate", None) is not None:
        tp.prune_linear_out_channels(module.gate, channels)
    if isinstance(getattr(module, "norm", None), nn.LayerNorm):
        tp.prune_layernorm_out_channels(module.norm, channels)
    tp.prune_linear_in_channels(module.proj, channels)
    module.num_heads = heads - len(gone)
    module.attn_dim = module.num_heads * dim


_TIMM = AttentionKind(heads=lambda m: int(m.num_heads), head_dim=lambda m: int(m.head_dim), projection=lambda m: m.proj,
                      cut=_timm_cut)
for _name in ("timm.layers.attention.Attention", "timm.models.vision_transformer.Attention"):  # timm >= 1.0.20, before
    register_attention(_name, _TIMM)


def heads_of(kept_units: Sequence[int], head_dim: int) -> list[int]:
    """The heads wholly kept by ``kept_units`` (channels of the concatenated heads)."""
    kept = set(int(u) for u in kept_units)
    n = (max(kept) // head_dim + 1) if kept else 0
    whole = [h for h in range(n) if all(h * head_dim + i in kept for i in range(head_dim))]
    if sum(head_dim for _ in whole) != len(kept):
        raise PFAError(f"kept units {sorted(kept)[:12]}... are not whole heads of {head_dim} units")
    return whole



__all__ = ["AttentionKind", "LayerKind", "RowsPruner", "attention_kind", "channel_groups", "customized_pruners",
           "layer_kind", "layer_types", "register_attention", "register_layer", "unit_count", "unit_weights",
           "unregister_layer"]
register_attention("torch.nn.modules.activation.MultiheadAttention", AttentionKind(
    heads=lambda m: int(m.num_heads), head_dim=lambda m: int(m.head_dim), projection=lambda m: m.out_proj,
    cut=cut_heads, read=heads_output, applies=cuttable))
