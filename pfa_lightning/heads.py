"""Cutting heads of torch's ``nn.MultiheadAttention`` (torchvision's ViT).

Torch's module ties its inner width to ``embed_dim`` (``F.multi_head_attention_forward`` derives the
head size from the query's width), so a module with heads removed becomes a
:class:`PrunedMultiheadAttention`: the same parameters (``in_proj_weight`` with ``3 x heads x head_dim``
rows, ``out_proj`` reading ``heads x head_dim`` features), the same call signature and results, computed
with ``scaled_dot_product_attention``. Its output projection is never called as a module, so the heads'
outputs are read by recomputing them from the module's call (:func:`heads_output`).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def cuttable(m: nn.MultiheadAttention) -> bool:
    # one packed in-projection, no extra key/value biases or zero attention: the layout cut here
    packed = isinstance(m, PrunedMultiheadAttention) or bool(m._qkv_same_embed_dim)
    return packed and m.bias_k is None and m.bias_v is None and not m.add_zero_attn


def _bind(query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
          need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
          is_causal: bool = False) -> dict[str, Any]:
    return dict(query=query, key=key, value=value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)


def _additive(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    if mask is None:
        return None
    if mask.dtype == torch.bool:  # True: not allowed to attend (torch's convention)
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def _attend(m: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None,
            need_weights: bool, attn_mask: Tensor | None, average_attn_weights: bool,
            is_causal: bool) -> tuple[Tensor, Tensor | None]:
    """The heads' concatenated outputs (batch-first, (N, L, heads x head_dim)) and the attention weights."""
    if not m.batch_first and query.dim() == 3:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = query[None], key[None], value[None]
    heads, d = int(m.num_heads), int(m.head_dim)
    inner = heads * d
    w, b = m.in_proj_weight, m.in_proj_bias
    bq, bk, bv = (None, None, None) if b is None else b.split(inner)
    q = F.linear(query, w[:inner], bq)
    k = F.linear(key, w[inner:2 * inner], bk)
    v = F.linear(value, w[2 * inner:], bv)
    n, length, source = q.shape[0], q.shape[1], k.shape[1]
    q, k, v = (t.reshape(n, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    mask = _additive(attn_mask, q.dtype)
    if mask is not None and mask.dim() == 3:  # (N * heads, L, S)
        mask = mask.reshape(n, heads, length, source)
    if key_padding_mask is not None:
        pad = _additive(key_padding_mask, q.dtype).reshape(n, 1, 1, source)
        mask = pad if mask is None else mask + pad
    if is_causal and mask is None:
        mask = torch.full((length, source), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
    dropout = m.dropout if m.training else 0.0
    weights = None
    if need_weights:
        scores = (q @ k.transpose(-2, -1)) * d ** -0.5
        if mask is not None:
            scores = scores + mask
        attention = scores.softmax(-1)
        weights = attention.mean(1) if average_attn_weights else attention
        out = F.dropout(attention, dropout, m.training) @ v
        if unbatched:
            weights = weights[0]
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    out = out.transpose(1, 2).reshape(n, length, inner)
    return (out[0] if unbatched else out), weights


def heads_output(module: nn.MultiheadAttention, args: tuple, kwargs: dict) -> Tensor:
    """The heads' concatenated outputs of one call of ``module`` (the input its ``out_proj`` reads)."""
    bound = _bind(*args, **kwargs)
    bound["need_weights"] = False
    return _attend(module, **bound)[0]


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """An ``nn.MultiheadAttention`` some of whose heads were removed (inner width ``num_heads x head_dim``,
    smaller than ``embed_dim``). Same parameters, signature and results as torch's module."""

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        out, weights = _attend(self, query, key, value, key_padding_mask, need_weights, attn_mask,
                               average_attn_weights, is_causal)
        out = self.out_proj(out)
        if not self.batch_first and out.dim() == 3:
            out = out.transpose(0, 1)
        return out, weights


def cut_heads(module: nn.MultiheadAttention, keep_heads: Sequence[int]) -> None:
    """Keep heads ``keep_heads`` of ``module``, in place (it becomes a :class:`PrunedMultiheadAttention`)."""
    heads, d = int(module.num_heads), int(module.head_dim)
    inner = heads * d
    keep = [h * d + i for h in sorted(set(int(h) for h in keep_heads)) for i in range(d)]
    rows = torch.tensor([part * inner + c for part in range(3) for c in keep], device=module.in_proj_weight.device)
    columns = torch.tensor(keep, device=module.out_proj.weight.device)
    module.in_proj_weight = nn.Parameter(module.in_proj_weight.detach()[rows].clone())
    if module.in_proj_bias is not None:
        module.in_proj_bias = nn.Parameter(module.in_proj_bias.detach()[rows].clone())
    module.out_proj.weight = nn.Parameter(module.out_proj.weight.detach()[:, columns].clone())
    module.out_proj.in_features = len(keep)
    module.num_heads = len(keep) // d
    module.__class__ = PrunedMultiheadAttention
    # nn.TransformerEncoderLayer's fused fast path (eval, no grad, an even number of heads) reads the weights
    # itself and needs 3 x embed_dim rows: this flag turns it off, so the module's own forward runs
    module._qkv_same_embed_dim = False
