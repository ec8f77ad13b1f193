"""The cifar10-fewshot experiment (Arora et al. 2020 few-shot CIFAR-10).

References: the balanced sampler against counts (np.bincount) and set operations; the test
subset against a loop over the labels; the experiment's accuracies (quick configuration, tiny
8x8 images; skipped without the shared CIFAR-10 file) against kernel regression written here
with numpy.linalg.solve on the kernels it saved (targets np.eye(10)[y] - 0.1); its pool kernels
against the kernel of one trial's images computed directly.
"""
import json

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.data.paths import default_data_dir
from ntkit.experiments import cifar10_fewshot as fs, get

pytestmark = pytest.mark.usefixtures("one_thread")
NPZ = default_data_dir() / "cifar10" / "cifar10_subset.npz"
SAVED = {"cntk14-gap": ("cntk14-gap", "ntk"), "myrtle5-nngp": ("myrtle5", "nngp"),
         "myrtle5-ntk": ("myrtle5", "ntk")}  # kernel -> (kernels-NAME.npz, its key)


def _labels(seed=0):
    rng = np.random.default_rng(seed)
    return rng.permutation(np.repeat(np.arange(10), [30, 25, 40, 31, 28, 26, 35, 27, 29, 33]))


def test_balanced_subsets_have_n_over_10_per_class_and_trials_differ():
    y = _labels()
    ns = [10, 20, 40]
    subsets = fs.balanced_subsets(y, ns, trials=4, seed=3)
    assert len(subsets) == 4
    for sets in subsets:
        assert sorted(sets) == ns
        for n, idx in sets.items():
            assert len(np.unique(idx)) == n
            np.testing.assert_array_equal(np.bincount(y[idx], minlength=10), [n // 10] * 10)
        assert set(sets[10]) <= set(sets[20]) <= set(sets[40])  # nested within a trial
    for n in ns:
        distinct = {tuple(s[n]) for s in subsets}
        assert len(distinct) == 4, n  # every trial a different draw
    again = fs.balanced_subsets(y, ns, trials=4, seed=3)
    for a, b in zip(subsets, again):
        for n in ns:
            np.testing.assert_array_equal(a[n], b[n])
    other = fs.balanced_subsets(y, ns, trials=1, seed=4)
    assert not np.array_equal(other[0][40], subsets[0][40])


def test_pool_per_class_bounds_the_union():
    y = _labels(1)
    subsets = fs.balanced_subsets(y, [10, 30], trials=6, seed=0, pool_per_class=4)
    union = np.unique(np.concatenate([s for sets in subsets for s in sets.values()]))
    assert len(union) <= 40
    counts = np.bincount(y[union], minlength=10)
    assert counts.max() <= 4
    for sets in subsets:
        np.testing.assert_array_equal(np.bincount(y[sets[30]], minlength=10), [3] * 10)


def test_sampler_and_kernel_errors():
    y = _labels()
    with pytest.raises(ValueError, match="multiples of 10"):
        fs.balanced_subsets(y, [15], trials=1, seed=0)
    with pytest.raises(ValueError, match="needs 30 images per class"):
        fs.balanced_subsets(y, [300], trials=1, seed=0)
    with pytest.raises(ValueError, match="fewer candidates"):
        fs.balanced_subsets(y, [50], trials=1, seed=0, pool_per_class=4)
    with pytest.raises(ValueError, match="trials"):
        fs.balanced_subsets(y, [10], trials=0, seed=0)
    with pytest.raises(ValueError, match="unknown"):
        fs.architectures(["cntk21"], 32)


def test_first_per_class_is_the_first_k_by_index():
    y = _labels(2)
    want = []
    for c in range(10):
        want += [i for i in range(len(y)) if y[i] == c][:3]
    np.testing.assert_array_equal(fs.first_per_class(y, 3), np.sort(want))


def _numpy_accuracy(k_tr, k_te, y_tr, y_te):
    t = np.eye(10)[y_tr] - 0.1
    pred = (k_te @ np.linalg.solve(k_tr, t)).argmax(1)
    return 100.0 * np.mean(pred == y_te)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    if not NPZ.is_file():
        pytest.skip(f"CIFAR-10 data not found at {NPZ}")
    out = tmp_path_factory.mktemp("fewshot")
    res = get("cifar10-fewshot")(out, quick=True, seed=0, save_kernels=True, progress=False)
    from ntkit.data import load_cifar10
    return out, res, load_cifar10(NPZ, dtype=np.float64)


def test_quick_run_structure(quick_run):
    out, res, _ = quick_run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(res["rows"]))
    assert (out / "table.md").read_text().startswith("| n | paper CNTK | paper ResNet-34 |")
    assert (out / "cifar10_fewshot.png").stat().st_size > 10_000
    for key in ("machine", "dtype", "seconds", "device", "protocol", "test_indices",
                "train_indices"):
        assert key in res, key
    assert [r["n"] for r in res["rows"]] == fs.QUICK["n_values"]
    assert len(res["train_indices"]) == res["trials"] == fs.QUICK["trials"]
    assert res["n_test"] == 10 * fs.QUICK["test_per_class"] == len(res["test_indices"])
    for r in res["rows"]:
        assert r["paper_cntk"] == fs.PAPER_CNTK[r["n"]]
        assert set(r["accuracy"]) == set(fs.KERNELS)
        for stats in r["accuracy"].values():
            assert len(stats["trials"]) == res["trials"]
            assert stats["mean"] == pytest.approx(np.mean(stats["trials"]), abs=1e-12)
            assert stats["std"] == pytest.approx(np.std(stats["trials"]), abs=1e-12)


def test_quick_run_accuracies_equal_numpy_solve(quick_run):
    out, res, (_, y_tr, _, y_te) = quick_run
    checked = 0
    for kernel in fs.KERNELS:
        arch, g = SAVED[kernel]
        z = np.load(out / f"kernels-{arch}.npz")
        pool, test = z["pool"], z["test"]
        np.testing.assert_array_equal(test, res["test_indices"])
        k_pool, k_test = z[f"{g}/pool"], z[f"{g}/test_pool"]
        assert k_pool.shape == (len(pool), len(pool)) and k_test.shape == (len(test), len(pool))
        for row in res["rows"]:
            n = row["n"]
            for t, sets in enumerate(res["train_indices"]):
                idx = np.asarray(sets[str(n)])
                at = [int(np.flatnonzero(pool == i)[0]) for i in idx]
                want = _numpy_accuracy(k_pool[np.ix_(at, at)], k_test[:, at], y_tr[idx],
                                       y_te[test])
                assert row["accuracy"][kernel]["trials"][t] == pytest.approx(want, abs=1e-9)
                checked += 1
    assert checked == len(fs.KERNELS) * len(res["rows"]) * res["trials"]


def test_rerun_reuses_the_saved_kernels(quick_run, tmp_path):
    """save_kernels: a second run into the same folder reads the kernels back (resume) and
    reports the same accuracies; a different test subset is not reused."""
    import shutil
    src, res, _ = quick_run
    out = tmp_path / "again"
    shutil.copytree(src, out)  # the module's run stays as it was for the other tests
    again = get("cifar10-fewshot")(out, quick=True, seed=0, save_kernels=True, progress=False)
    assert sorted(again["kernels_reused_from"]) == ["kernels-cntk14-gap.npz", "kernels-myrtle5.npz"]
    assert again["rows"] == res["rows"]
    other = get("cifar10-fewshot")(out, quick=True, seed=0, save_kernels=True, progress=False,
                                   test_per_class=1, kernels=["myrtle5-nngp"])
    assert other["kernels_reused_from"] == [] and other["n_test"] == 10


def test_quick_run_pool_kernel_equals_the_trials_own_kernel(quick_run):
    """Slicing the pool kernel gives the kernel of one trial's images computed on their own."""
    out, res, (x_tr, _, x_te, _) = quick_run
    z, zm = np.load(out / "kernels-cntk14-gap.npz"), np.load(out / "kernels-myrtle5.npz")
    pool, test = z["pool"], z["test"]
    down = lambda x: x.reshape(len(x), 3, 8, 4, 8, 4).mean(axis=(3, 5))  # noqa: E731
    idx = np.asarray(res["train_indices"][1]["10"])
    at = [int(np.flatnonzero(pool == i)[0]) for i in idx]
    xs = torch.as_tensor(down(x_tr[idx]), dtype=torch.float64)
    xt = torch.as_tensor(down(x_te[test[:5]]), dtype=torch.float64)
    k = nk.cntk(14, "gap").kernel(xt, xs, get="ntk").ntk.numpy()
    np.testing.assert_allclose(z["ntk/test_pool"][:5][:, at], k, rtol=2e-5)
    k = nk.myrtle(5, pool_size=2).kernel(xs, get="nngp").nngp.numpy()
    np.testing.assert_allclose(zm["nngp/pool"][np.ix_(at, at)], k, rtol=2e-5)
