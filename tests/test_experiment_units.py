"""Units of long experiment runs (ntkit.experiments.units): shards partition the work, a run
killed with SIGKILL resumes computing only the missing units, and units of another run are
refused."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ntkit.experiments.units import Shard, UnitStore

KEYS = [f"w{w}-s{s}" for w in (8, 16, 32) for s in range(3)]


def test_shards_partition_the_keys_and_the_unsharded_run_merges(tmp_path):
    calls = []

    def unit(key):
        calls.append(key)
        return {"key": key, "value": len(key)}

    cfg = {"widths": [8, 16, 32], "inits": 3}
    per_shard = []
    for i in range(1, 4):  # shard 4/4 never runs
        calls.clear()
        UnitStore(tmp_path, "x", cfg, 0).compute(KEYS, unit, shard=Shard(i, 4))
        per_shard.append(list(calls))
    assert per_shard == [[k for j, k in enumerate(KEYS) if j % 4 == i] for i in range(3)]
    # parts see the units of earlier shards too; the merge computes only shard 4's keys
    calls.clear()
    merged = UnitStore(tmp_path, "x", cfg, 0).compute(KEYS, unit)
    assert calls == [k for i, k in enumerate(KEYS) if i % 4 == 3]
    assert merged == {k: {"key": k, "value": len(k)} for k in KEYS}


def test_units_of_another_configuration_or_seed_are_refused(tmp_path):
    UnitStore(tmp_path, "x", {"widths": [8, 16]}, 0).put("a", 1)
    with pytest.raises(ValueError, match=r"widths: stored \[8, 16\], now \[8, 32\]"):
        UnitStore(tmp_path, "x", {"widths": [8, 32]}, 0)
    with pytest.raises(ValueError, match="seed: stored 0, now 1"):
        UnitStore(tmp_path, "x", {"widths": [8, 16]}, 1)
    # tuples and lists are the same configuration
    assert UnitStore(tmp_path, "x", {"widths": (8, 16)}, 0).get("a") == 1


def test_damaged_unit_and_bad_keys_are_named(tmp_path):
    store = UnitStore(tmp_path, "x", {}, 0)
    (store.folder / "a.json").write_text('{"key": "a", "val')
    with pytest.raises(ValueError, match="a.json is damaged"):
        store.get("a")
    for key in ("", "../up", "run", "a b"):
        with pytest.raises(ValueError, match="unit key"):
            store.put(key, 1)
    for text in ("0/2", "3/2", "2", "a/b"):
        with pytest.raises(ValueError, match="shard"):
            Shard.parse(text)


def test_run_killed_with_sigkill_resumes_with_only_the_missing_units(tmp_path):
    """A real subprocess computes slow units and is killed midway with SIGKILL; the units it
    finished are whole on disk, and the resumed run computes only the others."""
    log = tmp_path / "log.txt"
    script = textwrap.dedent(f"""
        import sys, time
        from ntkit.experiments.units import UnitStore
        keys = [f"u{{i}}" for i in range(12)]
        def unit(key):
            with open({str(log)!r}, "a") as f:
                f.write(key + "\\n")
            time.sleep(0.25)
            return {{"payload": [int(key[1:])] * 1000}}
        UnitStore({str(tmp_path / 'out')!r}, "slow", {{"n": 12}}, 0).compute(keys, unit)
        """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ})
    deadline = time.time() + 60
    while time.time() < deadline:
        started = log.read_text().split() if log.exists() else []
        if len(started) >= 4:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    store = UnitStore(tmp_path / "out", "slow", {"n": 12}, 0)
    finished = [f"u{i}" for i in range(12) if (store.folder / f"u{i}.json").exists()]
    assert 1 <= len(finished) < 12
    assert not list(store.folder.glob(".*.tmp"))  # no half-written unit left visible
    recomputed = []

    def unit(key):
        recomputed.append(key)
        return {"payload": [int(key[1:])] * 1000}

    done = store.compute([f"u{i}" for i in range(12)], unit)
    assert sorted(recomputed) == sorted(set(f"u{i}" for i in range(12)) - set(finished))
    assert done == {f"u{i}": {"payload": [i] * 1000} for i in range(12)}
    assert json.loads((store.folder / "run.json").read_text())["config"] == {"n": 12}
