"""The cifar10-cntk experiment in quick mode (tiny subsets; skipped without the shared data)."""
import json

import pytest

from ntkit.data.paths import default_data_dir
from ntkit.experiments import get

NPZ = default_data_dir() / "cifar10" / "cifar10_subset.npz"


@pytest.mark.skipif(not NPZ.is_file(), reason="shared CIFAR-10 subset absent")
def test_quick_run_writes_table(tmp_path):
    res = get("cifar10-cntk")(tmp_path, quick=True)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == res["rows"] and [r["depth"] for r in res["rows"]] == [3, 4]
    for r in res["rows"]:
        # 10 classes, 20 test images: chance is 10%; the kernels should do better than 0
        assert 0.0 <= r["ntkit_v"] <= 100.0
    assert res["rows"][0]["ntkit_gap"] is not None
    assert (tmp_path / "cifar10_cntk.png").stat().st_size > 0
    assert "| 3 | 40.94 |" in (tmp_path / "table.md").read_text()
