"""``Sequential``: an architecture as a chain of layers, its infinite-width kernels computed in
memory-bounded blocks, and the finite network of the same specification."""
from __future__ import annotations

import math
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .._inputs import ArrayLike, as_input_pair
from ..kernels import Kernels
from .base import Layer
from .state import KernelState, dense_input_state, paired_input_state

# Pairs whose input correlation exceeds 1 - tol are recomputed on the precise (distance-carrying)
# float64 path: there the arccos of the correlation would lose digits (see ntkit.layers.relu).
_NEAR_TOL = {torch.float32: 1e-2, torch.float64: 1e-5}
_DEFAULT_BLOCK = 512


def _as_shape(in_shape) -> Tuple[int, ...]:
    if isinstance(in_shape, int):
        return (in_shape,)
    return tuple(int(s) for s in in_shape)


class Sequential(Layer):
    """A chain of infinite-width layers, e.g.

        arch = Sequential(Linear(512, W_std=1.5, b_std=0.05), ReLU(), Linear(1, W_std=1.5))
        k = arch.kernel(x1, x2)           # Kernels(nngp=(n1, n2), ntk=(n1, n2))
        net = arch.init((784,), seed=0)   # finite torch.nn.Module, same parameterization
    """

    def __init__(self, *layers: Layer):
        flat: List[Layer] = []
        for layer in layers:
            if isinstance(layer, Sequential):
                flat.extend(layer.layers)
            elif isinstance(layer, Layer):
                flat.append(layer)
            else:
                raise TypeError(
                    f"Sequential: {layer!r} is not an ntkit layer (got {type(layer).__name__}); "
                    f"use ntkit layers such as nk.Linear, nk.ReLU, or nk.Elementwise(fn) for a "
                    f"custom activation")
        if not flat:
            raise ValueError("Sequential needs at least one layer")
        self.layers = flat

    # -- kernel map -------------------------------------------------------------------------
    def apply(self, state: KernelState) -> KernelState:
        for layer in self.layers:
            state = layer.apply(state)
        return state

    @property
    def nonsmooth(self) -> bool:  # type: ignore[override]
        return any(layer.nonsmooth for layer in self.layers)

    @property
    def has_params(self) -> bool:  # type: ignore[override]
        return any(layer.has_params for layer in self.layers)

    def kernel(self, x1: ArrayLike, x2: Optional[ArrayLike] = None, *,
               get: Union[str, Sequence[str]] = ("nngp", "ntk"),
               batch_size: Optional[int] = None) -> Kernels:
        """NNGP and NTK of the infinite-width network between x1 (n1, ...) and x2 (n2, ...).

        x2=None computes x1 against itself, evaluating only one triangle of blocks.
        Inputs may be numpy arrays or torch tensors; the result's dtype and device follow them.
        ``batch_size`` bounds the number of rows and of columns of each block (the memory of
        intermediates is O(batch_size²) per block); by default 512 for flat inputs.
        ``get='nngp'`` skips the NTK.
        """
        names = (get,) if isinstance(get, str) else tuple(get)
        for name in names:
            if name not in ("nngp", "ntk"):
                raise ValueError(f"get: unknown kernel {name!r}; expected 'nngp' and/or 'ntk'")
        want_ntk = "ntk" in names
        t1, t2 = as_input_pair(x1, x2)
        if t1.ndim == 2:
            self.out_shape(tuple(t1.shape[1:]))  # validates the layer chain for flat inputs
            nngp, ntk = self._dense_kernel(t1, t2, want_ntk, batch_size or _DEFAULT_BLOCK)
        else:
            from .conv_state import spatial_kernel
            nngp, ntk = spatial_kernel(self, t1, t2, want_ntk, batch_size)
        return Kernels(nngp=nngp, ntk=ntk if want_ntk else None)

    def _run_block(self, a: torch.Tensor, b: Optional[torch.Tensor], want_ntk: bool):
        state = dense_input_state(a, b)
        state.track_ntk = want_ntk
        near = None
        if self.nonsmooth:
            tol = _NEAR_TOL.get(a.dtype, 1e-2)
            r1 = torch.sqrt(state.var1)
            r2 = r1 if b is None else torch.sqrt(state.var2)
            near = state.cov > (1.0 - tol) * (r1[:, None] * r2[None, :])
        out = self.apply(state)
        return out.cov, out.ntk, near

    def _dense_kernel(self, x1: torch.Tensor, x2: Optional[torch.Tensor], want_ntk: bool,
                      block: int):
        n1 = x1.shape[0]
        other = x1 if x2 is None else x2
        n2 = other.shape[0]
        nngp = torch.empty(n1, n2, dtype=x1.dtype, device=x1.device)
        ntk = torch.zeros(n1, n2, dtype=x1.dtype, device=x1.device) if want_ntk else None
        near_i: List[torch.Tensor] = []
        near_j: List[torch.Tensor] = []
        for i0 in range(0, n1, block):
            i1 = min(i0 + block, n1)
            j_start = i0 if x2 is None else 0
            for j0 in range(j_start, n2, block):
                j1 = min(j0 + block, n2)
                diag = x2 is None and i0 == j0
                a = x1[i0:i1]
                c, t, near = self._run_block(a, None if diag else other[j0:j1], want_ntk)
                nngp[i0:i1, j0:j1] = c
                if want_ntk and t is not None:
                    ntk[i0:i1, j0:j1] = t
                if x2 is None and not diag:
                    nngp[j0:j1, i0:i1] = c.T
                    if want_ntk and t is not None:
                        ntk[j0:j1, i0:i1] = t.T
                if near is not None:
                    if diag:
                        near = torch.triu(near)
                    ii, jj = torch.nonzero(near, as_tuple=True)
                    if ii.numel():
                        near_i.append(ii + i0)
                        near_j.append(jj + j0)
        if near_i:
            self._refine_pairs(x1, other, torch.cat(near_i), torch.cat(near_j), nngp, ntk,
                               symmetric=x2 is None)
        return nngp, ntk

    def _refine_pairs(self, x1, x2, ii, jj, nngp, ntk, symmetric: bool) -> None:
        """Recompute the selected pairs on the precise path, in float64, and write them back."""
        chunk = 1 << 16
        for s in range(0, ii.numel(), chunk):
            i, j = ii[s:s + chunk], jj[s:s + chunk]
            state = paired_input_state(x1[i].double(), x2[j].double())
            state.track_ntk = ntk is not None
            out = self.apply(state)
            nngp[i, j] = out.cov.to(nngp.dtype)
            if symmetric:
                nngp[j, i] = out.cov.to(nngp.dtype)
            if ntk is not None and out.ntk is not None:
                ntk[i, j] = out.ntk.to(ntk.dtype)
                if symmetric:
                    ntk[j, i] = out.ntk.to(ntk.dtype)

    # -- finite network -----------------------------------------------------------------------
    def out_shape(self, in_shape: Tuple[int, ...]) -> Tuple[int, ...]:
        shape = _as_shape(in_shape)
        for layer in self.layers:
            shape = layer.out_shape(shape)
        return shape

    def init(self, in_shape: Union[int, Sequence[int]], seed: int = 0,
             dtype: torch.dtype = torch.float32) -> nn.Sequential:
        """A finite torch network of this architecture, with the widths given to the layers and
        parameters drawn from ``seed`` in the layers' parameterization.

        ``in_shape`` is the per-example input shape: (features,) or (channels, height, width).
        """
        generator = torch.Generator().manual_seed(int(seed))
        return self.build(in_shape, generator).to(dtype)

    def build(self, in_shape, generator) -> nn.Sequential:
        modules = []
        shape = _as_shape(in_shape)
        for layer in self.layers:
            modules.append(layer.build(shape, generator))
            shape = layer.out_shape(shape)
        return nn.Sequential(*modules)

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential(\n  {inner}\n)"

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, idx):
        picked = self.layers[idx]
        return Sequential(*picked) if isinstance(idx, slice) else picked
