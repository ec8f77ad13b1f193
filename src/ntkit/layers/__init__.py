"""Infinite-width layers. Each maps a KernelState to the next (see ``state.py``)."""
from .base import Layer
from .conv import Conv2d
from .pooling import AvgPool2d, Flatten, GlobalAvgPool2d
from .dense import Linear
from .dropout import Dropout
from .local_pool import LocalAvgPool2d
from .normalization import LayerNorm
from .quadrature import Elementwise, Sigmoid, Tanh
from .relu import ABReLU, LeakyReLU, ReLU
from .residual import ParallelSum, Residual, ResidualBlock
from .sequential import Sequential
from .smooth import GELU, Erf, Identity, Sin
from .state import KernelState
from .presets import cntk, myrtle, wide_resnet

__all__ = ["Layer", "KernelState", "Sequential", "Linear", "ReLU", "LeakyReLU", "ABReLU", "Erf",
           "GELU", "Sin", "Tanh", "Sigmoid", "Identity", "Elementwise",
           "Conv2d", "AvgPool2d", "GlobalAvgPool2d", "Flatten",
           "Residual", "ParallelSum", "ResidualBlock", "LayerNorm", "Dropout", "LocalAvgPool2d",
           "myrtle", "wide_resnet", "cntk"]
