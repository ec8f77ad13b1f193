"""CIFAR-10 (Krizhevsky 2009) with the preprocessing of Arora et al. 2019 (seed 001).

Two on-disk forms are read (nothing is downloaded):

* ``cifar10_subset.npz`` (../shared/data/README.md): the first 10,000 training images and the
  10,000 test images decoded from JPEG, plus ``x_train_first4000_lossless``; images NHWC uint8.
  ``lossless=True`` (default) returns the 4,000 lossless training images; the test images
  exist only JPEG-decoded.
* the original python-pickle batches (a folder with ``data_batch_1`` … ``data_batch_5`` and
  ``test_batch``; each a dict with b"data" (10000, 3072) uint8 in CHW order and b"labels").

Preprocessing as in the paper: divide by 255, then standardize each channel with the mean and
standard deviation of the returned training images. Images come back NCHW (n, 3, 32, 32).
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .splits import TrainTest

FILE_NAME = "cifar10_subset.npz"
_BATCHES = [f"data_batch_{k}" for k in range(1, 6)]
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck")


def _resolve(path: Union[str, Path, None]) -> Path:
    if path is None:
        from .paths import default_data_dir
        path = default_data_dir() / "cifar10"
    return Path(path).expanduser()


def reads_jpeg_subset(path: Union[str, Path, None] = None) -> bool:
    """True when the loader reads ``cifar10_subset.npz`` (test images decoded from JPEG) at
    ``path`` (a folder or the file; None: the default data folder), False when it reads the
    original pickle batches (lossless)."""
    p = _resolve(path)
    return p.is_file() or (p / FILE_NAME).is_file()


def _read_npz(p: Path, lossless: bool):
    keys = ["x_test", "y_test", "y_train", "x_train_first4000_lossless" if lossless else "x_train"]
    with np.load(p) as z:
        missing = [k for k in keys if k not in z.files]
        if missing:
            raise ValueError(f"CIFAR-10: {p} lacks the array(s) {', '.join(missing)} "
                             f"(has {', '.join(z.files)})")
        x_tr = z[keys[3]]
        y_tr = z["y_train"][:len(x_tr)]
        x_te, y_te = z["x_test"], z["y_test"]
    to_nchw = lambda x: np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return to_nchw(x_tr), y_tr, to_nchw(x_te), y_te


def _read_batch(f: Path):
    with open(f, "rb") as fh:
        d = pickle.load(fh, encoding="bytes")
    x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return x, np.asarray(d[b"labels"])


def _read_pickles(d: Path):
    xs, ys = zip(*[_read_batch(d / name) for name in _BATCHES])
    x_te, y_te = _read_batch(d / "test_batch")
    return np.concatenate(xs), np.concatenate(ys), x_te, y_te


def load_cifar10(path: Union[str, Path, None] = None, *, lossless: bool = True,
                 n_train: Optional[int] = None, n_test: Optional[int] = None,
                 dtype=np.float32, standardize: bool = True) -> TrainTest:
    """Load CIFAR-10 as NCHW float arrays, preprocessed as in Arora et al. 2019.

    ``path``: the ``cifar10_subset.npz`` file, a folder containing it, or a folder of the
    original pickle batches (default: ``<data dir>/cifar10``). ``lossless`` picks the 4,000
    lossless training images of the npz (False: its 10,000 JPEG-decoded ones). ``n_train`` /
    ``n_test`` keep the first images (before the channel statistics are computed).
    Labels are int64 in 0..9; ``cifar10_targets`` turns them into regression targets.
    Raises FileNotFoundError naming the path and the expected files.
    """
    p = _resolve(path)
    if p.is_dir() and (p / FILE_NAME).is_file():
        p = p / FILE_NAME
    if p.is_file():
        x_tr, y_tr, x_te, y_te = _read_npz(p, lossless)
    elif p.is_dir() and all((p / b).is_file() for b in _BATCHES + ["test_batch"]):
        x_tr, y_tr, x_te, y_te = _read_pickles(p)
    else:
        raise FileNotFoundError(
            f"CIFAR-10: expected {FILE_NAME} (see shared/data/README.md) or the python batches "
            f"data_batch_1..5 and test_batch at {p}, which has neither")
    if n_train is not None:
        x_tr, y_tr = x_tr[:int(n_train)], y_tr[:int(n_train)]
    if n_test is not None:
        x_te, y_te = x_te[:int(n_test)], y_te[:int(n_test)]
    dt = np.dtype(dtype)
    x_tr = x_tr.astype(np.float64) / 255.0
    x_te = x_te.astype(np.float64) / 255.0
    if standardize:
        mean = x_tr.mean(axis=(0, 2, 3), keepdims=True)
        std = x_tr.std(axis=(0, 2, 3), keepdims=True)
        x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    return TrainTest(x_tr.astype(dt), y_tr.astype(np.int64), x_te.astype(dt),
                     y_te.astype(np.int64))


def cifar10_targets(y: np.ndarray, num_classes: int = 10) -> np.ndarray:
    """Regression targets of Arora et al. 2019: -0.1 + e_c, i.e. 0.9 for the true class and
    -0.1 elsewhere; shape (n, num_classes), float64."""
    y = np.asarray(y)
    if y.ndim != 1 or (y.size and (y.min() < 0 or y.max() >= num_classes)):
        raise ValueError(f"labels must be a 1-D array of integers in 0..{num_classes - 1}")
    out = np.full((len(y), num_classes), -0.1)
    out[np.arange(len(y)), y.astype(np.int64)] = 0.9
    return out
