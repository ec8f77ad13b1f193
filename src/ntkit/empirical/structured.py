"""Empirical NTK by structured derivatives (Novak et al. 2022, "Fast Finite Width Neural Tangent
Kernel", section 4): the (n, P) Jacobian of a linear-in-weight layer is never formed.

For a registered layer (see ``registry``) with inputs u (n, T, a) and backpropagated output
cotangents g^c (n, T, o) of output c, ∂f_c(x_i)/∂W = s_w Σ_t g^c_it u_itᵀ, so its contribution is

    Θ_W[i, j, c, d] = s_w² Σ_{t, s} (u_it · u_js) (g^c_it · g^d_js)       (a: Gram of Grams)
                    = s_w² <Σ_t g^c_it u_itᵀ, Σ_s g^d_js u_jsᵀ>_F            (b: per-example ∂W)
    Θ_b[i, j, c, d] = s_b² (Σ_t g^c_it) · (Σ_s g^d_js).

For a dense layer on flat inputs (T = 1) form (a) is the elementwise product of two small Gram
matrices, U Uᵀ ∘ G Gᵀ, costing n1·n2·(a + k·o) instead of n1·n2·k·a·o; for convolutions the
cheaper of (a) and (b) is chosen per layer by counting multiply-adds. nn.Embedding is the case
u_t = one-hot(id_t): u_it · u_js = [id_it = id_js] (form (a) only; the vocabulary-sized
one-hot vectors are never formed). Elementwise-affine layers z_t = w ∘ v_t + b (LayerNorm,
eval-mode BatchNorm) have per-example gradients Σ_t g^c_t ∘ v_t and Σ_t g^c_t of D numbers,
contracted directly. nn.MultiheadAttention contributes its four linear maps (``attention``).

u and g come from one batched forward pass with hooks: each covered module's output (for
attention: each projection's output) gets a zero "probe" added, and the gradient of Σ_i f_c(x_i)
w.r.t. the probe is g^c (examples are independent, so the batch sum separates them). A module
called several times (weight sharing within the module) concatenates its calls along T
(per-example gradients: sums them). A covered module's parameters must enter the output only
through that module's own forward (not, say, through a parent reading ``self.fc.weight``
directly); a parameter registered in two modules is left to the generic path. All remaining
differentiated parameters (custom modules, weights shared between modules, bias_k/bias_v of
attention) go through Jacobian contraction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from . import attention
from ._batch import Batch, batch_len, tree_map
from ._model import ModelFunction
from .jacobian import JacobianContraction, contract_jacobians
from .registry import AttentionRule, ElementwiseRule, LinearRule, Rule, rule_for

#: most entries of one (rows·T, cols·S) Gram matrix held at once in the Gram-of-Grams form
GRAM_CHUNK = 2 ** 24


class LayoutError(ValueError):
    """A covered module's input or output has no batch dimension where one is expected."""


@dataclass
class _Covered:
    module: nn.Module
    rule: Rule
    names: Dict[str, str]    # parameter path in the module ("weight", "out_proj.bias", ...) ->
                             # full name, for the differentiated parameters it covers
    batch_axis: int = 0      # 1 inside torch's sequence-first transformer layers


@dataclass
class _LayerFeatures:
    u: Optional[torch.Tensor]  # (n, T, a) layer inputs (patches; token ids for embeddings);
                               # None: ``unfold()`` makes them from the kept module input
    g: torch.Tensor          # (k, n, T, o) output cotangents
    weight_scale2: float     # s_w² (0 when the weight is not differentiated)
    bias_scale2: float       # s_b² (0 when there is no differentiated bias)
    input_gram: Optional[Callable] = None  # replaces u_it · u_js (embeddings)
    unfold: Optional[Callable[[], torch.Tensor]] = None
    patch_size: int = 0      # a, when u is None

    @property
    def dim_in(self) -> int:
        """a, the patch size."""
        return self.u.shape[2] if self.u is not None else self.patch_size

    def patches(self) -> torch.Tensor:
        """u (n, T, a); a convolution's are unfolded anew on each call (only while contracted:
        they are ~k_h·k_w times the input kept)."""
        return self.u if self.u is not None else self.unfold()


@dataclass
class _GradFeatures:
    j: torch.Tensor          # (n, k, Q) per-example gradients (elementwise-affine layers)


def _parameter_paths(m: nn.Module, rule: Rule) -> List[str]:
    if isinstance(rule, AttentionRule):
        paths = {p for w, b in attention.parameter_roles(m).values() for p in (w, b) if p}
        return sorted(paths)
    return ["weight", "bias"]


def _get(m: nn.Module, path: str) -> Optional[torch.Tensor]:
    *parents, leaf = path.split(".")
    for p in parents:
        m = getattr(m, p)
    return m._parameters.get(leaf)


def find_covered(model: nn.Module, fn: ModelFunction) -> Tuple[List[_Covered], List[str]]:
    """The modules with structured rules and differentiated parameters, and the names of the
    differentiated parameters left to the generic path."""
    name_of = {id(p): n for n, p in model.named_parameters() if n in fn.params}
    uses: Dict[int, int] = {}
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                uses[id(p)] = uses.get(id(p), 0) + 1
    sequence_first = set()
    for m in model.modules():
        if isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)) \
                and not m.self_attn.batch_first:
            sequence_first.update(id(d) for d in m.modules())
    covered: List[_Covered] = []
    seen = set()
    for m in model.modules():
        if id(m) in seen:
            continue
        seen.add(id(m))
        rule = rule_for(m)
        if rule is None:
            continue
        names = {}
        for path in _parameter_paths(m, rule):
            p = _get(m, path)
            if p is not None and id(p) in name_of and uses[id(p)] == 1:
                names[path] = name_of[id(p)]
        if names:
            axis = 1 if id(m) in sequence_first and not isinstance(rule, AttentionRule) else 0
            covered.append(_Covered(m, rule, names, axis))
    done = {n for c in covered for n in c.names.values()}
    leftover = [n for n in fn.params if n not in done]
    return covered, leftover


class StructuredDerivatives:
    def __init__(self, fn: ModelFunction, vectorize: bool = True):
        self.fn = fn
        self.covered, self.leftover = find_covered(fn.model, fn)
        self.generic = (JacobianContraction(fn, self.leftover, vectorize) if self.leftover
                        else None)

    @property
    def covered_fraction(self) -> float:
        """Fraction of the differentiated parameter count handled by the structured rules."""
        total = sum(p.numel() for p in self.fn.params.values())
        done = sum(self.fn.params[n].numel() for c in self.covered for n in c.names.values())
        return done / max(total, 1)

    # -- features -----------------------------------------------------------------------------
    def prepare(self, x: Batch):
        layers = self._layer_features(x) if self.covered else []
        jac = self.generic.prepare(x) if self.generic is not None else None
        return layers, jac, batch_len(x)

    def _layer_features(self, x: Batch) -> List[Optional[list]]:
        """Per covered module: a list of feature entries, or None if it does not influence
        the output."""
        fn, n = self.fn, batch_len(x)
        calls: Dict[int, List[Dict[str, Tuple[torch.Tensor, torch.Tensor, int]]]] = {
            id(c.module): [] for c in self.covered}
        axis_of = {id(c.module): c.batch_axis for c in self.covered}

        def probe(module_calls, role, u, z, axis=0):
            p = torch.zeros_like(z, requires_grad=True)
            module_calls[-1][role] = (u.detach().movedim(axis, 0), p, axis)
            return z + p

        def hook(module, args, kwargs, output):
            u = args[0] if args else next(iter(kwargs.values()))
            calls[id(module)].append({})
            axis = _batch_axis(module, u, output, n, axis_of[id(module)])
            return probe(calls[id(module)], "", u, output, axis)

        def attention_forward(c):
            own = calls[id(c.module)]
            inner = attention.probed_forward(c.module, lambda role, u, z: probe(own, role, u, z))

            def forward(*args, **kwargs):
                own.append({})
                return inner(*args, **kwargs)

            return forward

        handles, replaced = [], []
        try:
            for c in self.covered:
                if isinstance(c.rule, AttentionRule):  # an instance attribute, undone below
                    replaced.append((c.module, c.module.__dict__.get("forward")))
                    c.module.forward = attention_forward(c)
                else:
                    handles.append(c.module.register_forward_hook(hook, with_kwargs=True))
            if any(isinstance(c.rule, LinearRule) and c.rule.channels_last
                   for c in self.covered):
                x = tree_map(_channels_last, x)
            with torch.enable_grad():
                out = fn.batched(fn.params, x)
        finally:
            for h in handles:
                h.remove()
            for m, before in replaced:
                if before is None:
                    del m.forward
                else:
                    m.forward = before
        probes = [p for c in self.covered for call in calls[id(c.module)]
                  for _, p, _ in call.values()]
        grads = dict(zip(map(id, probes), _cotangents(out, probes, fn.k)))
        feats: List[Optional[list]] = []
        for c in self.covered:
            per_role: Dict[str, List[Tuple[torch.Tensor, torch.Tensor]]] = {}
            for call in calls[id(c.module)]:
                for role, (u, p, axis) in call.items():
                    g = grads[id(p)]
                    if g is not None:  # (k, *out) -> batch next to k
                        per_role.setdefault(role, []).append((u, g.movedim(axis + 1, 1)))
            feats.append(_module_features(c, per_role) if per_role else None)
        return feats

    # -- contraction --------------------------------------------------------------------------
    def contract(self, fa, fb, same: bool, full: bool) -> torch.Tensor:
        la, ja, na = fa
        lb, jb, nb = fb
        total = None
        for ea, eb in zip(la, lb):
            if ea is None or eb is None:
                continue
            for a, b in zip(ea, eb):
                if isinstance(a, _GradFeatures):
                    term = contract_jacobians(a.j, a.j if same else b.j, full)
                else:
                    term = layer_kernel(a, b, same, full)
                total = term if total is None else total.add_(term)
        if self.generic is not None:
            term = self.generic.contract(ja, jb, same, full)
            total = term if total is None else total.add_(term)
        if total is None:  # no parameter influences the output
            k = self.fn.k
            shape = (na, nb, k, k) if full else (na, nb, k)
            total = torch.zeros(shape, dtype=self.fn.dtype, device=self.fn.device)
        return total


def _batch_axis(module: nn.Module, u, output, n: int, hint: int) -> int:
    """The batch dimension of a covered module's input and output: ``hint`` (0, or 1 inside
    torch's sequence-first transformer layers) when both have n there, else the other of the
    first two dimensions when that one is unambiguous."""
    ok = [a for a in (0, 1) if isinstance(u, torch.Tensor) and u.ndim > a and output.ndim > a
          and u.shape[a] == n and output.shape[a] == n]
    if hint in ok:
        return hint
    if len(ok) == 1:
        return ok[0]
    shape = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
    raise LayoutError(f"structured derivatives: {type(module).__name__} receives input {shape} "
                      f"and returns {tuple(output.shape)}, with no batch dimension of size {n} "
                      f"in dimension 0 or 1")


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """A 4-d floating input in channels-last memory format (the same values; see
    ``registry.LinearRule.channels_last``); other leaves unchanged."""
    if t.ndim == 4 and t.is_floating_point():
        return t.contiguous(memory_format=torch.channels_last)
    return t


def _join(parts: List[torch.Tensor], dim: int) -> torch.Tensor:
    """torch.cat, without a copy for a single part (a module called once)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def _module_features(c: _Covered, per_role) -> list:
    """Feature entries of one covered module from its calls' (input, cotangent) per role."""
    rule = c.rule
    if isinstance(rule, LinearRule):
        gs = [rule.outputs(g) for _, g in per_role[""]]
        sw2 = rule.weight_scale ** 2 if "weight" in c.names else 0.0
        sb2 = rule.bias_scale ** 2 if "bias" in c.names else 0.0
        if rule.channels_last and len(gs) == 1:  # a convolution called once: keep its input
            u = per_role[""][0][0]
            size = rule.patches(u[:1]).shape[2]
            return [_LayerFeatures(None, gs[0], sw2, sb2, rule.input_gram,
                                   lambda: rule.patches(u), size)]
        us = [rule.patches(u) for u, _ in per_role[""]]
        return [_LayerFeatures(_join(us, 1), _join(gs, 2), sw2, sb2, rule.input_gram)]
    if isinstance(rule, ElementwiseRule):
        j = None
        for u, g in per_role[""]:
            v, gg = rule.normalized(u), rule.outputs(g)  # (n, T, D), (k, n, T, D)
            parts = []
            if "weight" in c.names:
                parts.append(torch.einsum("cntd,ntd->ncd", gg, v))
            if "bias" in c.names:
                parts.append(gg.sum(dim=2).transpose(0, 1))
            term = _join(parts, -1)
            j = term if j is None else j + term
        return [_GradFeatures(j)]
    # attention: one entry per linear map; a packed q/k/v projection called both on one input
    # ("qkv") and on separate ones is split so that all calls of one map line up
    roles = attention.parameter_roles(c.module)
    if "qkv" in per_role and any(r in per_role for r in ("q", "k", "v")):
        for u, g in per_role.pop("qkv"):
            for r, gr in zip(("q", "k", "v"), g.chunk(3, dim=-1)):
                per_role.setdefault(r, []).append((u, gr))
    entries = []
    for role in ("qkv", "q", "k", "v", "out"):
        if role not in per_role:
            continue
        weight, bias = roles[role]
        sw2 = 1.0 if weight in c.names else 0.0
        sb2 = 1.0 if bias is not None and bias in c.names else 0.0
        if sw2 or sb2:
            u = _join([u for u, _ in per_role[role]], 1)
            g = _join([g for _, g in per_role[role]], 2)
            entries.append(_LayerFeatures(u, g, sw2, sb2))
    return entries


def _cotangents(out: torch.Tensor, probes: List[torch.Tensor], k: int):
    """Per-example cotangents of every probe for each output: list of (k, n, *probe) or None."""
    if not probes:
        return []
    if not out.requires_grad:
        return [None] * len(probes)
    if k == 1:
        grads = torch.autograd.grad(out.sum(), probes, allow_unused=True)
        return [None if g is None else g.unsqueeze(0) for g in grads]
    eye = torch.eye(k, dtype=out.dtype, device=out.device)
    basis = eye[:, None, :].expand(k, out.shape[0], k)
    try:
        return list(torch.autograd.grad(out, probes, grad_outputs=basis, is_grads_batched=True,
                                        allow_unused=True, retain_graph=True))
    except RuntimeError:  # an op without a batching rule: one backward pass per output
        per_output = [torch.autograd.grad(out[:, c].sum(), probes, allow_unused=True,
                                          retain_graph=True) for c in range(k)]
        result = []
        for i in range(len(probes)):
            gs = [per_output[c][i] for c in range(k)]
            result.append(None if gs[0] is None else torch.stack(gs))
        return result


def layer_kernel(a: _LayerFeatures, b: _LayerFeatures, same: bool, full: bool) -> torch.Tensor:
    """One layer's contribution (na, nb, k, k) or (na, nb, k): see the module docstring."""
    k, na, T, o = a.g.shape
    nb, S, dim_in = b.g.shape[1], b.g.shape[2], a.dim_in
    result = None
    if a.weight_scale2:
        kk = k * k if full else k
        cost_gram = na * nb * T * S * (dim_in + kk * o)
        cost_grad = k * (na * T + nb * S) * o * dim_in + na * nb * kk * o * dim_in
        ua = a.patches()
        ub = ua if same else b.patches()
        if T == 1 and S == 1:  # (s_w² U Uᵀ + s_b²) ∘ G Gᵀ: the bias shares the cotangent Gram
            ku = _input_gram(a, ua, ub, 0, na).to(a.g.dtype).mul_(a.weight_scale2)
            if a.bias_scale2:
                ku.add_(a.bias_scale2)
            kg = contract_jacobians(a.g[:, :, 0].transpose(0, 1), b.g[:, :, 0].transpose(0, 1), full)
            return kg.mul_(ku[:, :, None, None] if full else ku[:, :, None])
        if a.input_gram is not None or cost_gram <= cost_grad:
            result = _gram_of_grams(a, b, full, ua, ub)
        else:
            wa = _per_example_weight_grad(a, ua)
            wb = wa if same else _per_example_weight_grad(b, ub)
            result = contract_jacobians(wa, wb, full)
        del ua, ub
        result = result.mul_(a.weight_scale2)
    if a.bias_scale2:
        ga = a.g.sum(dim=2).transpose(0, 1)  # (na, k, o)
        gb = ga if same else b.g.sum(dim=2).transpose(0, 1)
        term = contract_jacobians(ga, gb, full).mul_(a.bias_scale2)
        result = term if result is None else result.add_(term)
    if result is None:
        shape = (na, nb, k, k) if full else (na, nb, k)
        result = a.g.new_zeros(shape)
    return result


def _input_gram(a: _LayerFeatures, ua: torch.Tensor, ub: torch.Tensor, i0: int, i1: int
                ) -> torch.Tensor:
    """u_it · u_js for the examples i0..i1-1 of a's patches ua and all of ub: (rows·T, nb·S)."""
    ua = ua[i0:i1]
    if a.input_gram is not None:
        return a.input_gram(ua, ub)
    return ua.reshape(-1, ua.shape[-1]) @ ub.reshape(-1, ub.shape[-1]).T


def _per_example_weight_grad(f: _LayerFeatures, u: torch.Tensor) -> torch.Tensor:
    """Σ_t g^c_t u_tᵀ for each example: (n, k, o·a); u (n, T, a): f's patches."""
    k, n, T, o = f.g.shape
    w = torch.einsum("cnto,nta->ncoa", f.g, u)
    return w.reshape(n, k, -1)


def _gram_of_grams(a: _LayerFeatures, b: _LayerFeatures, full: bool, ua: torch.Tensor,
                   ub: torch.Tensor) -> torch.Tensor:
    """Σ_{t,s} (u_it·u_js)(g^c_it·g^d_js), looping over the needed (c, d) output pairs and over
    chunks of the rows (at most ``GRAM_CHUNK`` Gram entries at once); ua, ub: a's and b's
    patches."""
    k, na, T, o = a.g.shape
    nb, S = b.g.shape[1], b.g.shape[2]
    pairs = [(c, d) for c in range(k) for d in range(k)] if full else [(c, c) for c in range(k)]
    out = a.g.new_empty((na, nb, k, k) if full else (na, nb, k))
    step = max(1, GRAM_CHUNK // max(1, T * nb * S))
    gb = [b.g[d].reshape(nb * S, o) for d in range(k)]
    for i0 in range(0, na, step):
        i1 = min(i0 + step, na)
        ku = _input_gram(a, ua, ub, i0, i1).to(a.g.dtype)  # ((i1-i0) T, nb S)
        for c, d in pairs:
            kg = a.g[c, i0:i1].reshape(-1, o) @ gb[d].T
            val = (kg.mul_(ku)).reshape(i1 - i0, T, nb, S).sum(dim=(1, 3))
            if full:
                out[i0:i1, :, c, d] = val
            else:
                out[i0:i1, :, c] = val
    return out
