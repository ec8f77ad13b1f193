"""The plan of an empirical-NTK call: which implementation ("auto" by cost), whether
torch.func.vmap can run the model (else per-example autograd, with a warning), and the block
size (from the memory budget, see ``memory``).

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
import warnings
from typing import Any, Optional, Tuple

import torch

from . import memory
from ._batch import Batch, batch_len, take
from ._model import ModelFunction
from .structured import LayoutError, StructuredDerivatives
from .tile import TileOptions, build

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
           structured: bool = True) -> str:
    """The implementation name for ``implementation`` ('auto' resolved; see module doc)."""
    if implementation != "auto":
        return implementation
    if structured and StructuredDerivatives(fn).covered_fraction >= 0.5:
        return "structured"
    itemsize = next(iter(fn.params.values())).element_size()
    if n_rows * fn.k * fn.n_params * itemsize > JACOBIAN_BUDGET or (full and fn.k >= 4):
        return "ntvp"
    return "jacobian"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


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


def plan(fn: ModelFunction, implementation: str, x1: Batch, x2: Optional[Batch], full: bool,
         batch_size: Optional[int], budget: Optional[int] = None,
         vectorize: Optional[bool] = None) -> Tuple[TileOptions, int]:
    """(tile options, block size) for this call.

    A probe tile of the first (up to) two examples of x1 is computed with vmap; if vmap cannot
    run the model (nn.LSTM/nn.GRU, in-place updates, data-dependent control flow, ...) a
    ``VmapFallbackWarning`` names the reason and the path taken instead: for "ntvp" first
    Jacobian contraction under vmap (forward-mode AD is the part most often missing), then
    per-example autograd (``vectorize=None``; True forces vmap and raises, False forces
    autograd). The probe's
    feature sizes give the memory per example (see ``memory``).
    """
    budget = memory.default_budget() if budget is None else int(budget)
    n1 = batch_len(x1)
    n2 = n1 if x2 is None else batch_len(x2)
    rows = n1 if batch_size is None else min(batch_size, n1)
    name = choose(fn, implementation, rows, full)
    options = TileOptions(name, full, vectorize is not False, max(2 ** 20, budget // 4))
    probe = take(x1, 0, min(2, n1))
    if name == "structured" and implementation == "auto":
        try:
            build(fn, dataclasses.replace(options, vectorize=False))._layer_features(probe)
        except LayoutError as exc:  # a covered module without the batch in dimension 0 or 1
            warnings.warn(f"{fn.caller}: structured derivatives do not apply ({exc}); using "
                          f"the generic implementations", UserWarning, stacklevel=3)
            name = choose(fn, implementation, rows, full, structured=False)
            options = dataclasses.replace(options, implementation=name)
    # vmap candidates in order; NTK-vector products need forward-mode AD, which some ops lack
    # (e.g. CPU flash attention): reverse-mode Jacobian contraction is tried before autograd
    candidates = [] if vectorize is False else [options]
    if candidates and name == "ntvp":
        candidates.append(dataclasses.replace(options, implementation="jacobian"))
    features, reasons = None, []
    for candidate in candidates:
        try:
            impl = build(fn, candidate)
            features = impl.prepare(probe)
            impl.contract(features, features, True, full)
            options = candidate
            break
        except Exception as exc:
            if vectorize:
                raise
            reasons.append(f"'{candidate.implementation}': {type(exc).__name__}: "
                           f"{_first_line(exc)}")
            features = None
    if features is None:
        options = dataclasses.replace(options, implementation=name, vectorize=False)
        features = build(fn, options).prepare(probe)
    if reasons:
        path = (f"the '{options.implementation}' implementation under vmap" if options.vectorize
                else f"the '{name}' implementation with per-example derivatives by plain "
                     f"autograd (one backward pass per example and output: correct, but slower)")
        warnings.warn(f"{fn.caller}: torch.func.vmap cannot evaluate this model "
                      f"({'; '.join(reasons)}); computing with {path} instead",
                      VmapFallbackWarning, stacklevel=4)
    if batch_size is not None:
        return options, batch_size
    per_example = tensor_bytes(features) / batch_len(probe)
    transient = (1 + fn.k) * fn.activation_bytes
    itemsize = torch.empty((), dtype=fn.dtype).element_size()
    tile = (fn.k * fn.k if full else fn.k) * itemsize
    return options, memory.block_size(per_example, transient, tile, budget, max(n1, n2))


def resolve(model, x1, x2=None, mode: str = "trace", implementation: str = "auto",
            batch_size: Optional[int] = None, params=None) -> str:
    """Which implementation ``empirical_ntk`` would use for these arguments."""
    fn = ModelFunction(model, params=params)
    t1, _ = fn.inputs(x1, x2)
    rows = batch_len(t1) if batch_size is None else min(batch_size, batch_len(t1))
    return choose(fn, check_implementation(implementation, "empirical_ntk"), rows,
                  mode == "full")
