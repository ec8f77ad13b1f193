"""ntkit.data.uci against the PROTOCOL.md list of Arora et al. (2020)'s 90 datasets (names and
(n, d, classes) copied from the protocol text, independent of the loader) and against the raw
files: row counts, label ranges, each kfold pair a partition, validation split sizes."""
import re
from pathlib import Path

import numpy as np
import pytest

from ntkit.data import default_data_dir, load_uci, uci_datasets

ROOT = default_data_dir() / "uci"
pytestmark = pytest.mark.skipif(not (ROOT / "manifest.json").is_file(),
                                reason=f"UCI data not found under {ROOT}")


def _protocol_table():
    """{name: (n, d, classes)} parsed from section 2 of PROTOCOL.md."""
    text = (ROOT / "PROTOCOL.md").read_text()
    block = text.split("The 90 datasets, as name (n, d, classes):", 1)[1].split("##", 1)[0]
    return {m.group(1): tuple(int(v) for v in m.group(2, 3, 4))
            for m in re.finditer(r"([\w.-]+) \((\d+),(\d+),(\d+)\)", block)}


PROTOCOL = _protocol_table() if (ROOT / "PROTOCOL.md").is_file() else {}


def _meta(name):
    return dict(line.split("=", 1) for line in (ROOT / name / f"{name}.txt").read_text().splitlines()
                if "=" in line)


def test_selection_rule_gives_the_protocols_90():
    names = uci_datasets(ROOT)
    assert len(PROTOCOL) == 90
    assert names == sorted(PROTOCOL)
    # the parent folder is accepted too, and is the default
    assert uci_datasets(ROOT.parent) == names
    assert uci_datasets() == names


@pytest.mark.parametrize("name", sorted(PROTOCOL))
def test_dataset(name):
    n, d, c = PROTOCOL[name]
    ds = load_uci(name, ROOT)
    assert ds.name == name and ds.X.shape == (n, d) and ds.X.dtype == np.float64
    assert ds.y.shape == (n,) and ds.y.dtype.kind == "i"
    assert ds.n_classes == c and ds.y.min() >= 0 and ds.y.max() < c
    assert np.all(np.isfinite(ds.X))
    # first data row, read independently as text
    first = (ROOT / name / f"{name}_R.dat").read_text().splitlines()[1].split()
    np.testing.assert_array_equal(ds.X[0], np.array(first[1:-1], dtype=float))
    assert ds.y[0] == int(first[-1])
    # validation split: the sizes the metadata states, disjoint, in range
    meta = _meta(name)
    tr, va = ds.validation
    assert (tr.size, va.size) == (int(meta["n_patrons_entrena"]), int(meta["n_patrons_valida"]))
    assert np.intersect1d(tr, va).size == 0 and tr.min() >= 0 and max(tr.max(), va.max()) < n
    # each of the 4 kfold pairs partitions the rows
    assert len(ds.kfold) == 4
    for a, b in ds.kfold:
        assert a.size + b.size == n
        np.testing.assert_array_equal(np.sort(np.concatenate([a, b])), np.arange(n))
    assert ds.X_test is None and ds.y_test is None


def test_separate_test_file_is_loaded():
    ds = load_uci("annealing", ROOT)  # 798 + 100 rows, excluded from the 90
    assert ds.X.shape == (798, 31) and ds.X_test.shape == (100, 31)
    assert ds.y_test.max() < ds.n_classes


def test_missing_folder_and_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no folder .*iriss.*similar names there: iris"):
        load_uci("iriss", ROOT)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_uci("iris", tmp_path / "nowhere")
    # a dataset whose data file is absent (over 4 MiB in the source): name the expected file
    with pytest.raises(FileNotFoundError, match=r"expected the file .*connect-4_R\.dat"):
        load_uci("connect-4", ROOT)
    # a copy with the kfold file removed
    (tmp_path / "iris").mkdir()
    for f in ("iris.txt", "iris_R.dat", "conxuntos.dat"):
        (tmp_path / "iris" / f).write_bytes((ROOT / "iris" / f).read_bytes())
    with pytest.raises(FileNotFoundError, match="conxuntos_kfold.dat"):
        load_uci("iris", tmp_path)
    with pytest.raises(ValueError, match="plain folder name"):
        load_uci("../iris", ROOT)


def test_corrupt_file_errors(tmp_path):
    (tmp_path / "iris").mkdir()
    for f in ("iris.txt", "conxuntos.dat", "conxuntos_kfold.dat"):
        (tmp_path / "iris" / f).write_bytes((ROOT / "iris" / f).read_bytes())
    lines = (ROOT / "iris" / "iris_R.dat").read_text().splitlines()
    (tmp_path / "iris" / "iris_R.dat").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match="expected 150 rows"):
        load_uci("iris", tmp_path)
    lines[1] = lines[1].rsplit("\t", 1)[0] + "\t7"
    (tmp_path / "iris" / "iris_R.dat").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="labels must be integers in 0..2"):
        load_uci("iris", tmp_path)


def test_default_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("NTKIT_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("NTKIT_DATA_DIR")
    repo = Path(__file__).resolve().parents[1]
    assert default_data_dir() == repo.parent / "shared" / "data"
