"""Model inputs of any structure for the empirical kernels: a batch is a tensor, or a tuple/list
or dict of tensors (nested freely), whose leaves all have the batch as dimension 0.

    x = ids                                   # (n, L) int64 token ids     -> model(ids)
    x = (ids, padding_mask)                   # (n, L) int64, (n, L) bool  -> model(ids, mask)
    x = {"input_ids": ids, "attention_mask": m}                        # -> model(**x)

Floating leaves are cast to the model's parameter dtype and device and checked for NaN/Inf;
integer and boolean leaves (token ids, masks) are kept as they are and only moved to the device.
Nothing here is differentiated: the kernels differentiate parameters, never inputs.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

Batch = Union[torch.Tensor, Tuple[Any, ...], List[Any], Dict[str, Any]]


def tree_map(f: Callable[[torch.Tensor], Any], x: Batch) -> Any:
    """Apply ``f`` to every tensor leaf, keeping the structure."""
    if isinstance(x, torch.Tensor):
        return f(x)
    if isinstance(x, dict):
        return {key: tree_map(f, v) for key, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(tree_map(f, v) for v in x)
    raise TypeError(f"unsupported input leaf of type {type(x).__name__}")


def leaves(x: Batch) -> List[torch.Tensor]:
    out: List[torch.Tensor] = []
    tree_map(out.append, x)
    return out


def batch_len(x: Batch) -> int:
    """n, the common size of dimension 0 of all leaves."""
    return int(leaves(x)[0].shape[0])


def take(x: Batch, start: int, stop: int) -> Batch:
    """Examples start..stop-1 of every leaf."""
    return tree_map(lambda t: t[start:stop], x)


def unsqueeze(x: Batch) -> Batch:
    """One example (leaves without the batch dimension) -> a batch of one."""
    return tree_map(lambda t: t.unsqueeze(0), x)


def call(f: Callable[..., Any], x: Batch) -> Any:
    """The calling convention: f(x) for a tensor, f(*x) for a tuple/list, f(**x) for a dict."""
    if isinstance(x, dict):
        return f(**x)
    if isinstance(x, (tuple, list)):
        return f(*x)
    return f(x)


def _leaf(v: Any, where: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if isinstance(v, np.ndarray):
        if v.dtype == object:
            raise TypeError(f"{where}: object arrays are not supported")
        t = torch.from_numpy(np.ascontiguousarray(v))
    elif isinstance(v, torch.Tensor):
        t = v.detach()
    else:
        raise TypeError(f"{where}: expected a torch.Tensor or numpy array (or a tuple/list/dict "
                        f"of them), got {type(v).__name__}")
    if t.is_complex():
        raise TypeError(f"{where}: complex inputs are not supported")
    if t.ndim < 1 or t.shape[0] == 0:
        raise ValueError(f"{where}: expected a batch of inputs of shape (n, ...) with n >= 1, "
                         f"got shape {tuple(t.shape)}")
    if torch.is_floating_point(t):
        t = t.to(device=device, dtype=dtype)
        if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{where}: contains {bad} NaN or Inf value(s)")
        return t
    return t.to(device=device)


def _convert(x: Any, where: str, dtype, device) -> Batch:
    if isinstance(x, dict):
        if not x or not all(isinstance(key, str) for key in x):
            raise TypeError(f"{where}: a dict input needs string keys (passed as keyword "
                            f"arguments to the model) and at least one entry")
        return {key: _convert(v, f"{where}[{key!r}]", dtype, device) for key, v in x.items()}
    if isinstance(x, (tuple, list)):
        if not x:
            raise ValueError(f"{where}: empty tuple/list of inputs")
        return type(x)(_convert(v, f"{where}[{i}]", dtype, device) for i, v in enumerate(x))
    return _leaf(x, where, dtype, device)


def _signature(x: Batch) -> Any:
    """Structure and per-example shapes and dtype kinds, for comparing x1 and x2."""
    if isinstance(x, dict):
        return ("dict", tuple((key, _signature(v)) for key, v in x.items()))
    if isinstance(x, (tuple, list)):
        return ("seq", tuple(_signature(v) for v in x))
    kind = "float" if torch.is_floating_point(x) else str(x.dtype)
    return (tuple(x.shape[1:]), kind)


def as_batch(x: Any, name: str, dtype: torch.dtype, device: torch.device) -> Batch:
    """Validated batch (see the module docstring); raises with the leaf's name on bad input."""
    if x is None:
        raise TypeError(f"{name}: inputs are required, got None")
    b = _convert(x, name, dtype, device)
    if isinstance(b, torch.Tensor) and b.ndim < 2:
        raise ValueError(f"{name}: expected a batch of inputs of shape (n, ...), got shape "
                         f"{tuple(b.shape)}")
    sizes = {int(t.shape[0]) for t in leaves(b)}
    if len(sizes) != 1:
        raise ValueError(f"{name}: the input leaves have different batch sizes {sorted(sizes)} "
                         f"in dimension 0 (dimension 0 must be the batch in every leaf)")
    return b


def as_batch_pair(x1: Any, x2: Optional[Any], dtype: torch.dtype, device: torch.device
                  ) -> Tuple[Batch, Optional[Batch]]:
    """x1 and optional x2 as batches of the same structure and per-example shapes."""
    b1 = as_batch(x1, "x1", dtype, device)
    if x2 is None:
        return b1, None
    b2 = as_batch(x2, "x2", dtype, device)
    s1, s2 = _signature(b1), _signature(b2)
    if s1 != s2:
        if isinstance(b1, torch.Tensor) and isinstance(b2, torch.Tensor) and s1[1] == s2[1]:
            raise ValueError(f"x1 and x2 have mismatched feature shapes {s1[0]} and {s2[0]}")
        raise ValueError(f"x1 and x2 differ in structure, per-example shapes or dtypes: "
                         f"{s1} vs {s2}")
    return b1, b2


def describe(x: Batch) -> str:
    """Per-example shapes and dtypes for error messages, e.g. '((7,) int64, (7,) bool)'."""
    if isinstance(x, dict):
        return "{" + ", ".join(f"{key!r}: {describe(v)}" for key, v in x.items()) + "}"
    if isinstance(x, (tuple, list)):
        return "(" + ", ".join(describe(v) for v in x) + ")"
    return f"{tuple(x.shape[1:])} {str(x.dtype).replace('torch.', '')}"
