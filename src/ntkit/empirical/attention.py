"""The linear maps inside nn.MultiheadAttention, exposed for structured derivatives.

nn.MultiheadAttention computes, for query/key/value inputs x_q, x_k, x_v (n, L, E),

    q = x_q W_qᵀ + b_q,  k = x_k W_kᵀ + b_k,  v = x_v W_vᵀ + b_v      (in-projections)
    a = Attention(q, k, v; masks)                                     (heads, softmax)
    y = a W_oᵀ + b_o                                                   (out-projection)

with W_q, W_k, W_v the row blocks of the packed ``in_proj_weight`` (or the separate
``q/k/v_proj_weight``). All four maps are linear in their weights, so each contributes to the
NTK through its input and the cotangent of its output only (``structured``). ``probed_forward``
returns a replacement forward that computes the projections itself, hands (input, output) of
each to ``record`` (which adds a zero probe to the output and keeps both), and runs everything
between the projections through torch's own ``F.multi_head_attention_forward`` with identity
projections, so masks, ``bias_k``/``bias_v``, ``add_zero_attn`` and attention weights keep
torch's exact semantics. When query, key and value are the same tensor and the weight is packed,
the three in-projections are one map x W_inᵀ + b_in (3E outputs): role "qkv".
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

Record = Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]


def probed_forward(m: nn.MultiheadAttention, record: Record) -> Callable:
    """A forward for ``m`` (same signature and result as ``m.forward``) that reports its linear
    maps to ``record(role, u, z) -> z + probe``; u and z batch-first (n, L, ·); roles "qkv" or
    "q", "k", "v", then "out"."""

    def forward(query, key, value, key_padding_mask: Optional[torch.Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[torch.Tensor] = None,
                average_attn_weights: bool = True, is_causal: bool = False):
        if query.dim() != 3:
            raise ValueError("structured derivatives of nn.MultiheadAttention need batched "
                             "(3-d) inputs; use implementation='jacobian'")
        same = query is key and key is value
        if not m.batch_first:  # work batch-first
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        e = m.embed_dim
        bias = m.in_proj_bias
        bq, bk, bv = (None, None, None) if bias is None else bias.chunk(3)
        if m._qkv_same_embed_dim:
            if same:
                qkv = record("qkv", query, F.linear(query, m.in_proj_weight, bias))
                q, k, v = qkv.chunk(3, dim=-1)
            else:
                wq, wk, wv = m.in_proj_weight.chunk(3)
                q = record("q", query, F.linear(query, wq, bq))
                k = record("k", key, F.linear(key, wk, bk))
                v = record("v", value, F.linear(value, wv, bv))
        else:
            q = record("q", query, F.linear(query, m.q_proj_weight, bq))
            k = record("k", key, F.linear(key, m.k_proj_weight, bk))
            v = record("v", value, F.linear(value, m.v_proj_weight, bv))
        eye = torch.eye(e, dtype=q.dtype, device=q.device)
        a, weights = F.multi_head_attention_forward(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), e, m.num_heads, None, None,
            m.bias_k, m.bias_v, m.add_zero_attn, m.dropout, eye, None, training=m.training,
            key_padding_mask=key_padding_mask, need_weights=need_weights, attn_mask=attn_mask,
            use_separate_proj_weight=True, q_proj_weight=eye, k_proj_weight=eye,
            v_proj_weight=eye, average_attn_weights=average_attn_weights, is_causal=is_causal)
        a = a.transpose(0, 1)
        y = record("out", a, F.linear(a, m.out_proj.weight, m.out_proj.bias))
        return (y if m.batch_first else y.transpose(0, 1)), weights

    return forward


def parameter_roles(m: nn.MultiheadAttention):
    """{role: (weight attribute path, bias attribute path or None)} of ``m``'s linear maps."""
    if m._qkv_same_embed_dim:
        w = {r: "in_proj_weight" for r in ("qkv", "q", "k", "v")}
    else:
        w = {"q": "q_proj_weight", "k": "k_proj_weight", "v": "v_proj_weight"}
    b = "in_proj_bias" if m.in_proj_bias is not None else None
    roles = {r: (w[r], b) for r in w}
    roles["out"] = ("out_proj.weight", "out_proj.bias" if m.out_proj.bias is not None else None)
    return roles
