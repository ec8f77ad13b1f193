"""scikit-learn estimators backed by infinite-width kernels.

``NTKRegressor`` / ``NTKClassifier``: the mean output of an infinite ensemble of infinitely wide
networks trained by gradient descent on MSE to time ``t`` (t=None: to convergence, i.e. NTK
kernel (ridge) regression; Jacot et al. 2018, Lee et al. 2019). The classifier regresses one-hot
targets and predicts the argmax (Arora et al. 2019). ``NNGPRegressor``: the posterior mean (and
standard deviation) of the NNGP Gaussian process, i.e. an infinitely wide Bayesian network
(Lee et al. 2018).

Conventions (those of neural-tangents, so that the numbers match ``gradient_descent_mse``):
- ``t`` counts steps of size ``learning_rate`` on the loss averaged over all training targets;
- ``diag_reg`` is relative to the mean of the kernel's diagonal (for the NNGP: the observation
  noise variance in those units);
- ``arch=None`` is the default architecture: 3 hidden ReLU layers, ``W_std=sqrt(2)``,
  ``b_std=0.05`` in every layer (NTK parameterization), a scalar readout (see
  ``default_architecture``). Inputs are numpy arrays or torch tensors, flat (n, features) or,
  for convolutional architectures, images (n, C, H, W); torch tensors on a GPU have their
  kernels computed there. Standardize flat features (e.g. in a ``Pipeline`` with
  ``StandardScaler``) as for any kernel method.
- A train-train kernel singular to working precision at ``t=None`` with ``diag_reg=0`` (e.g.
  duplicated rows) gives a ``SingularKernelWarning`` naming the fix and the minimum-norm limit of
  gradient flow.
Kernels are computed in ``dtype`` ("float64" by default; "float32" is faster and less exact),
``batch_size`` rows at a time. ``NTKRegressor``/``NTKClassifier(solver="cg", store=PATH,
client=...)`` take the path past one machine's memory (``ntkit.scale``): the train-train kernel
as tiles in a Zarr store computed on Dask, (K + μI)α = Y by preconditioned conjugate gradients
streaming the stored tiles (``ntkit.scale.solve_kernel``), predictions K(x, X_fit_) α streamed
from recomputed tiles; ``store=None`` recomputes the train tiles in every CG iteration instead. Nothing happens in ``__init__``; ``fit`` learns ``X_fit_``,
``dual_coef_`` (so that predictions are K(x, X_fit_) @ dual_coef_), ``n_features_in_``,
``device_``.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os
import warnings
from typing import Optional

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .layers import Linear, ReLU, Sequential
from .predict import MSEDynamics
from .predict import warn_near_duplicates

_DTYPES = {"float64": torch.float64, "float32": torch.float32}
_SOLVERS = ("direct", "cg")


def _device(x) -> str:
    """Kernels are computed where torch-tensor inputs live (e.g. 'cuda'); numpy: the CPU."""
    return str(x.device) if isinstance(x, torch.Tensor) else "cpu"


def _host(x):
    """torch tensors (any device) as numpy arrays, for scikit-learn's validation."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x


def default_architecture() -> Sequential:
    """The estimators' default: Linear-ReLU x 3 + Linear readout, W_std=√2, b_std=0.05 (NTK
    parameterization; widths, 512, only matter for ``init``)."""
    w, b = math.sqrt(2.0), 0.05
    return Sequential(Linear(512, W_std=w, b_std=b), ReLU(), Linear(512, W_std=w, b_std=b), ReLU(),
                      Linear(512, W_std=w, b_std=b), ReLU(), Linear(1, W_std=w, b_std=b))


class _KernelModel(BaseEstimator):
    """Shared fit/predict of the kernel estimators (``_kernel_name``: 'ntk' or 'nngp')."""

    _kernel_name = "ntk"

    def __init__(self, arch=None, t=None, diag_reg=0.0, learning_rate=1.0, batch_size=None,
                 dtype="float64"):
        self.arch = arch
        self.t = t
        self.diag_reg = diag_reg
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.dtype = dtype

    # -- parameter checks (in fit, not __init__, as scikit-learn requires) ------------------------
    def _check_params(self):
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'float64' or 'float32', got {self.dtype!r}")
        if self.t is not None and (not isinstance(self.t, numbers.Real) or not self.t >= 0):
            raise ValueError(f"t must be None (infinite time) or a number >= 0, got {self.t!r}")
        if not isinstance(self.diag_reg, numbers.Real) or not self.diag_reg >= 0:
            raise ValueError(f"diag_reg must be a number >= 0, got {self.diag_reg!r}")
        if not isinstance(self.learning_rate, numbers.Real) or not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be a number > 0, got {self.learning_rate!r}")
        if self.batch_size is not None and (not isinstance(self.batch_size, numbers.Integral)
                                            or self.batch_size < 1):
            raise ValueError(f"batch_size must be None or a positive integer, got "
                             f"{self.batch_size!r}")
        arch = default_architecture() if self.arch is None else self.arch
        if not hasattr(arch, "kernel"):
            raise TypeError(f"arch must be an ntkit architecture (e.g. nk.Sequential), got "
                            f"{type(arch).__name__}")
        return arch

    def _kernel(self, arch, x1: np.ndarray, x2: Optional[np.ndarray] = None) -> torch.Tensor:
        """The kernel on the CPU in ``dtype``, computed on the device of the fitted inputs."""
        dt = _DTYPES[self.dtype]
        device = getattr(self, "device_", "cpu")
        t1 = torch.tensor(np.asarray(x1), dtype=dt, device=device)  # a copy: may be read-only
        t2 = None if x2 is None else torch.tensor(np.asarray(x2), dtype=dt, device=device)
        try:
            k = arch.kernel(t1, t2, get=self._kernel_name, batch_size=self.batch_size)
        except MemoryError as err:
            if not hasattr(self, "solver"):
                raise
            raise MemoryError(f"{err}. Or fit with {type(self).__name__}(solver='cg', "
                              f"store='K.zarr'): the kernel as tiles on disk, solved by "
                              f"conjugate gradients") from None
        return k.get(self._kernel_name).cpu()

    def _dynamics(self, k: torch.Tensor, Y: np.ndarray) -> MSEDynamics:
        """Gradient flow on the mean-squared loss with kernel ``k`` and targets ``Y``."""
        return MSEDynamics(k, torch.as_tensor(Y, dtype=k.dtype), learning_rate=self.learning_rate,
                           loss="mean", diag_reg=self.diag_reg, diag_reg_relative=True,
                           on_singular="warn")

    def _fit_targets(self, X, Y: np.ndarray):
        arch = self._check_params()
        if getattr(self, "solver", "direct") == "cg":
            return self._fit_cg(arch, X, Y)
        warn_near_duplicates(X, stacklevel=4)
        k = self._kernel(arch, X)
        dyn = self._dynamics(k, Y)
        self.X_fit_ = np.asarray(X)
        self.dual_coef_ = dyn.coefficients(self.t).numpy()
        self.arch_ = arch
        return self

    def _raw_predict(self, X) -> np.ndarray:
        check_is_fitted(self, "dual_coef_")
        X = validate_data(self, _host(X), reset=False, dtype=[np.float64, np.float32],
                          allow_nd=True)
        if getattr(self, "solver", "direct") == "cg":
            return self._predict_cg(X)
        k = self._kernel(self.arch_, X, self.X_fit_)
        return k.numpy() @ self.dual_coef_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


class _NTKModel(_KernelModel):
    """The NTK estimators: ``_KernelModel`` plus the scale path (``solver="cg"``).

    solver : "direct" (default: the kernels in memory, exact closed forms) or "cg": the
        train-train kernel streamed, (K + μI)α = Y by preconditioned conjugate gradients
        (``ntkit.scale.solve_kernel``; only t=None, kernel regression). Learns ``n_iter_``,
        ``cg_residuals_`` (the largest relative residual per iteration) and ``cg_converged_``.
    store : with solver="cg", a Zarr store path for the train-train kernel tiles
        (``ntkit.scale.compute_kernel``; an existing store of the same computation is resumed,
        one of other inputs refused) or None to recompute the tiles in every iteration.
    client : with solver="cg", a ``distributed.Client`` or scheduler address for the kernel
        tiles, the solver's products and the predictions; None: a LocalCluster for the store,
        the products and predictions in this process.
    cg_tol, cg_max_iter : CG stops when every column's relative residual is below ``cg_tol``,
        or after ``cg_max_iter`` iterations (a ``ConvergenceWarning`` then).
    cg_centres : columns of the Nyström preconditioner (0: none; unused when diag_reg = 0).
    """

    def __init__(self, arch=None, t=None, diag_reg=0.0, learning_rate=1.0, batch_size=None,
                 dtype="float64", solver="direct", store=None, client=None, cg_tol=1e-6,
                 cg_max_iter=1000, cg_centres=1000):
        super().__init__(arch=arch, t=t, diag_reg=diag_reg, learning_rate=learning_rate,
                         batch_size=batch_size, dtype=dtype)
        self.solver = solver
        self.store = store
        self.client = client
        self.cg_tol = cg_tol
        self.cg_max_iter = cg_max_iter
        self.cg_centres = cg_centres

    def _check_params(self):
        arch = super()._check_params()
        if self.solver not in _SOLVERS:
            raise ValueError(f"solver must be one of {_SOLVERS}, got {self.solver!r}")
        if self.solver == "direct":
            given = [n for n in ("store", "client") if getattr(self, n) is not None]
            if given:
                raise ValueError(f"{' and '.join(given)} are used only with solver='cg'; "
                                 f"pass solver='cg' or leave them None")
            return arch
        if self.t is not None:
            raise ValueError(f"solver='cg' solves kernel regression (t=None); t={self.t!r} "
                             f"needs solver='direct'")
        if self.store is not None and not isinstance(self.store, (str, os.PathLike)):
            raise TypeError(f"store must be a path (str or os.PathLike) or None, got "
                            f"{type(self.store).__name__}")
        from .scale.cluster import check_client
        check_client(self.client)
        if isinstance(self.cg_tol, bool) or not isinstance(self.cg_tol, numbers.Real) \
                or not 0 < self.cg_tol < 1:
            raise ValueError(f"cg_tol must be a number in (0, 1), got {self.cg_tol!r}")
        for name in ("cg_max_iter", "cg_centres"):
            v = getattr(self, name)
            low = 1 if name == "cg_max_iter" else 0
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        return arch

    def _fit_cg(self, arch, X, Y: np.ndarray):
        from .scale import (KernelOperator, RecomputedBands, StoreBands, compute_kernel,
                            solve_kernel)
        from .scale.cluster import dask_client
        name = self._kernel_name
        x = torch.tensor(np.asarray(X), dtype=_DTYPES[self.dtype])
        with dask_client(self.client) if self.client is not None else contextlib.nullcontext() as client:
            if self.store is not None:
                device = "cuda" if self.device_.startswith("cuda") else "cpu"
                compute_kernel(arch, x, store=self.store, tile=self.batch_size, client=client,
                               get=(name,), dtype=self.dtype, progress=False, device=device)
                bands = StoreBands(self.store, name)
            else:
                bands = RecomputedBands(arch, x, name, tile=self.batch_size or 1000)
            op = KernelOperator(bands, client=client)
            res = solve_kernel(op, Y, self.diag_reg, centres=self.cg_centres, tol=self.cg_tol,
                               max_iter=self.cg_max_iter)
        if not res.converged:
            warnings.warn(f"CG stopped after cg_max_iter={self.cg_max_iter} iterations at "
                          f"relative residual {res.residuals[-1]:.2e} > cg_tol={self.cg_tol}; "
                          f"raise cg_max_iter or diag_reg", ConvergenceWarning, stacklevel=4)
        self.X_fit_ = np.asarray(X)
        self.dual_coef_ = res.alpha
        self.arch_ = arch
        self.n_iter_ = res.iterations
        self.cg_residuals_ = np.asarray(res.residuals)
        self.cg_converged_ = res.converged
        return self

    def _predict_cg(self, X) -> np.ndarray:
        from .scale import predict_recomputed
        from .scale.cluster import dask_client
        rows = self.batch_size or 1000
        with dask_client(self.client) if self.client is not None else contextlib.nullcontext() as client:
            return predict_recomputed(self.arch_, np.asarray(X), self.X_fit_, self.dual_coef_,
                                      name=self._kernel_name, rows=rows, tile=rows,
                                      dtype=self.dtype, client=client)


class _KernelRegressor(RegressorMixin, _KernelModel):
    """Regressors: targets of shape (n,) or (n, outputs)."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


class NTKRegressor(_KernelRegressor, _NTKModel):
    """Mean prediction of infinitely wide networks trained on MSE to time ``t`` (NTK-GP mean).

    Parameters
    ----------
    arch : ntkit architecture (``nk.Sequential``) or None for ``default_architecture()``.
    t : training time in steps of ``learning_rate`` (loss averaged over all targets); None = ∞.
    diag_reg : ridge relative to the mean of the kernel's diagonal (weight decay of the
        linearized network).
    learning_rate : step size η (only the product η·t matters for gradient flow).
    batch_size : kernel block size (rows and columns) or None for ntkit's default.
    dtype : 'float64' (default) or 'float32' for the kernel computations.
    solver, store, client, cg_tol, cg_max_iter, cg_centres : the scale path (see ``_NTKModel``):
        ``solver="cg", store="K.zarr"`` for training sets whose kernel does not fit in memory.

    Targets may be (n,) or (n, outputs).
    """

    def fit(self, X, y):
        self.device_ = _device(X)
        X, y = validate_data(self, _host(X), _host(y), dtype=[np.float64, np.float32],
                             y_numeric=True, multi_output=True, allow_nd=True)
        y = np.asarray(y, dtype=np.float64)
        return self._fit_targets(X, y)

    def predict(self, X) -> np.ndarray:
        """Predicted outputs, shape (m,) or (m, outputs) like the training targets."""
        return self._raw_predict(X)


class NTKClassifier(ClassifierMixin, _NTKModel):
    """Classifier by NTK regression on one-hot targets, predicting the argmax.

    Parameters as in ``NTKRegressor``. ``classes_`` holds the sorted class labels;
    ``decision_function`` returns the regressed scores (m, n_classes), or for two classes the
    difference score(class 1) − score(class 0), positive for ``classes_[1]``.
    """

    def fit(self, X, y):
        self.device_ = _device(X)
        X, y = validate_data(self, _host(X), _host(y), dtype=[np.float64, np.float32],
                             allow_nd=True)
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        onehot = np.zeros((len(codes), len(self.classes_)))
        onehot[np.arange(len(codes)), codes] = 1.0
        return self._fit_targets(X, onehot)

    def predict_outputs(self, X) -> np.ndarray:
        """The regression outputs on the one-hot targets, shape (m, n_classes), for any number
        of classes (``decision_function`` follows scikit-learn and is 1-D for two classes)."""
        return self._raw_predict(X)

    def decision_function(self, X) -> np.ndarray:
        scores = self._raw_predict(X)
        if len(self.classes_) == 2:
            return scores[:, 1] - scores[:, 0]
        return scores

    def predict(self, X) -> np.ndarray:
        scores = self._raw_predict(X)
        return self.classes_[np.argmax(scores, axis=1)]


class NNGPRegressor(_KernelRegressor):
    """Posterior of the NNGP Gaussian process (an infinitely wide Bayesian network), or, at a
    finite ``t``, the ensemble of networks whose readout alone is trained to time t.

    Parameters as in ``NTKRegressor``; here ``diag_reg`` is the observation-noise variance
    relative to the mean of the kernel's diagonal (0: noiseless interpolation).
    ``predict(X, return_std=True)`` also returns the posterior standard deviation of the latent
    function (shared by all outputs).
    """

    _kernel_name = "nngp"

    def fit(self, X, y):
        self.device_ = _device(X)
        X, y = validate_data(self, _host(X), _host(y), dtype=[np.float64, np.float32],
                             y_numeric=True, multi_output=True, allow_nd=True)
        return self._fit_targets(X, np.asarray(y, dtype=np.float64))

    def predict(self, X, return_std: bool = False):
        mean = self._raw_predict(X)
        if not return_std:
            return mean
        X = validate_data(self, _host(X), reset=False, dtype=[np.float64, np.float32],
                          allow_nd=True)
        k_dd = self._kernel(self.arch_, self.X_fit_)
        k_td = self._kernel(self.arch_, X, self.X_fit_)
        # the dynamics of fit (same kernel, ridge and time scale); the variance needs no targets
        dyn = self._dynamics(k_dd, np.zeros_like(self.dual_coef_))
        var = dyn.readout_variance(k_td, self._diag(X), self.t)
        return mean, np.sqrt(np.clip(var.numpy(), 0, None))

    def _diag(self, X) -> torch.Tensor:
        """K(x, x) for each row, computed in blocks of 256 (the diagonal of each block)."""
        parts = [torch.diagonal(self._kernel(self.arch_, X[i:i + 256]))
                 for i in range(0, len(X), 256)]
        return torch.cat(parts)
