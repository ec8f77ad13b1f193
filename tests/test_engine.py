"""The kernel engine (ntkit.engine) and the architecture tile function (ntkit.layers.kernel_tile).

References: a brute-force enumeration of the matrix's entries (tile plans), the one-tile
computation (other tilings agree to rounding), the same tile computed again and with other
thread counts (bit for bit), a layer that exists only in this file (the engine needs no change
for it), and mpmath (near-diagonal precision, tests/conv_bruteforce.py at 40 digits).
"""
import mpmath
import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.engine import KernelOptions, Tile, compute_tiles, plan_tiles
from ntkit.engine.run import compute_tile
from ntkit.layers import Layer
from ntkit.layers.kernel_tile import kernel_tile, regime

import conv_bruteforce as bf


@pytest.mark.parametrize("n1,n2,rows,cols", [(7, None, 3, None), (7, 5, 2, 3), (1, None, 4, None),
                                             (8, 8, 8, 1)])
def test_plan_covers_each_entry_once(n1, n2, rows, cols):
    tiles = plan_tiles(n1, n2, rows, cols)
    count = np.zeros((n1, n1 if n2 is None else n2), dtype=int)
    for t in tiles:
        assert t.r1 - t.r0 <= rows and t.c1 - t.c0 <= (rows if n2 is None else cols)
        count[t.r0:t.r1, t.c0:t.c1] += 1
        if n2 is None and not t.diagonal:
            count[t.c0:t.c1, t.r0:t.r1] += 1
        assert t.diagonal == (n2 is None and t.r0 == t.c0)
    assert (count == 1).all()


def test_plan_rejects_bad_sizes():
    with pytest.raises(ValueError, match="tile rows"):
        plan_tiles(4, None, 0)
    with pytest.raises(ValueError, match="n1"):
        plan_tiles(0, 3, 2)


def test_options_validate_and_read_environment(monkeypatch):
    with pytest.raises(ValueError, match="memory_budget"):
        KernelOptions(memory_budget=0)
    with pytest.raises(ValueError, match="compile"):
        KernelOptions(compile="sometimes")
    monkeypatch.setenv("NTKIT_NATIVE", "0")
    monkeypatch.setenv("NTKIT_MEMORY_BUDGET", "1e6")
    opts = KernelOptions.from_env(compile="off")
    assert (opts.native, opts.memory_budget, opts.compile) == (False, 1_000_000, "off")


def test_engine_assembles_a_generic_tile_function():
    """compute_tiles with a tile function of plain products (not a kernel at all): the
    assembled matrix equals x1 x2ᵀ computed at once, mirrored tiles included."""
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal((9, 4)))
    y = torch.tensor(rng.standard_normal((5, 4)))
    seen = []

    def tile_fn(a, b, options):
        return {"gram": a @ (a if b is None else b).T}

    sym = compute_tiles(tile_fn, x, None, 4, progress=lambda d, t: seen.append((d, t)))
    torch.testing.assert_close(sym["gram"], x @ x.T, rtol=0, atol=1e-14)
    assert seen[-1] == (6, 6) and [d for d, _ in seen] == list(range(1, 7))
    cross = compute_tiles(tile_fn, x, y, 2, 3)
    torch.testing.assert_close(cross["gram"], x @ y.T, rtol=0, atol=1e-14)


# -- architectures ------------------------------------------------------------------------------
def _mlp():
    return nk.Sequential(nk.Linear(8, W_std=1.5, b_std=0.1), nk.ReLU(),
                         nk.Linear(8, W_std=1.5, b_std=0.1), nk.Erf(),
                         nk.Linear(1, W_std=1.5, b_std=0.1))


def _gap_cnn():
    return nk.Sequential(nk.Conv2d(4, 3, W_std=1.4, b_std=0.1), nk.ReLU(),
                         nk.Conv2d(4, 3, W_std=1.4, b_std=0.1), nk.ReLU(),
                         nk.GlobalAvgPool2d(), nk.Linear(1, W_std=1.2, b_std=0.1))


def _pool_cnn():
    return nk.Sequential(nk.Conv2d(4, 3, W_std=1.4, b_std=0.1), nk.ReLU(), nk.AvgPool2d(2),
                         nk.Conv2d(4, 3, stride=2, padding="valid", W_std=1.3), nk.ReLU(),
                         nk.Flatten(), nk.Linear(1, W_std=1.1, b_std=0.2))


def _vanilla_cnn():
    return nk.Sequential(nk.Conv2d(4, 3, W_std=1.4, b_std=0.1), nk.ReLU(),
                         nk.Conv2d(4, 3, stride=2, padding="circular", W_std=1.3), nk.ReLU(),
                         nk.Flatten(), nk.Linear(1, W_std=1.1, b_std=0.2))


ARCHS = {"mlp": (_mlp, (6,)), "gap": (_gap_cnn, (2, 5, 5)), "pool": (_pool_cnn, (2, 6, 6)),
         "vanilla": (_vanilla_cnn, (2, 6, 6))}


def _inputs(name, n, seed=0):
    shape = ARCHS[name][1]
    return torch.tensor(np.random.default_rng(seed).standard_normal((n,) + shape))


def test_regimes_follow_layer_declarations():
    assert regime(_mlp(), (6,)) == "flat"
    assert regime(_vanilla_cnn(), (2, 6, 6)) == "same_position"
    assert regime(_gap_cnn(), (2, 5, 5)) == "pixel_pairs"
    assert regime(_pool_cnn(), (2, 6, 6)) == "pixel_pairs"


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_one_tile_equals_many_tiles(name):
    arch = ARCHS[name][0]()
    x, y = _inputs(name, 7), _inputs(name, 4, seed=1)
    for x2 in (None, y):
        whole = arch.kernel(x, x2, batch_size=64)
        tiled = arch.kernel(x, x2, batch_size=2)
        torch.testing.assert_close(tiled.nngp, whole.nngp, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(tiled.ntk, whole.ntk, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_a_tile_recomputed_has_the_same_bits(name):
    """A tile computed on its own (as a resumed computation or a Dask worker would) has the
    bits of the same tile inside a whole computation."""
    arch = ARCHS[name][0]()
    x = _inputs(name, 7)
    opts = KernelOptions(tile_size=3)
    k = arch.kernel(x, options=opts)
    tile_fn = lambda a, b, o: kernel_tile(arch, a, b, o)
    for tile in (Tile(3, 6, 3, 6, diagonal=True), Tile(0, 3, 6, 7)):
        alone = compute_tile(tile_fn, x, None, tile, opts)
        assert torch.equal(alone["nngp"], k.nngp[tile.r0:tile.r1, tile.c0:tile.c1])
        assert torch.equal(alone["ntk"], k.ntk[tile.r0:tile.r1, tile.c0:tile.c1])


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_tile_bits_do_not_depend_on_threads(name):
    arch = ARCHS[name][0]()
    x = _inputs(name, 6, seed=3).float()
    results = [arch.kernel(x, options=KernelOptions(threads=t)) for t in (1, 2, 3)]
    for r in results[1:]:
        assert torch.equal(r.nngp, results[0].nngp)
        assert torch.equal(r.ntk, results[0].ntk)


# -- a layer the engine has never heard of --------------------------------------------------------
class ScaledIdentity(Layer):
    """z -> s·z: every second moment times s²."""

    def __init__(self, s):
        self.s = float(s)

    def apply(self, state):
        s2 = self.s ** 2
        scale = lambda t: None if t is None else t * s2
        return state.replace(cov=scale(state.cov), ntk=scale(state.ntk), dist=scale(state.dist),
                             var1=scale(state.var1),
                             var2=scale(state.var1) if state.same_inputs else scale(state.var2))


def test_a_layer_from_a_test_file_in_flat_and_image_networks():
    """Scaling the input by s is the same as a first ScaledIdentity(s) (any network); after a
    ReLU, ScaledIdentity(s) equals the previous bias-free layer's W_std times s."""
    s = 1.7
    rng = np.random.default_rng(5)
    flat = torch.tensor(rng.standard_normal((5, 6)))
    imgs = torch.tensor(rng.standard_normal((4, 2, 6, 6)))
    for base, x in ((_mlp(), flat), (_pool_cnn(), imgs), (_gap_cnn(), imgs[:, :, :5, :5]),
                    (_vanilla_cnn(), imgs)):
        scaled = nk.Sequential(ScaledIdentity(s), *base.layers)
        got, ref = scaled.kernel(x), base.kernel(x * s)
        torch.testing.assert_close(got.nngp, ref.nngp, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(got.ntk, ref.ntk, rtol=1e-12, atol=1e-13)
    mid = nk.Sequential(nk.Conv2d(4, 3, W_std=1.4, b_std=None), nk.ReLU(), ScaledIdentity(s),
                        nk.AvgPool2d(2), nk.Flatten(), nk.Linear(1, W_std=1.1, b_std=0.2))
    ref = nk.Sequential(nk.Conv2d(4, 3, W_std=1.4 * s, b_std=None), nk.ReLU(),
                        nk.AvgPool2d(2), nk.Flatten(), nk.Linear(1, W_std=1.1, b_std=0.2))
    for x2 in (None, imgs[:2] + 0.5):
        got, want = mid.kernel(imgs, x2), ref.kernel(imgs, x2)
        torch.testing.assert_close(got.nngp, want.nngp, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(got.ntk, want.ntk, rtol=1e-12, atol=1e-13)


def test_pooling_is_whole_on_its_own():
    """arch.apply on a state of inputs against themselves gives variances after pooling: the
    diagonal of the pooled covariance (no driver fills them in)."""
    from ntkit.layers.image_state import pixel_pair_plan, pixel_pair_state
    x = _inputs("pool", 2)
    left, right, s1, s2, *_ = pixel_pair_plan(2, None, x.device)
    state = pixel_pair_state(x, left, right, s1, s2, lazy=False)
    out = nk.Sequential(*_pool_cnn().layers[:3]).apply(state)  # Conv, ReLU, AvgPool2d
    own = out.cov[:2]  # pairs (x_i, x_i)
    diag = own.reshape(2, 9, 9).diagonal(dim1=1, dim2=2).reshape(2, 3, 3)
    torch.testing.assert_close(out.var1[:2], diag, rtol=1e-14, atol=0)
    torch.testing.assert_close(out.var2[2], diag[1], rtol=1e-14, atol=0)


# -- near-diagonal precision ------------------------------------------------------------------------
PRECISION_SPECS = {
    "stride2-gap": (
        lambda: nk.Sequential(nk.Conv2d(3, 3, stride=2, W_std=1.4, b_std=0.1), nk.ReLU(),
                              nk.Conv2d(3, 3, W_std=1.3, b_std=0.1), nk.ReLU(),
                              nk.GlobalAvgPool2d(), nk.Linear(1, W_std=1.2)),
        [("conv", 3, 3, (2, 2), "same", 1.4, 0.1, True), ("relu", 0.0, 1.0),
         ("conv", 3, 3, (1, 1), "same", 1.3, 0.1, True), ("relu", 0.0, 1.0), ("gap",),
         ("dense", 1.2, 0.0, True)]),
    "valid-pool": (
        lambda: nk.Sequential(nk.Conv2d(3, 2, padding="valid", W_std=1.4, b_std=0.1), nk.ReLU(),
                              nk.AvgPool2d(2, 1), nk.Conv2d(3, 2, padding="circular", W_std=1.2),
                              nk.ReLU(), nk.Flatten(), nk.Linear(1, W_std=1.1)),
        [("conv", 2, 2, (1, 1), "valid", 1.4, 0.1, True), ("relu", 0.0, 1.0), ("pool", 2, 1, "valid"),
         ("conv", 2, 2, (1, 1), "circular", 1.2, 0.0, True), ("relu", 0.0, 1.0), ("flatten",),
         ("dense", 1.1, 0.0, True)]),
    "pool-leaky-gap-mlp": (
        lambda: nk.Sequential(nk.Conv2d(3, 3, W_std=1.4, b_std=0.1), nk.ReLU(),
                              nk.AvgPool2d(2), nk.Conv2d(3, 3, W_std=1.3, b_std=0.2),
                              nk.LeakyReLU(0.2), nk.GlobalAvgPool2d(),
                              nk.Linear(4, W_std=1.2, b_std=0.1), nk.ReLU(),
                              nk.Linear(1, W_std=1.1)),
        [("conv", 3, 3, (1, 1), "same", 1.4, 0.1, True), ("relu", 0.0, 1.0),
         ("pool", 2, 2, "valid"), ("conv", 3, 3, (1, 1), "same", 1.3, 0.2, True),
         ("relu", 0.2, 1.0), ("gap",), ("dense", 1.2, 0.1, True), ("relu_flat", 0.0, 1.0),
         ("dense", 1.1, 0.0, True)]),
    "same-pool-twice": (
        lambda: nk.Sequential(nk.Conv2d(3, 3, W_std=1.4), nk.ReLU(),
                              nk.AvgPool2d(3, 1, padding="same"), nk.Conv2d(2, 2, W_std=1.2),
                              nk.ReLU(), nk.AvgPool2d(2, 1), nk.Conv2d(2, 2, W_std=1.2),
                              nk.ReLU(), nk.Flatten(), nk.Linear(1, W_std=1.1)),
        [("conv", 3, 3, (1, 1), "same", 1.4, 0.0, True), ("relu", 0.0, 1.0),
         ("pool", 3, 1, "same"), ("conv", 2, 2, (1, 1), "same", 1.2, 0.0, True),
         ("relu", 0.0, 1.0), ("pool", 2, 1, "valid"),
         ("conv", 2, 2, (1, 1), "same", 1.2, 0.0, True), ("relu", 0.0, 1.0), ("flatten",),
         ("dense", 1.1, 0.0, True)]),
    "same-flatten": (
        lambda: nk.Sequential(nk.Conv2d(3, 3, W_std=1.4, b_std=0.1), nk.ReLU(),
                              nk.Conv2d(3, 3, stride=2, W_std=1.3), nk.ReLU(),
                              nk.Flatten(), nk.Linear(1, W_std=1.1)),
        [("conv", 3, 3, (1, 1), "same", 1.4, 0.1, True), ("relu", 0.0, 1.0),
         ("conv", 3, 3, (2, 2), "same", 1.3, 0.0, True), ("relu", 0.0, 1.0), ("flatten",),
         ("dense", 1.1, 0.0, True)]),
}


def _mp_pair(x, y, spec):
    with mpmath.workdps(40):
        return bf.kernel_pair(x, y, spec, mp=mpmath.mp)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PRECISION_SPECS))
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_nearly_equal_images_and_diagonal_against_mpmath(name, dtype, tol):
    make, spec = PRECISION_SPECS[name]
    arch = make()
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 4, 4))
    y = x * (1 + 1e-7) + 1e-8 * rng.standard_normal(x.shape)
    xs = torch.tensor(np.stack([x, y])).to(dtype)
    k = arch.kernel(xs)
    # the mpmath reference sees the inputs as rounded to dtype
    xr, yr = (t.double().numpy() for t in xs)
    for (i, j) in ((0, 1), (0, 0), (1, 1)):
        a, b = (xr, yr)[i], (xr, yr)[j]
        ref_nngp, ref_ntk = _mp_pair(a, b, spec)
        t = tol
        assert abs(float(k.nngp[i, j]) - float(ref_nngp)) <= t * abs(float(ref_nngp)), (i, j)
        assert abs(float(k.ntk[i, j]) - float(ref_ntk)) <= t * abs(float(ref_ntk)), (i, j)


def test_matrices_that_would_not_fit_are_refused_before_allocation(monkeypatch):
    """The result's size is checked against the memory available (here pretended to be 1 MB)
    before it is allocated; the error names the sizes and ntkit.scale."""
    from ntkit.engine import memory
    monkeypatch.setattr(memory, "available_bytes", lambda: 1_000_000)
    x = torch.tensor(np.random.default_rng(0).standard_normal((300, 4)))
    with pytest.raises(MemoryError, match=r"nngp 300 x 300.*need 1\.4 MB.*ntkit\.scale\.compute_kernel"):
        _mlp().kernel(x)
    monkeypatch.setattr(memory, "available_bytes", lambda: 10_000_000)
    assert _mlp().kernel(x).ntk.shape == (300, 300)  # 1.44 MB fits
