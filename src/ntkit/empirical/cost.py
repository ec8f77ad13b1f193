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
weighs these counts by ``SECONDS_PER_MAC`` (measured throughput) and adds the numbers each
implementation writes and reads back (``traffic``) weighted by ``SECONDS_PER_NUMBER``; it is
checked against measured times by ``benchmarks/empirical_ntk.py`` ("cost_model_gmacs",
"auto_is_fastest", and ``--calibrate``).
"""
from __future__ import annotations

import contextlib
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


def profile(fn: ModelFunction, x: Batch, rules: StructuredDerivatives,
            count_flops: bool = True) -> Profile:
    """Profile the first example of x (see the module docstring). ``count_flops=False`` skips
    torch's flop formulas (a Python call per operator) and gives as ``forward`` the lower
    bound Σ T·a·o, the multiply-adds of the covered linear maps alone."""
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
    counter = _FlopCount()
    try:
        with torch.no_grad(), counter if count_flops else contextlib.nullcontext():
            fn.call(fn.params, one)
    finally:
        for h in handles:
            h.remove()
    left = sum(fn.params[n].numel() for n in rules.leftover)
    forward = counter.flops / 2.0 if count_flops else float(
        sum(t * a * o for t, a, o, _, gram in shapes if not gram))
    return Profile(forward, shapes, elementwise, left, inputs)


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
#: 20-image CNN to Jacobians, 2.5x slower; the memory-traffic term (``SECONDS_PER_NUMBER``,
#: ``traffic``) now separates them. Measured on a shared machine at load 4-7.
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
        else:
            layers += min(_layer_forms(t, a, o, gram, k, kk, examples, pairs))
        layers += pairs * kk * o if bias else 0.0
    layers += sum(pairs * kk * d for d in p.elementwise)
    leftover = (passes + pairs * kk * p.left) if p.left else 0.0
    return {"jacobian": passes + pairs * kk * n_params,
            "ntvp": passes + 3.0 * k * pairs * p.forward,
            "structured": passes + layers + leftover}


def _layer_forms(t: int, a: int, o: int, gram: bool, k: int, kk: int, examples: float,
                 pairs: float) -> Tuple[float, float]:
    """Multiply-adds of a layer with T > 1 in the Gram-of-Grams form and in the per-example
    weight-gradient form (inf where that form does not apply: token Grams)."""
    gram_form = pairs * t * t * (a + kk * o)
    grad_form = float("inf") if gram else k * examples * t * o * a + pairs * kk * o * a
    return gram_form, grad_form


#: relative time per number written to memory and read back (``traffic``), in units of the
#: structured time per multiply-add: ~20, as one float (4 bytes) moved at the ~8 GB/s of one core
#: against ~40 G multiply-adds/s of float32 matrix products. ``benchmarks/empirical_ntk.py
#: --calibrate --repeats 3`` (one thread, 11 cases with the transformer at 100 sequences, quiet
#: window 23:57-00:02 UTC at load 1-3, loose): "auto" picked the fastest in 8 of 11 and was at
#: most 1.15x slower (transformer at 10 sequences 1.15x, LSTM at 100 1.14x, Myrtle-5 of width 16
#: on 20 images 1.10x, each within 15% of the pick); the transformers at 60 and 100 sequences,
#: which multiply-adds alone sent to structured derivatives (1.09x and 1.17x slower there), now
#: go to Jacobian contraction: their token Gram moves 2·n²·T² numbers for 1 multiply-add each.
SECONDS_PER_NUMBER = 20.0


def traffic(p: Profile, n_params: int, k: int, examples: float, pairs: float,
            full: bool) -> Dict[str, float]:
    """Numbers each implementation writes to memory and reads back, beyond its passes (whose
    traffic all three share), for the same ``examples`` and ``pairs`` as ``costs``:

    jacobian, ntvp   2·N·k·P            per-example Jacobians (ntvp: the rows of x1) formed,
                                        then read by the contraction
    structured       per layer: T = 1: N·(a + k·o) inputs and cotangents + 2·pairs Grams;
                     Gram-of-Grams form (T > 1; token Grams): 2·pairs·T²·(2 + 4k') (the
                     input Gram formed and converted; per output pair the cotangent Gram
                     formed, multiplied and summed over strided positions; on the whole square
                     of a symmetric block, ~2·pairs); per-example weight-gradient form:
                     N·T·(a + k·o) read + 2·N·k·o·a formed and read back;
                     elementwise layers N·k·D; parameters left to Jacobians 2·N·k·P_g.

    The Gram form moves T² numbers per pair where it does ~T²·(a + k'·o) multiply-adds, so for
    token Grams (a = 1) and short sequences it is memory-bound; the same holds for per-example
    weight gradients over few positions (T multiply-adds per number formed)."""
    kk = k * k if full else k
    jac = 2.0 * examples * k * n_params
    moved = 2.0 * examples * k * p.left
    for t, a, o, _, gram in p.layers:
        if t == 1:
            moved += examples * (a + k * o) + 2.0 * pairs
            continue
        gram_form, grad_form = _layer_forms(t, a, o, gram, k, kk, examples, pairs)
        if gram_form <= grad_form:
            moved += 2.0 * pairs * t * t * (2 + 4 * kk)
        else:
            moved += examples * t * (a + k * o) + 2.0 * examples * k * o * a
    moved += sum(examples * k * d for d in p.elementwise)
    return {"jacobian": jac, "ntvp": jac, "structured": moved}
