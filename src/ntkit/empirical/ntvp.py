"""Empirical NTK by NTK-vector products.

Column (j, d) of the NTK is Θ[:, j, :, d] = J_1 (J_2ᵀ e_{j,d}): a vector-Jacobian product
through f(x_j) (the row J_2[j, d] of the second Jacobian) followed by a Jacobian-vector product
through the batched forward pass f(x_1). Only a chunk of rows of J_2 exists at any time and J_1
is never formed, so memory is chunk·P plus the activations of one forward-mode pass; the cost is
about one forward+JVP pass over x_1 per column. It pays off when J_1 (n1·k·P numbers) does not fit
in memory, or for "full" kernels with many outputs (its contraction is n1·n2·k·P, not k²).
(Novak et al. 2022, "Fast Finite Width Neural Tangent Kernel", section 3.2.)
"""
from __future__ import annotations

import torch
from torch.func import jvp, vmap

from ._batch import Batch, batch_len, take
from ._model import ModelFunction
from .jacobian import JacobianContraction, VmapError

#: default bytes of Jacobian rows (tangents) and forward-mode activations held at once
TANGENT_BUDGET = 256 * 2 ** 20


class NTKVectorProducts:
    def __init__(self, fn: ModelFunction, names=None, vectorize: bool = True,
                 budget: int = TANGENT_BUDGET):
        self.fn = fn
        self.vectorize = vectorize
        self.budget = budget
        self.rows = JacobianContraction(fn, names, vectorize)
        self.names = self.rows.names
        self.n_params = sum(fn.params[n].numel() for n in self.names)

    def prepare(self, x: Batch) -> Batch:
        return x

    def contract(self, xa: Batch, xb: Batch, same: bool, full: bool) -> torch.Tensor:
        fn, k = self.fn, self.fn.k
        if not self.vectorize:  # no forward-mode vmap: contract per-example Jacobians
            ja = self.rows.prepare(xa)
            jb = ja if same else self.rows.prepare(xb)
            return self.rows.contract(ja, jb, same, full)
        constant = self.rows.constant
        variables = {n: fn.params[n] for n in self.names}
        itemsize = next(iter(variables.values())).element_size()
        na, nb = batch_len(xa), batch_len(xb)
        # a chunk of C columns holds C·k tangents (P numbers each) and C·k forward-mode passes
        # over the na rows (about na·A bytes of activations each)
        per_column = k * (self.n_params * itemsize + na * fn.activation_bytes)
        chunk = max(1, self.budget // max(1, per_column))

        def column(tangent):
            _, out = jvp(lambda p: fn.batched({**constant, **p}, xa), (variables,), (tangent,))
            return out  # (na, k)

        blocks = []
        for j0 in range(0, nb, chunk):
            rows = self.rows.prepare(take(xb, j0, j0 + chunk))  # {name: (C, k, *shape)}
            c = next(iter(rows.values())).shape[0]
            tangents = {n: r.reshape(c * k, *r.shape[2:]) for n, r in rows.items()}
            try:
                cols = vmap(column)(tangents)  # (C*k, na, k)
            except Exception as exc:  # the fallback reports errors of the model itself
                raise VmapError(exc, fn.caller) from exc
            # cols[(j, d), i, c] -> (na, C, k_c, k_d)
            blocks.append(cols.reshape(c, k, na, k).permute(2, 0, 3, 1))
        kern = torch.cat(blocks, dim=1)
        if full:
            return kern
        return torch.diagonal(kern, dim1=2, dim2=3)
