"""ntkit.estimators: scikit-learn's own estimator checks, numbers against independent numpy/scipy
formulas, accuracy on digits against an RBF SVM, Pipeline/GridSearchCV use, bad input."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.estimator_checks import parametrize_with_checks

import ntkit as nk
from ntkit.estimators import default_architecture
from ntkit.predict import SingularKernelWarning


pytestmark = pytest.mark.usefixtures("one_thread")


@parametrize_with_checks([nk.NTKRegressor(), nk.NTKClassifier(), nk.NNGPRegressor()])
def test_sklearn_estimator_checks(estimator, check):
    # (checks that need pandas are skipped by scikit-learn itself when pandas is absent)
    check(estimator)


def _reference_kernels(x, xte):
    """NTK/NNGP of the documented default architecture, built independently of the estimator."""
    w, b = math.sqrt(2.0), 0.05
    arch = nk.Sequential(*([nk.Linear(8, W_std=w, b_std=b), nk.ReLU()] * 3),
                         nk.Linear(1, W_std=w, b_std=b))
    return arch.kernel(x), arch.kernel(xte, x), arch.kernel(xte)


def test_regressor_matches_closed_form_in_numpy():
    rng = np.random.default_rng(0)
    x, xte = rng.normal(size=(12, 4)), rng.normal(size=(5, 4))
    y = rng.normal(size=(12, 2))
    kdd, ktd, _ = _reference_kernels(x, xte)
    K, Ktd = kdd.ntk.numpy(), ktd.ntk.numpy()
    rho = 0.01 * np.trace(K) / 12
    ref_inf = Ktd @ np.linalg.solve(K + rho * np.eye(12), y)
    est = nk.NTKRegressor(diag_reg=0.01).fit(x, y)
    np.testing.assert_allclose(est.predict(xte), ref_inf, atol=1e-9)
    # finite time, neural-tangents units: exp(-lr * t * A / y.size)
    t, lr = 3.0, 0.5
    a = K + rho * np.eye(12)
    ref_t = Ktd @ np.linalg.solve(a, (np.eye(12) - scipy.linalg.expm(-lr * t * a / y.size)) @ y)
    est = nk.NTKRegressor(t=t, learning_rate=lr, diag_reg=0.01).fit(x, y)
    np.testing.assert_allclose(est.predict(xte), ref_t, atol=1e-9)
    assert est.predict(xte[:, :]).shape == (5, 2)
    assert nk.NTKRegressor().fit(x, y[:, 0]).predict(xte).shape == (5,)


def test_nngp_regressor_mean_and_std_match_brute_force_gp():
    rng = np.random.default_rng(1)
    x, xte = rng.normal(size=(10, 3)), rng.normal(size=(4, 3))
    y = rng.normal(size=10)
    kdd, ktd, ktt = _reference_kernels(x, xte)
    K, Ktd, Ktt = kdd.nngp.numpy(), ktd.nngp.numpy(), ktt.nngp.numpy()
    noise = 0.1 * np.trace(K) / 10
    joint = np.block([[K + noise * np.eye(10), Ktd.T], [Ktd, Ktt]])
    prec = np.linalg.inv(joint)
    cov = np.linalg.inv(prec[10:, 10:])
    mean = -cov @ prec[10:, :10] @ y
    m, s = nk.NNGPRegressor(diag_reg=0.1).fit(x, y).predict(xte, return_std=True)
    np.testing.assert_allclose(m, mean, atol=1e-9)
    np.testing.assert_allclose(s, np.sqrt(np.diag(cov)), atol=1e-7)


def test_classifier_labels_and_decision_function():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 2))
    labels = np.where(x[:, 0] > 0, "pos", "neg")
    clf = nk.NTKClassifier(diag_reg=1e-3).fit(x, labels)
    assert list(clf.classes_) == ["neg", "pos"]
    dec = clf.decision_function(x)
    assert dec.shape == (30,)
    np.testing.assert_array_equal(clf.predict(x), np.where(dec > 0, "pos", "neg"))
    assert clf.score(x, labels) == 1.0


def test_digits_accuracy_at_least_rbf_svm(capsys):
    """NTK classifier (default architecture, standardized pixels, t=inf, no ridge) vs scikit-learn's
    RBF SVC with default settings (its better configuration here: raw pixels), on a stratified
    50/50 split of digits (899 test images: resolution 1/899 = 0.11%)."""
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.5, random_state=0, stratify=y)
    ntk = make_pipeline(StandardScaler(), nk.NTKClassifier()).fit(Xtr, ytr).score(Xte, yte)
    svm = SVC().fit(Xtr, ytr).score(Xte, yte)
    with capsys.disabled():
        print(f"\n[digits 50/50 split, n_test=899] NTKClassifier {ntk:.4f}  RBF SVC {svm:.4f}")
    assert ntk >= svm


def test_pipeline_and_grid_search():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 3)) * [1.0, 10.0, 0.1]
    y = np.sin(x[:, 0]) + 0.05 * rng.normal(size=40)
    pipe = make_pipeline(StandardScaler(), nk.NTKRegressor())
    grid = GridSearchCV(pipe, {"ntkregressor__diag_reg": [1e-4, 1e-1],
                               "ntkregressor__t": [None, 10.0]}, cv=3).fit(x, y)
    assert set(grid.best_params_) == {"ntkregressor__diag_reg", "ntkregressor__t"}
    assert grid.best_estimator_.predict(x).shape == (40,)
    est = nk.NTKRegressor(diag_reg=0.5)
    assert est.set_params(t=5.0).get_params()["t"] == 5.0


def test_default_architecture_is_documented_one():
    arch = default_architecture()
    linears = [layer for layer in arch.layers if isinstance(layer, nk.Linear)]
    assert len(linears) == 4 and sum(isinstance(layer, nk.ReLU) for layer in arch.layers) == 3
    assert all(layer.W_std == pytest.approx(math.sqrt(2)) and layer.b_std == 0.05
               for layer in linears)


def test_bad_input():
    x = np.random.default_rng(4).normal(size=(6, 2))
    with pytest.raises(ValueError, match="NaN"):
        nk.NTKRegressor().fit(x, np.array([0, 1, np.nan, 3, 4, 5.0]))
    with pytest.raises(ValueError, match="inconsistent"):
        nk.NTKRegressor().fit(x, np.zeros(5))
    with pytest.raises(ValueError, match="dtype"):
        nk.NTKRegressor(dtype="float16").fit(x, np.zeros(6))
    with pytest.raises(ValueError, match="t must be"):
        nk.NTKRegressor(t=-1.0).fit(x, np.zeros(6))
    with pytest.raises(ValueError, match="features"):
        nk.NTKRegressor().fit(x, np.zeros(6)).predict(np.zeros((2, 3)))
    dup = np.vstack([x, x[:1]])
    with pytest.warns(SingularKernelWarning, match="diag_reg"):
        est = nk.NTKRegressor().fit(dup, np.arange(7.0))
    assert np.isfinite(est.predict(x)).all()


def test_images_and_torch_tensors_with_a_convolutional_arch():
    """NCHW images (numpy or torch) go to the architecture as they are; the prediction equals
    kernel regression computed directly from arch.kernel in numpy."""
    arch = nk.Sequential(nk.Conv2d(4, 3, padding="same", W_std=1.5, b_std=0.1), nk.ReLU(),
                         nk.Flatten(), nk.Linear(1, W_std=1.5))
    rng = np.random.default_rng(5)
    x, xte = rng.normal(size=(8, 2, 5, 5)), rng.normal(size=(3, 2, 5, 5))
    y = rng.integers(0, 3, size=8)
    onehot = np.eye(3)[y]
    K, Ktd = arch.kernel(x).ntk.numpy(), arch.kernel(xte, x).ntk.numpy()
    ref = Ktd @ np.linalg.solve(K + 0.01 * np.trace(K) / 8 * np.eye(8), onehot)
    clf = nk.NTKClassifier(arch=arch, diag_reg=0.01).fit(torch.from_numpy(x), y)
    np.testing.assert_allclose(clf.decision_function(torch.from_numpy(xte)), ref, atol=1e-9)
    assert clf.device_ == "cpu"
    np.testing.assert_array_equal(clf.predict(xte), ref.argmax(1))
