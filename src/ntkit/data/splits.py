"""The return type of the array loaders: a train/test split that also unpacks as a 4-tuple."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class TrainTest(NamedTuple):
    """``x_train (n_train, ...)``, ``y_train (n_train,)``, ``x_test (n_test, ...)``,
    ``y_test (n_test,)``; unpacks as ``x_train, y_train, x_test, y_test = loader(...)``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
