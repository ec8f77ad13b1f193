"""The automatic choice among the three implementations, by cost.

* ``"structured"`` when registered linear-in-weight layers (Linear, Conv1d/2d, ntkit's
  NTK-parameterized layers) hold at least half of the trainable parameters: their contribution
  costs Gram matrices of activations and cotangents, orders of magnitude below a Jacobian
  (the rest of the parameters still go through Jacobian contraction);
* otherwise ``"ntvp"`` when the per-block Jacobian (n·k·P numbers) would exceed
  ``JACOBIAN_BUDGET`` bytes, or for "full" kernels with k ≥ 4 outputs (contracting Jacobians
  costs k² per pair of examples there, NTK-vector products k);
* otherwise ``"jacobian"``.
"""
from __future__ import annotations

from typing import Optional

from ._model import ModelFunction
from .jacobian import JacobianContraction
from .ntvp import NTKVectorProducts
from .structured import StructuredDerivatives

IMPLEMENTATIONS = ("auto", "jacobian", "ntvp", "structured")
JACOBIAN_BUDGET = 2 * 2 ** 30


def check_implementation(implementation: str, caller: str) -> str:
    if not isinstance(implementation, str) or implementation not in IMPLEMENTATIONS:
        raise ValueError(f"{caller}: unknown implementation {implementation!r}; expected one of "
                         f"{', '.join(repr(i) for i in IMPLEMENTATIONS)}")
    return implementation


def make_implementation(fn: ModelFunction, implementation: str, n_rows: int, full: bool):
    """The implementation object for ``implementation`` ('auto' resolved; see module doc)."""
    if implementation == "jacobian":
        return JacobianContraction(fn)
    if implementation == "ntvp":
        return NTKVectorProducts(fn)
    structured = StructuredDerivatives(fn)
    if implementation == "structured" or structured.covered_fraction >= 0.5:
        return structured
    n_params = sum(p.numel() for p in fn.params.values())
    itemsize = next(iter(fn.params.values())).element_size()
    if n_rows * fn.k * n_params * itemsize > JACOBIAN_BUDGET or (full and fn.k >= 4):
        return NTKVectorProducts(fn)
    return JacobianContraction(fn)


def implementation_name(impl) -> str:
    return {JacobianContraction: "jacobian", NTKVectorProducts: "ntvp",
            StructuredDerivatives: "structured"}[type(impl)]


def resolve(model, x1, x2=None, mode: str = "trace", implementation: str = "auto",
            batch_size: Optional[int] = None) -> str:
    """Which implementation ``empirical_ntk`` would use for these arguments."""
    fn = ModelFunction(model)
    t1, t2 = fn.inputs(x1, x2)
    rows = t1.shape[0] if batch_size is None else min(batch_size, t1.shape[0])
    return implementation_name(make_implementation(fn, implementation, rows, mode == "full"))
