"""CIFAR-10 loader: the shared npz (skipped when absent), a synthetic set of the original
python-pickle batches, the preprocessing of Arora et al. 2019 and the regression targets."""
import pickle

import numpy as np
import pytest

from ntkit.data import load_cifar10
from ntkit.data.cifar10 import cifar10_targets
from ntkit.data.paths import default_data_dir

NPZ = default_data_dir() / "cifar10" / "cifar10_subset.npz"


def _write_batches(d, rng):
    raw = {}
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        labels = list(rng.integers(0, 10, size=4))
        raw[name] = (data, labels)
        with open(d / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": labels}, fh)
    return raw


def test_pickle_batches_nchw_and_standardized(tmp_path):
    raw = _write_batches(tmp_path, np.random.default_rng(0))
    x_tr, y_tr, x_te, y_te = load_cifar10(tmp_path, dtype=np.float64)
    assert x_tr.shape == (20, 3, 32, 32) and x_te.shape == (4, 3, 32, 32)
    # independent reference: pixel (channel c, row i, col j) of image 0 is data[0, c*1024 + 32 i + j]
    data = np.concatenate([raw[f"data_batch_{k}"][0] for k in range(1, 6)]).astype(np.float64) / 255
    chans = data.reshape(20, 3, 1024)
    mean, std = chans.mean(axis=(0, 2)), chans.std(axis=(0, 2))
    c, i, j = 2, 5, 7
    assert x_tr[0, c, i, j] == pytest.approx((data[0, c * 1024 + 32 * i + j] - mean[c]) / std[c])
    np.testing.assert_allclose(x_tr.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(x_tr.std(axis=(0, 2, 3)), 1, atol=1e-12)
    assert list(y_te) == list(raw["test_batch"][1])


def test_targets():
    t = cifar10_targets(np.array([3, 0]))
    assert t.shape == (2, 10) and t[0, 3] == 0.9 and t[1, 0] == 0.9
    assert np.count_nonzero(t == -0.1) == 18
    with pytest.raises(ValueError):
        cifar10_targets(np.array([10]))


def test_missing_file_names_path_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar10_subset.npz") as e:
        load_cifar10(tmp_path / "nowhere")
    assert "nowhere" in str(e.value)


@pytest.mark.skipif(not NPZ.is_file(), reason="shared CIFAR-10 subset absent")
def test_shared_subset():
    x_tr, y_tr, x_te, y_te = load_cifar10(NPZ, n_train=100, n_test=50)
    assert x_tr.shape == (100, 3, 32, 32) and x_te.shape == (50, 3, 32, 32)
    # the README's first training labels (data_batch_1)
    assert list(y_tr[:10]) == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert x_tr.dtype == np.float32


def test_reads_jpeg_subset_tells_which_files_the_loader_reads(tmp_path):
    """The subset file (JPEG-decoded test images) versus the original batches, by what is on
    disk: a folder with cifar10_subset.npz, the file itself, a folder of batches only."""
    from ntkit.data.cifar10 import FILE_NAME, reads_jpeg_subset
    subset = tmp_path / "subset"
    subset.mkdir()
    (subset / FILE_NAME).write_bytes(b"")
    batches = tmp_path / "batches"
    batches.mkdir()
    (batches / "data_batch_1").write_bytes(b"")
    assert reads_jpeg_subset(subset)
    assert reads_jpeg_subset(subset / FILE_NAME)
    assert not reads_jpeg_subset(batches)
