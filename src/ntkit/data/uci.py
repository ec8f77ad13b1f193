"""The 121 preprocessed UCI datasets of Fernández-Delgado et al. (2014), with their fixed splits,
and the 90 of them used by Arora et al. (ICLR 2020), "Harnessing the Power of Infinitely Wide
Deep Nets on Small-data Tasks".

Layout of one dataset, ``<root>/<name>/`` (see ``shared/data/README.md`` and ``PROTOCOL.md``):

- ``<name>.txt``: metadata, ``key= value`` lines in Galician: ``n_entradas`` (d),
  ``n_clases`` (c), ``fich1``/``n_patrons1`` (data file, rows), optionally ``fich2``/``n_patrons2``
  (a separate test file), ``n_patrons_entrena``/``n_patrons_valida`` (validation split sizes).
- ``fich1`` (``<name>_R.dat``): a header line, then one row per example:
  row number, d standardized features, integer label in 0..c-1 (tab separated).
- ``conxuntos.dat``: 2 lines of 0-based row indices, (train, validation): hyperparameter selection.
- ``conxuntos_kfold.dat``: 8 lines, 4 (train, test) pairs: the reported accuracy.

Selection rule of Arora et al. (their ``UCI.py``): keep a dataset when it has no separate test
file and ``n_patrons1 + n_patrons2 <= 5000``; exactly 90 of the 121 pass.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from .paths import default_data_dir

PathLike = Union[str, Path]
IndexPair = Tuple[np.ndarray, np.ndarray]

ARORA2020_MAX_TOTAL = 5000


@dataclass(frozen=True)
class UCIDataset:
    """One Fernández-Delgado dataset.

    X: (n, d) float64 features (already standardized by the collection's authors; used as is).
    y: (n,) int64 labels in 0..n_classes-1.
    validation: (train_idx, val_idx), 0-based rows of X, from ``conxuntos.dat``.
    kfold: 4 (train_idx, test_idx) pairs from ``conxuntos_kfold.dat``; each pair partitions the
        n rows (the 4 test sides overlap: they are 4 random 75/25 splits, not a true 4-fold).
    X_test, y_test: the separate test file (``fich2``) when the dataset has one, else None.
    """

    name: str
    X: np.ndarray
    y: np.ndarray
    n_classes: int
    validation: IndexPair
    kfold: Tuple[IndexPair, ...]
    X_test: Optional[np.ndarray] = None
    y_test: Optional[np.ndarray] = None

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def d(self) -> int:
        return int(self.X.shape[1])


# -- locating files ----------------------------------------------------------------------------
def _uci_root(root: Optional[PathLike]) -> Path:
    """The folder holding ``<name>/`` subfolders: ``root`` itself, or ``root/uci``."""
    base = default_data_dir() if root is None else Path(root).expanduser()
    if (base / "uci").is_dir() and not (base / "manifest.json").is_file():
        return base / "uci"
    return base


def _dataset_dir(name: str, root: Optional[PathLike]) -> Path:
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise ValueError(f"load_uci: dataset name must be a plain folder name, got {name!r}")
    base = _uci_root(root)
    folder = base / name
    if not folder.is_dir():
        hint = ""
        if base.is_dir():
            close = [p.name for p in sorted(base.iterdir()) if p.is_dir() and
                     (name.lower() in p.name.lower() or p.name.lower() in name.lower())][:5]
            if close:
                hint = f"; similar names there: {', '.join(close)}"
        else:
            hint = (f"; {base} does not exist (pass root=, or set NTKIT_DATA_DIR to the folder "
                    f"holding uci/)")
        raise FileNotFoundError(f"UCI dataset {name!r}: no folder {folder} (looked in {base}, "
                                f"expected <root>/{name}/{name}.txt, the data file and the split "
                                f"files conxuntos.dat, conxuntos_kfold.dat){hint}")
    return folder


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"UCI: missing {what}: expected the file {path}")
    return path


# -- parsing -----------------------------------------------------------------------------------
def read_metadata(folder: Path, name: str) -> Dict[str, str]:
    """The ``key= value`` pairs of ``<folder>/<name>.txt`` (values kept as strings)."""
    path = _need(folder / f"{name}.txt", f"metadata of {name!r} (<name>.txt with n_entradas=, "
                                        f"n_clases=, fich1=, n_patrons1=)")
    meta: Dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            meta[key.strip()] = value.strip()
    for key in ("n_entradas", "n_clases", "fich1", "n_patrons1"):
        if key not in meta:
            raise ValueError(f"UCI metadata {path}: no '{key}=' line")
    return meta


def _read_table(path: Path, n_rows: int, d: int, n_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(path, skiprows=1, dtype=np.float64, ndmin=2)
    if table.shape != (n_rows, d + 2):
        raise ValueError(f"UCI data file {path}: expected {n_rows} rows of {d + 2} columns "
                         f"(index, {d} features, label) as the metadata says, got "
                         f"{table.shape[0]} rows of {table.shape[1]} columns")
    labels = table[:, -1]
    y = labels.astype(np.int64)
    if not np.array_equal(y, labels) or y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"UCI data file {path}: labels must be integers in 0..{n_classes - 1}, "
                         f"got values in [{labels.min()}, {labels.max()}]")
    return np.ascontiguousarray(table[:, 1:-1]), y


def _read_index_lines(path: Path, n_lines: int, n_rows: int) -> List[np.ndarray]:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) != n_lines:
        raise ValueError(f"UCI split file {path}: expected {n_lines} lines of row indices, "
                         f"got {len(lines)}")
    out = []
    for k, line in enumerate(lines):
        idx = np.array(line.split(), dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n_rows):
            raise ValueError(f"UCI split file {path}, line {k + 1}: indices must be in "
                             f"0..{n_rows - 1}, got [{idx.min()}, {idx.max()}]")
        out.append(idx)
    return out


# -- public ------------------------------------------------------------------------------------
def load_uci(name: str, root: Optional[PathLike] = None) -> UCIDataset:
    """Load dataset ``name`` from ``root`` (the ``uci/`` folder, or the data folder holding it;
    default: ``default_data_dir()``) in the Fernández-Delgado format, with its validation split
    and its 4 (train, test) pairs. Checks rows, columns, label range and index ranges against
    the metadata and raises a ``ValueError`` naming the file on any mismatch.
    """
    folder = _dataset_dir(name, root)
    meta = read_metadata(folder, name)
    d, c, n1 = int(meta["n_entradas"]), int(meta["n_clases"]), int(meta["n_patrons1"])
    X, y = _read_table(_need(folder / meta["fich1"], f"data file of {name!r} (fich1)"), n1, d, c)
    X_test = y_test = None
    if meta.get("fich2"):
        X_test, y_test = _read_table(_need(folder / meta["fich2"], f"test file of {name!r} (fich2)"),
                                     int(meta["n_patrons2"]), d, c)
    tr, va = _read_index_lines(_need(folder / "conxuntos.dat", f"validation split of {name!r}"),
                               2, n1)
    kf = _read_index_lines(_need(folder / "conxuntos_kfold.dat", f"kfold pairs of {name!r}"),
                           8, n1)
    pairs = tuple((kf[2 * k], kf[2 * k + 1]) for k in range(4))
    return UCIDataset(name=name, X=X, y=y, n_classes=c, validation=(tr, va), kfold=pairs,
                      X_test=X_test, y_test=y_test)


def uci_datasets(root: Optional[PathLike] = None,
                 max_total: int = ARORA2020_MAX_TOTAL) -> List[str]:
    """Sorted names of the datasets of Arora et al. (2020)'s selection rule: no separate test
    file and ``n_patrons1 + n_patrons2 <= max_total`` (default 5000, giving 90 datasets).

    The rule is applied to every ``<name>/<name>.txt`` under ``root``; when ``manifest.json``
    is there too, its ``in_arora2020_90`` flags must agree (a ValueError otherwise).
    """
    base = _uci_root(root)
    if not base.is_dir():
        raise FileNotFoundError(f"UCI: no folder {base} (expected the Fernández-Delgado datasets "
                                f"as <root>/<name>/<name>.txt; pass root= or set NTKIT_DATA_DIR)")
    names = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        if not (folder / f"{folder.name}.txt").is_file():
            continue
        meta = read_metadata(folder, folder.name)
        n_total = int(meta["n_patrons1"]) + int(meta.get("n_patrons2", 0) or 0)
        has_test = bool(meta.get("fich2")) and int(meta.get("n_patrons2", 0) or 0) > 0
        if not has_test and n_total <= max_total:
            names.append(folder.name)
    if not names:
        raise FileNotFoundError(f"UCI: no dataset folders (<name>/<name>.txt) under {base}")
    manifest = base / "manifest.json"
    if manifest.is_file() and max_total == ARORA2020_MAX_TOTAL:
        flagged = sorted(e["name"] for e in json.loads(manifest.read_text())["datasets"]
                         if e.get("in_arora2020_90"))
        if flagged != sorted(names):
            diff = sorted(set(flagged) ^ set(names))
            raise ValueError(f"UCI: the selection rule and {manifest} disagree on {diff}")
    return sorted(names)
