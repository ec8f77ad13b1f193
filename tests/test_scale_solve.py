"""ntkit.scale solvers: PCG for (K + λI) α = Y over a streamed kernel, the Nyström
preconditioner, streamed predictions.

References: the direct float64 solve (torch.linalg.solve) of the dense kernel, the dense
products K V, K[:, idx] and K(test, train) α in float64, and the count of CG iterations
without a preconditioner (the preconditioner must need fewer: a property of the spectrum,
not a timing).
"""
import re

import numpy as np
import pytest
import torch

from ntkit.scale import (KernelOperator, NystromPreconditioner, RecomputedBands, StoreBands,
                         compute_kernel, conjugate_gradient, predict_recomputed, predict_stored,
                         solve_kernel)
from ntkit.scale.operator import band_product, sum_over_bands
from ntkit.scale.store import NotAKernelStore

from scale_cases import client, inputs, mlp  # noqa: F401 (fixture)


def dense_ntk(x1, x2=None):
    t2 = None if x2 is None else torch.as_tensor(x2)
    return mlp().kernel(torch.as_tensor(x1), t2, get="ntk").ntk.numpy()


def direct(k, y, ridge):
    a = torch.as_tensor(k, dtype=torch.float64) + ridge * torch.eye(len(k), dtype=torch.float64)
    return torch.linalg.solve(a, torch.as_tensor(y, dtype=torch.float64)).numpy()


@pytest.fixture(scope="module")
def stored(tmp_path_factory, client):  # noqa: F811 (fixture)
    """A float64 NTK store of 47 points, tile 10 (5 x 5 blocks, ragged last), and its inputs
    (computed on the module's two-worker LocalCluster)."""
    x = inputs(47, 3)
    path = tmp_path_factory.mktemp("solve") / "k.zarr"
    compute_kernel(mlp(), x, store=path, tile=10, client=client, get="ntk", progress=False)
    return path, x


@pytest.mark.parametrize("precondition", [False, True])
def test_cg_equals_direct_solve_many_rhs(precondition):
    x = inputs(120, 0)
    k = dense_ntk(x)
    y = np.random.default_rng(1).standard_normal((120, 5))
    ridge = 1e-3 * np.diag(k).mean()
    pre = None
    if precondition:
        idx = np.arange(0, 120, 4)
        pre = NystromPreconditioner.from_columns(k[:, idx], idx, ridge).apply
    res = conjugate_gradient(lambda v: k @ v, y, ridge, precondition=pre, tol=1e-12,
                             max_iter=500)
    ref = direct(k, y, ridge)
    assert res.converged and res.alpha.shape == (120, 5)
    # tol 1e-12 on the residual; cond(K + λI) ~ 1e4 bounds the error in α by ~1e-8 relative
    np.testing.assert_allclose(res.alpha, ref, rtol=0, atol=1e-8 * np.abs(ref).max())
    assert res.residuals[0] == 1.0 and res.residuals[-1] <= 1e-12
    assert len(res.residuals) == res.iterations + 1
    # a single right-hand side: the same solution as its column of the block
    one = conjugate_gradient(lambda v: k @ v, y[:, 2], ridge, precondition=pre, tol=1e-12,
                             max_iter=500)
    np.testing.assert_allclose(one.alpha, ref[:, 2], rtol=0, atol=1e-8 * np.abs(ref).max())


def test_streamed_operator_equals_dense_products(stored):
    path, x = stored
    k = dense_ntk(x)
    v = np.random.default_rng(2).standard_normal((47, 3))
    idx = np.array([0, 9, 10, 23, 40, 46])
    # bands of one tile, of 1.5 and of two tiles (their diagonal blocks hold unwritten chunks
    # below the diagonal, filled from the mirrors)
    for band in (10, 15, 20):
        op = KernelOperator(StoreBands(path), band=band)
        np.testing.assert_allclose(op.matmul(v), k @ v, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(op.columns(idx), k[:, idx], rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(op.diagonal(), np.diag(k), rtol=1e-13)
    rec = KernelOperator(RecomputedBands(mlp(), torch.as_tensor(x), tile=7), band=15)
    np.testing.assert_allclose(rec.matmul(v), k @ v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rec.columns(idx), k[:, idx], rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("centres", [0, 12])
def test_solve_kernel_from_store_equals_direct_solve(stored, centres):
    path, x = stored
    k = dense_ntk(x)
    y = np.random.default_rng(4).standard_normal((47, 4))
    res = solve_kernel(path, y, diag_reg=1e-4, centres=centres, tol=1e-12, max_iter=400)
    ref = direct(k, y, 1e-4 * np.diag(k).mean())
    assert res.converged and res.preconditioner_rank == centres
    np.testing.assert_allclose(res.ridge, 1e-4 * np.diag(k).mean(), rtol=1e-14)
    np.testing.assert_allclose(res.alpha, ref, rtol=0, atol=1e-7 * np.abs(ref).max())


def test_solve_and_predict_on_a_two_worker_cluster(client, stored):  # noqa: F811
    """The Dask reduction over bands (stored and recomputed) gives the direct solve too."""
    path, x = stored
    k = dense_ntk(x)
    y = np.random.default_rng(5).standard_normal((47, 2))
    ref = direct(k, y, 1e-3 * np.diag(k).mean())
    res = solve_kernel(path, y, diag_reg=1e-3, centres=8, tol=1e-12, client=client)
    np.testing.assert_allclose(res.alpha, ref, rtol=0, atol=1e-8 * np.abs(ref).max())
    rec = KernelOperator(RecomputedBands(mlp(), torch.as_tensor(x), tile=10), client=client)
    v = np.random.default_rng(6).standard_normal((47, 3))
    np.testing.assert_allclose(rec.matmul(v), k @ v, rtol=1e-12, atol=1e-12)
    xt = inputs(13, 7)
    want = dense_ntk(xt, x) @ ref
    got = predict_recomputed(mlp(), xt, x, res.alpha, rows=5, tile=20, client=client)
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)


def test_preconditioner_reduces_iterations():
    """An ill-conditioned NTK (tiny ridge, strongly clustered inputs): CG without a
    preconditioner needs many more iterations than with the Nyström one."""
    rng = np.random.default_rng(8)
    centres = rng.standard_normal((6, 8))
    x = centres[rng.integers(0, 6, 300)] + 0.05 * rng.standard_normal((300, 8))
    k = dense_ntk(x)
    y = rng.standard_normal((300, 3))
    ridge = 1e-6 * np.diag(k).mean()
    eig = np.linalg.eigvalsh(k)
    assert (eig[-1] + ridge) / (eig[0] + ridge) > 1e4  # ill-conditioned indeed
    plain = conjugate_gradient(lambda v: k @ v, y, ridge, tol=1e-6, max_iter=2000)
    idx = np.sort(rng.choice(300, 60, replace=False))
    pre = NystromPreconditioner.from_columns(k[:, idx], idx, ridge)
    fast = conjugate_gradient(lambda v: k @ v, y, ridge, precondition=pre.apply, tol=1e-6,
                              max_iter=2000)
    assert plain.converged and fast.converged
    assert fast.iterations * 3 < plain.iterations, (fast.iterations, plain.iterations)
    # both reach the residual asked for, checked on the dense system
    for res in (plain, fast):
        resid = y - (k @ res.alpha + ridge * res.alpha)
        assert (np.linalg.norm(resid, axis=0) / np.linalg.norm(y, axis=0)).max() <= 1.01e-6


def test_nystrom_preconditioner_is_exact_on_a_low_rank_kernel():
    """For K of rank r ≤ m sampled on r independent columns, K̂ = K: P⁻¹(K + μI) has all
    eigenvalues equal to λ_r + μ on range(K) and 1 elsewhere (closed form)."""
    rng = np.random.default_rng(9)
    f = rng.standard_normal((50, 4))
    k = f @ f.T
    mu = 0.1
    idx = np.arange(10)
    pre = NystromPreconditioner.from_columns(k[:, idx], idx, mu)
    assert pre.rank == 4
    lam = np.linalg.eigvalsh(k)[-4:]
    np.testing.assert_allclose(np.sort(pre.eigenvalues.numpy()), lam, rtol=1e-9)
    m = pre.apply(k + mu * np.eye(50))
    ev = np.sort(np.linalg.eigvals(m).real)
    np.testing.assert_allclose(ev[-4:], lam.min() + mu, rtol=1e-9)
    np.testing.assert_allclose(ev[:-4], mu, rtol=1e-9)


def test_streamed_predictions_equal_in_memory(client, tmp_path):  # noqa: F811
    x, xt = inputs(31, 10), inputs(17, 11)
    alpha = np.random.default_rng(12).standard_normal((31, 3))
    want = dense_ntk(xt, x) @ alpha
    path = tmp_path / "kt.zarr"
    compute_kernel(mlp(), xt, x, store=path, tile=6, client=client, get="ntk", progress=False)
    np.testing.assert_allclose(predict_stored(path, alpha), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(predict_stored(path, alpha[:, 0], rows=4), want[:, 0],
                               rtol=1e-12, atol=1e-12)
    got = predict_recomputed(mlp(), xt, x, alpha, rows=5, tile=8)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_bad_inputs_give_clear_errors(client, stored, tmp_path):  # noqa: F811
    path, x = stored
    y = np.zeros((47, 2))
    with pytest.raises(ValueError, match=r"Y must have shape \(47,\) or \(47, k\)"):
        solve_kernel(path, np.zeros((46, 2)))
    with pytest.raises(ValueError, match="Y must have shape"):
        solve_kernel(path, np.zeros((47, 2, 1)))
    bad = y.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="1 NaN or Inf"):
        solve_kernel(path, bad)
    with pytest.raises(ValueError, match="diag_reg .* >= 0"):
        solve_kernel(path, y, diag_reg=-1e-3)
    with pytest.raises(ValueError, match=r"ridge \(λ\) must be a finite number >= 0"):
        conjugate_gradient(lambda v: v, y, -1.0)
    with pytest.raises(ValueError, match="tol must be a number > 0"):
        conjugate_gradient(lambda v: v, y, 0.0, tol=0)
    with pytest.raises(ValueError, match="centres must be an integer >= 0"):
        solve_kernel(path, y, centres=-1)
    with pytest.raises(NotAKernelStore, match="no such kernel store"):
        solve_kernel(tmp_path / "missing.zarr", y)
    rect = tmp_path / "rect.zarr"
    compute_kernel(mlp(), x[:5], x[:7], store=rect, tile=5, client=client, get="ntk",
                   progress=False)
    with pytest.raises(ValueError, match="a solve needs the train-train kernel"):
        solve_kernel(rect, np.zeros(5))
    with pytest.raises(ValueError, match="holds the kernels \\['ntk'\\], not 'nngp'"):
        solve_kernel(path, y, name="nngp")
    with pytest.raises(ValueError, match="predictions need"):
        predict_stored(path, y)
    with pytest.raises(ValueError, match=r"alpha must have shape \(7,\) or \(7, k\)"):
        predict_stored(rect, np.zeros((6, 1)))
    with pytest.raises(ValueError, match="alpha contains NaN"):
        predict_recomputed(mlp(), x[:3], x, bad)
    k = dense_ntk(x)
    with pytest.raises(FloatingPointError, match="non-positive curvature"):
        conjugate_gradient(lambda v: -(k @ v), y + 1.0, 0.0)


def digits_split(n_train=240, n_test=80):
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    return x[:n_train], y[:n_train], x[n_train:n_train + n_test], y[n_train:n_train + n_test]


def test_estimators_cg_equal_the_direct_solver_on_digits(client, tmp_path):  # noqa: F811
    """solver='cg' (store on the two-worker cluster, or tiles recomputed) against the default
    in-memory solver (a float64 Cholesky solve): the same outputs to the CG tolerance."""
    import ntkit as nk
    xtr, ytr, xte, yte = digits_split()
    direct_clf = nk.NTKClassifier(diag_reg=1e-3).fit(xtr, ytr)
    cg = nk.NTKClassifier(diag_reg=1e-3, solver="cg", store=str(tmp_path / "d.zarr"),
                          client=client, cg_tol=1e-10, cg_centres=50).fit(xtr, ytr)
    assert cg.cg_converged_ and cg.n_iter_ == len(cg.cg_residuals_) - 1
    assert cg.cg_residuals_[-1] <= 1e-10
    want = direct_clf.predict_outputs(xte)
    np.testing.assert_allclose(cg.predict_outputs(xte), want, rtol=0,
                               atol=1e-7 * np.abs(want).max())
    np.testing.assert_array_equal(cg.predict(xte), direct_clf.predict(xte))
    assert cg.score(xte, yte) > 0.85
    # refitting on the same data resumes the finished store (no tile recomputed): same α
    again = nk.NTKClassifier(diag_reg=1e-3, solver="cg", store=str(tmp_path / "d.zarr"),
                             client=client, cg_tol=1e-10, cg_centres=50).fit(xtr, ytr)
    np.testing.assert_array_equal(again.dual_coef_, cg.dual_coef_)
    # the regressor, tiles recomputed in each iteration (no store), in this process
    y = np.stack([np.sin(xtr.sum(1)), xtr[:, 10]], axis=1)
    reg = nk.NTKRegressor(diag_reg=1e-2).fit(xtr, y)
    reg_cg = nk.NTKRegressor(diag_reg=1e-2, solver="cg", cg_tol=1e-10, batch_size=64).fit(xtr, y)
    want = reg.predict(xte)
    np.testing.assert_allclose(reg_cg.predict(xte), want, rtol=0, atol=1e-7 * np.abs(want).max())


def test_estimator_cg_parameters_are_checked(tmp_path):
    import ntkit as nk
    x, y = inputs(8, 0), np.arange(8.0)
    cases = [
        (dict(solver="lsqr"), ValueError, "solver must be one of"),
        (dict(store=str(tmp_path / "s.zarr")), ValueError, "store are used only with solver='cg'"),
        (dict(solver="cg", t=10.0), ValueError, "t=10.0 needs solver='direct'"),
        (dict(solver="cg", store=3), TypeError, "store must be a path"),
        (dict(solver="cg", client=5), TypeError, "client must be a distributed.Client"),
        (dict(solver="cg", cg_tol=0.0), ValueError, r"cg_tol must be a number in \(0, 1\)"),
        (dict(solver="cg", cg_max_iter=0), ValueError, "cg_max_iter must be an integer >= 1"),
        (dict(solver="cg", cg_centres=-2), ValueError, "cg_centres must be an integer >= 0"),
        (dict(solver="cg", diag_reg=-1.0), ValueError, "diag_reg must be a number >= 0"),
    ]
    for params, err, match in cases:
        with pytest.raises(err, match=match):
            nk.NTKRegressor(**params).fit(x, y)
    with pytest.raises(ValueError, match="NaN"):
        nk.NTKRegressor(solver="cg").fit(x, np.where(y > 3, np.nan, y))
    not_store = tmp_path / "plain"
    not_store.mkdir()
    (not_store / "file.txt").write_text("x")
    with pytest.raises(NotAKernelStore, match="not an ntkit kernel store"):
        nk.NTKRegressor(solver="cg", store=str(not_store)).fit(x, y)
    with pytest.warns(Warning, match="CG stopped after cg_max_iter=1"):
        nk.NTKRegressor(solver="cg", cg_max_iter=1, cg_centres=0, diag_reg=1e-3).fit(x, y)


def run_cli(capsys, *argv, quiet=True):
    from ntkit.cli import main
    code = main(["--quiet", *argv] if quiet else list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_command_line_fit_from_a_store_and_with_solver_cg(client, tmp_path, capsys):  # noqa: F811
    """`ntkit fit --kernel K.zarr` and `ntkit fit --solver cg` against the in-memory fit
    (float64, a tight CG tolerance: the same accuracy and MSE)."""
    import json
    address = client.scheduler.address
    common = ["--data", "digits", "--n-test", "60", "--diag-reg", "1e-3", "--json"]
    code, out, err = run_cli(capsys, "fit", "--arch", "fc:depth=1", "--n-train", "150", *common)
    assert code == 0, err
    ref = json.loads(out)
    store = tmp_path / "K.zarr"
    code, _, err = run_cli(capsys, "kernel", "--arch", "fc:depth=1", "--data", "digits", "--n",
                           "150", "--kernel", "ntk", "--out", str(store), "--scheduler", address)
    assert code == 0, err
    code, out, err = run_cli(capsys, "fit", "--kernel", str(store), *common, "--cg-tol", "1e-10",
                             "--cg-centres", "40", quiet=False)
    assert code == 0, err
    got = json.loads(out[out.index("\n{") + 1:])  # after the "fit: ..." line
    assert got["n_train"] == 150 and got["solver"] == "cg" and got["cg_converged"]
    # a line per phase, and per CG iteration its residual (the one the result records)
    lines = re.findall(r"CG iteration (\d+): relative residual ([0-9.e+-]+) \(", err)
    assert [int(i) for i, _ in lines] == list(range(1, got["cg_iterations"] + 1))
    np.testing.assert_allclose([float(r) for _, r in lines], got["cg_residuals"][1:], rtol=1e-3)
    for phase in ("solve: diag K of 150 points", "solve: K[:, centres] (40 columns",
                  "solve: Nyström eigensystem (rank", "predict: K(test, train) alpha, 60 x 150"):
        assert phase in err, (phase, err)
    assert got["cg_residuals"][-1] <= 1e-10 and len(got["cg_residuals"]) == got["cg_iterations"] + 1
    assert got["test_accuracy"] == ref["test_accuracy"]
    np.testing.assert_allclose(got["test_mse"], ref["test_mse"], rtol=1e-8)
    code, out, err = run_cli(capsys, "fit", "--arch", "fc:depth=1", "--n-train", "150", *common,
                             "--solver", "cg", "--store", str(tmp_path / "S.zarr"),
                             "--scheduler", address, "--cg-tol", "1e-10", quiet=False)
    assert code == 0, err
    cg = json.loads(out[out.index("\n{") + 1:])
    assert cg["test_accuracy"] == ref["test_accuracy"] and cg["cg_converged"]
    assert "kernel: 1 tiles of" in err and "fit: " in err, err
    np.testing.assert_allclose(cg["test_mse"], ref["test_mse"], rtol=1e-8)
    # usage errors name the problem (exit code 2)
    bad = [(["fit", "--kernel", str(tmp_path / "none.zarr"), "--data", "digits"],
            "no such kernel store"),
           (["fit", "--kernel", str(store), "--data", "digits", "--n-train", "140"],
            "was not computed on the training split"),
           (["fit", "--kernel", str(store), "--data", "digits", "--arch", "fc"], "omit --arch"),
           (["fit", "--arch", "fc", "--data", "digits", "--store", str(store)],
            "need --solver cg"),
           (["fit", "--arch", "fc", "--data", "digits", "--solver", "cg", "--t", "1"], "omit --t"),
           (["fit", "--arch", "fc", "--data", "digits", "--solver", "cg", "--cg-tol", "0"],
            "--cg-tol must be in"),
           (["fit", "--data", "digits"], "needs --arch")]
    for argv, message in bad:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and message in err, (argv, err)


def test_compressed_store_of_earlier_versions_is_still_read(stored, tmp_path):
    """Stores written before kernel chunks were stored raw hold zstd-compressed chunks: the
    operator reads them through Zarr (no direct chunk-file reads) and gives the same products
    as the dense float64 kernel."""
    import shutil

    import zarr

    from ntkit.scale.store import reads_directly
    path, x = stored
    old = tmp_path / "old.zarr"
    shutil.copytree(path, old)
    group = zarr.open_group(str(old), mode="r+")
    values, attrs = np.asarray(group["ntk"][...]), group["ntk"].attrs.asdict()
    del group["ntk"]
    arr = group.create_array("ntk", shape=values.shape, chunks=(10, 10), dtype=values.dtype,
                             fill_value=float("nan"), compressors=zarr.codecs.ZstdCodec())
    arr[...] = values
    arr.attrs.update(attrs)
    assert not reads_directly(zarr.open_group(str(old), mode="r")["ntk"])
    k = dense_ntk(x)
    v = np.random.default_rng(13).standard_normal((47, 3))
    op = KernelOperator(StoreBands(old))
    np.testing.assert_allclose(op.matmul(v), k @ v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(op.columns([3, 30]), k[:, [3, 30]], rtol=1e-13, atol=1e-14)


def test_in_process_pass_is_bitwise_the_same_on_one_or_two_threads(stored):
    """Bands are summed in band order whatever the thread count: the same bits."""
    path, x = stored
    v = np.random.default_rng(14).standard_normal((47, 4))
    bands = StoreBands(path)
    one = sum_over_bands(band_product, bands, KernelOperator(bands).cuts, v, (47, 4),
                         threads=1)
    two = sum_over_bands(band_product, bands, KernelOperator(bands).cuts, v, (47, 4),
                         threads=2)
    assert np.array_equal(one, two)
    np.testing.assert_allclose(one, dense_ntk(x) @ v, rtol=1e-12, atol=1e-12)


def test_a_missing_or_nan_chunk_is_named(stored, tmp_path):
    import shutil

    import zarr
    path, _ = stored
    bad = tmp_path / "bad.zarr"
    shutil.copytree(path, bad)
    key = zarr.open_group(str(bad), mode="r")["ntk"].metadata.encode_chunk_key((1, 3))
    (bad / "ntk" / key).unlink()
    op = KernelOperator(StoreBands(bad))
    with pytest.raises(ValueError, match="rows 10:20 of ntk hold NaN in tiles marked done"):
        op.matmul(np.ones((47, 1)))
    shutil.rmtree(bad)
    shutil.copytree(path, bad)
    zarr.open_group(str(bad), mode="r+")["ntk"][20, 35] = np.nan
    with pytest.raises(ValueError, match="rows 20:30 of the kernel hold NaN or Inf"):
        KernelOperator(StoreBands(bad)).matmul(np.ones((47, 1)))
