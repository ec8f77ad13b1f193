"""The public empirical kernels: ``empirical_ntk`` and ``empirical_nngp`` of a finite model."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ._batch import batch_len, take
from ._model import ModelFunction, differentiable_path
from ._modes import (blockwise, check_batch_size, check_mode, finalize, reduce_block,
                     stored_tail)
from ._params import ParamSelection
from .auto import Request, block_for, check_implementation, choose, next_options
from .jacobian import VmapError
from .memory import check_output, default_budget
from .structured import LayoutError, StructuredDerivatives
from .threads import auto_threads, limited_threads
from .tile import TileOptions, build


def empirical_ntk(model: nn.Module, x1, x2=None, *, mode: str = "trace",
                  implementation: str = "auto", batch_size: Optional[int] = None,
                  params: ParamSelection = None, memory_budget: Optional[int] = None,
                  vectorize: Optional[bool] = None, progress: Optional[bool] = None,
                  threads: Optional[int] = None) -> torch.Tensor:
    """Empirical (finite-width) Neural Tangent Kernel of any torch model.

        Θ[i, j, c, d] = Σ_p ∂f_c(x1_i)/∂θ_p · ∂f_d(x2_j)/∂θ_p

    over the differentiated parameters θ of ``model`` (default: those with
    ``requires_grad=True``; see ``params``); the other parameters and all buffers, e.g.
    BatchNorm statistics, are used as they are. This is the kernel of Jacot et al. 2018
    (seed 002) and the G + H of seed 003; for wide networks it converges to
    ``arch.kernel(...).ntk`` ⊗ I_k.

    Parameters
    ----------
    model : nn.Module mapping a batch of n examples to outputs (n, *out_shape), processing
        examples independently (call ``model.eval()`` if it has BatchNorm or Dropout).
    x1, x2 : inputs of n1 and n2 examples: a tensor or numpy array (n, ...), or a tuple/list of
        them (passed as ``model(*x)``, e.g. token ids and a padding mask) or a dict (passed as
        ``model(**x)``); dimension 0 of every leaf is the batch. Floating leaves are cast to the
        dtype and device of the model's parameters; integer/boolean leaves (token ids, masks)
        are passed unchanged. x2=None means x1 (only one triangle of blocks is computed). The
        result has the model's dtype.
    mode : "trace" (default, neural-tangents' default ``trace_axes=(-1,)``): the mean over the
        k = prod(out_shape) outputs of Θ[i, j, c, c], shape (n1, n2);
        "full": (n1, n2, *out_shape, *out_shape);
        "diagonal": the output-diagonal Θ[i, j, c, c], shape (n1, n2, *out_shape).
    implementation : "auto" (least predicted cost, see ``ntkit.empirical.cost``), "jacobian"
        (contraction of per-example Jacobians), "ntvp" (NTK-vector products) or "structured"
        (Gram matrices of layer inputs and output cotangents for Linear, Conv, Embedding,
        LayerNorm, eval BatchNorm and the linear maps of MultiheadAttention, Novak et al. 2022;
        other parameters through Jacobians). All give the same kernel up to rounding.
    batch_size : at most this many examples of x1 and of x2 per block; None: the largest block
        whose memory fits ``memory_budget`` (see ``ntkit.empirical.memory``).
    params : which parameters to differentiate: None (requires_grad), a glob pattern on names
        (``"*.bias"``, ``"head.*"``), a callable name -> bool, or a list of parameters/names.
    memory_budget : bytes a block may use (default min(2 GiB, 1/4 of the available memory)).
    vectorize : None (default) uses torch.func.vmap when it can run the model and otherwise
        warns (``VmapFallbackWarning``, naming the reason) and uses per-example autograd (e.g.
        nn.LSTM, nn.GRU); True requires vmap, False always uses per-example autograd.
    progress : tqdm progress bar over blocks (None: only on runs over 2 seconds).
    threads : intra-op threads for this call; None: torch's count, lowered to the cores other
        processes leave idle right now (``ntkit.empirical.threads``: on a busy machine torch's
        thread pool waits on the thread that shares a busy core at every operation).
    """
    caller = "empirical_ntk"
    if threads is not None and (isinstance(threads, bool) or int(threads) != threads
                                or threads < 1):
        raise ValueError(f"{caller}: threads must be a positive integer or None, got {threads!r}")
    with limited_threads(auto_threads() if threads is None else int(threads)):
        return _empirical_ntk(model, x1, x2, mode, implementation, batch_size, params,
                              memory_budget, vectorize, progress)


def _empirical_ntk(model, x1, x2, mode, implementation, batch_size, params, memory_budget,
                   vectorize, progress) -> torch.Tensor:
    caller = "empirical_ntk"
    mode = check_mode(mode, caller)
    implementation = check_implementation(implementation, caller)
    batch_size = check_batch_size(batch_size, caller)
    fn = ModelFunction(model, caller, params)
    t1, t2 = fn.inputs(x1, x2)
    full = mode == "full"
    n1 = batch_len(t1)
    n2 = n1 if t2 is None else batch_len(t2)
    check_output(n1, n2, fn.k * fn.k if full else 1 if mode == "trace" else fn.k,
                 torch.empty((), dtype=fn.dtype).element_size(), caller)
    budget = default_budget() if memory_budget is None else int(memory_budget)
    req = Request(fn, t1, t2, full, budget, batch_size,
                  StructuredDerivatives(fn, vectorize is not False))  # built once, used thrice
    options = TileOptions(choose(req, implementation), full, vectorize is not False,
                          max(2 ** 20, budget // 4))
    with differentiable_path():
        while True:
            block = batch_size or block_for(req, options)
            same_rules = (options.implementation == "structured"
                          and options.vectorize == (vectorize is not False))
            impl = req.rules if same_rules else build(fn, options)
            try:
                kern = blockwise(impl.prepare, lambda fa, fb, same: reduce_block(
                                     impl.contract(fa, fb, same, full), mode),
                                 t1, t2, stored_tail(mode, fn.k), block, fn.dtype, fn.device,
                                 progress, caller)
                break
            except (VmapError, LayoutError) as exc:
                options = next_options(req, options, exc, implementation, vectorize)
                if options is None:
                    raise
    return finalize(kern, mode, fn.out_shape)


def empirical_nngp(model: nn.Module, x1, x2=None, *, mode: str = "trace",
                   batch_size: Optional[int] = None) -> torch.Tensor:
    """Empirical NNGP kernel of one network: the outer product of its outputs,

        K[i, j, c, d] = f_c(x1_i) f_d(x2_j),

    with the same ``mode`` shapes and inputs as ``empirical_ntk`` ("trace" is
    (1/k) Σ_c f_c(x1_i) f_c(x2_j)). One network gives one sample; its average over
    initializations (``ensemble_kernels``) converges to the infinite-width NNGP
    ``arch.kernel(...).nngp`` as the ensemble and the width grow (Neal 1996; Lee et al. 2018).
    """
    caller = "empirical_nngp"
    mode = check_mode(mode, caller)
    batch_size = check_batch_size(batch_size, caller)
    fn = ModelFunction(model, caller)
    t1, t2 = fn.inputs(x1, x2)
    full = mode == "full"

    def prepare(x):
        n = batch_len(x)
        step = batch_size or n
        with torch.no_grad():
            chunks = [fn.batched(fn.params, take(x, i, i + step)) for i in range(0, n, step)]
        return torch.cat(chunks)  # (n, k)

    def contract(fa, fb, same):
        if full:
            return fa[:, None, :, None] * fb[None, :, None, :]
        return reduce_block(fa[:, None, :] * fb[None, :, :], mode)

    kern = blockwise(prepare, contract, t1, t2, stored_tail(mode, fn.k), batch_size, fn.dtype,
                     fn.device, False, caller)
    return finalize(kern, mode, fn.out_shape)
