"""``Sequential``: an architecture as a chain of layers, its infinite-width kernels computed in
memory-bounded blocks, and the finite network of the same specification."""
from __future__ import annotations

import functools
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .._inputs import ArrayLike
from ..engine import KernelOptions, compute_tiles
from ..engine.scale import SCALE_KEY, scale_key, shared_scale
from ..kernels import Kernels
from .base import Layer, apply_chain
from .kernel_tile import check_kernel_inputs, kernel_tile, tile_side
from .state import KernelState


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
        """The layers' maps in order, renormalized after each (``base.apply_chain``): the
        result may carry a ``log2_scale``."""
        return apply_chain(self.layers, state)

    @property
    def nonsmooth(self) -> bool:  # type: ignore[override]
        return any(layer.nonsmooth for layer in self.layers)

    @property
    def has_params(self) -> bool:  # type: ignore[override]
        return any(layer.has_params for layer in self.layers)

    def kernel(self, x1: ArrayLike, x2: Optional[ArrayLike] = None, *,
               get: Union[str, Sequence[str]] = ("nngp", "ntk"),
               batch_size: Optional[int] = None,
               options: Optional[KernelOptions] = None,
               progress: Optional[Callable[[int, int], None]] = None,
               normalize: bool = False) -> Kernels:
        """NNGP and NTK of the infinite-width network between x1 (n1, ...) and x2 (n2, ...).

        Inputs may be numpy arrays or torch tensors, flat (n, d) or NCHW images; the result's
        dtype and device follow them. x2=None computes x1 against itself (only the tiles on
        and above the diagonal). The matrices are computed by the kernel engine
        (``ntkit.engine``) as tiles of ``batch_size`` rows and columns (by default 512 for flat
        inputs, from ``options.memory_budget`` for images); ``progress(done, total)`` is called
        after each tile. ``get='nngp'`` skips the NTK. ``options`` (``ntkit.engine
        .KernelOptions``) tunes how, never what, is computed; by default from the environment.

        Deep kernels grow or shrink geometrically with depth; the layers carry an exact
        power-of-two scale (``KernelState.log2_scale``), so nothing overflows on the way.
        ``normalize=False``: the kernels in true units, or an OverflowError when they are not
        representable in the dtype. ``normalize=True``: ``Kernels.log2_scale`` = e and
        matrices whose 2**e multiple is the true kernel (its variances kept
        within about 2**±32); the NTK has a scale of its own, ``Kernels.ntk_log2_scale``,
        equal to e unless the NTK is more than 2**32 times larger or smaller than the NNGP (the chaotic phase, where
        the NTK grows geometrically with depth and the NNGP does not).
        Activations that are not positively homogeneous (all but the ReLU family and
        Identity) need true pre-activation values and raise OverflowError where those are
        not representable.
        """
        names = (get,) if isinstance(get, str) else tuple(get)
        for name in names:
            if name not in ("nngp", "ntk"):
                raise ValueError(f"get: unknown kernel {name!r}; expected 'nngp' and/or 'ntk'")
        if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        want_ntk = "ntk" in names
        t1, t2 = check_kernel_inputs(self, x1, x2)
        opts = options if options is not None else KernelOptions.from_env()
        if batch_size is not None:
            opts = opts.replace(tile_size=int(batch_size))
        side = tile_side(self, t1, opts)
        tile_fn = functools.partial(kernel_tile, self, want_ntk=want_ntk,
                                    normalize=bool(normalize))
        out = compute_tiles(tile_fn, t1, t2, side, options=opts, progress=progress)
        scale = int(out.get(SCALE_KEY, 0))
        ntk, ntk_scale = out.get("ntk") if want_ntk else None, scale
        if ntk is not None and scale_key("ntk") in out:
            ntk, ntk_scale = shared_scale(ntk, int(out[scale_key("ntk")]), out["nngp"], scale)
        return Kernels(nngp=out["nngp"], ntk=ntk, log2_scale=scale, ntk_log2_scale=ntk_scale)

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
