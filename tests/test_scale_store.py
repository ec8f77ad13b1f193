"""ntkit.scale: kernels as tiles in a Zarr store computed by Dask tasks (issue 12).

References: the closed-form arc-cosine NNGP/NTK in float64 (tests/scale_reference.py), the
in-memory engine (``arch.kernel``), and stores computed independently (client-less run vs a
separate two-process LocalCluster) compared bit for bit.
"""
import os

import numpy as np
import pytest
import torch
import zarr

from ntkit.scale import compute_kernel, open_kernel
from ntkit.scale.store import NotAKernelStore, StoreMismatch

from scale_cases import B0, B1, W0, W1, client, inputs, mlp  # noqa: F401 (fixture)
from scale_reference import relu_mlp_kernels


def test_symmetric_store_equals_closed_form_and_in_memory(client, tmp_path):
    x = inputs(23, 0)  # 23 rows, tile 5: 5 x 5 blocks, ragged last one, 15 stored tiles
    k = compute_kernel(mlp(), x, store=tmp_path / "k.zarr", tile=5, client=client,
                       progress=False)
    assert k.complete and len(k.tiles) == 15 and k.run.computed == list(range(15))
    nngp, ntk = k.nngp.compute(), k.ntk.compute()
    ref_nngp, ref_ntk = relu_mlp_kernels(x, None, W0, B0, W1, B1)
    # the reference's arccos near cos = 1 (the diagonal) keeps ~8 digits
    np.testing.assert_allclose(nngp, ref_nngp, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(ntk, ref_ntk, rtol=1e-7, atol=1e-12)
    mem = mlp().kernel(x)
    np.testing.assert_allclose(nngp, mem.nngp.numpy(), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(ntk, mem.ntk.numpy(), rtol=1e-13, atol=1e-15)
    # off-diagonal blocks below the diagonal are exact mirrors of the stored ones
    for m in (nngp, ntk):
        assert np.array_equal(m[5:10, 0:5], m[0:5, 5:10].T)
        assert np.array_equal(m[20:, 5:20], m[5:20, 20:].T)
        np.testing.assert_allclose(m, m.T, rtol=1e-14)
    # lower-triangle chunks are never written: the stored array has NaN fill there
    raw = np.asarray(zarr.open_group(str(tmp_path / "k.zarr"), mode="r")["nngp"][...])
    assert np.isnan(raw[5:, :5]).all() and not np.isnan(raw[:5, :]).any()
    meta = k.meta
    assert meta["format"] == "ntkit-kernel-store" and meta["version"] == 1
    assert meta["dtype"] == "float64" and meta["tile"] == 5 and meta["ntkit_version"]
    assert len(meta["fingerprint"]) == 64 and "ReLU()" in meta["architecture"]
    assert repr(k.architecture()) == repr(mlp())
    # recomputed in another store: the same bits
    again = compute_kernel(mlp(), x, store=tmp_path / "again.zarr", tile=5, client=client,
                           progress=False)
    assert np.array_equal(again.nngp.compute(), nngp)
    assert np.array_equal(again.ntk.compute(), ntk)


def test_rectangular_float32_nngp_only(client, tmp_path):
    x1, x2 = inputs(17, 1), inputs(11, 2)
    k = compute_kernel(mlp(), x1, x2, store=tmp_path / "r.zarr", tile=6, client=client,
                       get="nngp", dtype="float32", progress=False)
    assert k.meta["kernels"] == ["nngp"] and len(k.tiles) == 3 * 2
    nngp = k.nngp.compute()
    assert nngp.dtype == np.float32 and nngp.shape == (17, 11)
    ref, _ = relu_mlp_kernels(x1.astype(np.float32), x2.astype(np.float32), W0, B0, W1, B1)
    np.testing.assert_allclose(nngp, ref, rtol=2e-5, atol=1e-6)
    with pytest.raises(KeyError, match="ntk"):
        k.ntk
    # the inputs live in the store once, in the kernel dtype
    group = zarr.open_group(str(tmp_path / "r.zarr"), mode="r")
    assert np.array_equal(group["x2"][...], x2.astype(np.float32))


def test_two_process_cluster_matches_clientless_run_bit_for_bit(client, tmp_path):
    x = inputs(19, 3)
    own = compute_kernel(mlp(), x, store=tmp_path / "own.zarr", tile=6, progress=False)
    assert set(client.scheduler_info()["workers"])  # the fixture's cluster is untouched
    shared = compute_kernel(mlp(), x, store=tmp_path / "shared.zarr", tile=6, client=client,
                            progress=False)
    pids = set(client.run(os.getpid).values())
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes, not this one
    for name in ("nngp", "ntk"):
        assert np.array_equal(own.kernel(name).compute(), shared.kernel(name).compute())


def test_corrupted_tiles_are_detected_and_recomputed(client, tmp_path):
    x = inputs(16, 4)
    path = tmp_path / "c.zarr"
    first = compute_kernel(mlp(), x, store=path, tile=5, client=client, progress=False)
    good = {n: first.kernel(n).compute() for n in ("nngp", "ntk")}
    group = zarr.open_group(str(path), mode="r+")
    plan = first.tiles
    i_values = next(i for i, t in enumerate(plan) if (t.r0, t.c0) == (0, 5))
    group["ntk"][0:5, 5:10] = good["ntk"][0:5, 5:10] * (1 + 1e-12)   # changed values
    i_bytes = next(i for i, t in enumerate(plan) if (t.r0, t.c0) == (5, 5))
    chunk = path / "nngp" / group["nngp"].metadata.encode_chunk_key((1, 1))
    chunk.write_bytes(b"garbage" * 10)                                 # an unreadable chunk
    assert open_kernel(path).verify() == sorted([i_values, i_bytes])
    assert open_kernel(path).done.all()  # verify() changes nothing
    again = compute_kernel(mlp(), x, store=path, tile=5, client=client, progress=False)
    assert again.verify() == []
    assert sorted(again.run.corrupt) == sorted([i_values, i_bytes])
    assert again.run.computed == sorted([i_values, i_bytes])
    assert len(again.run.reused) == len(plan) - 2
    for n in ("nngp", "ntk"):
        assert np.array_equal(again.kernel(n).compute(), good[n])


def test_incomplete_store_refuses_to_present_a_matrix(client, tmp_path):
    x = inputs(12, 5)
    path = tmp_path / "i.zarr"
    compute_kernel(mlp(), x, store=path, tile=5, client=client, progress=False)
    group = zarr.open_group(str(path), mode="r+")
    group["done"][2] = 0
    k = open_kernel(path)
    assert not k.complete and k.done.tolist() == [True, True, False, True, True, True]
    with pytest.raises(ValueError, match="5 of 6 tiles"):
        k.nngp
    done = compute_kernel(mlp(), x, store=path, client=client, progress=False)  # tile from store
    assert done.complete and done.run.computed == [2]


@pytest.mark.parametrize("change, match", [
    (dict(arch=mlp(w1=1.0)), "architecture"),
    (dict(x=inputs(16, 99)), "input fingerprint"),
    (dict(tile=4), "tile size"),
    (dict(dtype="float32"), "dtype"),
    (dict(get="nngp"), "kernels"),
    (dict(device="cuda"), "device"),
])
def test_mismatched_resume_is_refused(client, tmp_path, change, match):
    path = tmp_path / "m.zarr"
    compute_kernel(mlp(), inputs(16, 6), store=path, tile=5, client=client, progress=False)
    before = {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}
    args = dict(arch=mlp(), x=inputs(16, 6), tile=5, dtype=None, get=("nngp", "ntk"),
                device=None)
    args.update(change)
    with pytest.raises(StoreMismatch, match=match):
        compute_kernel(args["arch"], args["x"], store=path, tile=args["tile"],
                       dtype=args["dtype"], get=args["get"], device=args["device"],
                       client=client, progress=False)
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()} == before


def test_folders_that_are_not_kernel_stores_are_refused(tmp_path):
    other = tmp_path / "results"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(NotAKernelStore, match="not an ntkit kernel store"):
        compute_kernel(mlp(), inputs(8, 0), store=other, tile=4, progress=False)
    assert (other / "notes.txt").read_text() == "mine"
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", attributes={"a": 1})
    with pytest.raises(NotAKernelStore, match="Zarr group but not an ntkit kernel store"):
        open_kernel(tmp_path / "plain.zarr")
    (tmp_path / "file.zarr").write_bytes(b"x")
    with pytest.raises(NotAKernelStore, match="is a file"):
        open_kernel(tmp_path / "file.zarr")
    with pytest.raises(NotAKernelStore, match="no such kernel store"):
        open_kernel(tmp_path / "missing.zarr")


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="get"):
        compute_kernel(mlp(), inputs(8, 0), store=tmp_path / "a", get="cov", progress=False)
    with pytest.raises(ValueError, match="dtype"):
        compute_kernel(mlp(), inputs(8, 0), store=tmp_path / "a", dtype="int8", progress=False)
    with pytest.raises(ValueError, match="tile"):
        compute_kernel(mlp(), inputs(8, 0), store=tmp_path / "a", tile=0, progress=False)
    with pytest.raises(ValueError, match="device"):
        compute_kernel(mlp(), inputs(8, 0), store=tmp_path / "a", device="tpu", progress=False)
    with pytest.raises(TypeError, match="client"):
        compute_kernel(mlp(), inputs(8, 0), store=tmp_path / "a", tile=4, client=3,
                       progress=False)
    assert not (tmp_path / "a").exists()  # checked before anything is written


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_workers_match_the_closed_form(client, tmp_path):
    x = inputs(14, 9)
    k = compute_kernel(mlp(), x, store=tmp_path / "g.zarr", tile=5, client=client,
                       device="cuda", progress=False)
    assert k.meta["device"] == "cuda"
    ref_nngp, ref_ntk = relu_mlp_kernels(x, None, W0, B0, W1, B1)
    np.testing.assert_allclose(k.nngp.compute(), ref_nngp, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(k.ntk.compute(), ref_ntk, rtol=1e-7, atol=1e-12)


def test_uncompressed_chunk_with_one_flipped_byte_is_detected(client, tmp_path):
    """Kernel chunks are stored raw (no codec to fail on garbled bytes): a chunk of the right
    size with one byte changed still reads, and only its SHA-256 record catches it."""
    from ntkit.scale.store import reads_directly
    x = inputs(12, 5)
    path = tmp_path / "u.zarr"
    first = compute_kernel(mlp(), x, store=path, tile=4, client=client, get="ntk",
                           progress=False)
    good = first.ntk.compute()
    group = zarr.open_group(str(path), mode="r")
    assert reads_directly(group["ntk"]) and group["ntk"].compressors == ()
    chunk = path / "ntk" / group["ntk"].metadata.encode_chunk_key((0, 2))
    raw = bytearray(chunk.read_bytes())
    assert len(raw) == 4 * 4 * 8  # raw float64 values of one 4 x 4 tile
    raw[17] ^= 0x01
    chunk.write_bytes(bytes(raw))
    index = next(i for i, t in enumerate(first.tiles) if (t.r0, t.c0) == (0, 8))
    assert not np.array_equal(open_kernel(path).ntk.compute(), good)  # it reads, changed
    assert open_kernel(path).verify() == [index]
    again = compute_kernel(mlp(), x, store=path, tile=4, client=client, get="ntk",
                           progress=False)
    assert again.run.corrupt == [index] and again.run.computed == [index]
    assert np.array_equal(again.ntk.compute(), good)
