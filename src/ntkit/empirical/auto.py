"""The plan of an empirical-NTK call: which implementation ("auto" by cost), the block size
(from the memory budget, see ``memory``), and the fallbacks when torch.func.vmap cannot run the
model (``next_options``: per-example autograd, with a warning naming the reason). Nothing is
probed in advance: a fallback is taken when the first block fails, so a model vmap can run pays
nothing for the check.

The automatic choice among the three implementations:
* ``"structured"`` when modules with structured rules (Linear, Conv1d/2d, Embedding, LayerNorm,
  the linear maps of MultiheadAttention, ntkit's NTK layers) hold at least half of the
  differentiated parameters: their contribution costs Gram matrices of layer inputs and
  cotangents, orders of magnitude below a Jacobian (the rest of the parameters still go
  through Jacobian contraction);
* otherwise ``"ntvp"`` when the per-block Jacobian (n·k·P numbers) would exceed
  ``JACOBIAN_BUDGET`` bytes, or for "full" kernels with k ≥ 4 outputs (contracting Jacobians
  costs k² per pair of examples there, NTK-vector products k);
* otherwise ``"jacobian"``.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Optional

import torch

from . import memory
from ._batch import Batch, batch_len, take
from ._model import ModelFunction
from .jacobian import VmapError
from .structured import LayoutError, StructuredDerivatives
from .tile import TileOptions

IMPLEMENTATIONS = ("auto", "jacobian", "ntvp", "structured")
JACOBIAN_BUDGET = 2 * 2 ** 30


class VmapFallbackWarning(UserWarning):
    """torch.func.vmap cannot run the model; per-example autograd is used instead."""


def check_implementation(implementation: str, caller: str) -> str:
    if not isinstance(implementation, str) or implementation not in IMPLEMENTATIONS:
        raise ValueError(f"{caller}: unknown implementation {implementation!r}; expected one of "
                         f"{', '.join(repr(i) for i in IMPLEMENTATIONS)}")
    return implementation


def choose(fn: ModelFunction, implementation: str, n_rows: int, full: bool,
           structured: bool = True, rules: Optional[StructuredDerivatives] = None) -> str:
    """The implementation name for ``implementation`` ('auto' resolved; see module doc);
    ``rules``: the model's StructuredDerivatives when already built."""
    if implementation != "auto":
        return implementation
    rules = rules if rules is not None else StructuredDerivatives(fn) if structured else None
    if structured and rules.covered_fraction >= 0.5:
        return "structured"
    itemsize = next(iter(fn.params.values())).element_size()
    if n_rows * fn.k * fn.n_params * itemsize > JACOBIAN_BUDGET or (full and fn.k >= 4):
        return "ntvp"
    return "jacobian"


def tensor_bytes(tree: Any) -> int:
    """Bytes of all tensors in nested tuples/lists/dicts/dataclasses."""
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(tensor_bytes(v) for v in tree.values())
    if isinstance(tree, (tuple, list)):
        return sum(tensor_bytes(v) for v in tree)
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        return sum(tensor_bytes(getattr(tree, f.name)) for f in dataclasses.fields(tree))
    return 0


def feature_bytes(fn: ModelFunction, options: TileOptions, x: Batch,
                  rules: Optional[StructuredDerivatives] = None) -> float:
    """Bytes of one example's features (see ``memory``), from the parameter count and the
    activation bytes A measured by ``fn.probe``: Jacobians k·P; NTK-vector products keep only
    inputs; structured features, layer inputs and cotangents, are bounded by (1 + k)·A, times
    the kernel area of the largest convolution (its input patches), plus k·P of the parameters
    left to Jacobians."""
    itemsize = torch.empty((), dtype=fn.dtype).element_size()
    if options.implementation == "jacobian":
        return fn.k * fn.n_params * itemsize
    if options.implementation == "ntvp":
        return tensor_bytes(take(x, 0, 1))
    s = rules if rules is not None else StructuredDerivatives(fn)
    area = max([math.prod(getattr(c.module, "kernel_size", (1,))) for c in s.covered] + [1])
    left = sum(fn.params[n].numel() for n in s.leftover)
    return area * (1 + fn.k) * fn.activation_bytes + fn.k * left * itemsize


def block_for(fn: ModelFunction, options: TileOptions, x: Batch, n_max: int,
              budget: int, rules: Optional[StructuredDerivatives] = None) -> int:
    """The largest block size whose memory (``memory``) fits ``budget``."""
    itemsize = torch.empty((), dtype=fn.dtype).element_size()
    tile = (fn.k * fn.k if options.full else fn.k) * itemsize
    transient = (1 + fn.k) * fn.activation_bytes
    return memory.block_size(feature_bytes(fn, options, x, rules), transient, tile, budget,
                             n_max)


def next_options(fn: ModelFunction, options: TileOptions, exc: Exception, requested: str,
                 vectorize: Optional[bool], rows: int) -> Optional[TileOptions]:
    """The next path after ``exc`` (None: no fallback, re-raise), with a warning naming it.

    * structured derivatives chosen by "auto" for a model whose covered modules have no batch
      dimension in dimension 0 or 1 (``LayoutError``): the generic choice;
    * vmap failed (``VmapError``; with ``vectorize=None``): for NTK-vector products, Jacobian
      contraction under vmap (forward-mode AD is the part most often missing, e.g. in fused
      kernels), otherwise the same implementation with per-example autograd (correct for any
      model autograd can differentiate: nn.LSTM/nn.GRU, in-place updates, data-dependent
      control flow; one backward pass per example and output)."""
    if isinstance(exc, LayoutError):
        if requested != "auto" or options.implementation != "structured":
            return None
        name = choose(fn, requested, rows, options.full, structured=False)
        warnings.warn(f"{fn.caller}: structured derivatives do not apply ({exc}); using the "
                      f"'{name}' implementation", UserWarning, stacklevel=3)
        return dataclasses.replace(options, implementation=name)
    if not isinstance(exc, VmapError) or vectorize is not None or not options.vectorize:
        return None
    if options.implementation == "ntvp":
        nxt = dataclasses.replace(options, implementation="jacobian")
        path = "Jacobian contraction under vmap"
    else:
        nxt = dataclasses.replace(options, vectorize=False)
        path = (f"the '{options.implementation}' implementation with per-example derivatives "
                f"by plain autograd (one backward pass per example and output: correct, but "
                f"slower)")
    warnings.warn(f"{fn.caller}: torch.func.vmap cannot evaluate this model ({exc.reason}); "
                  f"computing with {path} instead", VmapFallbackWarning, stacklevel=3)
    return nxt


def resolve(model, x1, x2=None, mode: str = "trace", implementation: str = "auto",
            batch_size: Optional[int] = None, params=None) -> str:
    """Which implementation ``empirical_ntk`` would use for these arguments."""
    fn = ModelFunction(model, params=params)
    t1, _ = fn.inputs(x1, x2)
    rows = batch_len(t1) if batch_size is None else min(batch_size, batch_len(t1))
    return choose(fn, check_implementation(implementation, "empirical_ntk"), rows,
                  mode == "full")
