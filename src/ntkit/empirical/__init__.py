"""Empirical (finite-width) kernels of any torch model.

    import ntkit as nk
    theta = nk.empirical_ntk(model, x1, x2)                 # (n1, n2): mean over outputs
    theta = nk.empirical_ntk(model, x1, x2, mode="full")    # (n1, n2, k, k)
    theta = nk.empirical_ntk(lm, (ids, pad_mask), params="head.*")   # token ids, a subset
    k = nk.empirical_nngp(model, x1, x2)                    # f(x1) f(x2)ᵀ / k

Modules, one concept each:
  _batch      inputs of any structure (tensors, tuples/dicts; token ids, masks), batch = dim 0
  _params     which parameters are differentiated (params=: list, glob pattern, callable)
  _model      the model as a function of those parameters; boundary checks
  _modes      output-axis modes ("trace", "full", "diagonal") and the block loop
  tile        one tile of the kernel as a pure function (for tiling engines)
  memory      the memory budget and the block size it allows
  jacobian    Jacobian contraction (torch.func vmap + jacrev)
  ntvp        NTK-vector products (vjp rows + jvp columns)
  registry    module types with structured rules (Linear, Conv1d/2d, Embedding, LayerNorm,
              eval BatchNorm, MultiheadAttention, ntkit's NTK layers), extensible
  attention   the four linear maps inside nn.MultiheadAttention, exposed to the rules
  structured  structured derivatives: Gram of inputs ∘ Gram of cotangents per layer
  cost        multiply-add counts of the implementations (the automatic choice)
  threads     intra-op threads limited to the idle cores (speed on a busy machine)
  auto        the plan of a call: implementation by cost, vmap or autograd, block size
  kernels     the public functions
  ensemble    kernels of arch.init(...) over seeds
"""
from .auto import VmapFallbackWarning
from .auto import resolve as resolve_implementation
from .ensemble import ensemble_kernels
from .kernels import empirical_nngp, empirical_ntk
from .registry import LinearRule, register_linear_module
from .tile import TileOptions, ntk_tile

__all__ = ["empirical_ntk", "empirical_nngp", "ensemble_kernels", "register_linear_module",
           "LinearRule", "resolve_implementation", "ntk_tile", "TileOptions", "VmapFallbackWarning"]
