"""The precise path of nearly equal images through pooling: difference covariances carried.

For two nearly equal images x, x' = x + δ the ReLU kernel depends on the angle θ between the
pre-activations u = z(x)_p and v = z(x')_p at each position, and θ is tiny. From the
covariances, 1 − cos θ is a difference of O(1) numbers, so θ would only be known to √ε; the
precise path therefore carries the squared distances d_p = E[(u_p − v_p)²] (``relu_map``'s
distance-based angle, ``image_state.precise_image_state``). Convolutions map d exactly, but an
average pool needs the distance of pooled fields,

    E[(ū_P − v̄_P)²] = (1/k²) Σ_{p,q ∈ P} D_pq,      D_pq = E[(u_p − v_p)(u_q − v_q)],

the covariance of the difference field w = v − u at *different* positions, which no
covariance difference gives accurately. This module carries it, with the cross moment
M_pq = E[u_p w_q] it needs, layer by layer beside the state of the 3K pairs (x, x), (x', x'),
(x, x') of ``precise_image_state(..., "full")``:

* linear layers (Conv2d, Linear, AvgPool2d, GlobalAvgPool2d, Flatten): w has no bias, so M and
  D map as a covariance does with the bias removed (the layer applied to them with b_std=None);
* the ReLU family φ(t) = a·t + (b − a)·relu(t) (``ABReLU``): with G(u, v) = E[φ(u)φ(v)] =
  h c + k F, h = (a² + b²)/2, k = (b − a)²/2π, F = s − θ c, s = √(q_u q_v − c²), θ = atan2(s, c),

      M'_pq = E[φ(u_p) (φ(v_q) − φ(u_q))] = G(u_p, v_q) − G(u_p, u_q)
      D'_pq = E[(φ(v_p) − φ(u_p)) (φ(v_q) − φ(u_q))] = [G(v_p, v_q) − G(v_p, u_q)] − M'_pq,

  each first difference ``_first_difference`` computed from the increments of its arguments
  (δq = 2 M_qq + D_qq, δc = M_pq or M_pq + D_pq) without subtracting O(1) numbers: Δs from
  Δdet / (s₀ + s₁), Δθ from atan2(Δs c₀ − δc s₀, c₁ c₀ + s₁ s₀). On the diagonal p = q
  (where s₀ = 0) D'_pp is the layer's own precise distance and M'_pp = (h (2M_pp + D_pp) −
  D'_pp)/2 (since E[φ(u)²] = h q).

The first differences are exact to rounding relative to their size O(|δ|), so D' is known to
ε|δ| absolutely, which is what the pooled angle needs: θ_P ∝ √D̄ then has an absolute error
O(ε), and the NTK's E[φ'φ'] = h − kθ is exact to rounding. After a pooling layer the state's
distances are rebuilt from D (0 for an image with itself). Other layers drop M and D, which
leaves those pairs on the covariance-based angle (about √ε-accurate after a pool).
"""
from __future__ import annotations

import copy
import math
from typing import Optional, Sequence, Tuple

import torch

from .base import Layer
from .conv import Conv2d
from .dense import Linear
from .pooling import AvgPool2d, Flatten, GlobalAvgPool2d
from .relu import ABReLU
from .state import KernelState

#: layers whose map of covariances is linear, so that M and D map through them with the bias
#: removed (``_linear``)
LINEAR_LAYERS = (Conv2d, Linear, AvgPool2d, GlobalAvgPool2d, Flatten)


def initial_differences(a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """M⁰_pq = (1/C) Σ_c a_p (b_q − a_q) and D⁰_pq = (1/C) Σ_c (b_p − a_p)(b_q − a_q) for the
    K image pairs a, b: (K, C, H, W) -> two (K, H, W, H, W) tensors."""
    w = b - a
    c = a.shape[1]
    return (torch.einsum("kchw,kcxy->khwxy", a, w).div_(c),
            torch.einsum("kchw,kcxy->khwxy", w, w).div_(c))


def _first_difference(qa, qb, c0, dqb, dc):
    """F(qa, qb + dqb, c0 + dc) − F(qa, qb, c0) for F = s − θc (module doc), from the
    increments, without cancellation."""
    s0 = (qa * qb - c0 * c0).clamp(min=0.0).sqrt()
    ddet = qa * dqb - dc * (2 * c0 + dc)
    s1 = (s0 * s0 + ddet).clamp(min=0.0).sqrt()
    den = s0 + s1
    ds = torch.where(den > 0, ddet / torch.where(den > 0, den, torch.ones_like(den)),
                     torch.zeros_like(den))
    c1 = c0 + dc
    theta0 = torch.atan2(s0, c0)
    dtheta = torch.atan2(ds * c0 - dc * s0, c1 * c0 + s1 * s0)
    return ds - (theta0 + dtheta) * dc - dtheta * c0


def _diagonal(t: torch.Tensor) -> torch.Tensor:
    """(K, H, W, H, W) -> (K, H, W): the same-position entries."""
    k, h, w = t.shape[:3]
    return t.reshape(k, h * w, h * w).diagonal(dim1=1, dim2=2).reshape(k, h, w)


def _relu_differences(layer: ABReLU, before: KernelState, after: KernelState,
                      m: torch.Tensor, d: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(M', D') of the ReLU-family ``layer`` from the pre-activation state ``before`` (3K
    pairs, "full") and the post-activation ``after`` (for its precise diagonal distance)."""
    h, diff2 = layer._coefs  # (a² + b²)/2, (b − a)²
    k = diff2 / (2 * math.pi)
    n = m.shape[0]
    cuu, cvv, cuv = before.cov[:n], before.cov[n:2 * n], before.cov[2 * n:]
    shape = m.shape
    qu, qv = _diagonal(cuu), _diagonal(cvv)
    qp_u = qu[:, :, :, None, None].expand(shape)     # q of u at p
    qp_v = qv[:, :, :, None, None].expand(shape)     # q of v at p
    qq_u = qu[:, None, None, :, :].expand(shape)     # q of u at q
    dq = (2 * _diagonal(m) + _diagonal(d))[:, None, None, :, :].expand(shape)  # q_v − q_u at q
    # G(u_p, v_q) − G(u_p, u_q): base c = E[u_p u_q], increment E[u_p w_q] = M_pq
    m_new = h * m + k * _first_difference(qp_u, qq_u, cuu, dq, m)
    # G(v_p, v_q) − G(v_p, u_q): base c = E[v_p u_q] (cuv transposed), increment M_pq + D_pq
    cvu = cuv.permute(0, 3, 4, 1, 2)
    e_vd = h * (m + d) + k * _first_difference(qp_v, qq_u, cvu, dq, m + d)
    d_new = e_vd - m_new
    # the diagonal: the layer's own precise distance, and M'_pp from E[φ(u)²] = h q
    dist_pp = _diagonal(after.dist[2 * n:])
    m_pp = (h * (2 * _diagonal(m) + _diagonal(d)) - dist_pp) / 2
    kk, hh, ww = m.shape[:3]
    d_new.reshape(kk, hh * ww, hh * ww).diagonal(dim1=1, dim2=2).copy_(dist_pp.reshape(kk, -1))
    m_new.reshape(kk, hh * ww, hh * ww).diagonal(dim1=1, dim2=2).copy_(m_pp.reshape(kk, -1))
    return m_new, d_new


def _linear(layer: Layer, state: KernelState, t: torch.Tensor) -> torch.Tensor:
    """``t`` (K pairs' difference moments) mapped by the linear ``layer`` without its bias."""
    shadow = copy.copy(layer)
    if hasattr(shadow, "b_std"):
        shadow.b_std = None
    n = t.shape[0]
    zeros = torch.zeros_like(t)
    stacked = torch.cat([zeros, zeros, t])
    probe = state.replace(cov=stacked, ntk=None, dist=None, track_ntk=False,
                          var1=torch.zeros_like(state.var1), var2=torch.zeros_like(state.var2))
    return shadow.apply(probe).cov[2 * n:]


def _rebuilt_distances(state: KernelState, d: torch.Tensor) -> torch.Tensor:
    """The state's squared distances after a pooling layer: from the carried D on the cross
    pairs' same positions, 0 for an image with itself there, and Var + Var − 2 Cov (not small)
    at different positions."""
    n = d.shape[0]
    if state.spatial == "none":
        zeros = torch.zeros_like(d)
        return torch.cat([zeros, zeros, d]).clamp_(min=0.0)
    v1, v2 = state.broadcast_vars()
    dist = (v1 + v2 - 2 * state.cov).clamp_(min=0.0)
    m, hh, ww = dist.shape[:3]
    diag = dist.reshape(m, hh * ww, hh * ww).diagonal(dim1=1, dim2=2)
    diag[:2 * n].zero_()
    diag[2 * n:].copy_(_diagonal(d).reshape(n, -1).clamp(min=0.0))
    return dist


def apply_precise(layers: Sequence[Layer], state: KernelState, m: torch.Tensor,
                  d: torch.Tensor) -> KernelState:
    """``base.apply_chain`` for the 3K-pair precise state of ``precise_image_state(a, b,
    "full")`` with the difference moments M, D (``initial_differences(a, b)``) carried beside
    it (module doc). Same renormalization as ``apply_chain``."""
    start = state.renormalized()
    factor = 2.0 ** (state.log2_scale - start.log2_scale)
    carried: Optional[Tuple[torch.Tensor, torch.Tensor]] = (m * factor, d * factor)
    state = start
    for depth, layer in enumerate(layers):
        try:
            after = layer.apply(state)
        except OverflowError as err:
            raise OverflowError(f"layer {depth} ({type(layer).__name__}): {err}") from None
        if carried is not None and after.log2_scale != state.log2_scale:
            carried = None  # a layer that left the scale (a non-homogeneous map) is not carried
        if carried is not None:
            if isinstance(layer, ABReLU) and state.spatial == "full" and after.dist is not None:
                carried = _relu_differences(layer, state, after, *carried)
            elif isinstance(layer, LINEAR_LAYERS) and state.spatial == "full":
                carried = tuple(_linear(layer, state, t) for t in carried)
                if after.dist is None:
                    after = after.replace(dist=_rebuilt_distances(after, carried[1]))
            else:
                carried = None
        if carried is not None and after.spatial != "full":
            carried = None  # flat from here on: the carried distance suffices
        renormed = after.renormalized()
        if carried is not None and renormed.log2_scale != after.log2_scale:
            factor = 2.0 ** (after.log2_scale - renormed.log2_scale)
            carried = tuple(t * factor for t in carried)
        state = renormed
    return state
