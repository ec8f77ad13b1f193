"""Empirical NTK by structured derivatives (Novak et al. 2022, "Fast Finite Width Neural Tangent
Kernel", section 4): the (n, P) Jacobian of a linear-in-weight layer is never formed.

For a registered layer (see ``registry``) with inputs u (n, T, a) and backpropagated output
cotangents g^c (n, T, o) of output c, ∂f_c(x_i)/∂W = s_w Σ_t g^c_it u_itᵀ, so its contribution is

    Θ_W[i, j, c, d] = s_w² Σ_{t, s} (u_it · u_js) (g^c_it · g^d_js)       (a: Gram of Grams)
                    = s_w² <Σ_t g^c_it u_itᵀ, Σ_s g^d_js u_jsᵀ>_F            (b: per-example ∂W)
    Θ_b[i, j, c, d] = s_b² (Σ_t g^c_it) · (Σ_s g^d_js).

For a dense layer on flat inputs (T = 1) form (a) is the elementwise product of two small Gram
matrices, U Uᵀ ∘ G Gᵀ, costing n1·n2·(a + k·o) instead of n1·n2·k·a·o; for convolutions the
cheaper of (a) and (b) is chosen per layer by counting multiply-adds.

u and g come from one batched forward pass with hooks: each covered module's output gets a zero
"probe" added, and the gradient of Σ_i f_c(x_i) w.r.t. the probe is g^c (examples are
independent, so the batch sum separates them). A module called several times (weight sharing
within the module) concatenates its calls along T. A covered module's parameters must enter the
output only through that module's own forward (not, say, through a parent reading
``self.fc.weight`` directly); a parameter registered in two modules is left to the generic
path. All remaining trainable parameters (norms,
embeddings, custom modules, weights shared between modules) go through Jacobian contraction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from ._batch import Batch, batch_len
from ._model import ModelFunction
from .jacobian import JacobianContraction, contract_jacobians
from .registry import LinearRule, rule_for


@dataclass
class _Covered:
    module: nn.Module
    rule: LinearRule
    weight: Optional[str]  # full parameter name when the weight is trainable
    bias: Optional[str]


@dataclass
class _LayerFeatures:
    u: torch.Tensor          # (n, T, a) layer inputs (patches)
    g: torch.Tensor          # (k, n, T, o) output cotangents
    weight_scale2: float     # s_w² (0 when the weight is frozen)
    bias_scale2: float       # s_b² (0 when there is no trainable bias)


def find_covered(model: nn.Module, fn: ModelFunction) -> Tuple[List[_Covered], List[str]]:
    """The registered linear-in-weight modules with trainable parameters, and the names of the
    trainable parameters left to the generic path."""
    name_of = {id(p): n for n, p in model.named_parameters() if n in fn.params}
    uses: Dict[int, int] = {}
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                uses[id(p)] = uses.get(id(p), 0) + 1
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
        for key in ("weight", "bias"):
            p = m._parameters.get(key)
            if p is not None and id(p) in name_of and uses[id(p)] == 1:
                names[key] = name_of[id(p)]
        if names:
            covered.append(_Covered(m, rule, names.get("weight"), names.get("bias")))
    done = {n for c in covered for n in (c.weight, c.bias) if n is not None}
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
        """Fraction of the trainable parameter count handled by the structured rules."""
        total = sum(p.numel() for p in self.fn.params.values())
        done = sum(self.fn.params[n].numel() for c in self.covered
                   for n in (c.weight, c.bias) if n is not None)
        return done / max(total, 1)

    # -- features -----------------------------------------------------------------------------
    def prepare(self, x: Batch):
        layers = self._layer_features(x) if self.covered else []
        jac = self.generic.prepare(x) if self.generic is not None else None
        return layers, jac, batch_len(x)

    def _layer_features(self, x: Batch) -> List[_LayerFeatures]:
        fn, k = self.fn, self.fn.k
        calls: Dict[int, List[Tuple[torch.Tensor, torch.Tensor]]] = {id(c.module): []
                                                                      for c in self.covered}

        def hook(module, args, kwargs, output):
            u = args[0] if args else next(iter(kwargs.values()))
            probe = torch.zeros_like(output, requires_grad=True)
            calls[id(module)].append((u.detach(), probe))
            return output + probe

        handles = [c.module.register_forward_hook(hook, with_kwargs=True) for c in self.covered]
        try:
            with torch.enable_grad():
                out = fn.batched(fn.params, x)
                probes = [p for c in self.covered for _, p in calls[id(c.module)]]
                grads = _cotangents(out, probes, k)
        finally:
            for h in handles:
                h.remove()
        feats: List[Optional[_LayerFeatures]] = []
        idx = 0
        for c in self.covered:
            us, gs = [], []
            for u, _ in calls[id(c.module)]:
                g = grads[idx]
                idx += 1
                if g is not None:
                    us.append(c.rule.patches(u))
                    gs.append(c.rule.outputs(g))
            if not us:  # the module does not influence the output
                feats.append(None)
                continue
            sw2 = c.rule.weight_scale ** 2 if c.weight is not None else 0.0
            sb2 = c.rule.bias_scale ** 2 if c.bias is not None else 0.0
            u = us[0] if len(us) == 1 else torch.cat(us, dim=1)
            g = gs[0] if len(gs) == 1 else torch.cat(gs, dim=2)
            feats.append(_LayerFeatures(u, g, sw2, sb2))
        return feats

    # -- contraction --------------------------------------------------------------------------
    def contract(self, fa, fb, same: bool, full: bool) -> torch.Tensor:
        la, ja, na = fa
        lb, jb, nb = fb
        total = None
        for a, b in zip(la, lb):
            if a is None or b is None:
                continue
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
    nb, S, dim_in = b.g.shape[1], b.g.shape[2], a.u.shape[2]
    result = None
    if a.weight_scale2:
        kk = k * k if full else k
        cost_gram = na * nb * T * S * (dim_in + kk * o)
        cost_grad = k * (na * T + nb * S) * o * dim_in + na * nb * kk * o * dim_in
        if T == 1 and S == 1:
            ku = a.u[:, 0] @ b.u[:, 0].T
            kg = contract_jacobians(a.g[:, :, 0].transpose(0, 1), b.g[:, :, 0].transpose(0, 1), full)
            result = kg.mul_(ku[:, :, None, None] if full else ku[:, :, None])
        elif cost_gram <= cost_grad:
            result = _gram_of_grams(a, b, full)
        else:
            wa = _per_example_weight_grad(a)
            wb = wa if same else _per_example_weight_grad(b)
            result = contract_jacobians(wa, wb, full)
        result = result.mul_(a.weight_scale2)
    if a.bias_scale2:
        ga = a.g.sum(dim=2).transpose(0, 1)  # (na, k, o)
        gb = ga if same else b.g.sum(dim=2).transpose(0, 1)
        term = contract_jacobians(ga, gb, full).mul_(a.bias_scale2)
        result = term if result is None else result.add_(term)
    if result is None:
        shape = (na, nb, k, k) if full else (na, nb, k)
        result = a.u.new_zeros(shape)
    return result


def _per_example_weight_grad(f: _LayerFeatures) -> torch.Tensor:
    """Σ_t g^c_t u_tᵀ for each example: (n, k, o·a)."""
    k, n, T, o = f.g.shape
    w = torch.einsum("cnto,nta->ncoa", f.g, f.u)
    return w.reshape(n, k, -1)


def _gram_of_grams(a: _LayerFeatures, b: _LayerFeatures, full: bool) -> torch.Tensor:
    """Σ_{t,s} (u_it·u_js)(g^c_it·g^d_js), looping over the needed (c, d) output pairs."""
    k, na, T, o = a.g.shape
    nb, S = b.g.shape[1], b.g.shape[2]
    ku = a.u.reshape(na * T, -1) @ b.u.reshape(nb * S, -1).T  # (na T, nb S)
    pairs = [(c, d) for c in range(k) for d in range(k)] if full else [(c, c) for c in range(k)]
    out = a.u.new_empty((na, nb, k, k) if full else (na, nb, k))
    for c, d in pairs:
        kg = a.g[c].reshape(na * T, o) @ b.g[d].reshape(nb * S, o).T
        val = (kg.mul_(ku)).reshape(na, T, nb, S).sum(dim=(1, 3))
        if full:
            out[:, :, c, d] = val
        else:
            out[:, :, c] = val
    return out
