"""The public empirical kernels: ``empirical_ntk`` and ``empirical_nngp`` of a finite model."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .._inputs import ArrayLike
from ._model import ModelFunction
from ._modes import blockwise, check_batch_size, check_mode, finalize
from .auto import check_implementation, make_implementation


def empirical_ntk(model: nn.Module, x1: ArrayLike, x2: Optional[ArrayLike] = None, *,
                  mode: str = "trace", implementation: str = "auto",
                  batch_size: Optional[int] = None) -> torch.Tensor:
    """Empirical (finite-width) Neural Tangent Kernel of any torch model.

        Θ[i, j, c, d] = Σ_p ∂f_c(x1_i)/∂θ_p · ∂f_d(x2_j)/∂θ_p

    over the trainable parameters θ of ``model`` (those with ``requires_grad=True``; frozen
    parameters and buffers, e.g. BatchNorm statistics, are used as they are). This is the kernel
    of Jacot et al. 2018 (seed 002) and the G + H of seed 003; for wide networks it converges
    to ``arch.kernel(...).ntk`` ⊗ I_k.

    Parameters
    ----------
    model : nn.Module mapping a batch (n, ...) to outputs (n, *out_shape), processing examples
        independently (call ``model.eval()`` if it has BatchNorm or Dropout).
    x1, x2 : inputs (n1, ...) and (n2, ...), torch tensors or numpy arrays; x2=None means x1
        (only one triangle of blocks is computed). Inputs are cast to the dtype and device of
        the model's parameters; the result has that dtype.
    mode : "trace" (default, neural-tangents' default ``trace_axes=(-1,)``): the mean over the
        k = prod(out_shape) outputs of Θ[i, j, c, c], shape (n1, n2);
        "full": (n1, n2, *out_shape, *out_shape);
        "diagonal": the output-diagonal Θ[i, j, c, c], shape (n1, n2, *out_shape).
    implementation : "auto" (by cost, see ``ntkit.empirical.auto``), "jacobian" (contraction of
        per-example Jacobians), "ntvp" (NTK-vector products) or "structured" (Gram matrices of
        layer inputs and output cotangents for Linear/Conv layers, Novak et al. 2022; other
        parameters through Jacobians). All give the same kernel up to rounding.
    batch_size : at most this many examples of x1 and of x2 per block (memory bound); None
        computes everything in one block.
    """
    caller = "empirical_ntk"
    mode = check_mode(mode, caller)
    implementation = check_implementation(implementation, caller)
    batch_size = check_batch_size(batch_size, caller)
    fn = ModelFunction(model, caller)
    t1, t2 = fn.inputs(x1, x2)
    full = mode == "full"
    rows = t1.shape[0] if batch_size is None else min(batch_size, t1.shape[0])
    impl = make_implementation(fn, implementation, rows, full)
    kern = blockwise(impl.prepare,
                     lambda fa, fb, same: impl.contract(fa, fb, same, full),
                     t1, t2, full, fn.k, batch_size)
    return finalize(kern, mode, fn.out_shape)


def empirical_nngp(model: nn.Module, x1: ArrayLike, x2: Optional[ArrayLike] = None, *,
                   mode: str = "trace", batch_size: Optional[int] = None) -> torch.Tensor:
    """Empirical NNGP kernel of one network: the outer product of its outputs,

        K[i, j, c, d] = f_c(x1_i) f_d(x2_j),

    with the same ``mode`` shapes as ``empirical_ntk`` ("trace" is (1/k) Σ_c f_c(x1_i) f_c(x2_j)).
    One network gives one sample; its average over initializations (``ensemble_kernels``)
    converges to the infinite-width NNGP ``arch.kernel(...).nngp`` as the ensemble and the width
    grow (Neal 1996; Lee et al. 2018).
    """
    caller = "empirical_nngp"
    mode = check_mode(mode, caller)
    batch_size = check_batch_size(batch_size, caller)
    fn = ModelFunction(model, caller)
    t1, t2 = fn.inputs(x1, x2)
    full = mode == "full"

    def prepare(x):
        with torch.no_grad():
            chunks = [fn.batched(fn.params, x[i:i + (batch_size or x.shape[0])])
                      for i in range(0, x.shape[0], batch_size or x.shape[0])]
        return torch.cat(chunks)  # (n, k)

    def contract(fa, fb, same):
        if full:
            return fa[:, None, :, None] * fb[None, :, None, :]
        return fa[:, None, :] * fb[None, :, :]

    kern = blockwise(prepare, contract, t1, t2, full, fn.k, batch_size)
    return finalize(kern, mode, fn.out_shape)
