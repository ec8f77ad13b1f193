"""scikit-learn's embedded digits (8×8 handwritten digits, 1,797 images, 10 classes).

Ships with scikit-learn, so it is the default for demos and tests (nothing to download).
"""
from __future__ import annotations

import numpy as np

from .splits import TrainTest

#: the fixed split: stratified, 25% test, this seed (every ntkit command uses the same one)
TEST_FRACTION = 0.25
SPLIT_SEED = 0


def load_digits(standardize: bool = True, dtype=np.float64) -> TrainTest:
    """The digits, split 75/25 (stratified by class, fixed seed), as flat (n, 64) float arrays.

    ``standardize=True`` centres each pixel and divides it by its standard deviation, both
    measured on the training split (pixels constant on the training split are only centred);
    otherwise pixels are scaled from 0..16 to [0, 1]. Labels are int64 in 0..9.
    Sizes: 1,347 train and 450 test images.
    """
    from sklearn.datasets import load_digits as _sk_digits
    from sklearn.model_selection import train_test_split

    bunch = _sk_digits()
    x = bunch.data.astype(np.float64)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_FRACTION, stratify=y,
                                              random_state=SPLIT_SEED)
    if standardize:
        mean = x_tr.mean(axis=0)
        std = x_tr.std(axis=0)
        std[std == 0] = 1.0
        x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    else:
        x_tr, x_te = x_tr / 16.0, x_te / 16.0
    return TrainTest(x_tr.astype(dtype), y_tr, x_te.astype(dtype), y_te)
