"""ntkit.scale: a kernel computation killed with SIGKILL (the client process, or a worker)
resumes to a store bit-identical to an uninterrupted run, computing only the missing tiles."""
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import ntkit
from ntkit.scale import compute_kernel, open_kernel

from scale_cases import client, inputs, mlp  # noqa: F401 (fixture)

psutil = pytest.importorskip("psutil")

# the client process: compute_kernel on its own LocalCluster, each tile followed by a pause
SCRIPT = """
import pickle, sys, time
from ntkit.scale import compute_kernel

def pause(index):
    time.sleep(0.4)

if __name__ == "__main__":
    with open(sys.argv[2], "rb") as f:
        arch, x = pickle.load(f)
    compute_kernel(arch, x, store=sys.argv[1], tile=5, progress=False, tile_hook=pause)
"""


def _kernel_chunk_mtimes(path: Path, k) -> dict:
    group = zarr.open_group(str(path), mode="r")
    out = {}
    for i, t in enumerate(k.tiles):
        for name in ("nngp", "ntk"):
            key = group[name].metadata.encode_chunk_key((t.r0 // 5, t.c0 // 5))
            f = path / name / key
            out[(i, name)] = f.stat().st_mtime_ns if f.exists() else None
    return out


def _done_count(path: Path) -> int:
    try:
        return int(open_kernel(path).done.sum())
    except Exception:  # not created yet, or being created
        return 0


def test_sigkill_of_the_client_then_resume_is_bit_identical(client, tmp_path):
    arch, x = mlp(), inputs(30, 7)  # tile 5: 6 x 6 blocks, 21 stored tiles
    ref = compute_kernel(arch, x, store=tmp_path / "ref.zarr", tile=5, client=client,
                         progress=False)
    case = tmp_path / "case.pkl"
    case.write_bytes(pickle.dumps((arch, x)))
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    store = tmp_path / "killed.zarr"
    src = str(Path(ntkit.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    log = (tmp_path / "stderr.txt").open("wb")
    proc = subprocess.Popen([sys.executable, str(script), str(store), str(case)], env=env,
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while _done_count(store) < 4:
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, "no tiles done after 120 s"
            time.sleep(0.1)
        children = psutil.Process(proc.pid).children(recursive=True)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        # the worker processes exit when their parent dies (distributed's parent-alive pipe)
        _, alive = psutil.wait_procs(children, timeout=20)
        for p in alive:
            p.kill()
        assert not alive, "worker processes outlived the killed client"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    before = open_kernel(store)
    done = before.done.copy()
    assert 4 <= done.sum() < len(before.tiles) and not before.complete
    mtimes = _kernel_chunk_mtimes(store, before)
    resumed = compute_kernel(arch, x, store=store, client=client, progress=False)
    assert resumed.complete
    assert resumed.run.computed == np.flatnonzero(~done).tolist()
    assert resumed.run.reused == np.flatnonzero(done).tolist() and resumed.run.corrupt == []
    after = _kernel_chunk_mtimes(store, resumed)
    for i in np.flatnonzero(done):  # tiles done before the kill were not written again
        for name in ("nngp", "ntk"):
            assert after[(i, name)] == mtimes[(i, name)]
    for name in ("nngp", "ntk"):
        assert np.array_equal(resumed.kernel(name).compute(), ref.kernel(name).compute())


def test_sigkill_of_a_worker_is_survived_bit_identically(client, tmp_path):
    arch, x = mlp(), inputs(18, 8)
    ref = compute_kernel(arch, x, store=tmp_path / "ref.zarr", tile=5, client=client,
                         progress=False)
    flag = tmp_path / "killed-once"

    def kill_once(index, flag=str(flag)):
        import os
        import signal
        if index == 2 and not os.path.exists(flag):
            open(flag, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

    k = compute_kernel(arch, x, store=tmp_path / "k.zarr", tile=5, client=client,
                       progress=False, tile_hook=kill_once)
    assert flag.exists() and k.complete
    for name in ("nngp", "ntk"):
        assert np.array_equal(k.kernel(name).compute(), ref.kernel(name).compute())
    client.wait_for_workers(2, timeout=60)


def test_a_store_killed_while_being_created_is_written_again(client, tmp_path):
    x1, x2 = inputs(8, 10), inputs(5, 11)
    path = tmp_path / "w.zarr"
    ref = compute_kernel(mlp(), x1, x2, store=path, tile=4, client=client, progress=False)
    want = ref.nngp.compute()
    group = zarr.open_group(str(path), mode="r+")
    meta = dict(group.attrs["ntkit"], state="writing")   # as if killed before "ready"
    group.attrs.update({"ntkit": meta})
    group["x2"][...] = 0.0                                # inputs half written
    assert not open_kernel(path).done.any()
    again = compute_kernel(mlp(), x1, x2, store=path, tile=4, client=client, progress=False)
    assert again.meta["state"] == "ready" and again.run.computed == [0, 1, 2, 3]
    assert np.array_equal(np.asarray(zarr.open_group(str(path), mode="r")["x2"][...]), x2)
    assert np.array_equal(again.nngp.compute(), want)
