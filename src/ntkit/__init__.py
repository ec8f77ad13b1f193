"""ntkit: exact infinite-width NNGP and Neural Tangent Kernels in PyTorch.

    import ntkit as nk
    arch = nk.Sequential(nk.Linear(512, W_std=1.5, b_std=0.05), nk.ReLU(),
                         nk.Linear(1, W_std=1.5, b_std=0.05))
    k = arch.kernel(x1, x2)          # nk.Kernels(nngp, ntk), torch tensors (n1, n2)
    net = arch.init((784,), seed=0)  # the finite torch network of the same parameterization
"""
from .empirical import empirical_nngp, empirical_ntk
from .from_torch import from_torch
from . import predict
from .kernels import Kernels
from .layers import (ABReLU, GELU, Elementwise, Erf, Identity, Layer, LeakyReLU, Linear, ReLU,
                     Sequential, Sigmoid, Sin, Tanh)

from .layers import AvgPool2d, Conv2d, Flatten, GlobalAvgPool2d
from .layers import (Dropout, LayerNorm, LocalAvgPool2d, ParallelSum, Residual, ResidualBlock,
                     cntk, myrtle, wide_resnet)

__version__ = "0.1.0"

__all__ = ["Kernels", "Layer", "Sequential", "Linear", "ReLU", "LeakyReLU", "ABReLU", "Erf", "GELU",
           "Sin", "Tanh", "Sigmoid", "Identity", "Elementwise", "from_torch",
           "empirical_ntk", "empirical_nngp",
           "predict", "NTKRegressor", "NTKClassifier", "NNGPRegressor",
           "Conv2d", "AvgPool2d", "GlobalAvgPool2d", "Flatten",
           "Residual", "ParallelSum", "ResidualBlock", "LayerNorm", "Dropout", "LocalAvgPool2d",
           "myrtle", "wide_resnet", "cntk"]

_LAZY = {"NTKRegressor": "estimators", "NTKClassifier": "estimators", "NNGPRegressor": "estimators"}


def __getattr__(name):
    # The estimators import scikit-learn (seconds): load them on first use only.
    if name in _LAZY:
        from importlib import import_module
        value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
