"""The UCI experiment (Arora et al. 2020) on its quick subset: the outputs agree with each other
(results.json, per_dataset.csv, the returned dict), the summary metrics equal a brute-force
recomputation from the CSV with the PROTOCOL.md definitions, and the reported NTK accuracy on
iris equals an SVC refit by hand on the selected kernel over the 4 kfold pairs."""
import csv
import json

import numpy as np
import pytest

from ntkit.data import default_data_dir

pytestmark = pytest.mark.skipif(not (default_data_dir() / "uci" / "manifest.json").is_file(),
                                reason="UCI data not found")

from ntkit.experiments import uci  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("uci")
    return out, uci.run(out, quick=True, n_jobs=1)


def test_outputs_consistent(quick):
    out, res = quick
    assert res["datasets"] == list(uci.QUICK_DATASETS)
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(res))
    assert (out / "uci.png").stat().st_size > 10_000
    with open(out / "per_dataset.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["dataset"] for r in rows] == res["datasets"]
    for row, rec in zip(rows, res["per_dataset"]):
        for c in uci.CLASSIFIERS:
            r = rec["results"][c]
            assert len(r["pairs"]) == 4 and all(0 <= a <= 1 for a in r["pairs"])
            assert float(row[c]) == r["acc"] == pytest.approx(np.mean(r["pairs"]), abs=1e-15)
            assert float(row[f"val_{c}"]) == r["val"]


def _brute_summary(acc):
    """PROTOCOL.md section 4, written out with loops."""
    n, m = acc.shape
    out = []
    for j in range(m):
        ranks, frac = [], []
        for i in range(n):
            better = sum(acc[i, k] > acc[i, j] + 1e-9 for k in range(m))
            equal = sum(abs(acc[i, k] - acc[i, j]) <= 1e-9 for k in range(m))
            ranks.append(better + (equal + 1) / 2)          # average rank among ties
            frac.append(acc[i, j] / max(acc[i]))
        frac = np.array(frac)
        out.append((acc[:, j].mean(), acc[:, j].std(), np.mean(ranks), np.mean(frac >= 0.9),
                    np.mean(frac >= 0.95), 100 * frac.mean(), 100 * frac.std()))
    return out


def test_summary_matches_brute_force_from_csv(quick):
    out, res = quick
    with open(out / "per_dataset.csv") as f:
        acc = np.array([[float(r[c]) for c in uci.CLASSIFIERS] for r in csv.DictReader(f)])
    for c, ref in zip(uci.CLASSIFIERS, _brute_summary(acc)):
        s = res["summary"][c]
        got = (s["mean_acc"], s["std_acc"], s["friedman_rank"], s["p90"], s["p95"],
               s["pma_mean"], s["pma_std"])
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
    ntk, rf = acc[:, 0], acc[:, uci.CLASSIFIERS.index("RF")]
    h = res["ntk_vs_rf"]
    assert (h["wins"], h["ties"], h["losses"]) == (int(np.sum(ntk > rf + 1e-9)),
                                                   int(np.sum(abs(ntk - rf) <= 1e-9)),
                                                   int(np.sum(ntk < rf - 1e-9)))
    assert res["ntk_beats_rf"] == (ntk.mean() > rf.mean())


def test_summary_hand_example():
    acc = np.array([[0.9, 0.8, 0.9], [0.5, 1.0, 0.25]])
    s = uci.summarize(acc, ["a", "b", "c"])
    assert s["a"]["friedman_rank"] == pytest.approx((1.5 + 2) / 2)
    assert s["b"]["friedman_rank"] == pytest.approx((3 + 1) / 2)
    assert s["c"]["p90"] == 0.5 and s["b"]["p95"] == 0.5
    assert s["a"]["pma_mean"] == pytest.approx(100 * (1 + 0.5) / 2)


def test_iris_ntk_refit_by_hand(quick):
    from sklearn.svm import SVC

    from ntkit.data import load_uci
    from ntkit.uci_grid import ntk_grid
    _, res = quick
    rec = next(r for r in res["per_dataset"] if r["dataset"] == "iris")["results"]["NTK"]
    p = rec["params"]
    ds = load_uci("iris")
    K = ntk_grid(ds.X, p["dep"] + 1)[(p["dep"], p["fix"])]
    accs = []
    for tr, te in ds.kfold:
        svc = SVC(kernel="precomputed", C=p["C"]).fit(K[np.ix_(tr, tr)], ds.y[tr])
        accs.append(np.mean(svc.predict(K[np.ix_(te, tr)]) == ds.y[te]))
    np.testing.assert_allclose(rec["pairs"], accs, atol=1e-12)
    tr, va = ds.validation
    svc = SVC(kernel="precomputed", C=p["C"]).fit(K[np.ix_(tr, tr)], ds.y[tr])
    assert rec["val"] == pytest.approx(np.mean(svc.predict(K[np.ix_(va, tr)]) == ds.y[va]))


def test_resume_reads_the_cache(quick):
    out, res = quick
    again = uci.run(out, quick=True, n_jobs=1, datasets="iris, zoo")
    assert again["computed_now"] == 0 and again["datasets"] == ["iris", "zoo"]
    assert again["per_dataset"][0] == res["per_dataset"][1]


def test_bad_options(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset.*'irs'"):
        uci.run(tmp_path, datasets=["irs"])
    with pytest.raises(TypeError, match="unknown option"):
        uci.run(tmp_path, quick=True, depth=3)
