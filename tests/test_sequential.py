"""Sequential.kernel: structure of the kernel matrices (symmetry, PSD), equivalences of the
code paths (x2=None vs x2=x1, blocked vs unblocked, numpy vs torch), dtypes, and bad input.

References: symmetry and PSD are properties of any covariance / Gram matrix (eigenvalues of
NNGP and NTK must be >= -1e-10 * the largest); the equivalences compare independent code paths
(the blocked computation mirrors off-diagonal blocks; x2=None uses one triangle of blocks).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import ntkit as nk

CLOSED = [nk.ReLU(), nk.LeakyReLU(0.2), nk.ABReLU(-0.5, 1.5), nk.Erf(0.8, 1.2, 0.1), nk.GELU(),
          nk.Sin(1.0, 0.7, 0.4), nk.Identity()]
QUAD = [nk.Tanh(), nk.Sigmoid(), nk.Elementwise(torch.nn.functional.softplus)]


def _ids(acts):
    return [type(a).__name__ for a in acts]


def _arch(act, parameterization="ntk", b_std=0.1):
    return nk.Sequential(nk.Linear(16, W_std=1.4, b_std=b_std, parameterization=parameterization),
                         act,
                         nk.Linear(16, W_std=1.4, b_std=b_std, parameterization=parameterization),
                         act,
                         nk.Linear(1, W_std=1.4, b_std=b_std, parameterization=parameterization))


def _inputs(n=30, d=8, seed=0):
    """Random rows with the hard cases planted (when n >= 21)."""
    x = np.random.default_rng(seed).normal(size=(n, d))
    if n >= 21:
        x[1] = x[0] * (1 + 1e-7)   # nearly equal, same block
        x[20] = x[5] * (1 + 1e-7)  # nearly equal, different blocks of 7
        x[2] = -x[0]               # antipodal
        x[3] = 0.0                 # zero row
        x[4] = x[6]                # exact duplicate
    return x


def _check_sym_psd(K, what):
    scale = np.abs(K).max()
    assert np.abs(K - K.T).max() <= 1e-13 * scale, f"{what}: not symmetric"
    ev = np.linalg.eigvalsh((K + K.T) / 2)
    assert ev.min() >= -1e-10 * ev.max(), f"{what}: min eigenvalue {ev.min():.3e} (max {ev.max():.3e})"


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("act", CLOSED, ids=_ids(CLOSED))
def test_symmetric_psd_closed_forms(act, parameterization):
    x = _inputs()
    y = _inputs(8, seed=5)
    y[0] = x[7] * (1 - 1e-7)
    arch = _arch(act, parameterization)
    stacked = arch.kernel(np.vstack([x, y]))
    for k, what in ((arch.kernel(x), "x2=None"), (arch.kernel(x, batch_size=7), "x2=None, blocks 7"),
                    (stacked, "stacked [x; y]")):
        _check_sym_psd(k.nngp.numpy(), f"{act!r} NNGP {what}")
        _check_sym_psd(k.ntk.numpy(), f"{act!r} NTK {what}")
    # the cross block of the stacked matrix is kernel(x, y)
    kxy = arch.kernel(x, y)
    for name in ("nngp", "ntk"):
        S = getattr(stacked, name).numpy()
        assert np.abs(S[:30, 30:] - getattr(kxy, name).numpy()).max() <= 1e-14 * np.abs(S).max()


@pytest.mark.parametrize("act", QUAD, ids=_ids(QUAD))
def test_quadrature_kernels_psd(act):
    x = _inputs()[:12]
    k = _arch(act).kernel(x)
    for name in ("nngp", "ntk"):
        K = getattr(k, name).numpy()
        ev = np.linalg.eigvalsh((K + K.T) / 2)
        assert ev.min() >= -1e-10 * ev.max()


@pytest.mark.parametrize("act", QUAD[:2], ids=_ids(QUAD[:2]))
def test_quadrature_kernels_symmetric_and_block_independent(act):
    x = _inputs()[:12]
    arch = _arch(act)
    k, kb = arch.kernel(x), arch.kernel(x, batch_size=7)
    for name in ("nngp", "ntk"):
        K, Kb = getattr(k, name).numpy(), getattr(kb, name).numpy()
        scale = np.abs(K).max()
        assert np.abs(K - K.T).max() <= 1e-13 * scale
        assert np.abs(K - Kb).max() <= 1e-13 * scale


@pytest.mark.parametrize("act", CLOSED, ids=_ids(CLOSED))
def test_x2_none_equals_x2_given_and_blocks(act):
    x = _inputs()
    arch = _arch(act)
    k_none = arch.kernel(x)
    k_given = arch.kernel(x, x)
    k_blocks = arch.kernel(x, batch_size=7)
    y = np.vstack([_inputs(15, seed=1), x[:2] * (1 + 1e-9)])  # near pairs across x, y
    k_xy = arch.kernel(x, y)
    k_xy_blocks = arch.kernel(x, y, batch_size=7)
    for name in ("nngp", "ntk"):
        K = getattr(k_none, name).numpy()
        scale = np.abs(K).max()
        assert np.abs(getattr(k_given, name).numpy() - K).max() <= 1e-14 * scale
        assert np.abs(getattr(k_blocks, name).numpy() - K).max() <= 1e-14 * scale
        Kxy = getattr(k_xy, name).numpy()
        assert Kxy.shape == (30, 17)
        assert np.abs(getattr(k_xy_blocks, name).numpy() - Kxy).max() <= 1e-14 * np.abs(Kxy).max()


def test_numpy_and_torch_inputs_agree_and_dtypes_follow():
    x = _inputs()
    y = _inputs(9, seed=2)
    arch = _arch(nk.ReLU())
    k_np = arch.kernel(x, y)
    k_t = arch.kernel(torch.from_numpy(x), torch.from_numpy(y))
    assert isinstance(k_np.nngp, torch.Tensor) and k_np.nngp.dtype == torch.float64
    assert torch.equal(k_np.nngp, k_t.nngp) and torch.equal(k_np.ntk, k_t.ntk)
    k32 = arch.kernel(x.astype(np.float32), y.astype(np.float32))
    assert k32.nngp.dtype == torch.float32 and k32.ntk.dtype == torch.float32
    k32t = arch.kernel(torch.tensor(x, dtype=torch.float32))
    assert k32t.nngp.dtype == torch.float32 and k32t.ntk.dtype == torch.float32
    # a float32 / float64 mix is promoted to float64
    assert arch.kernel(x.astype(np.float32), y).nngp.dtype == torch.float64
    # inputs with requires_grad are accepted (detached)
    xt = torch.tensor(x, requires_grad=True)
    assert torch.equal(arch.kernel(xt, y).nngp, k_np.nngp)


def test_get_nngp_only_and_kernels_accessors():
    x = _inputs(6)
    arch = _arch(nk.Erf())
    k = arch.kernel(x, get="nngp")
    assert k.ntk is None
    assert torch.equal(k.nngp, arch.kernel(x).nngp)
    assert torch.equal(k.get("nngp"), k.nngp)
    with pytest.raises(ValueError, match="not computed"):
        k.get("ntk")
    full = arch.kernel(x)
    assert set(full.numpy()) == {"nngp", "ntk"}
    with pytest.raises(ValueError, match="unknown kernel"):
        full.get("cov")


def test_no_trainable_layer_gives_no_ntk():
    x = _inputs(5)
    arch = nk.Sequential(nk.Linear(8, W_std=1.2, trainable=False), nk.ReLU(),
                         nk.Linear(1, trainable=False))
    k = arch.kernel(x)
    assert k.ntk is None or float(k.ntk.abs().max()) == 0.0


# --- bad input -----------------------------------------------------------------------------------
@pytest.fixture
def arch():
    return _arch(nk.ReLU())


def test_mismatched_feature_dimensions(arch):
    with pytest.raises(ValueError, match=r"mismatched feature shapes \(4,\) and \(5,\)"):
        arch.kernel(np.ones((3, 4)), np.ones((2, 5)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("which", ["x1", "x2"])
def test_nan_inf(arch, bad, which):
    x = np.ones((3, 4))
    y = np.ones((2, 4))
    (x if which == "x1" else y)[1, 2] = bad
    with pytest.raises(ValueError, match=f"{which}: contains 1 NaN or Inf"):
        arch.kernel(x, y)


def test_empty_arrays(arch):
    with pytest.raises(ValueError, match="x1: empty input"):
        arch.kernel(np.ones((0, 4)))
    with pytest.raises(ValueError, match="x2: empty input"):
        arch.kernel(np.ones((3, 4)), np.ones((0, 4)))
    with pytest.raises(ValueError, match="empty input"):
        arch.kernel(np.ones((3, 0)))


def test_integer_and_half_dtypes(arch):
    with pytest.raises(TypeError, match="integer/boolean dtype"):
        arch.kernel(np.ones((3, 4), dtype=np.int64))
    with pytest.raises(TypeError, match="integer/boolean dtype"):
        arch.kernel(torch.ones(3, 4, dtype=torch.uint8))
    with pytest.raises(TypeError, match="integer/boolean dtype"):
        arch.kernel(np.ones((3, 4)), np.ones((2, 4), dtype=bool))
    with pytest.raises(TypeError, match="float16"):
        arch.kernel(torch.ones(3, 4, dtype=torch.float16))


def test_wrong_container_and_rank(arch):
    with pytest.raises(TypeError, match="expected a torch.Tensor or numpy array, got list"):
        arch.kernel([[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"expected a batch of inputs of shape \(n, ...\)"):
        arch.kernel(np.ones(4))


def test_unknown_layer_in_sequential():
    with pytest.raises(TypeError, match="ReLU.* is not an ntkit layer"):
        nk.Sequential(nk.Linear(3), nn.ReLU())
    with pytest.raises(TypeError, match="'relu' is not an ntkit layer"):
        nk.Sequential(nk.Linear(3), "relu")
    with pytest.raises(ValueError, match="at least one layer"):
        nk.Sequential()


def test_bad_linear_arguments():
    with pytest.raises(ValueError, match="out_features must be a positive integer, got 0"):
        nk.Linear(0)
    with pytest.raises(ValueError, match="unknown parameterization 'mup'"):
        nk.Linear(3, parameterization="mup")


def test_unknown_get(arch):
    with pytest.raises(ValueError, match="get: unknown kernel 'cov'"):
        arch.kernel(np.ones((2, 3)), get="cov")


def test_image_input_to_dense_net(arch):
    with pytest.raises(ValueError, match="Flatten"):
        arch.kernel(np.ones((2, 3, 4, 4)))


def test_inf_and_minus_inf_together_and_overflowing_finite_values(arch):
    """The finiteness check starts from the sum: +Inf and -Inf together are still reported,
    and large finite values whose float32 sum overflows are accepted."""
    x = np.ones((3, 4))
    x[0, 0], x[2, 3] = np.inf, -np.inf
    with pytest.raises(ValueError, match="x1: contains 2 NaN or Inf"):
        arch.kernel(x)
    big = np.full((3, 4), 3e38, dtype=np.float32)
    from ntkit._inputs import as_input_pair
    t1, _ = as_input_pair(big, None)
    assert torch.isinf(t1.sum()) and t1.dtype == torch.float32
