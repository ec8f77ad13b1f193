"""Empirical kernels of an ensemble of finite networks ``arch.init(in_shape, seed)``."""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence, Union

import torch

from .._inputs import ArrayLike, as_input_tensor
from .kernels import empirical_nngp, empirical_ntk


def ensemble_kernels(arch, x1: ArrayLike, x2: Optional[ArrayLike] = None, *,
                     seeds: Iterable[int] = range(10),
                     get: Union[str, Sequence[str]] = ("nngp", "ntk"),
                     mode: str = "trace", dtype: Optional[torch.dtype] = None,
                     implementation: str = "auto",
                     batch_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Empirical NNGP and/or NTK of ``arch.init(x1.shape[1:], seed)`` for each seed, stacked.

    Returns {"nngp": (S, n1, n2, ...), "ntk": (S, n1, n2, ...)} for S seeds (only the kernels in
    ``get``). The networks are built in ``dtype`` (default: the dtype of x1) one at a time, so
    memory holds one network. Their mean over seeds estimates E[Θ] and E[f fᵀ], which converge to
    ``arch.kernel(x1, x2)`` as the width grows (Jacot et al. 2018; Lee et al. 2018).
    """
    names = (get,) if isinstance(get, str) else tuple(get)
    for name in names:
        if name not in ("nngp", "ntk"):
            raise ValueError(f"ensemble_kernels: unknown kernel {name!r}; expected 'nngp'/'ntk'")
    t1 = as_input_tensor(x1, "x1")
    dtype = dtype or t1.dtype
    out: Dict[str, list] = {name: [] for name in names}
    for seed in seeds:
        net = arch.init(tuple(t1.shape[1:]), seed=int(seed), dtype=dtype).to(t1.device)
        net.eval()
        if "nngp" in names:
            out["nngp"].append(empirical_nngp(net, x1, x2, mode=mode, batch_size=batch_size))
        if "ntk" in names:
            out["ntk"].append(empirical_ntk(net, x1, x2, mode=mode, batch_size=batch_size,
                                            implementation=implementation))
        del net
    if not all(out.values()):
        raise ValueError("ensemble_kernels: seeds is empty")
    return {name: torch.stack(vals) for name, vals in out.items()}
