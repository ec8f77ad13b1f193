"""Infinite-width layers. Each maps a KernelState to the next (see ``state.py``)."""
from .base import Layer
from .conv import Conv2d
from .pooling import AvgPool2d, Flatten, GlobalAvgPool2d
from .dense import Linear
from .quadrature import Elementwise, Sigmoid, Tanh
from .relu import ABReLU, LeakyReLU, ReLU
from .sequential import Sequential
from .smooth import GELU, Erf, Identity, Sin
from .state import KernelState

__all__ = ["Layer", "KernelState", "Sequential", "Linear", "ReLU", "LeakyReLU", "ABReLU", "Erf",
           "GELU", "Sin", "Tanh", "Sigmoid", "Identity", "Elementwise",
           "Conv2d", "AvgPool2d", "GlobalAvgPool2d", "Flatten"]
