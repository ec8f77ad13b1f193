"""Cost model of the three implementations, in multiply-adds, for the automatic choice.

One example's forward pass is profiled once (``profile``): its multiply-adds F (matrix products,
convolutions, attention; torch's flop formulas, halved) and, for each module with a structured
rule, the positions T, input size a and output size o of its linear maps per example. For n1
rows, n2 columns, "pairs" kernel entries contracted (n1·n2; x2=None: n(n+1)/2), N examples whose
features are computed (n1 + n2, more when blocks recompute column features), k outputs,
k' = k² ("full") or k (the other modes) and P differentiated parameters (P_g of them left to
Jacobians by the structured rules):

    jacobian    N·(1 + 2k)·F + pairs·k'·P
    ntvp        N·(1 + 2k)·F + 3·k·pairs·F           (Jacobian rows, then k JVPs per column)
    structured  N·(1 + 2k)·F + Σ_layers C_layer + pairs·k'·P_g  (+ N·(1 + 2k)·F when P_g > 0)

with, per linear-in-weight layer (Novak et al. 2022, section 4, as in ``structured``):
T = S = 1: pairs·(a + k'·o); otherwise min(pairs·T²·(a + k'·o), k·N·T·o·a + pairs·k'·o·a)
(Gram of Grams, or per-example weight gradients)
(embeddings: the first, with a = 1), plus pairs·k'·o for a bias; elementwise-affine layers
pairs·k'·D. One forward and k backward passes cost about (1 + 2k)·F. The automatic choice
weighs these counts by ``SECONDS_PER_MAC`` (measured throughput) and is checked against
measured times by ``benchmarks/empirical_ntk.py`` ("cost_model_gmacs", "auto_is_fastest").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from . import attention
from ._batch import Batch, take
from ._model import ModelFunction
from .registry import AttentionRule, ElementwiseRule, LinearRule
from .structured import StructuredDerivatives


def _rnn_layer_flops(inputs, w_input, w_hidden, *args, out_val=None, **kwargs) -> int:
    """One LSTM layer run by oneDNN (``aten.mkldnn_rnn_layer``, what nn.LSTM calls on CPU; torch
    counts no flops for it): per step and example, the gates' (4H, I) and (4H, H) products."""
    steps_times_batch = inputs.shape[0] * inputs.shape[1]
    return 2 * steps_times_batch * w_input.shape[0] * (w_input.shape[1] + w_hidden.shape[1])


#: formulas for operators torch's flop counter lacks (the rest of nn.GRU/nn.RNN/nn.LSTM on other
#: paths decomposes into counted matrix products)
_EXTRA_FLOPS = {torch.ops.aten.mkldnn_rnn_layer: _rnn_layer_flops}


class _FlopCount(TorchDispatchMode):
    """Floating-point operations of the matrix products, convolutions and attention run under
    it, by torch's own formulas (``torch.utils.flop_counter``; without FlopCounterMode's
    per-module bookkeeping, which costs more than the small forward pass profiled here) and
    ``_EXTRA_FLOPS``."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket) or _EXTRA_FLOPS.get(
            func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


@dataclass
class Profile:
    """One example's forward multiply-adds and its structured layers (T, a, o, bias, gram);
    ``inputs``: per layer the numbers its features keep of the input (a convolution keeps its
    input, unfolded to T·a patch numbers only while contracted; empty: T·a for every layer)."""

    forward: float
    layers: List[Tuple[int, int, int, bool, bool]] = field(default_factory=list)
    elementwise: List[int] = field(default_factory=list)
    left: int = 0  # parameters left to Jacobians by the structured rules
    inputs: List[int] = field(default_factory=list)

    def structured_numbers(self, k: int) -> float:
        """Numbers the structured features of one example hold: per layer its kept inputs
        (``inputs``; token ids: T) and cotangents k·T·o; k·D per elementwise layer; k·P_g; plus
        what the contraction of the largest layer with T > 1 forms at once: its patches T·a
        and per-example weight gradients k·o·a."""
        total = float(k * self.left + sum(k * d for d in self.elementwise))
        kept = self.inputs or [t * a for t, a, _, _, _ in self.layers]
        transient = 0
        for (t, a, o, _, gram), held in zip(self.layers, kept):
            total += held + k * t * o
            if t > 1 and not gram:
                transient = max(transient, t * a + k * o * a)
        return total + transient

    def largest_cotangent(self, k: int) -> int:
        """k·T·o of the layer with the most output numbers (0 without layers)."""
        return max((k * t * o for t, _, o, _, _ in self.layers), default=0)


def profile(fn: ModelFunction, x: Batch, rules: StructuredDerivatives) -> Profile:
    """Profile the first example of x (see the module docstring)."""
    one = take(x, 0, 1)
    shapes: List[Tuple[int, int, int, bool, bool]] = []
    inputs: List[int] = []
    elementwise: List[int] = []
    covered = {id(c.module): c for c in rules.covered}

    def hook(module, args, output):
        c = covered[id(module)]
        u = args[0] if args else None
        if isinstance(c.rule, LinearRule) and isinstance(u, torch.Tensor):
            t, a = c.rule.patches(u).shape[1:]
            o = c.rule.outputs(output.unsqueeze(0)).shape[-1]
            gram = c.rule.input_gram is not None
            shapes.append((t, 1 if gram else a, o, "bias" in c.names, gram))
            inputs.append(u.numel() if c.rule.channels_last else t * (1 if gram else a))
        elif isinstance(c.rule, ElementwiseRule):
            elementwise.append(2 * int(c.rule.outputs(output.unsqueeze(0)).shape[-1]))
        elif isinstance(c.rule, AttentionRule) and isinstance(u, torch.Tensor):
            length, e = u.numel() // u.shape[-1], u.shape[-1]
            bias = any(b in c.names for _, b in attention.parameter_roles(module).values() if b)
            shapes.extend([(length, e, 3 * e, bias, False), (length, e, e, bias, False)])
            inputs.extend([length * e, length * e])

    handles = [c.module.register_forward_hook(hook) for c in rules.covered]
    try:
        counter = _FlopCount()
        with torch.no_grad(), counter:
            fn.call(fn.params, one)
    finally:
        for h in handles:
            h.remove()
    left = sum(fn.params[n].numel() for n in rules.leftover)
    return Profile(counter.flops / 2.0, shapes, elementwise, left, inputs)


#: relative time per multiply-add. ``benchmarks/empirical_ntk.py --calibrate`` (one thread; a
#: grid of MLPs, CNNs, a Myrtle-5 of width 16, transformer encoders and LSTMs at small and large
#: batches) measured Jacobian contraction at a median 1.35x (0.48-3.7x) the time per predicted
#: multiply-add of structured derivatives and NTK-vector products at 1.45x (0.12-3.1x, never the
#: fastest); with 1.3 "auto" picked the fastest in 7 of 10 cases and was at most 1.13x slower in
#: the others (transformers at 10 and 60 sequences 1.05x and 1.10x, where the two are within
#: 10%; LSTM at 100 1.13x; the benchmark's transformer at 100 sequences, measured once, worse:
#: structured 929 ms against Jacobians' 430 ms, predicted 5.5 against 1.3 x 4.7 G). The spread
#: is per architecture (per-example convolution gradients under vmap run ~3x fewer
#: multiply-adds per second than the structured Grams; for transformer layers the structured path
#: is the slower per multiply-add: per-example weight gradients over 32 tokens and passes over
#: the n²T² token Gram are memory-bound), so no single weight is right everywhere: weighting
#: structured per-example weight gradients like Jacobians routes the transformers right but the
#: 20-image CNN to Jacobians, 2.5x slower (a memory-traffic term is the next step). Measured on
#: a shared machine at load 4-7, to be re-measured on a quiet one.
SECONDS_PER_MAC = {"jacobian": 1.3, "ntvp": 1.3, "structured": 1.0}


def costs(p: Profile, n_params: int, k: int, examples: float, pairs: float,
          full: bool) -> Dict[str, float]:
    """Multiply-adds of each implementation (see the module docstring) when the features of
    ``examples`` examples are computed and ``pairs`` kernel entries contracted."""
    kk = k * k if full else k
    passes = examples * (1 + 2 * k) * p.forward
    layers = 0.0
    for t, a, o, bias, gram in p.layers:
        if t == 1:
            layers += pairs * (a + kk * o)
        elif gram:
            layers += pairs * t * t * (a + kk * o)
        else:
            layers += min(pairs * t * t * (a + kk * o), k * examples * t * o * a + pairs * kk * o * a)
        layers += pairs * kk * o if bias else 0.0
    layers += sum(pairs * kk * d for d in p.elementwise)
    leftover = (passes + pairs * kk * p.left) if p.left else 0.0
    return {"jacobian": passes + pairs * kk * n_params,
            "ntvp": passes + 3.0 * k * pairs * p.forward,
            "structured": passes + layers + leftover}
