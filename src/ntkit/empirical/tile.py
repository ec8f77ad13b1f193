"""One tile of the empirical NTK as a pure function of (model function, rows, columns, options).

    K_tile = ntk_tile(fn, xa, xb, options)      # (na, nb, k, k) if options.full else (na, nb, k)

``fn`` is the ``ModelFunction`` (the model as a function of the differentiated parameters, with
its fixed state), ``xa`` the tile's rows of x1 and ``xb`` its columns of x2 (batches in the
sense of ``_batch``; ``xb=None`` is the diagonal tile of xa with itself, computed once), and
``options`` fixes everything else. Nothing is cached between calls and no module state is
changed (hooks used by the structured implementation are removed before returning), so a
tiling engine can call it per tile in any order. Output layout: the canonical one of ``_modes``.
A tiling engine sets it up as ``empirical_ntk`` does:

    fn = ModelFunction(model, params=params)          # which parameters; checks
    b1, b2 = fn.inputs(x1, x2)                        # validated batches; output shape k
    req = auto.Request(fn, b1, b2, full, memory.default_budget())
    options = TileOptions(auto.choose(req, "auto"), full)
    rows = auto.block_for(req, options)               # a block size within the budget
    tile = ntk_tile(fn, _batch.take(b1, i0, i1), _batch.take(b2, j0, j1), options)

(a ``VmapError`` from a tile means vmap cannot run the model: ``auto.next_options`` gives
the fallback, e.g. ``TileOptions(..., vectorize=False)``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ._batch import Batch
from ._model import ModelFunction, differentiable_path
from .jacobian import JacobianContraction
from .ntvp import TANGENT_BUDGET, NTKVectorProducts
from .structured import StructuredDerivatives

RESOLVED = ("jacobian", "ntvp", "structured")


@dataclass(frozen=True)
class TileOptions:
    """implementation: "jacobian" | "ntvp" | "structured" (already resolved from "auto");
    full: the (k, k) output block ("full" mode) or only its diagonal (the other modes);
    vectorize: per-example derivatives by torch.func.vmap (False: per-example autograd);
    budget: bytes the NTK-vector-product implementation may hold for one chunk of columns."""

    implementation: str
    full: bool
    vectorize: bool = True
    budget: int = TANGENT_BUDGET


def build(fn: ModelFunction, options: TileOptions):
    """The implementation object (``prepare(x)`` features, ``contract(fa, fb, same, full)``);
    it holds no state beyond ``fn`` and the options."""
    if options.implementation == "jacobian":
        return JacobianContraction(fn, vectorize=options.vectorize)
    if options.implementation == "ntvp":
        return NTKVectorProducts(fn, vectorize=options.vectorize, budget=options.budget)
    if options.implementation == "structured":
        return StructuredDerivatives(fn, vectorize=options.vectorize)
    raise ValueError(f"unknown resolved implementation {options.implementation!r}; expected one "
                     f"of {RESOLVED}")


def ntk_tile(fn: ModelFunction, xa: Batch, xb: Optional[Batch], options: TileOptions
             ) -> torch.Tensor:
    """Θ between the examples of xa and of xb (xb=None: xa with itself); see the module doc."""
    with differentiable_path():
        impl = build(fn, options)
        fa = impl.prepare(xa)
        if xb is None:
            return impl.contract(fa, fa, True, options.full)
        return impl.contract(fa, impl.prepare(xb), False, options.full)
