"""ntkit.data.load_digits: the fixed stratified split and the standardization, checked against
scikit-learn's raw digits."""
import numpy as np
from sklearn.datasets import load_digits as sk_digits

from ntkit.data import load_digits


def test_split_is_fixed_stratified_and_standardized():
    x_train, y_train, x_test, y_test = load_digits()
    assert x_train.shape == (1347, 64) and x_test.shape == (450, 64)
    counts = np.bincount(sk_digits().target)
    np.testing.assert_allclose(np.bincount(y_test) / len(y_test), counts / counts.sum(), atol=0.01)
    # standardized with training statistics: mean 0, std 1 (or 0 for constant pixels)
    np.testing.assert_allclose(x_train.mean(axis=0), 0.0, atol=1e-12)
    std = x_train.std(axis=0)
    assert np.all((np.abs(std - 1) < 1e-12) | (std == 0))
    again = load_digits()
    np.testing.assert_array_equal(again.x_test, x_test)


def test_raw_scaling_recovers_the_sklearn_pixels():
    raw = load_digits(standardize=False)
    sk = sk_digits()
    rows = {tuple(r) for r in (sk.data / 16.0).tolist()}
    assert all(tuple(r) in rows for r in raw.x_test[:20].tolist())
    assert raw.x_train.min() == 0.0 and raw.x_train.max() == 1.0
