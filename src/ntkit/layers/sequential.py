"""``Sequential``: an architecture as a chain of layers, its infinite-width kernels computed in
memory-bounded blocks, and the finite network of the same specification."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .._inputs import ArrayLike, as_input_pair
from ..kernels import Kernels
from .base import Layer
from .state import KernelState, paired_input_state

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

    def _run_block(self, a: torch.Tensor, b: Optional[torch.Tensor], var_a: torch.Tensor,
                   var_b: Optional[torch.Tensor], width: int, want_ntk: bool):
        """Kernels of one block; ``a``, ``b`` are inputs already scaled by 1/sqrt(d)."""
        symmetric = b is None
        cov = a @ (a if symmetric else b).T
        var1 = var_a.clone()
        var2 = var1 if symmetric else var_b.clone()
        near = None
        if self.nonsmooth:
            tol = _NEAR_TOL.get(a.dtype, 1e-2)
            r1 = torch.where(var1 > 0, torch.rsqrt(var1), torch.zeros_like(var1))
            r2 = r1 if symmetric else torch.where(var2 > 0, torch.rsqrt(var2), torch.zeros_like(var2))
            near = torch.mul(cov, r1[:, None]).mul_(r2[None, :]) > 1.0 - tol
        state = KernelState(cov=cov, var1=var1, var2=var2, ntk=None, width=width,
                            symmetric=symmetric, track_ntk=want_ntk)
        out = self.apply(state)
        return out.cov, out.ntk, near

    def _dense_kernel(self, x1: torch.Tensor, x2: Optional[torch.Tensor], want_ntk: bool,
                      block: int):
        n1, d = x1.shape
        # the input kernel x.x'/d: scale once, so each block is a plain product
        s1 = x1 * (d ** -0.5)
        v1_all = (s1 * s1).sum(1)
        s2, v2_all = (s1, v1_all) if x2 is None else (x2 * (d ** -0.5), None)
        if x2 is not None:
            v2_all = (s2 * s2).sum(1)
        other = x1 if x2 is None else x2
        n2 = other.shape[0]
        nngp = torch.empty(n1, n2, dtype=x1.dtype, device=x1.device)
        ntk = torch.empty(n1, n2, dtype=x1.dtype, device=x1.device) if want_ntk else None
        near_i: List[torch.Tensor] = []
        near_j: List[torch.Tensor] = []
        for i0 in range(0, n1, block):
            i1 = min(i0 + block, n1)
            j_start = i0 if x2 is None else 0
            for j0 in range(j_start, n2, block):
                j1 = min(j0 + block, n2)
                diag = x2 is None and i0 == j0
                c, t, near = self._run_block(s1[i0:i1], None if diag else s2[j0:j1],
                                             v1_all[i0:i1], None if diag else v2_all[j0:j1],
                                             d, want_ntk)
                nngp[i0:i1, j0:j1] = c
                if want_ntk:
                    if t is None:
                        ntk[i0:i1, j0:j1] = 0
                    else:
                        ntk[i0:i1, j0:j1] = t
                if x2 is None and not diag:
                    nngp[j0:j1, i0:i1] = c.T
                    if want_ntk:
                        ntk[j0:j1, i0:i1] = ntk[i0:i1, j0:j1].T
                if near is not None:
                    if diag:
                        near = torch.triu(near)
                    ii, jj = torch.nonzero(near, as_tuple=True)
                    if ii.numel():
                        near_i.append(ii + i0)
                        near_j.append(jj + j0)
        if near_i:
            self._refine_pairs(x1, other, torch.cat(near_i), torch.cat(near_j), nngp, ntk,
                               symmetric=x2 is None, var1=v1_all)
        return nngp, ntk

    def _refine_pairs(self, x1, x2, ii, jj, nngp, ntk, symmetric: bool, var1=None) -> None:
        """Recompute the selected pairs on the precise path, in float64, and write them back.

        A pair of an input with itself (the diagonal when x2 is None) needs no input rows: its
        distance is exactly 0 and its covariance is the input's variance ``var1``.
        """
        self_pair = (ii == jj) if symmetric else torch.zeros_like(ii, dtype=torch.bool)
        if bool(self_pair.any()):
            idx = ii[self_pair]
            v = var1[idx].double()
            state = KernelState(cov=v.clone(), var1=v.clone(), var2=v.clone(), ntk=None,
                                width=x1.shape[1], dist=torch.zeros_like(v), layout="paired",
                                track_ntk=ntk is not None)
            self._write_pairs(self.apply(state), idx, idx, nngp, ntk, symmetric=False)
            ii, jj = ii[~self_pair], jj[~self_pair]
        chunk = 1 << 14
        for s in range(0, ii.numel(), chunk):
            i, j = ii[s:s + chunk], jj[s:s + chunk]
            state = paired_input_state(x1[i].double(), x2[j].double())
            state.track_ntk = ntk is not None
            self._write_pairs(self.apply(state), i, j, nngp, ntk, symmetric)

    @staticmethod
    def _write_pairs(out: KernelState, i, j, nngp, ntk, symmetric: bool) -> None:
        values = out.cov.to(nngp.dtype)
        nngp[i, j] = values
        if symmetric:
            nngp[j, i] = values
        if ntk is not None:
            t = torch.zeros_like(values) if out.ntk is None else out.ntk.to(ntk.dtype)
            ntk[i, j] = t
            if symmetric:
                ntk[j, i] = t

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
