"""The ``ntkit`` command, run for real in a subprocess on tiny inputs (``ntkit(...)``); the
variations of the same paths run in-process through ``ntkit.cli.main`` (``run_main(...)``),
since every subprocess pays the import of torch and scikit-learn.

References: kernels against the numpy arc-cosine closed form (tests/test_commands_archspec.py), the exit
codes and messages documented in ntkit.cli, and scikit-learn's digits for the data.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ntkit as nk
from test_commands_archspec import relu_fc_kernels

ROOT = Path(__file__).resolve().parents[1]


def ntkit(*args, env=None, cwd=None):
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("NTKIT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "ntkit.cli", *map(str, args)], capture_output=True,
                          text=True, env=full_env, cwd=cwd or ROOT, timeout=300)


def run_main(capsys, *args):
    """(exit code, stdout, stderr) of ntkit.cli.main in this process."""
    from ntkit.cli import main
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_the_subcommands_and_exit_codes():
    res = ntkit("--help")
    assert res.returncode == 0
    for word in ("kernel", "fit", "experiment", "demo", "--quiet", "--device", "--dtype",
                 "--seed", "--data-dir", "exit codes"):
        assert word in res.stdout


def test_kernel_writes_the_closed_form(tmp_path):
    out = tmp_path / "sub" / "k.npz"
    res = ntkit("kernel", "--arch", "fc:depth=1,act=relu,W_std=1.414,b_std=0.05", "--data",
                "digits", "--n", "30", "--out", out, "--quiet")
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""  # --quiet
    z = np.load(out)
    from ntkit.data.registry import load_dataset
    ds = load_dataset("digits", n_train=30, n_test=30, seed=0)
    nngp, ntk = relu_fc_kernels(ds.x_train, 1, 1.414, 0.05)
    off = ~np.eye(30, dtype=bool)  # the diagonal is checked in test_commands_archspec
    np.testing.assert_allclose(z["nngp"][off], nngp[off], rtol=1e-9)
    np.testing.assert_allclose(z["ntk"][off], ntk[off], rtol=1e-9)
    np.testing.assert_array_equal(z["y_rows"], ds.y_train)
    assert json.loads(str(z["meta"]))["rows"] == 30


def test_kernel_test_split_float32_and_options_after_the_subcommand(tmp_path, capsys):
    code, out, err = run_main(capsys, "--dtype", "float32", "kernel", "--arch", "fc:depth=2",
                              "--data", "digits", "--split", "test", "--n", "12", "--kernel",
                              "nngp", "--out", tmp_path / "k", "--seed", "3")
    assert code == 0, err
    z = np.load(tmp_path / "k.npz")
    assert z["nngp"].shape == (12, 12) and z["nngp"].dtype == np.float32
    assert "ntk" not in z.files
    assert "wrote" in out
    assert run_main(capsys)[0] == 2  # no subcommand: usage


def test_bad_architecture_points_at_the_token(tmp_path):
    res = ntkit("kernel", "--arch", "fc:depth=3,act=relux", "--data", "digits", "--out",
                tmp_path / "k.npz")
    assert res.returncode == 2
    assert "position 15 ('relux')" in res.stderr and "did you mean 'relu'" in res.stderr
    caret = res.stderr.strip().splitlines()[-1]
    assert caret.strip() == "^^^^^"
    assert not (tmp_path / "k.npz").exists()


def test_unknown_dataset(tmp_path):
    res = ntkit("kernel", "--arch", "fc", "--data", "mnits", "--out", tmp_path / "k.npz")
    assert res.returncode == 2
    assert "unknown dataset 'mnits'" in res.stderr and "digits, mnist, cifar10" in res.stderr


def test_missing_data_dir(tmp_path):
    missing = tmp_path / "nowhere"
    res = ntkit("--data-dir", missing, "fit", "--arch", "fc", "--data", "mnist")
    assert res.returncode == 2
    assert str(missing) in res.stderr and "does not exist" in res.stderr


def test_missing_file_names_the_expected_file(tmp_path, capsys, monkeypatch):
    # the directory exists (from $NTKIT_DATA_DIR) but lacks the file
    monkeypatch.setenv("NTKIT_DATA_DIR", str(tmp_path))
    code, _, err = run_main(capsys, "kernel", "--arch", "fc", "--data", "mnist", "--out",
                            tmp_path / "k.npz")
    assert code == 2
    assert "mnist/mnist.npz" in err and str(tmp_path / "mnist" / "mnist.npz") in err
    code, _, err = run_main(capsys, "fit", "--arch", "fc", "--data", "uci:iris")
    assert code == 2 and str(tmp_path / "uci" / "iris" / "iris.txt") in err


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    res = ntkit("kernel", "--arch", "fc", "--data", "digits", "--n", "5", "--out",
                blocker / "k.npz")
    assert res.returncode == 2
    assert "cannot write" in res.stderr and "is a file, not a folder" in res.stderr


def test_unwritable_folders_in_process(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, _, err = run_main(capsys, "demo", "--quick", "--out", blocker / "report")
    assert code == 2 and "report folder" in err
    code, _, err = run_main(capsys, "experiment", "digits-kernels", "--out", blocker / "x")
    assert code == 2 and "output folder" in err
    code, _, err = run_main(capsys, "kernel", "--arch", "fc", "--data", "digits", "--out", tmp_path)
    assert code == 2 and "is a directory" in err


def test_usage_errors_exit_2(capsys):
    code, _, err = run_main(capsys, "kernel", "--arch", "fc", "--data", "digits")  # no --out
    assert code == 2 and "--out" in err
    code, _, err = run_main(capsys, "fit", "--arch", "fc", "--data", "digits", "--dtype", "float16")
    assert code == 2 and "float16" in err
    code, _, err = run_main(capsys, "kernel", "--arch", "fc", "--data", "digits", "--n", "0",
                            "--out", "k.npz")
    assert code == 2 and "positive integer" in err


def test_experiment_list_and_unknown_name(tmp_path):
    from ntkit.experiments import REGISTRY

    res = ntkit("experiment", "--list")
    assert res.returncode == 0
    for name in REGISTRY:
        assert name in res.stdout


def test_experiment_errors_in_process(tmp_path, capsys):
    code, _, err = run_main(capsys, "experiment", "no-such-thing", "--out", tmp_path)
    assert code == 2 and "unknown experiment 'no-such-thing'" in err
    code, _, err = run_main(capsys, "experiment", "digits-kernels", "--out", tmp_path,
                            "--bogus-option", "3")
    assert code == 2 and "--bogus-option" in err and "--depths" in err
    code, _, err = run_main(capsys, "experiment", "--out", tmp_path)
    assert code == 2 and "--list" in err


def test_experiment_option_parsing():
    from ntkit.commands.experiment import parse_options

    assert parse_options(["--depths", "1,2", "--diag-reg=1e-3", "--flag", "--name", "x"]) == {
        "depths": [1, 2], "diag_reg": 1e-3, "flag": True, "name": "x"}


def test_experiment_help_lists_every_declared_option_with_its_defaults(capsys):
    """The reference: each module's FULL and QUICK configurations and run()'s keywords."""
    import inspect

    from ntkit.experiments import REGISTRY, module

    for name in REGISTRY:
        code, out, _ = run_main(capsys, "experiment", name, "--help")
        assert code == 0 and f"ntkit experiment {name}" in out
        mod = module(name)
        full = getattr(mod, "FULL", {})
        for key in full:
            assert "--" + key.replace("_", "-") in out, (name, key)
        params = inspect.signature(mod.run).parameters
        for key, p in params.items():
            if p.default is not p.empty and key not in ("quick", "seed", "progress"):
                assert "--" + key.replace("_", "-") in out, (name, key)
    code, out, _ = run_main(capsys, "experiment", "width-sweep", "--help")
    line = next(x for x in out.splitlines() if x.strip().startswith("--widths"))
    import ntkit.experiments.width_sweep as ws
    assert "LIST" in line and ",".join(map(str, ws.FULL["widths"])) in line
    assert ",".join(map(str, ws.QUICK["widths"])) in line
    code, out, _ = run_main(capsys, "experiment", "--help")
    assert code == 0 and "--list" in out


def test_experiment_list_option_takes_one_value_and_shows_progress(tmp_path, capsys):
    code, _, err = run_main(capsys, "experiment", "unit-circle", "--quick", "--out", tmp_path,
                            "--widths", "16", "--inits", "1", "--steps", "2", "--n-gamma", "5")
    assert code == 0, err
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["config"]["widths"] == [16] and list(res["widths"]) == ["16"]
    assert "width 16" in err                      # the progress bar (tqdm, on stderr)
    code, _, err = run_main(capsys, "--quiet", "experiment", "unit-circle", "--quick", "--out",
                            tmp_path, "--widths=16", "--inits", "1", "--steps", "2",
                            "--n-gamma", "5")
    assert code == 0 and "width 16" not in err


def test_fit_prints_test_metrics():
    if not hasattr(nk, "NTKClassifier"):
        pytest.skip("nk.NTKClassifier (ntkit.estimators, issue 4) not available yet")
    res = ntkit("fit", "--arch", "fc:depth=2", "--data", "digits", "--n-train", "200",
                "--n-test", "100", "--diag-reg", "1e-4", "--json", "-q")
    assert res.returncode == 0, res.stderr
    metrics = json.loads(res.stdout)
    assert metrics["n_train"] == 200 and metrics["n_test"] == 100
    assert metrics["test_accuracy"] > 0.85  # digits with 200 examples: an RBF SVM gets ~0.9


def test_fit_nngp_and_bad_time_in_process(capsys):
    if not hasattr(nk, "NNGPRegressor"):
        pytest.skip("nk.NNGPRegressor (ntkit.estimators, issue 4) not available yet")
    code, out, err = run_main(capsys, "fit", "--arch", "fc:depth=1", "--data", "digits",
                              "--n-train", "150", "--n-test", "60", "--kernel", "nngp", "-q")
    assert code == 0, err
    assert "test accuracy" in out
    code, _, err = run_main(capsys, "fit", "--arch", "fc", "--data", "digits", "--t", "-1")
    assert code == 2 and "--t" in err


def test_cuda_request_without_cuda(tmp_path, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    code, _, err = run_main(capsys, "kernel", "--device", "cuda", "--arch", "fc", "--data",
                            "digits", "--n", "5", "--out", tmp_path / "k.npz")
    assert code == 2 and "no CUDA device" in err


def test_uci_and_cifar10_by_name(tmp_path, capsys):
    from ntkit.data import default_data_dir
    from ntkit.data.registry import expected_file

    if not expected_file("uci:iris", default_data_dir()).is_file():
        pytest.skip("../shared/data/uci/iris not present")
    code, out, err = run_main(capsys, "fit", "--arch", "fc:depth=1", "--data", "uci:iris",
                              "--diag-reg", "1e-3", "--json", "-q")
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["n_train"] + metrics["n_test"] == 150  # iris, first kfold pair
    if not expected_file("cifar10", default_data_dir()).is_file():
        pytest.skip("../shared/data/cifar10 not present")
    code, _, err = run_main(capsys, "kernel", "--arch", "cnn:depth=1,readout=flatten", "--data",
                            "cifar10", "--n", "3", "--kernel", "nngp", "--out", tmp_path / "c.npz")
    assert code == 0, err
    z = np.load(tmp_path / "c.npz")
    assert z["nngp"].shape == (3, 3) and np.all(np.linalg.eigvalsh(z["nngp"]) > -1e-12)


def test_fit_two_class_dataset(capsys):
    """Two classes: the classifier's scikit-learn decision_function is 1-D there; the command
    must still score with the (m, 2) regression outputs (breast-cancer-wisc is ~96% linearly
    separable, so a working fit is far above the 65% majority class)."""
    from ntkit.data import default_data_dir
    from ntkit.data.registry import expected_file

    if not expected_file("uci:breast-cancer-wisc", default_data_dir()).is_file():
        pytest.skip("../shared/data/uci/breast-cancer-wisc not present")
    code, out, err = run_main(capsys, "fit", "--arch", "fc:depth=1", "--data",
                              "uci:breast-cancer-wisc", "--diag-reg", "1e-3", "--json", "-q")
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["n_train"] + metrics["n_test"] == 699
    assert metrics["test_accuracy"] > 0.9


def test_kernel_to_a_zarr_store_info_and_refused_resume(tmp_path, capsys):
    """--out K.zarr: tiles on a local Dask cluster, the same closed form as the .npz path;
    --info reports a complete store; resuming with another architecture is a usage error."""
    store = tmp_path / "K.zarr"
    arch = "fc:depth=1,act=relu,W_std=1.414,b_std=0.05"
    res = ntkit("kernel", "--arch", arch, "--data", "digits", "--n", "20", "--out", store,
                "--batch-size", "8", "--quiet")
    assert res.returncode == 0, res.stderr
    from ntkit.data.registry import load_dataset
    from ntkit.scale import open_kernel
    ds = load_dataset("digits", n_train=20, n_test=20, seed=0)
    nngp, ntk = relu_fc_kernels(ds.x_train, 1, 1.414, 0.05)
    k = open_kernel(store)
    off = ~np.eye(20, dtype=bool)
    np.testing.assert_allclose(np.asarray(k.nngp)[off], nngp[off], rtol=1e-9)
    np.testing.assert_allclose(np.asarray(k.ntk)[off], ntk[off], rtol=1e-9)
    code, out, _ = run_main(capsys, "kernel", "--info", store)
    info = json.loads(out)
    assert code == 0 and info["complete"] and info["tiles_done"] == info["tiles"] == 6
    code, _, err = run_main(capsys, "kernel", "--arch", "fc:depth=2", "--data", "digits", "--n",
                            "20", "--out", store, "--batch-size", "8", "--quiet")
    assert code == 2 and "architecture" in err
    code, _, err = run_main(capsys, "kernel", "--arch", arch)
    assert code == 2 and "--data, --out (or --info STORE)" in err
