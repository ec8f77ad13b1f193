"""Brute-force empirical NTK for the tests of ntkit.empirical: per-example, per-output
gradients by torch.autograd.grad (no torch.func, no structured formulas), concatenated over
the parameters and contracted. Inputs: a tensor, a tuple (model(*x)) or a dict (model(**x))
with the batch in dimension 0. Test reference only."""
import torch


def _example(x, i):
    if isinstance(x, dict):
        return {key: v[i:i + 1] for key, v in x.items()}
    if isinstance(x, tuple):
        return tuple(v[i:i + 1] for v in x)
    return x[i:i + 1]


def _apply(model, x):
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, tuple):
        return model(*x)
    return model(x)


def _n(x):
    if isinstance(x, dict):
        return next(iter(x.values())).shape[0]
    return x[0].shape[0] if isinstance(x, tuple) else x.shape[0]


def brute_force_ntk(model, x1, x2, params=None):
    """(n1, n2, k, k): Σ_p ∂f_c(x1_i)/∂θ_p ∂f_d(x2_j)/∂θ_p over ``params`` (default: the
    parameters with requires_grad; given ones are differentiated whatever their flag). With
    parameters requiring grad torch never takes its fused transformer fast path."""
    params = [p for p in model.parameters() if p.requires_grad] if params is None else params
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)

    def jac(x):
        rows = []
        for i in range(_n(x)):
            out = _apply(model, _example(x, i)).reshape(-1)
            per_out = []
            for c in range(out.numel()):
                grads = torch.autograd.grad(out[c], params, retain_graph=True, allow_unused=True)
                per_out.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                          for g, p in zip(grads, params)]))
            rows.append(torch.stack(per_out))
        return torch.stack(rows)

    try:
        return torch.einsum("icp,jdp->ijcd", jac(x1), jac(x2))
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def modes_of(full):
    """The three output modes of a (n1, n2, k, k) kernel."""
    diag = torch.diagonal(full, dim1=2, dim2=3)
    return {"full": full, "diagonal": diag, "trace": diag.mean(-1)}


def assert_close(a, b, rtol=1e-12):
    """max |a - b| / max |b| < rtol."""
    scale = b.abs().max().clamp_min(1e-300)
    err = float((a - b).abs().max() / scale)
    assert err < rtol, f"relative error {err:.3e} > {rtol:.0e}"
