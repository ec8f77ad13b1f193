"""A torch model seen as a function of the parameters being differentiated, with the checks done
once at the public boundary of the empirical kernels.

``ModelFunction`` splits ``model``'s state into the differentiated parameters θ (by default the
floating parameters with ``requires_grad``; see ``_params`` for ``params=``), and the fixed rest
(other parameters and all buffers, e.g. BatchNorm running statistics in eval mode), and offers
the functional forms the implementations need:

* ``batched(params, x)``: f(x; θ) for a batch x of n examples, flattened to (n, k);
* ``single(params, x)``: f(x; θ) for one example (leaves without the batch dimension), (k,).

Inputs x are batches in the sense of ``_batch`` (a tensor, or a tuple/list/dict of tensors with
the batch in dimension 0: token ids, masks, several inputs). k is the number of outputs per
example (the product of the output's per-example shape). The kernels assume examples are
processed independently (no batch statistics): BatchNorm and Dropout must be in eval mode.

Models are evaluated with torch's fused inference fast path of nn.MultiheadAttention and
nn.TransformerEncoder(Layer) switched off (``torch.backends.mha``): that path has no batching
rule for vmap and, with a padding mask, zeroes padded positions, so the differentiable
("slow") path is the function whose derivatives are taken, in every implementation; and
``scaled_dot_product_attention`` runs its composite ("math") backend, which vmap and
forward-mode AD support (the fused CPU kernel has neither).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Dict, Iterator, Optional, Tuple

import torch
from torch import nn
from torch.func import functional_call

from . import _batch
from ._batch import Batch
from ._params import ParamSelection, select_parameters

Params = Dict[str, torch.Tensor]

_STOCHASTIC_OR_BATCH = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd,
                        nn.AlphaDropout, nn.FeatureAlphaDropout)


@contextlib.contextmanager
def differentiable_path() -> Iterator[None]:
    """Run the model on torch's differentiable path (see the module docstring); restores the
    previous setting. Also silences functorch's "performance drop ... batching rule" notices
    (ops without a batching rule are looped over, which is correct)."""
    mha = getattr(torch.backends, "mha", None)
    before = mha.get_fastpath_enabled() if mha is not None else None
    try:
        if mha is not None:
            mha.set_fastpath_enabled(False)
        with warnings.catch_warnings(), _math_attention():
            warnings.filterwarnings("ignore", message=".*There is a performance drop because "
                                                      "we have not yet implemented the batching")
            yield
    finally:
        if mha is not None:
            mha.set_fastpath_enabled(before)


def _math_attention():
    """scaled_dot_product_attention by its composite ("math") backend: batching rules and
    forward-mode derivatives exist for it, not for the fused CPU kernels."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # older torch: the fused kernels are the only concern of speed
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


class ModelFunction:
    """``model`` as a function of the differentiated parameters (see the module docstring).

    Attributes
    ----------
    params : dict name -> detached parameter being differentiated
    frozen : dict name -> detached tensor, the other parameters and all buffers
    out_shape : per-example output shape, known after ``probe``
    k : number of outputs per example (prod(out_shape))
    activation_bytes : bytes autograd saves for one example's forward pass, parameters and
        buffers excluded (after ``probe``)
    """

    def __init__(self, model: nn.Module, caller: str = "empirical_ntk",
                 params: ParamSelection = None):
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
        self.needs_params = caller != "empirical_nngp"
        if self.needs_params:
            if params is None and not any(p.requires_grad for p in model.parameters()):
                raise ValueError(f"{caller}: the model has no trainable parameter (none with "
                                 f"requires_grad=True), so its NTK is not defined; pass params= "
                                 f"to choose parameters explicitly")
            chosen = set(select_parameters(model, params, caller))
        else:
            chosen = set()
        self.params: Params = {}
        self.frozen: Params = {}
        for name, p in model.named_parameters():
            (self.params if name in chosen else self.frozen)[name] = p.detach()
        for name, b in model.named_buffers():
            self.frozen[name] = b.detach()
        floats = [t for t in (*self.params.values(), *self.frozen.values())
                  if torch.is_floating_point(t)]
        self.dtype = floats[0].dtype if floats else torch.get_default_dtype()
        self.device = floats[0].device if floats else torch.device("cpu")
        self.out_shape: Tuple[int, ...] = ()
        self.k = 1
        self.activation_bytes = 0

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.params.values())

    # -- inputs -------------------------------------------------------------------------------
    def inputs(self, x1, x2) -> Tuple[Batch, Optional[Batch]]:
        """Validated batches (floating leaves cast to the model's dtype/device); then ``probe``."""
        b1, b2 = _batch.as_batch_pair(x1, x2, self.dtype, self.device)
        self.probe(b1)
        return b1, b2

    def probe(self, x: Batch) -> None:
        """Run the model on one example: output shape, saved-activation bytes, clear errors."""
        one = _batch.take(x, 0, 1)
        saved = [0]
        state = {t.untyped_storage().data_ptr() for t in (*self.params.values(),
                                                           *self.frozen.values())}

        def pack(t):  # per-example activations: not the parameters and buffers saved too
            if t.untyped_storage().data_ptr() not in state:
                saved[0] += t.numel() * t.element_size()
            return t

        try:
            with torch.enable_grad() if self.needs_params else torch.no_grad():
                params = {n: p.detach().requires_grad_() for n, p in self.params.items()}
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    out = self.call(params, one)
        except Exception as exc:  # the model's own message, with the inputs we gave it
            hint = ""
            if any(not torch.is_floating_point(t) for t in _batch.leaves(x)):
                hint = (" (integer and boolean inputs are passed to the model unchanged, as "
                        "token ids or masks; convert to floating point if the model expects "
                        "real numbers)")
            raise ValueError(
                f"{self.caller}: the model cannot be applied to inputs of per-example shape "
                f"{_batch.describe(one)} (given a batch of one): {type(exc).__name__}: "
                f"{exc}{hint}") from exc
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
        self.activation_bytes = saved[0]

    # -- functional forms ------------------------------------------------------------------------
    def state(self, params: Params) -> Params:
        return {**self.frozen, **params}

    def call(self, params: Params, x: Batch):
        """The model's raw output for the batch x with parameters ``params`` (others fixed)."""
        state = self.state(params)
        with differentiable_path():
            if isinstance(x, dict):
                return functional_call(self.model, state, (), x)
            return functional_call(self.model, state, tuple(x) if isinstance(x, (tuple, list))
                                   else (x,))

    def batched(self, params: Params, x: Batch) -> torch.Tensor:
        """f(x; params) for a batch: n examples -> (n, k)."""
        return self.call(params, x).reshape(_batch.batch_len(x), -1)

    def single(self, params: Params, x: Batch) -> torch.Tensor:
        """f(x; params) for one example (leaves without batch dimension) -> (k,)."""
        return self.call(params, _batch.unsqueeze(x)).reshape(-1)
