"""The chord: precise angles for deep ReLU-family chains (issue 13).

A deep ReLU-family network drives every correlation ρ = c / √(v1 v2) towards 1. The stored
covariance c = √(v1 v2)(1 - ε) then holds ε only to about eps/ε relative precision (eps of
the dtype), and the angle θ ≈ √(2ε) of every later layer (and the NTK's product of
E[φ'φ'] = hs - kθ) inherits that: float32 at depth 1,000 (W_std = 2) was 7% off the
off-diagonal NTK. No map can recover what the covariance has lost, so a dense flat state of a
deep chain carries, next to c, the chord

    e = 2 √(v1 v2)(1 - ρ) = 2(√(v1 v2) - c) = E[(u-v)²] - (√v1 - √v2)²  ≥ 0

(√(v1 v2) times the squared chord |u/|u| - v/|v||² of the normalized pre-activations), kept
to working precision by the two maps of the chain:

* ReLU family (``relu_map.chord_map``): θ from e, and e' = hs·e - 2k·√(v1 v2)·S(θ);
* Linear(W_std, b_std) (``affine_``), with w = W_std², β = b_std²: c' = w c + β,
  v' = w v + β, and (√((A+β)(B+β)) - √(AB) - β)·(√((A+β)(B+β)) + √(AB) + β) = β(√A - √B)²
  with A = w v1, B = w v2, so

      e' = w · (e + 2β (√v1 - √v2)² / (√(v1' v2') + w √(v1 v2) + β)),

  a sum of non-negative terms (no cancellation, whatever the norms: carrying the squared
  distance d = E[(u-v)²] instead, as the paired precise path does, leaves
  e = d - (√v1 - √v2)² to a difference that cancels for inputs of different norms).

It starts (``start``) at the first ReLU-family layer of a chain that has at least
``DEEP_CHAIN`` of them (``for_chain``, from the architecture alone: shallow networks never
pay for it; measured float32 off-diagonal NTK errors of the plain path, ReLU W_std = 2:
2e-7 at depth 20, 1e-6 at 30, 1.6e-5 at 100, 2e-4 at 300, 7e-2 at 1,000), from e =
2(√(v1 v2) - c) clamped at 0, 0 for an input with itself, and 0 or 4√(v1 v2) for ρ within
``relu_map.SNAP_ULPS`` ulps of ±1 (the snap convention). Only Linear and the ReLU family map
the chord (``Layer.maps_chord``); ``base.apply_chain`` drops it before and after every other
layer, and the next ReLU-family layer starts it again from the covariance.

Accuracy (tests/test_depth.py, 40-digit mpmath, W_std = 2): the float32 NTK, off-diagonal
included, is 5e-7 off at depth 1,000 (ReLU, b_std = 0; LeakyReLU(0.1), b_std = 0.1: 1e-5) and
5e-5 (1.2e-4) at depth 10,000, where it was 7% (4%) and 81% (75%) off; float64 6e-12 ->
2e-15 at depth 1,000 and 8e-8 -> 5e-15 at depth 10,000. Cost, deep chains only: torch
elementwise passes instead of the native one-pass map, ~2.5x the CPU time of the plain path
(float64, 256 inputs, 200 layers, one thread, measured on a loaded machine).
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import relu_map
from .state import KernelState

#: chains with at least this many ReLU-family layers carry the chord (module doc)
DEEP_CHAIN = 32


def for_chain(layers: Sequence, state: KernelState) -> KernelState:
    """``state`` with ``precise_angles`` set when ``layers`` hold at least ``DEEP_CHAIN``
    layers that map the chord and are not smooth at equal inputs (the ReLU family); else
    ``state`` itself (an enclosing chain's setting is kept)."""
    if state.precise_angles:
        return state
    count = sum(1 for layer in layers if layer.maps_chord and layer.nonsmooth)
    return state.replace(precise_angles=True) if count >= DEEP_CHAIN else state


def dropped(state: KernelState) -> KernelState:
    """``state`` without its chord (a layer that does not map it)."""
    return state if state.chord is None else state.replace(chord=None)


def start(state: KernelState) -> KernelState:
    """``state`` with its chord (module doc) when it is a dense flat state with
    ``precise_angles`` and without one; else ``state`` itself."""
    if (not state.precise_angles or state.chord is not None or state.cov is None
            or state.layout != "dense" or state.spatial != "none" or state.dist is not None):
        return state
    v1, v2 = state.broadcast_vars()
    sv = torch.sqrt(v1 * v2)
    chord = torch.sub(sv, state.cov).mul_(2.0).clamp_(min=0.0)
    # the snap convention: 1 - ρ or 1 + ρ below 1 - snap_limit, i.e. e below tol·√(v1 v2) or
    # above (4 - tol)·√(v1 v2), gives ρ = ±1 exactly (e = 0 or 4√(v1 v2))
    tol = 2 * (1.0 - relu_map.snap_limit(chord.dtype))
    chord.masked_fill_(chord < tol * sv, 0.0)
    chord = torch.where(chord > (4.0 - tol) * sv, 4.0 * sv, chord)
    if state.same_inputs:
        chord.diagonal().zero_()
    return state.replace(chord=chord)


def affine_(chord: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, w2: float, b2: float
            ) -> torch.Tensor:
    """In place: the chord after c' = w2·c + b2, v' = w2·v + b2 (module doc); v1, v2 the
    variances before the layer, broadcasting against ``chord``. Returns ``chord``."""
    if b2:
        s1, s2 = torch.sqrt(v1), torch.sqrt(v2)
        den = torch.mul(torch.sqrt(w2 * v1 + b2), torch.sqrt(w2 * v2 + b2))
        den.addcmul_(s1, s2, value=w2).add_(b2)
        chord.addcdiv_(torch.sub(s1, s2).square_(), den, value=2.0 * b2)
    return chord.mul_(w2)
