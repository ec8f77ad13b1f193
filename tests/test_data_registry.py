"""ntkit.data.registry: datasets by name, and inputs shaped for an architecture from what its
layers declare (``out_shape``), with no list of layer classes: a layer written only in this file
is placed as its own ``out_shape`` says. References: numpy reshapes of the same rows and
scikit-learn's digits."""
import numpy as np
import pytest

import ntkit as nk
from ntkit.data.registry import (DataNotFoundError, Dataset, DatasetError, inputs_for,
                                 load_dataset)


class ImagesOnly(nk.Layer):
    """A layer defined only here: it takes images (C, H, W) and keeps their shape."""

    def apply(self, state):  # pragma: no cover - only the shapes are used here
        return state

    def out_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ValueError(f"ImagesOnly expects images, got per-example shape {tuple(in_shape)}")
        return tuple(in_shape)


def _toy(image_shape=(1, 2, 3), features=6):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, features if image_shape is None else int(np.prod(image_shape))))
    y = np.arange(5) % 2
    return Dataset("toy", x, y, x, y, 2, image_shape), x


def test_inputs_for_follows_the_declared_shapes():
    ds, flat = _toy()
    images = flat.reshape(5, 1, 2, 3)
    fc = nk.Sequential(nk.Linear(3), nk.ReLU(), nk.Linear(1))
    cnn = nk.Sequential(nk.Conv2d(4, 1), nk.ReLU(), nk.Flatten(), nk.Linear(1))
    custom = nk.Sequential(ImagesOnly(), nk.Flatten(), nk.Linear(1))
    np.testing.assert_array_equal(inputs_for(fc, ds, flat), flat)
    np.testing.assert_array_equal(inputs_for(fc, ds, images), flat)
    np.testing.assert_array_equal(inputs_for(cnn, ds, flat), images)
    np.testing.assert_array_equal(inputs_for(cnn, ds, images), images)
    np.testing.assert_array_equal(inputs_for(custom, ds, flat), images)
    # Flatten takes images as well as rows: the dataset's images are kept
    np.testing.assert_array_equal(inputs_for(nk.Sequential(nk.Flatten(), nk.Linear(1)), ds, flat),
                                  images)


def test_inputs_for_names_the_layer_that_refuses():
    ds, flat = _toy(image_shape=None)
    cnn = nk.Sequential(nk.Conv2d(4, 1), nk.ReLU(), nk.GlobalAvgPool2d(), nk.Linear(1))
    with pytest.raises(DatasetError, match="flat feature rows.*Conv2d expects images"):
        inputs_for(cnn, ds, flat)
    ds, flat = _toy(image_shape=(1, 2, 2))
    too_small = nk.Sequential(nk.Conv2d(4, 3, padding="valid"), nk.Flatten(), nk.Linear(1))
    with pytest.raises(DatasetError, match="images 1x2x2"):
        inputs_for(too_small, ds, flat)


def test_subsets_keep_rows_and_their_order():
    full = load_dataset("digits")
    ds = load_dataset("digits", n_train=50, n_test=20, seed=3, dtype=np.float32)
    assert ds.image_shape == (1, 8, 8) and ds.sizes == (50, 20) and ds.n_classes == 10
    assert ds.x_train.dtype == np.float32
    # each kept row is a row of the full split, in the original order
    rows = [int(np.flatnonzero((full.x_train.astype(np.float32) == r).all(1))[0])
            for r in ds.x_train]
    assert rows == sorted(rows) and len(set(rows)) == 50
    np.testing.assert_array_equal(ds.y_train, full.y_train[rows])


def test_bad_names_and_missing_data(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        load_dataset("nope", tmp_path)
    with pytest.raises(DataNotFoundError, match="mnist/mnist.npz"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(DatasetError, match="n_train"):
        load_dataset("digits", n_train=0)
