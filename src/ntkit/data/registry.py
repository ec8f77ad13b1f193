"""Datasets by name, for the command line: ``digits``, ``mnist``, ``cifar10``, ``uci:<name>``.

``digits`` is scikit-learn's embedded copy (nothing to download); the others are read from the
data directory (``--data-dir``, else ``$NTKIT_DATA_DIR``, else ``../shared/data`` next to the
checkout; see :func:`ntkit.data.paths.default_data_dir`) with the loaders of ``ntkit.data``.
A missing directory or file raises :class:`DataNotFoundError` saying where it looked and which
file it expects.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np

__all__ = ["Dataset", "DatasetError", "DataNotFoundError", "load_dataset", "inputs_for",
           "DATASET_NAMES", "expected_file"]

#: name -> (relative file the loader expects, description)
_FILES = {
    "mnist": ("mnist/mnist.npz", "MNIST, 60,000 train / 10,000 test 28x28 images"),
    "cifar10": ("cifar10/cifar10_subset.npz", "CIFAR-10, 10,000 train / 10,000 test 32x32x3 images"),
    "uci": ("uci/<name>/<name>.txt", "one of the 121 UCI datasets of Fernandez-Delgado et al."),
}
DATASET_NAMES = ("digits", "mnist", "cifar10", "uci:<name>")


class DatasetError(ValueError):
    """An unknown dataset name, or data that cannot be used as asked."""


class DataNotFoundError(FileNotFoundError):
    """The data directory or the dataset's file is missing."""


@dataclass
class Dataset:
    """A train/test split. ``x_*`` are float arrays, flat ``(n, d)`` or images ``(n, C, H, W)``;
    ``y_*`` integer class labels ``(n,)``; ``image_shape`` is ``(C, H, W)`` when the rows are
    images (so that convolutional architectures can use them), else None."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    image_shape: Optional[Tuple[int, int, int]] = None
    source: str = ""

    @property
    def sizes(self) -> Tuple[int, int]:
        return len(self.x_train), len(self.x_test)


def expected_file(name: str, data_dir: Path) -> Path:
    """The file the loader of ``name`` ('mnist', 'cifar10' or 'uci:<name>') reads."""
    if name.startswith("uci:"):
        sub = name.split(":", 1)[1]
        return Path(data_dir) / "uci" / sub / f"{sub}.txt"
    return Path(data_dir) / _FILES[name][0]


def _check_file(name: str, data_dir: Path) -> Path:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataNotFoundError(
            f"dataset {name!r}: the data directory {data_dir} does not exist; pass --data-dir "
            f"(or set NTKIT_DATA_DIR) to the folder holding {_FILES[name.split(':')[0]][0]}")
    path = expected_file(name, data_dir)
    if not path.is_file():
        raise DataNotFoundError(
            f"dataset {name!r}: expected the file {path.relative_to(data_dir)} in the data "
            f"directory {data_dir}; looked at {path}, which does not exist")
    return path


def _unpack(obj: Any, what: str):  # the CIFAR-10 loader's result
    """(x_train, y_train, x_test, y_test) from a loader's result: a 4-tuple, a mapping or an
    object with those attributes."""
    keys = ("x_train", "y_train", "x_test", "y_test")
    if isinstance(obj, dict) and all(k in obj for k in keys):
        return tuple(np.asarray(obj[k]) for k in keys)
    if all(hasattr(obj, k) for k in keys):
        return tuple(np.asarray(getattr(obj, k)) for k in keys)
    if isinstance(obj, (tuple, list)) and len(obj) == 4:
        return tuple(np.asarray(a) for a in obj)
    raise DatasetError(f"{what}: the loader returned {type(obj).__name__}, not a train/test split")


def _labels(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2:  # one-hot or the -0.1 + e_c encoding: argmax is the class
        y = y.argmax(axis=1)
    return y.astype(np.int64)


def _load_digits() -> Dataset:
    from .digits import load_digits

    xtr, ytr, xte, yte = load_digits()
    return Dataset("digits", xtr, ytr, xte, yte, 10, (1, 8, 8), "sklearn.datasets.load_digits")


def _load_mnist(data_dir: Path) -> Dataset:
    from .mnist import load_mnist

    path = _check_file("mnist", data_dir)
    xtr, ytr, xte, yte = load_mnist(path)
    return Dataset("mnist", xtr, ytr, xte, yte, 10, (1, 28, 28), str(path))


def _load_cifar10(data_dir: Path) -> Dataset:
    path = _check_file("cifar10", data_dir)
    try:
        from .cifar10 import load_cifar10
    except ImportError as err:
        raise DatasetError(f"cifar10: the loader ntkit.data.cifar10 is not available in this "
                           f"installation ({err})") from None
    xtr, ytr, xte, yte = _unpack(load_cifar10(path), "cifar10")
    images = []
    for x in (xtr, xte):
        x = np.asarray(x)
        if x.ndim == 4 and x.shape[-1] == 3 and x.shape[1] != 3:  # NHWC -> NCHW
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        if x.ndim == 2:
            x = x.reshape(len(x), 3, 32, 32)
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float64) / 255.0
        images.append(x)
    return Dataset("cifar10", images[0], _labels(ytr), images[1], _labels(yte), 10, (3, 32, 32),
                   str(path))


def _load_uci(name: str, data_dir: Path) -> Dataset:
    from .uci import load_uci

    sub = name.split(":", 1)[1]
    if not sub:
        raise DatasetError("uci: give a dataset name, e.g. uci:iris")
    _check_file(name, data_dir)
    data = load_uci(sub, Path(data_dir) / "uci")
    if getattr(data, "X_test", None) is not None:  # a separate test file (fich2)
        xtr, ytr, xte, yte = data.X, data.y, data.X_test, data.y_test
    else:  # the first of the collection's (train, test) pairs (conxuntos_kfold.dat)
        tr, te = data.kfold[0]
        xtr, ytr, xte, yte = data.X[tr], data.y[tr], data.X[te], data.y[te]
    ytr, yte = _labels(ytr), _labels(yte)
    n_classes = int(getattr(data, "n_classes", max(ytr.max(), yte.max()) + 1))
    return Dataset(name, np.asarray(xtr, dtype=np.float64), ytr,
                   np.asarray(xte, dtype=np.float64), yte, n_classes, None,
                   str(Path(data_dir) / "uci" / sub))


def _subset(x: np.ndarray, y: np.ndarray, n: Optional[int], seed: int):
    if n is None or n >= len(x):
        return x, y
    idx = np.sort(np.random.default_rng(seed).choice(len(x), size=n, replace=False))
    return x[idx], y[idx]


def load_dataset(name: str, data_dir: Optional[Path] = None, n_train: Optional[int] = None,
                 n_test: Optional[int] = None, dtype=np.float64, seed: int = 0) -> Dataset:
    """The dataset called ``name`` (see module doc). ``n_train``/``n_test`` keep a random subset
    of that many rows (chosen with ``seed``, original order kept); ``dtype`` is the float type
    of the inputs."""
    if data_dir is None:
        from .paths import default_data_dir
        data_dir = default_data_dir()
    data_dir = Path(data_dir)
    for n, label in ((n_train, "n_train"), (n_test, "n_test")):
        if n is not None and n < 1:
            raise DatasetError(f"{label} must be a positive number of rows, got {n}")
    key = name.strip().lower()
    if key == "digits":
        ds = _load_digits()
    elif key == "mnist":
        ds = _load_mnist(data_dir)
    elif key == "cifar10":
        ds = _load_cifar10(data_dir)
    elif key.startswith("uci:"):
        ds = _load_uci(name.strip(), data_dir)
    else:
        raise DatasetError(f"unknown dataset {name!r}; available: {', '.join(DATASET_NAMES)}")
    xtr, ytr = _subset(ds.x_train, ds.y_train, n_train, seed)
    xte, yte = _subset(ds.x_test, ds.y_test, n_test, seed + 1)
    return replace(ds, x_train=xtr.astype(dtype, copy=False), y_train=ytr,
                   x_test=xte.astype(dtype, copy=False), y_test=yte)


def _accepts(arch, in_shape: Tuple[int, ...]) -> Optional[str]:
    """None when ``arch`` takes inputs of per-example shape ``in_shape`` (its layers' declared
    ``out_shape`` chain succeeds), else the reason it does not."""
    try:
        arch.out_shape(tuple(in_shape))
    except ValueError as err:
        return str(err)
    return None


def inputs_for(arch, ds: Dataset, x: np.ndarray) -> np.ndarray:
    """``x`` shaped for ``arch``: images (n, C, H, W) when the dataset has images and the
    architecture takes them, else flat rows (n, d). What an architecture takes is what its
    layers declare through ``out_shape`` (a Linear needs flat features, a Conv2d or a pooling
    layer needs images); a DatasetError names the layer's reason when neither shape fits."""
    image_shape = tuple(x.shape[1:]) if x.ndim == 4 else ds.image_shape
    image_reason = None
    if image_shape is not None:
        image_reason = _accepts(arch, image_shape)
        if image_reason is None:
            return x if x.ndim == 4 else x.reshape(len(x), *image_shape)
    flat = x.reshape(len(x), -1) if x.ndim > 2 else x
    flat_reason = _accepts(arch, flat.shape[1:])
    if flat_reason is None:
        return flat
    if image_shape is None:
        raise DatasetError(f"dataset {ds.name!r} has flat feature rows, which the architecture "
                           f"does not take: {flat_reason}; use an fc architecture")
    raise DatasetError(f"dataset {ds.name!r} (images {'x'.join(map(str, image_shape))}) does not "
                       f"fit the architecture: {image_reason}")
