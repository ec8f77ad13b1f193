"""ntkit.data.load_mnist against the facts in ../shared/data/README.md (shapes, label counts,
first labels, pixel mean), and its errors. Skipped when the data file is absent."""
import numpy as np
import pytest

from ntkit.data import default_data_dir, load_mnist

MNIST = default_data_dir() / "mnist" / "mnist.npz"
needs_file = pytest.mark.skipif(not MNIST.is_file(), reason=f"{MNIST} not present")


@pytest.fixture(scope="module")
def mnist():
    return load_mnist(MNIST)


@needs_file
def test_shapes_range_and_dtype(mnist):
    x_train, y_train, x_test, y_test = mnist
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 1.0


@needs_file
def test_matches_the_published_statistics(mnist):
    x_train, y_train, x_test, y_test = mnist
    # README: official label counts, first labels, and train pixel mean 0.13066 / std 0.30811
    assert np.bincount(y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert abs(float(x_train.mean(dtype=np.float64)) - 0.13066) < 5e-5
    assert abs(float(x_train.std(dtype=np.float64)) - 0.30811) < 5e-5


def test_folder_path_and_image_layout(tmp_path):
    """On a synthetic file of the same format: pixel i/255 comes back as i/255 in NCHW."""
    pixels = (np.arange(3 * 28 * 28) % 256).astype(np.uint8).reshape(3, 28, 28)
    np.savez(tmp_path / "mnist.npz", x_train=pixels, y_train=np.array([1, 2, 3], np.uint8),
             x_test=pixels[:1], y_test=np.array([7], np.uint8))
    x_train, y_train, x_test, y_test = load_mnist(tmp_path, flatten=False, dtype=np.float64)
    assert x_train.shape == (3, 1, 28, 28) and x_train.dtype == np.float64
    np.testing.assert_array_equal(x_train[:, 0] * 255, pixels.astype(np.float64))
    assert y_train.tolist() == [1, 2, 3] and y_test.tolist() == [7]
    flat = load_mnist(tmp_path / "mnist.npz").x_test
    assert flat.shape == (1, 784) and flat.dtype == np.float32


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"mnist\.npz.*" + str(tmp_path)):
        load_mnist(tmp_path)


def test_file_without_the_arrays(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="lacks the array"):
        load_mnist(tmp_path / "mnist.npz")
