"""neural-tangents' ``predict`` functions with its semantics, on torch tensors, so code ports
line by line: ``gradient_descent_mse``, ``gradient_descent_mse_ensemble``, ``gp_inference``
(and ``max_learning_rate`` in ``gradient_flow``).

Conventions (as in neural-tangents 0.6.5, ``trace_axes=(-1,)`` only):
- ``diag_reg`` is relative to the mean of the kernel's diagonal unless
  ``diag_reg_absolute_scale=True``;
- time is in steps of ``learning_rate`` with the loss averaged over all training targets,
  L = 1/(2 N) Σ (f − y)², N = y_train.size: residuals decay as exp(−η λ t / N);
- ``t=None`` means t = ∞ and uses a Cholesky solve; finite times use one eigendecomposition;
- training-set outputs at t = ∞ are ``y_train`` itself; for regularized training-set predictions
  pass the training data as test data (k_test_train = k_train_train, or x_test = x_train);
- ``get`` a string returns one value, a tuple (or None = ('nngp', 'ntk')) a namedtuple.
Results are torch tensors in the kernel's dtype and device. The formulas are those of
``ntkit.predict.posteriors`` (Lee et al. 2019); only the conventions differ.
"""
from __future__ import annotations

import collections

import torch

from ._linalg import (ArrayLike, Spectrum, as_kernel, as_tensor, check_train, cholesky_solver,
                      reg_value, sandwich_diag, through_diag)
from ._time import as_times, decay, phi_over_lambda
from .posteriors import Gaussian

_TUPLES = {}


def _check_trace_axes(trace_axes) -> None:
    axes = tuple(trace_axes) if isinstance(trace_axes, (tuple, list)) else (trace_axes,)
    if axes not in ((-1,), (1,)):
        raise NotImplementedError(f"trace_axes={trace_axes!r}: only trace_axes=(-1,) (kernels "
                                  f"shared by all outputs, 2-D kernel matrices) is supported")


def _canonical_get(get):
    """(single, names): ``single`` when ``get`` is one string (the result is then unwrapped)."""
    if get is None:
        return False, ("nngp", "ntk")
    if isinstance(get, str):
        names, single = (get.lower(),), True
    else:
        names, single = tuple(g.lower() for g in get), False
    if not names or len(set(names)) != len(names):
        raise ValueError(f"get must be a non-empty tuple of distinct names, got {get!r}")
    return single, names


def _pack(single: bool, names, out: dict):
    if single:
        return out[names[0]]
    if names not in _TUPLES:
        _TUPLES[names] = collections.namedtuple("Gaussians", names)
    return _TUPLES[names](*(out[g] for g in names))


def _pick(k, g: str):
    """The ``g`` matrix of a kernels object (.nngp/.ntk), or ``k`` itself if it is a matrix."""
    if not (hasattr(k, "nngp") or hasattr(k, "ntk")):
        return k
    value = getattr(k, g, None)
    if value is None:
        raise ValueError(f"the kernel passed has no {g!r} matrix (needed for get={g!r})")
    return value


def gradient_descent_mse(k_train_train: ArrayLike, y_train: ArrayLike, learning_rate: float = 1.0,
                         diag_reg: float = 0.0, diag_reg_absolute_scale: bool = False,
                         trace_axes=(-1,)):
    """neural-tangents' ``predict.gradient_descent_mse``: MSE gradient flow of a linearized net.

    Returns ``predict_fn(t=None, fx_train_0=0., fx_test_0=None, k_test_train=None)`` giving
    ``fx_train_t``, ``fx_test_t`` (when fx_train_0 is None) or ``(fx_train_t, fx_test_t)``,
    with leading axes t.shape for array t:
        fx_train_t = fx_train_0 + V (exp(−η λ t/N) − 1) Vᵀ (fx_train_0 − y)
        fx_test_t  = fx_test_0 + k_test_train V [(exp(−η λ t/N) − 1)/λ] Vᵀ (fx_train_0 − y)
    with V diag(λ) Vᵀ = k_train_train + ρ I.
    """
    _check_trace_axes(trace_axes)
    k, y = check_train(k_train_train, y_train)
    n = k.shape[0]
    rho = reg_value(k, diag_reg, not diag_reg_absolute_scale)
    c = float(learning_rate) / y.numel()
    cache = {}

    def spectrum() -> Spectrum:
        if "spec" not in cache:
            cache["spec"] = Spectrum(k, rho)
        return cache["spec"]

    def predict_fn(t=None, fx_train_0=0.0, fx_test_0=None, k_test_train=None):
        if fx_train_0 is None and fx_test_0 is None:
            raise ValueError("Both fx_train_0 and fx_test_0 are None: nothing to predict")
        if fx_test_0 is not None and k_test_train is None:
            raise ValueError("To get predictions on the test set, pass k_test_train")
        f_tr = None if fx_train_0 is None else torch.broadcast_to(
            as_tensor(fx_train_0, "fx_train_0", like=k), y.shape)
        k_td = None if k_test_train is None else as_kernel(k_test_train, "k_test_train",
                                                           n_cols=n, like=k)
        f_te = None
        if fx_test_0 is not None:
            f_te = torch.broadcast_to(as_tensor(fx_test_0, "fx_test_0", like=k),
                                      (k_td.shape[0],) + tuple(y.shape[1:]))
        rhs = y if f_tr is None else y - f_tr                     # Y − f₀(X)
        if t is None:
            out_train = y.clone()
            out_test = None
            if f_te is not None:
                if "chol" not in cache:
                    cache["chol"] = cholesky_solver(k, rho)
                out_test = f_te + torch.tensordot(k_td, cache["chol"](rhs), dims=1)
        else:
            spec = spectrum()
            times, shape = as_times(t, k, False)
            r = spec.rotate(rhs.reshape(n, -1))
            out_train = out_test = None
            if f_tr is not None:
                d = 1 - decay(spec.evals, times, c, False)                         # φ
                out_train = f_tr + through_diag(spec.evecs, d, r).reshape(shape + tuple(y.shape))
            if f_te is not None:
                g = phi_over_lambda(spec.evals, times, c, False, spec.tol)
                out_test = f_te + through_diag(k_td @ spec.evecs, g, r).reshape(
                    shape + tuple(f_te.shape))
        if f_te is None:
            return out_train
        if f_tr is None:
            return out_test
        return out_train, out_test

    return predict_fn


def gp_inference(k_train_train, y_train: ArrayLike, diag_reg: float = 0.0,
                 diag_reg_absolute_scale: bool = False, trace_axes=(-1,)):
    """neural-tangents' ``predict.gp_inference``: the t = ∞ posterior of NNGP / NTK / NTKGP.

    ``k_train_train``: a tensor (used for every ``get``) or an object with .nngp/.ntk (e.g.
    ``nk.Kernels``). Returns ``predict_fn(get=None, k_test_train=None, k_test_test=None)``:
    means, or ``Gaussian(mean, covariance)`` when k_test_test is given; k_test_train None means
    the training set (mean y_train, zero covariance). 'ntk' covariance needs both kernels.
    """
    _check_trace_axes(trace_axes)
    y_raw = y_train
    solvers = {}

    def solver(g: str):
        if g not in solvers:
            kd, y = check_train(_pick(k_train_train, g), y_raw)
            solvers[g] = (kd, y, cholesky_solver(kd, reg_value(kd, diag_reg,
                                                               not diag_reg_absolute_scale)))
        return solvers[g]

    def predict_fn(get=None, k_test_train=None, k_test_test=None):
        single, names = _canonical_get(get)
        out = {}
        for g in names:
            if g not in ("nngp", "ntk", "ntkgp"):
                raise ValueError(f"get: unknown {g!r}; expected 'nngp', 'ntk' or 'ntkgp'")
            kname = "ntk" if g == "ntkgp" else g
            kd, y, solve = solver(kname)
            n = kd.shape[0]
            if k_test_train is None:
                mean = y.clone()
                out[g] = mean if k_test_test is None else Gaussian(mean, torch.zeros_like(kd))
                continue
            ktd = as_kernel(_pick(k_test_train, kname), "k_test_train", n_cols=n, like=kd)
            mean = torch.tensordot(ktd, solve(y), dims=1)
            if k_test_test is None:
                out[g] = mean
                continue
            init = "ntk" if g == "ntkgp" else "nngp"
            k_init_td = as_kernel(_pick(k_test_train, init), "k_test_train", n_cols=n, like=kd)
            k_tt = as_kernel(_pick(k_test_test, init), "k_test_test", like=kd)
            if g in ("nngp", "ntkgp"):
                cov = k_tt - ktd @ solve(k_init_td.T)
            else:
                nngp_dd = as_kernel(_pick(k_train_train, "nngp"), "k_train_train.nngp", n, n,
                                    like=kd)
                term1 = solve(ktd.T)                                   # A^{-1} Θ(X, x)
                term2 = ktd @ solve(k_init_td.T)                       # Θ A^{-1} K(X, x)
                cov = k_tt + term1.T @ nngp_dd @ term1 - term2 - term2.T
            out[g] = Gaussian(mean, cov)
        return _pack(single, names, out)

    return predict_fn


def gradient_descent_mse_ensemble(arch, x_train: ArrayLike, y_train: ArrayLike,
                                  learning_rate: float = 1.0, diag_reg: float = 0.0,
                                  diag_reg_absolute_scale: bool = False, trace_axes=(-1,),
                                  **kernel_kwargs):
    """neural-tangents' ``predict.gradient_descent_mse_ensemble`` for an ntkit architecture.

    ``arch`` is an ntkit ``Sequential`` (anything with ``.kernel(x1, x2, get=...)`` returning
    ``nk.Kernels``); ``kernel_kwargs`` (e.g. batch_size) go to ``arch.kernel``.
    Returns ``predict_fn(t=None, x_test=None, get=None, compute_cov=False)``: the mean (and
    covariance) of the infinite ensemble of infinite-width networks trained to time t, on
    x_test or (x_test None) the training set, in the 'ntk' (all layers trained) or 'nngp'
    (readout only) regime.
    """
    _check_trace_axes(trace_axes)
    if not hasattr(arch, "kernel"):
        raise TypeError(f"arch must be an ntkit architecture with a .kernel method, got "
                        f"{type(arch).__name__}")
    kd_cache = {}
    c = float(learning_rate) / _num_targets(y_train)

    def k_dd(names):
        missing = tuple(g for g in names if g not in kd_cache)
        if missing:
            kern = arch.kernel(x_train, None, get=missing, **kernel_kwargs)
            for g in missing:
                kd_cache[g] = kern.get(g)
        return kd_cache

    spectra = {}

    def spectrum(g: str, kd) -> Spectrum:
        if g not in spectra:
            spectra[g] = Spectrum(kd, reg_value(kd, diag_reg, not diag_reg_absolute_scale))
        return spectra[g]

    def predict_fn(t=None, x_test=None, get=None, compute_cov: bool = False):
        single, names = _canonical_get(get)
        for g in names:
            if g not in ("nngp", "ntk"):
                raise ValueError(f"get: expected 'nngp' and/or 'ntk', got {g!r}")
        needed = tuple(dict.fromkeys((("nngp",) if ("nngp" in names or compute_cov) else ())
                                     + (("ntk",) if "ntk" in names else ())))
        kd = k_dd(needed)
        ktd = nngp_tt = None
        if x_test is not None:
            kern = arch.kernel(x_test, x_train, get=needed, **kernel_kwargs)
            ktd = {g: kern.get(g) for g in needed}
            if compute_cov:
                nngp_tt = arch.kernel(x_test, None, get="nngp", **kernel_kwargs).nngp
        if t is None:
            kernels = collections.namedtuple("Kernel", needed)(*(kd[g] for g in needed))
            k_td = None if ktd is None else collections.namedtuple("Kernel", needed)(
                *(ktd[g] for g in needed))
            # neural-tangents: on the training set any non-None k_test_test asks for the (zero)
            # covariance
            tt = None if not compute_cov else (nngp_tt if nngp_tt is not None else kd["nngp"])
            res = gp_inference(kernels, y_train, diag_reg, diag_reg_absolute_scale)(
                get=names, k_test_train=k_td, k_test_test=tt)
            return _pack(single, names, res._asdict())
        out = {}
        for g in names:
            kg = kd[g]
            _, y = check_train(kg, y_train)
            n = y.shape[0]
            spec = spectrum(g, kg)
            times, shape = as_times(t, kg, False)
            r = spec.rotate(y.reshape(n, -1))
            phi = 1 - decay(spec.evals, times, c, False)
            if ktd is None:
                mean = through_diag(spec.evecs, phi, r)
                rows = n
            else:
                g_t = phi_over_lambda(spec.evals, times, c, False, spec.tol)
                proj = ktd[g] @ spec.evecs
                mean = through_diag(proj, g_t, r)
                rows = proj.shape[0]
            mean = mean.reshape(shape + (rows,) + tuple(y.shape[1:]))
            if not compute_cov:
                out[g] = mean
                continue
            lam = spec.evals.clamp(min=0)
            V = spec.evecs
            if ktd is None:
                if g == "nngp":
                    w = lam[None] * torch.exp(-2 * c * lam[None] * times[:, None])
                    cov = sandwich_diag(V, w, V)
                else:
                    decay_t = torch.exp(-c * lam[None] * times[:, None])
                    e = sandwich_diag(V, decay_t, V)
                    cov = e @ kd["nngp"] @ e
            else:
                if g == "nngp":
                    g2 = phi_over_lambda(spec.evals, 2 * times, c, False, spec.tol)
                    cov = nngp_tt[None] - sandwich_diag(proj, g2, proj)
                else:
                    term1 = sandwich_diag(V, g_t, proj)                     # M Θ(X, x)  (T, n, m)
                    term2 = sandwich_diag(proj, g_t, ktd["nngp"] @ V)      # Θ M K(X, x)
                    cov = (term1.transpose(1, 2) @ kd["nngp"] @ term1 - term2
                           - term2.transpose(1, 2) + nngp_tt[None])
            out[g] = Gaussian(mean, cov.reshape(shape + cov.shape[1:]))
        return _pack(single, names, out)

    return predict_fn


def _num_targets(y) -> int:
    if isinstance(y, torch.Tensor):
        return y.numel()
    return int(as_tensor(y, "y_train").numel())
