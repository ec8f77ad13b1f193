"""A torch model seen as a function of its trainable parameters, with the checks done once at
the public boundary of the empirical kernels.

``ModelFunction`` splits ``model``'s state into the trainable parameters θ (``requires_grad``),
the frozen parameters and the buffers (passed through unchanged, e.g. BatchNorm running
statistics in eval mode), and offers the two functional forms the implementations need:

* ``batched(params, x)``: f(x; θ) for a batch x of shape (n, ...), flattened to (n, k);
* ``single(params, x)``: f(x; θ) for one example x of shape (...), flattened to (k,).

Here k is the number of outputs per example (the product of the output's per-example shape).
The empirical kernels assume examples are processed independently (no batch statistics):
BatchNorm and Dropout must be in eval mode.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn
from torch.func import functional_call

from .._inputs import ArrayLike, as_input_pair

Params = Dict[str, torch.Tensor]

_STOCHASTIC_OR_BATCH = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd,
                        nn.AlphaDropout, nn.FeatureAlphaDropout)


class ModelFunction:
    """``model`` as a function of its trainable parameters (see the module docstring).

    Attributes
    ----------
    params : dict name -> detached trainable parameter (requires_grad=True in the model)
    frozen : dict name -> detached tensor, the frozen parameters and all buffers
    out_shape : per-example output shape, known after ``probe``
    k : number of outputs per example (prod(out_shape))
    """

    def __init__(self, model: nn.Module, caller: str = "empirical_ntk"):
        if not isinstance(model, nn.Module):
            raise TypeError(f"{caller}: model must be a torch.nn.Module, got {type(model).__name__}")
        bad = [name for name, m in model.named_modules()
               if m.training and isinstance(m, _STOCHASTIC_OR_BATCH)]
        if bad:
            raise ValueError(
                f"{caller}: module(s) {bad[:3]} are in training mode (BatchNorm uses batch "
                f"statistics and Dropout is random there, so the kernel is not defined per "
                f"example); call model.eval() first")
        self.model = model
        self.caller = caller
        self.params: Params = {}
        self.frozen: Params = {}
        for name, p in model.named_parameters():
            (self.params if p.requires_grad else self.frozen)[name] = p.detach()
        for name, b in model.named_buffers():
            self.frozen[name] = b.detach()
        self.needs_params = caller != "empirical_nngp"
        if self.needs_params and not self.params:
            raise ValueError(f"{caller}: the model has no trainable parameter (none with "
                             f"requires_grad=True), so its NTK is not defined")
        first = next(iter(self.params.values()), None)
        if first is None:
            first = next((t for t in self.frozen.values() if torch.is_floating_point(t)), None)
        self.dtype = first.dtype if first is not None else torch.get_default_dtype()
        self.device = first.device if first is not None else torch.device("cpu")
        self.out_shape: Tuple[int, ...] = ()
        self.k = 1

    # -- inputs -------------------------------------------------------------------------------
    def inputs(self, x1: ArrayLike, x2: Optional[ArrayLike]):
        """Validated inputs, cast to the model's parameter dtype and device; then ``probe``."""
        t1, t2 = as_input_pair(x1, x2)
        t1 = t1.to(device=self.device, dtype=self.dtype)
        t2 = None if t2 is None else t2.to(device=self.device, dtype=self.dtype)
        self.probe(t1)
        return t1, t2

    def probe(self, x: torch.Tensor) -> None:
        """Run the model on one example to learn the output shape; clear errors if it fails."""
        try:
            with torch.no_grad():
                out = self.model(x[:1])
        except Exception as exc:  # the model's own message, with the input shape we gave it
            raise ValueError(
                f"{self.caller}: the model cannot be applied to inputs of per-example shape "
                f"{tuple(x.shape[1:])} (batch shape {tuple(x.shape)}): {type(exc).__name__}: "
                f"{exc}") from exc
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{self.caller}: the model must return one tensor, got "
                            f"{type(out).__name__}")
        if out.ndim == 0 or out.shape[0] != 1:
            raise ValueError(f"{self.caller}: the model's output {tuple(out.shape)} has no batch "
                             f"dimension matching the input batch (1 example in, expected "
                             f"output of shape (1, ...))")
        if not torch.is_floating_point(out):
            raise TypeError(f"{self.caller}: the model's output has non-float dtype {out.dtype}")
        self.out_shape = tuple(out.shape[1:])
        k = 1
        for s in self.out_shape:
            k *= int(s)
        self.k = k

    # -- functional forms ------------------------------------------------------------------------
    def state(self, params: Params) -> Params:
        return {**self.frozen, **params}

    def batched(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """f(x; params) for a batch: (n, ...) -> (n, k)."""
        out = functional_call(self.model, self.state(params), (x,))
        return out.reshape(x.shape[0], -1)

    def single(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """f(x; params) for one example: (...) -> (k,)."""
        out = functional_call(self.model, self.state(params), (x.unsqueeze(0),))
        return out.reshape(-1)

