"""Which parameters the empirical NTK differentiates: ``params=`` of ``empirical_ntk``.

* ``None`` (default): every floating parameter with ``requires_grad=True``;
* a string: a glob pattern on parameter names (``fnmatch``), e.g. ``"head.*"``, ``"*.bias"``,
  ``"*lora_*"``;
* a callable ``name -> bool``;
* an iterable of ``nn.Parameter`` objects of the model and/or parameter names.

With an explicit selection ``requires_grad`` is ignored (a frozen model's last layer can be
selected). Only floating-point parameters can be differentiated; all the others, and all
buffers, are held fixed. The NTK over a subset S is Σ_{p ∈ S} ∂f(x)/∂θ_p ∂f(x')/∂θ_p, the
kernel of training only those parameters (e.g. LoRA or last-layer fine-tuning, Malladi et al.
2023, "A Kernel-Based View of Language Model Fine-Tuning").
"""
from __future__ import annotations

import fnmatch
from typing import Callable, Iterable, List, Union

import torch
from torch import nn

ParamSelection = Union[None, str, Callable[[str], bool], Iterable[Union[nn.Parameter, str]]]


def select_parameters(model: nn.Module, params: ParamSelection, caller: str) -> List[str]:
    """Names (as in ``model.named_parameters()``) of the parameters to differentiate."""
    named = dict(model.named_parameters())
    if params is None:
        return [n for n, p in named.items() if p.requires_grad and torch.is_floating_point(p)]
    if isinstance(params, str):
        chosen = [n for n in named if fnmatch.fnmatchcase(n, params)]
        what = f"pattern {params!r}"
    elif callable(params):
        chosen = [n for n in named if bool(params(n))]
        what = "the params filter"
    else:
        chosen = _from_iterable(named, params, caller)
        what = "the given list"
    if not chosen:
        raise ValueError(f"{caller}: {what} selects no parameter of the model (its parameters "
                         f"are {list(named)[:8]}{' ...' if len(named) > 8 else ''})")
    bad = [n for n in chosen if not torch.is_floating_point(named[n])]
    if bad:
        raise TypeError(f"{caller}: selected parameter(s) {bad[:3]} are not floating point and "
                        f"cannot be differentiated")
    return chosen


def _from_iterable(named, params, caller: str) -> List[str]:
    try:
        items = list(params)
    except TypeError:
        raise TypeError(f"{caller}: params must be None, a glob pattern, a callable name -> bool "
                        f"or an iterable of parameters/names, got {type(params).__name__}") from None
    name_of = {id(p): n for n, p in named.items()}
    chosen: List[str] = []
    for item in items:
        if isinstance(item, str):
            if item not in named:
                raise ValueError(f"{caller}: the model has no parameter named {item!r}")
            name = item
        elif isinstance(item, torch.Tensor):
            name = name_of.get(id(item))
            if name is None:
                raise ValueError(f"{caller}: a tensor of shape {tuple(item.shape)} in params is "
                                 f"not a parameter of the model")
        else:
            raise TypeError(f"{caller}: params entries must be parameters or names, got "
                            f"{type(item).__name__}")
        if name not in chosen:
            chosen.append(name)
    return chosen

