"""MNIST from ``mnist.npz`` (arrays x_train (60000, 28, 28), y_train, x_test (10000, 28, 28),
y_test, uint8; see ../shared/data/README.md). LeCun et al., Proc. IEEE 1998."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np

from .splits import TrainTest

FILE_NAME = "mnist.npz"
_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_mnist(path: Union[str, Path], dtype=np.float32, flatten: bool = True) -> TrainTest:
    """Load MNIST: images as float arrays scaled to [0, 1], flattened to (n, 784) (or kept as
    (n, 1, 28, 28), NCHW, with ``flatten=False``); labels int64 in 0..9.

    ``path`` is the ``.npz`` file or a folder containing ``mnist.npz``. Raises
    FileNotFoundError naming the path looked at, and ValueError when the file lacks an array.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / FILE_NAME
    if not p.is_file():
        raise FileNotFoundError(f"MNIST: expected the file {FILE_NAME} (arrays {', '.join(_KEYS)})"
                                f" at {p}, which does not exist")
    with np.load(p) as z:
        missing = [k for k in _KEYS if k not in z.files]
        if missing:
            raise ValueError(f"MNIST: {p} lacks the array(s) {', '.join(missing)} "
                             f"(has {', '.join(z.files)})")
        arrays = {k: z[k] for k in _KEYS}
    dt = np.dtype(dtype)
    out = []
    for split in ("train", "test"):
        x = arrays[f"x_{split}"].astype(dt) / dt.type(255.0)
        x = x.reshape(len(x), -1) if flatten else x.reshape(len(x), 1, *x.shape[1:])
        out += [x, arrays[f"y_{split}"].astype(np.int64)]
    return TrainTest(*out)
