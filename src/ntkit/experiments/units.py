"""Units of work of a long experiment run, kept one file each so that the run resumes after a
crash and splits across processes.

An experiment whose full run takes long divides it into units (one width × one initialization,
say), each a pure function of the run's configuration and seed that returns a JSON-ready value.
``UnitStore(out_dir, experiment, config, seed)`` keeps the finished ones under
``out_dir/units/``:

    units/run.json          {"experiment", "config", "seed"}: what the units belong to
    units/<key>.json        the value of one finished unit (written to a temporary file,
                            flushed to disk, then renamed: a unit exists whole or not at all)

``store.compute(keys, fn, shard=Shard.parse("2/4"))`` computes the missing units this shard
owns (every 4th key, starting at the 2nd) and returns every unit finished so far. Several
processes (on one machine, or on machines sharing the folder) run the shards at once; the run
without a shard then computes whatever is still missing, which is nothing when every shard has
finished, and assembles the results: that run is the merge. From the command line:

    ntkit experiment ntk-drift --out runs/drift --shard 1/2 &
    ntkit experiment ntk-drift --out runs/drift --shard 2/2 &
    wait; ntkit experiment ntk-drift --out runs/drift          # merges, figure, results.json

A folder whose units belong to another configuration or seed is refused with an error naming
the differences, so that units of two different runs are never mixed.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``: the keys at positions index−1, index−1+count, …"""

    index: int
    count: int

    def __post_init__(self):
        if not (isinstance(self.count, int) and isinstance(self.index, int)
                and self.count >= 1 and 1 <= self.index <= self.count):
            raise ValueError(f"a shard is I/K with 1 ≤ I ≤ K, got {self.index}/{self.count}")

    @classmethod
    def parse(cls, text) -> "Shard":
        """``"2/4"`` → Shard(2, 4); a Shard is returned as is."""
        if isinstance(text, Shard):
            return text
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not m:
            raise ValueError(f"a shard is written I/K (e.g. 2/4), got {text!r}")
        return cls(int(m.group(1)), int(m.group(2)))

    def owns(self, position: int) -> bool:
        return position % self.count == self.index - 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _normalized(value):
    """JSON round trip, so that tuples and lists (and int/float keys) compare equal."""
    return json.loads(json.dumps(value, sort_keys=True))


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class UnitStore:
    """The finished units of one run (``experiment``, ``config``, ``seed``) under
    ``out_dir/units``; see the module docstring."""

    def __init__(self, out_dir, experiment: str, config: Dict, seed: int):
        self.folder = Path(out_dir) / "units"
        self.folder.mkdir(parents=True, exist_ok=True)
        identity = _normalized({"experiment": experiment, "config": config, "seed": seed})
        marker = self.folder / "run.json"
        if marker.exists():
            try:
                stored = json.loads(marker.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{marker} is not valid JSON ({err}); it is not a unit folder "
                                 f"of an ntkit experiment, or it was damaged") from None
            if stored != identity:
                diff = sorted(k for k in set(stored.get("config", {})) | set(config)
                              if stored.get("config", {}).get(k) != identity["config"].get(k))
                what = [f"{k}: stored {stored.get('config', {}).get(k)!r}, now "
                        f"{identity['config'].get(k)!r}" for k in diff]
                for k in ("experiment", "seed"):
                    if stored.get(k) != identity[k]:
                        what.append(f"{k}: stored {stored.get(k)!r}, now {identity[k]!r}")
                raise ValueError(f"{self.folder} holds units of another run ({'; '.join(what)}); "
                                 f"use another --out folder, or delete {self.folder} to start "
                                 f"over")
        else:
            _write_atomic(marker, json.dumps(identity, indent=1, sort_keys=True))

    def _path(self, key: str) -> Path:
        if not isinstance(key, str) or not _KEY.fullmatch(key) or key == "run":
            raise ValueError(f"unit key {key!r} must be a non-empty name of letters, digits and "
                             f"_ . = + - (not 'run')")
        return self.folder / f"{key}.json"

    def get(self, key: str):
        """The value of unit ``key``, or None when it has not finished."""
        path = self._path(key)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())["value"]
        except (json.JSONDecodeError, KeyError) as err:
            raise ValueError(f"unit file {path} is damaged ({err!s}); delete it and run again "
                             f"to recompute that unit") from None

    def put(self, key: str, value) -> None:
        """Keep ``value`` (JSON-ready) as the finished unit ``key``, durably and atomically."""
        text = json.dumps({"key": key, "value": value})
        _write_atomic(self._path(key), text)

    def missing(self, keys: Iterable[str]) -> List[str]:
        return [k for k in keys if not self._path(k).exists()]

    def compute(self, keys: Iterable[str], fn: Callable[[str], object],
                shard: Optional[Shard] = None,
                progress: Optional[Callable[[Iterable], Iterable]] = None) -> Dict[str, object]:
        """Compute ``fn(key)`` for the missing ``keys`` that ``shard`` owns (all of them when
        ``shard`` is None), keeping each as soon as it finishes; returns {key: value} of every
        finished unit among ``keys``. ``progress`` wraps the iterable of keys to compute."""
        keys = list(keys)
        if len(set(keys)) != len(keys):
            raise ValueError("unit keys must be distinct")
        todo = [k for i, k in enumerate(keys)
                if (shard is None or shard.owns(i)) and not self._path(k).exists()]
        for key in (progress(todo) if progress is not None else todo):
            self.put(key, fn(key))
        return {key: self.get(key) for key in keys if self._path(key).exists()}
