"""ntkit.predict against independent references: explicit ODE integration (scipy solve_ivp),
literal gradient-descent iteration, explicit random-feature models trained with weight decay,
scipy.linalg.expm + numpy.linalg.solve formulas, brute-force Gaussian conditioning, Monte Carlo
over initializations, and real training of a wide network."""

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import torch

import ntkit as nk
from ntkit import predict
from ntkit.predict import MSEDynamics, SingularKernelError

ARCH = nk.Sequential(nk.Linear(512, W_std=1.5, b_std=0.1), nk.ReLU(),
                     nk.Linear(512, W_std=1.5, b_std=0.1), nk.ReLU(),
                     nk.Linear(1, W_std=1.5, b_std=0.1))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    xtr, xte = rng.normal(size=(7, 3)), rng.normal(size=(5, 3))
    kdd, ktd, ktt = ARCH.kernel(xtr), ARCH.kernel(xte, xtr), ARCH.kernel(xte)
    return dict(xtr=xtr, xte=xte, kdd=kdd, ktd=ktd, ktt=ktt, y=rng.normal(size=(7, 2)),
                f0tr=rng.normal(size=(7, 2)), f0te=rng.normal(size=(5, 2)))


def np_(t):
    return t.detach().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def test_infinite_time_without_ridge_interpolates(data):
    K, y = data["kdd"].ntk, data["y"]
    dyn = MSEDynamics(K, y)
    np.testing.assert_allclose(np_(dyn.predict(None, fx_train_0=data["f0tr"])), y, atol=1e-12)
    # the same through the test-point formula with x_test = x_train: K K^{-1} y = y
    np.testing.assert_allclose(np_(dyn.predict(None, K, data["f0tr"], data["f0tr"])), y, atol=1e-9)
    # and at a very long finite time through the eigendecomposition
    np.testing.assert_allclose(np_(dyn.predict(1e6, fx_train_0=data["f0tr"])), y, atol=1e-9)


@pytest.mark.parametrize("loss", ["sum", "mean"])
def test_gradient_flow_matches_ode_integration(data, loss):
    """f' = -c K (f - y) on train points and f_test' = -c K_td (f - y), integrated by solve_ivp."""
    K, Ktd = np_(data["kdd"].ntk), np_(data["ktd"].ntk)
    y, f0tr, f0te = data["y"], data["f0tr"], data["f0te"]
    lr = 0.3
    c = lr if loss == "sum" else lr / y.size
    n, k = y.shape

    def rhs(_, z):
        ftr = z[: n * k].reshape(n, k)
        g = -c * (ftr - y)
        return np.concatenate([(K @ g).ravel(), (Ktd @ g).ravel()])

    ts = np.array([0.0, 0.5, 3.0, 20.0])
    sol = scipy.integrate.solve_ivp(rhs, (0, ts[-1]), np.concatenate([f0tr.ravel(), f0te.ravel()]),
                                    t_eval=ts, rtol=1e-11, atol=1e-12, method="DOP853")
    ref_tr = sol.y[: n * k].T.reshape(len(ts), n, k)
    ref_te = sol.y[n * k:].T.reshape(len(ts), -1, k)
    dyn = MSEDynamics(K, y, learning_rate=lr, loss=loss)
    np.testing.assert_allclose(np_(dyn.predict(ts, fx_train_0=f0tr)), ref_tr, atol=1e-8)
    np.testing.assert_allclose(np_(dyn.predict(ts, Ktd, f0tr, f0te)), ref_te, atol=1e-8)
    # a 2-D array of times keeps its shape
    assert dyn.predict(ts.reshape(2, 2), Ktd, f0tr, f0te).shape == (2, 2, 5, 2)


def test_gradient_descent_matches_literal_iteration(data):
    K, Ktd = np_(data["kdd"].ntk), np_(data["ktd"].ntk)
    y, f0tr, f0te = data["y"], data["f0tr"], data["f0te"]
    dyn = MSEDynamics(K, y, learning_rate=1.0, loss="mean", discrete=True)
    lr = 0.9 * dyn.max_learning_rate()             # large steps: far from the flow
    dyn = MSEDynamics(K, y, learning_rate=lr, loss="mean", discrete=True)
    ftr, fte = f0tr.copy(), f0te.copy()
    refs_tr, refs_te = [], []
    for step in range(31):
        refs_tr.append(ftr.copy())
        refs_te.append(fte.copy())
        g = -lr / y.size * (ftr - y)
        ftr, fte = ftr + K @ g, fte + Ktd @ g
    steps = np.arange(31)
    np.testing.assert_allclose(np_(dyn.predict(steps, fx_train_0=f0tr)), np.array(refs_tr),
                               atol=1e-10)
    np.testing.assert_allclose(np_(dyn.predict(steps, Ktd, f0tr, f0te)), np.array(refs_te),
                               atol=1e-10)


@pytest.mark.parametrize("discrete", [False, True])
def test_ridge_is_weight_decay_of_the_linear_model(discrete):
    """diag_reg = ρ is gradient flow/descent on ½|Φw − r|² + ½ρ|w|² of an explicit linear model
    with features Φ (K = Φ Φᵀ); the reference iterates (or integrates) w itself."""
    rng = np.random.default_rng(2)
    n, m, p = 6, 4, 40
    phi, phi_te = rng.normal(size=(n, p)) / 4, rng.normal(size=(m, p)) / 4
    y = rng.normal(size=(n, 3))
    rho, lr = 0.3, 0.2
    K, Ktd = phi @ phi.T, phi_te @ phi.T
    dyn = MSEDynamics(K, y, learning_rate=lr, diag_reg=rho, discrete=discrete)
    T = 25
    if discrete:
        w = np.zeros((p, 3))
        for _ in range(T):
            w = w - lr * (phi.T @ (phi @ w - y) + rho * w)
    else:
        a = phi.T @ phi + rho * np.eye(p)
        w = np.linalg.solve(a, (np.eye(p) - scipy.linalg.expm(-lr * a * T)) @ phi.T @ y)
    np.testing.assert_allclose(np_(dyn.predict(T)), phi @ w, atol=1e-10)
    np.testing.assert_allclose(np_(dyn.predict(T, Ktd)), phi_te @ w, atol=1e-10)
    # t = inf: kernel ridge regression, solved in feature space
    w_inf = np.linalg.solve(phi.T @ phi + rho * np.eye(p), phi.T @ y)
    np.testing.assert_allclose(np_(dyn.predict(None, Ktd)), phi_te @ w_inf, atol=1e-10)
    np.testing.assert_allclose(np_(dyn.predict(None)), phi @ w_inf, atol=1e-10)


def test_max_learning_rate_is_the_stability_edge(data):
    K, y = np_(data["kdd"].ntk), data["y"][:, 0]
    for loss in ("sum", "mean"):
        eta = MSEDynamics(K, y, loss=loss).max_learning_rate()
        assert eta == pytest.approx(predict.max_learning_rate(K, y.size, loss=loss), rel=1e-9)
        N = 1 if loss == "sum" else y.size
        for factor, converges in ((0.98, True), (1.02, False)):
            r = y.copy()
            for _ in range(3000):
                r = r - factor * eta / N * K @ r
            assert (np.abs(r).max() < 1e-3 * np.abs(y).max()) == converges
    with pytest.raises(ValueError, match="largest stable"):
        MSEDynamics(K, y, learning_rate=1.02 * eta, loss="mean", discrete=True).predict(None)


def _ntk_gp_reference(Th, Thtd, K, Ktd, Ktt, y, c, t):
    """Lee et al. 2019 eqs. 15-16 with scipy.linalg.expm and numpy.linalg.solve."""
    n = len(y)
    m = np.linalg.solve(Th, np.eye(n) - scipy.linalg.expm(-c * Th * t))   # Θ^{-1}(I - e^{-cΘt})
    mean = Thtd @ m @ y
    cov = Ktt + Thtd @ m @ K @ m.T @ Thtd.T - Thtd @ m @ Ktd.T - Ktd @ m.T @ Thtd.T
    return mean, cov


def test_ntk_gp_matches_expm_formula_and_monte_carlo(data):
    kdd, ktd, ktt, y = data["kdd"], data["ktd"], data["ktt"], data["y"][:, :1]
    Th, K = np_(kdd.ntk), np_(kdd.nngp)
    Thtd, Ktd, Ktt = np_(ktd.ntk), np_(ktd.nngp), np_(ktt.nngp)
    c, t = 0.05, 7.0
    res = predict.ntk_ensemble(kdd, y, ktd, ktt.nngp, t=[t], learning_rate=c, compute_cov=True)
    mean_ref, cov_ref = _ntk_gp_reference(Th, Thtd, K, Ktd, Ktt, y, c, t)
    np.testing.assert_allclose(np_(res.mean[0]), mean_ref, atol=1e-10)
    np.testing.assert_allclose(np_(res.covariance[0]), cov_ref, atol=1e-10)
    # Monte Carlo: f0 ~ GP(0, K) jointly on (X, x), each sample trained by the linear flow
    rng = np.random.default_rng(3)
    joint = np.block([[K, Ktd.T], [Ktd, Ktt]])
    s = 40000
    f0 = rng.multivariate_normal(np.zeros(len(joint)), joint, size=s, method="eigh")
    f0tr, f0te = f0[:, :7], f0[:, 7:]
    # test outputs of each sample: f0(x) + Θ(x,X) M (y - f0(X)), vectorized over samples
    m = np.linalg.solve(Th, np.eye(7) - scipy.linalg.expm(-c * Th * t))
    out = f0te + (y[:, 0][None] - f0tr) @ (Thtd @ m).T
    mc_mean, mc_cov = out.mean(0), np.cov(out.T)
    se = np.sqrt(np.diag(cov_ref) / s)
    assert np.all(np.abs(mc_mean - np_(res.mean[0])[:, 0]) < 5 * se)
    assert np.abs(mc_cov - np_(res.covariance[0])).max() < 0.05 * np.abs(cov_ref).max()


def test_ntk_gp_on_training_points_decays_as_e_K_e(data):
    kdd, y = data["kdd"], data["y"]
    Th, K = np_(kdd.ntk), np_(kdd.nngp)
    c, t = 0.02, 5.0
    res = predict.ntk_ensemble(kdd, y, t=t, learning_rate=c, compute_cov=True)
    e = scipy.linalg.expm(-c * Th * t)
    np.testing.assert_allclose(np_(res.mean), (np.eye(7) - e) @ y, atol=1e-10)
    np.testing.assert_allclose(np_(res.covariance), e @ K @ e, atol=1e-10)


def test_nngp_posterior_matches_brute_force_gp(data):
    """Exact GP posterior with noise vs conditioning read off the joint precision matrix."""
    K, Ktd, Ktt, y = (np_(data["kdd"].nngp), np_(data["ktd"].nngp), np_(data["ktt"].nngp),
                      data["y"])
    noise = 0.05
    joint = np.block([[K + noise * np.eye(7), Ktd.T], [Ktd, Ktt]])
    prec = np.linalg.inv(joint)
    cov_ref = np.linalg.inv(prec[7:, 7:])
    mean_ref = -cov_ref @ prec[7:, :7] @ y
    post = predict.gp_posterior(K, y, Ktd, Ktt, noise=noise)
    np.testing.assert_allclose(np_(post.mean), mean_ref, atol=1e-9)
    np.testing.assert_allclose(np_(post.covariance), cov_ref, atol=1e-9)
    ens = predict.nngp_ensemble(K, y, Ktd, Ktt, t=None, diag_reg=noise, compute_cov=True)
    np.testing.assert_allclose(np_(ens.mean), mean_ref, atol=1e-9)
    np.testing.assert_allclose(np_(ens.covariance), cov_ref, atol=1e-9)
    # log marginal likelihood against scipy's multivariate normal
    from scipy.stats import multivariate_normal
    ref = sum(multivariate_normal(np.zeros(7), K + noise * np.eye(7)).logpdf(y[:, j])
              for j in range(2))
    assert predict.log_marginal_likelihood(K, y, noise) == pytest.approx(ref, rel=1e-10)


def test_nngp_ensemble_finite_time_matches_expm_formula(data):
    K, Ktd, Ktt, y = (np_(data["kdd"].nngp), np_(data["ktd"].nngp), np_(data["ktt"].nngp),
                      data["y"])
    c, t = 0.1, 3.0
    ens = predict.nngp_ensemble(K, y, Ktd, Ktt, t=t, learning_rate=c, compute_cov=True)
    m = np.linalg.solve(K, np.eye(7) - scipy.linalg.expm(-c * K * t))
    m2 = np.linalg.solve(K, np.eye(7) - scipy.linalg.expm(-2 * c * K * t))
    np.testing.assert_allclose(np_(ens.mean), Ktd @ m @ y, atol=1e-10)
    np.testing.assert_allclose(np_(ens.covariance), Ktt - Ktd @ m2 @ Ktd.T, atol=1e-10)


def test_readout_variance_matches_expm_formula_with_ridge_and_several_times(data):
    """MSEDynamics.readout_variance against diag(Ktt − Ktd A⁻¹ (I − expm(−2cAt)) Kdt) with
    A = K + ρI, from scipy.linalg.expm and numpy.linalg.solve, for loss='sum' (c = η)."""
    K, Ktd, Ktt = np_(data["kdd"].nngp), np_(data["ktd"].nngp), np_(data["ktt"].nngp)
    c, rho, times = 0.1, 0.05, [0.0, 3.0, 40.0]
    dyn = MSEDynamics(K, data["y"], learning_rate=c, diag_reg=rho)
    var = np_(dyn.readout_variance(Ktd, np.diag(Ktt), times))
    A = K + rho * np.eye(7)
    for k, t in enumerate(times):
        m2 = np.linalg.solve(A, np.eye(7) - scipy.linalg.expm(-2 * c * A * t))
        np.testing.assert_allclose(var[k], np.diag(Ktt - Ktd @ m2 @ Ktd.T), atol=1e-10)
    with pytest.raises(ValueError, match="k_test_test_diag"):
        dyn.readout_variance(Ktd, np.diag(Ktt)[:3])


def test_wide_network_training_follows_closed_form():
    """A real width-4096 ReLU net (NTK parameterization, float64) trained by full-batch GD on
    MSE stays within a few percent of the closed form with the analytic NTK."""
    arch = nk.Sequential(nk.Linear(4096, W_std=1.4, b_std=0.1), nk.ReLU(),
                         nk.Linear(1, W_std=1.4, b_std=0.1))
    rng = np.random.default_rng(4)
    x, xte = rng.normal(size=(6, 3)), rng.normal(size=(4, 3))
    y = np.sin(x.sum(1, keepdims=True))
    net = arch.init((3,), seed=0, dtype=torch.float64)
    xt, xtet, yt = map(torch.from_numpy, (x, xte, y))
    with torch.no_grad():
        f0tr, f0te = net(xt).numpy(), net(xtet).numpy()
    lr, steps = 0.5, 200
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * ((net(xt) - yt) ** 2).sum() / y.size).backward()   # loss='mean'
        opt.step()
    with torch.no_grad():
        ftr, fte = net(xt).numpy(), net(xtet).numpy()
    dyn = MSEDynamics(arch.kernel(x).ntk, y, learning_rate=lr, loss="mean", discrete=True)
    lin_tr = np_(dyn.predict(steps, fx_train_0=f0tr))
    lin_te = np_(dyn.predict(steps, arch.kernel(xte, x).ntk, f0tr, f0te))
    assert np.linalg.norm(ftr - lin_tr) / np.linalg.norm(ftr - f0tr) < 0.1
    assert np.linalg.norm(fte - lin_te) / np.linalg.norm(fte - f0te) < 0.1


# -- bad input ------------------------------------------------------------------------------------
def test_singular_kernel_without_ridge_gives_error_with_fix():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])                 # duplicated input
    kd = ARCH.kernel(x)
    y = np.array([1.0, 2.0, 3.0])
    with pytest.raises(SingularKernelError, match="diag_reg"):
        MSEDynamics(kd.ntk, y).predict(None)
    with pytest.raises(SingularKernelError, match="diag_reg"):
        MSEDynamics(kd.ntk, y).predict([1.0, np.inf])
    with pytest.raises(SingularKernelError, match="diag_reg"):
        predict.gp_posterior(kd.nngp, y, kd.nngp[:1])
    with pytest.raises(SingularKernelError):
        predict.gp_inference(kd, y[:, None])("ntk", kd)
    # the fixes work: a ridge, or a finite time
    assert torch.isfinite(MSEDynamics(kd.ntk, y, diag_reg=1e-6, diag_reg_relative=True)
                          .predict(None)).all()
    assert torch.isfinite(MSEDynamics(kd.ntk, y).predict(10.0)).all()


def test_mismatched_and_nan_inputs_are_rejected(data):
    K = data["kdd"].ntk
    with pytest.raises(ValueError, match="mismatched n"):
        MSEDynamics(K, np.zeros(6))
    with pytest.raises(ValueError, match="mismatched n"):
        MSEDynamics(K, np.zeros(7)).predict(1.0, np.zeros((3, 6)))
    with pytest.raises(ValueError, match="NaN"):
        MSEDynamics(K, np.array([0, 1, 2, np.nan, 4, 5, 6.0]))
    with pytest.raises(ValueError, match="NaN"):
        predict.gp_posterior(K, np.full(7, np.nan))
    with pytest.raises(ValueError, match="square"):
        MSEDynamics(K[:, :5], np.zeros(7))
    with pytest.raises(ValueError, match="whole numbers"):
        MSEDynamics(K, np.zeros(7), discrete=True).predict(1.5)
    with pytest.raises(ValueError, match=">= 0"):
        MSEDynamics(K, np.zeros(7)).predict(-1.0)
    with pytest.raises(ValueError, match="loss"):
        MSEDynamics(K, np.zeros(7), loss="avg")
    with pytest.raises(ValueError, match="nngp_test_test"):
        predict.ntk_ensemble(data["kdd"], np.zeros(7), data["ktd"], compute_cov=True)
    with pytest.raises(NotImplementedError, match="trace_axes"):
        predict.gradient_descent_mse(K, np.zeros((7, 1)), trace_axes=())
