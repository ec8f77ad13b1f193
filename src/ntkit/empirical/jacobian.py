"""Empirical NTK by Jacobian contraction.

    Θ[i, j, c, d] = Σ_p  ∂f_c(x_i)/∂θ_p · ∂f_d(x_j)/∂θ_p  =  (J_1 J_2ᵀ)[(i, c), (j, d)]

The per-example Jacobians J (n, k, P) come from ``torch.func.vmap(torch.func.jacrev(f))`` over
the examples; the contraction is one matrix product per parameter tensor. Cost: computing J is
about k backward passes per example; contracting is n1·n2·k²·P ("full") or n1·n2·k·P (the other
modes); memory is n·k·P for each block (bound it with ``batch_size``).
(Novak et al. 2022, "Fast Finite Width Neural Tangent Kernel", section 3.1.)
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch
from torch.func import jacrev, vmap

from ._batch import Batch, batch_len, take
from ._model import ModelFunction, Params


class VmapError(RuntimeError):
    """torch.func.vmap could not evaluate the model's per-example derivatives."""

    def __init__(self, exc: Exception, caller: str):
        lines = str(exc).strip().splitlines()
        self.reason = f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"
        super().__init__(
            f"{caller}: evaluating per-example derivatives of the model failed under "
            f"torch.func.vmap ({self.reason}); pass vectorize=False (or None) to use "
            f"per-example autograd")


class JacobianContraction:
    """Per-example Jacobians w.r.t. ``names`` (default: all differentiated parameters),
    contracted.

    Parameters not in ``names`` are held constant, which lets the structured implementation use
    this class for the parameters it does not cover. ``vectorize=False`` computes the Jacobians
    by ``per_example_jacobians`` (plain autograd) for models torch.func.vmap cannot run.
    """

    def __init__(self, fn: ModelFunction, names: Optional[Iterable[str]] = None,
                 vectorize: bool = True):
        self.fn = fn
        self.names = list(fn.params) if names is None else list(names)
        self.constant: Params = {n: p for n, p in fn.params.items() if n not in set(self.names)}
        self.vectorize = vectorize

    def prepare(self, x: Batch) -> Dict[str, torch.Tensor]:
        """{name: (n, k, *param.shape)} per-example Jacobians of the flattened outputs."""
        variables = {n: self.fn.params[n] for n in self.names}
        constant = self.constant
        if not self.vectorize:
            return per_example_jacobians(self.fn, variables, constant, x)

        def single(p: Params, xi: Batch) -> torch.Tensor:
            return self.fn.single({**constant, **p}, xi)

        try:
            return vmap(jacrev(single), in_dims=(None, 0))(variables, x)
        except Exception as exc:  # the fallback reports errors of the model itself
            raise VmapError(exc, self.fn.caller) from exc

    def contract(self, ja: Dict[str, torch.Tensor], jb: Dict[str, torch.Tensor], same: bool,
                 full: bool) -> torch.Tensor:
        """(na, nb, k, k) if ``full`` else (na, nb, k): Σ_params J_a J_bᵀ."""
        k = self.fn.k
        total = None
        for name in self.names:
            a = ja[name].reshape(ja[name].shape[0], k, -1)
            b = a if same else jb[name].reshape(jb[name].shape[0], k, -1)
            term = contract_jacobians(a, b, full)
            total = term if total is None else total.add_(term)
        return total


def contract_jacobians(a: torch.Tensor, b: torch.Tensor, full: bool) -> torch.Tensor:
    """a (na, k, P), b (nb, k, P) -> Σ_p a[i, c, p] b[j, d, p]: (na, nb, k, k) or its
    output diagonal (na, nb, k)."""
    na, k, _ = a.shape
    nb = b.shape[0]
    if full:
        prod = a.reshape(na * k, -1) @ b.reshape(nb * k, -1).T
        return prod.reshape(na, k, nb, k).permute(0, 2, 1, 3)
    prod = torch.bmm(a.transpose(0, 1), b.permute(1, 2, 0))  # (k, na, nb)
    return prod.permute(1, 2, 0)


def per_example_jacobians(fn: ModelFunction, variables: Params, constant: Params,
                          x: Batch) -> Dict[str, torch.Tensor]:
    """{name: (n, k, *shape)}: ∂f_c(x_i)/∂θ by plain autograd, one forward pass per example and
    one backward pass per output (no torch.func transform: works for every model autograd can
    differentiate, e.g. nn.LSTM/nn.GRU, in-place operations, data-dependent control flow)."""
    n, k = batch_len(x), fn.k
    names = list(variables)
    out = {name: torch.zeros((n, k, *p.shape), dtype=p.dtype, device=p.device)
           for name, p in variables.items()}
    with torch.enable_grad():
        leaves = [variables[name].detach().requires_grad_() for name in names]
        params = {**constant, **dict(zip(names, leaves))}
        for i in range(n):
            f = fn.batched(params, take(x, i, i + 1)).reshape(-1)
            if not f.requires_grad:  # the output does not depend on these parameters
                continue
            for c in range(k):
                grads = torch.autograd.grad(f[c], leaves, retain_graph=c < k - 1,
                                            allow_unused=True)
                for name, g in zip(names, grads):
                    if g is not None:
                        out[name][i, c] = g
    return out
