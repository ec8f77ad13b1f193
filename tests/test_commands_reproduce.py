"""``ntkit reproduce``: experiments of a monkeypatched registry (tiny fakes written here) run
into OUT/NAME with a reproduce record (command, wall time, date, quick), a failure is reported
after the others ran with exit status 1, shards reach only the experiments that declare them;
and the global ``--device auto`` resolves to CUDA exactly when torch sees a GPU."""
import json
import sys
import time
import types

import pytest

from ntkit import experiments
from ntkit.experiments.common import write_results


def _fake_module(name, fail=False, sharded=False, seen=None):
    mod = types.ModuleType(f"ntkit.experiments._fake_{name}")
    FULL, QUICK = {"size": 100}, {"size": 3}

    def body(out_dir, quick, seed, device, size, shard=None):
        if seen is not None:
            seen.append({"quick": quick, "device": device, "size": size, "shard": shard})
        if fail:
            raise RuntimeError("boom")
        if shard is not None:
            return {"partial": True, "units_done": 1, "units_total": 2}
        time.sleep(0.05)
        return write_results(out_dir, {"experiment": name, "quick": quick, "size": size,
                                       "config": {"dtype": "float64"}})

    if sharded:
        def run(out_dir, quick=False, seed=0, device="auto", progress=None, shard=None, **opts):
            return body(out_dir, quick, seed, device, {**(QUICK if quick else FULL), **opts}["size"],
                        shard)
    else:
        def run(out_dir, quick=False, seed=0, device="auto", progress=None, **opts):
            return body(out_dir, quick, seed, device, {**(QUICK if quick else FULL), **opts}["size"])
    mod.run, mod.FULL, mod.QUICK, mod.__doc__ = run, FULL, QUICK, f"fake {name}"
    return mod


@pytest.fixture
def fakes(monkeypatch):
    """Three fake experiments: 'fa' (fine), 'fb' (fails), 'fc' (sharded); what each saw."""
    seen = {"fa": [], "fb": [], "fc": []}
    for name, kw in (("fa", {}), ("fb", {"fail": True}), ("fc", {"sharded": True})):
        mod = _fake_module(name, seen=seen[name], **kw)
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
        monkeypatch.setitem(experiments.REGISTRY, name, (mod.__name__.rsplit(".", 1)[1], name))
    return seen


def _main(capsys, *args):
    from ntkit.cli import main
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_reproduce_runs_each_full_configuration_and_reports_a_failure(tmp_path, capsys, fakes):
    code, out, _ = _main(capsys, "reproduce", "fa", "fb", "fc", "--out", tmp_path, "-q")
    assert code == 1
    lines = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    assert set(lines) == {"fa", "fb", "fc"}
    assert " ok " in lines["fa"] and " failed " in lines["fb"] and "boom" in lines["fb"]
    assert "FAILED: fb" in out.splitlines()[-1]
    assert [s["size"] for s in fakes["fa"]] == [100] and fakes["fa"][0]["quick"] is False
    saved = json.loads((tmp_path / "fa" / "results.json").read_text())
    rec = saved["reproduce"]
    assert rec["command"].startswith("ntkit reproduce fa fb fc") and rec["quick"] is False
    assert rec["wall_seconds"] >= 0.05 and saved["seconds"] == rec["wall_seconds"]
    assert "machine" in saved and saved["size"] == 100
    assert not (tmp_path / "fb" / "results.json").exists()


def test_reproduce_quick_options_and_unknown_names(tmp_path, capsys, fakes):
    code, out, _ = _main(capsys, "reproduce", "fa", "--size", "7", "--out", tmp_path, "--quick",
                         "-q")
    assert code == 0 and fakes["fa"][-1]["size"] == 7 and fakes["fa"][-1]["quick"] is True
    rec = json.loads((tmp_path / "fa" / "results.json").read_text())["reproduce"]
    assert rec["quick"] is True and rec["options"] == {"size": 7}
    code, _, err = _main(capsys, "reproduce", "fa", "fc", "--size", "7", "--out", tmp_path)
    assert code == 2 and "exactly one" in err
    code, _, err = _main(capsys, "reproduce", "nope", "--out", tmp_path)
    assert code == 2 and "unknown experiment(s) nope" in err


def test_shards_reach_only_experiments_that_declare_them(tmp_path, capsys, fakes):
    code, out, _ = _main(capsys, "reproduce", "fa", "fc", "--shard", "2/2", "--out", tmp_path,
                         "-q")
    assert code == 0
    assert fakes["fa"] == [] and fakes["fc"][-1]["shard"] == "2/2"
    assert "not in this shard" in out and "partial" in out
    code, out, _ = _main(capsys, "reproduce", "fa", "fc", "--shard", "1/2", "--out", tmp_path,
                         "-q")
    assert len(fakes["fa"]) == 1 and fakes["fa"][0]["shard"] is None
    code, _, err = _main(capsys, "reproduce", "fa", "--shard", "3/2", "--out", tmp_path)
    assert code == 2 and "shard" in err


def test_device_auto_resolves_to_cuda_only_when_present(tmp_path, capsys, fakes, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _main(capsys, "experiment", "fa", "--out", tmp_path / "a", "-q")
    assert fakes["fa"][-1]["device"] == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _main(capsys, "experiment", "fa", "--out", tmp_path / "b", "-q")
    assert fakes["fa"][-1]["device"] == "cuda"
    _main(capsys, "experiment", "fa", "--device", "cpu", "--out", tmp_path / "c", "-q")
    assert fakes["fa"][-1]["device"] == "cpu"


def test_reproduce_a_real_quick_experiment(tmp_path, capsys):
    """The registry's cifar-free, data-free unit-circle experiment in its quick form."""
    code, out, _ = _main(capsys, "reproduce", "unit-circle", "--quick", "--out", tmp_path, "-q")
    assert code == 0, out
    saved = json.loads((tmp_path / "unit-circle" / "results.json").read_text())
    assert saved["reproduce"]["quick"] is True and "machine" in saved
    assert list((tmp_path / "unit-circle").glob("*.png"))
