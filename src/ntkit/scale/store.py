"""The on-disk layout of a kernel store: one Zarr (v3) group on a file system the client and
every worker can reach (local disk for a LocalCluster, a shared file system on a cluster).

    <store>/zarr.json     attributes: "ntkit" = {format: "ntkit-kernel-store", version}, the
                          architecture (repr, and a pickled copy in base64: opening a store
                          unpickles it, so open only stores you trust), dtype, ntkit version,
                          SHA-256 fingerprint of the inputs, tile size, shapes, kernel names,
                          the KernelOptions that decide the bits, and "state"
    <store>/x1, x2        the inputs (n, ...) in the kernel dtype, chunked by tile rows; x2 is
                          absent for a kernel of x1 against itself
    <store>/nngp, ntk     (n1, n2) chunked (tile, tile), uncompressed (stores written before
                          were zstd-compressed; both are read): chunk (i, j) is tile (i, j) of
                          the engine's plan. For x1 against itself only chunks i <= j are written;
                          (j, i) is the transpose of (i, j) (``ntkit.scale.view`` mirrors it)
    <store>/done          (n_tiles, n_kernels, 32) uint8, one chunk per tile: the SHA-256 of
                          each kernel's tile bytes, written after the tile's chunks were written
                          and fsync'ed; all zeros = not done

A tile therefore counts as done only once its data is durable, and its digest lets a resumed
computation detect (and recompute) a chunk whose bytes changed since.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
import zarr

from ..engine import KernelOptions, Tile, plan_tiles

if int(zarr.__version__.split(".")[0]) < 3:
    raise ImportError(f"ntkit.scale needs zarr >= 3 (its v3 format and API); found zarr "
                      f"{zarr.__version__}: pip install 'zarr>=3'")

FORMAT = "ntkit-kernel-store"
VERSION = 1
KERNEL_NAMES = ("nngp", "ntk")
DIGEST_BYTES = 32
# KernelOptions fields that may change a tile's bits (threads and tile_size do not / are kept apart)
_BIT_OPTIONS = ("memory_budget", "native", "compile", "fused")


class NotAKernelStore(ValueError):
    """The path holds something that is not an ntkit kernel store."""


class StoreMismatch(ValueError):
    """An existing kernel store was made for another architecture, inputs, dtype or tiling."""


@dataclass(frozen=True)
class StoreSpec:
    """What a store holds, as recorded in its attributes (JSON-able)."""

    n1: int
    n2: Optional[int]          # None: x1 against itself (upper-triangle tiles, mirrored)
    tile: int
    dtype: str                 # "float32" or "float64"
    kernels: Tuple[str, ...]
    architecture: str          # repr of the architecture
    fingerprint: str           # SHA-256 of the inputs (see ``fingerprint``)
    options: dict              # the KernelOptions fields in _BIT_OPTIONS
    device: str = "cpu"        # "cpu" or "cuda": where every tile is computed (bits differ)

    @property
    def symmetric(self) -> bool:
        return self.n2 is None

    @property
    def shape(self) -> Tuple[int, int]:
        return (self.n1, self.n1 if self.n2 is None else self.n2)

    def plan(self) -> List[Tile]:
        return plan_tiles(self.n1, self.n2, self.tile)

    def to_attrs(self) -> dict:
        d = dataclasses.asdict(self)
        d["kernels"] = list(self.kernels)
        return d

    @classmethod
    def from_attrs(cls, d: dict) -> "StoreSpec":
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: d[k] for k in fields if k in d}
        values["kernels"] = tuple(values["kernels"])
        return cls(**values)


def bit_options(options: KernelOptions) -> dict:
    return {k: getattr(options, k) for k in _BIT_OPTIONS}


def fingerprint(x1: np.ndarray, x2: Optional[np.ndarray]) -> str:
    """SHA-256 over dtype, shape and bytes of x1 and of x2 (or a marker for x2=None)."""
    h = hashlib.sha256(b"ntkit-inputs-v1")
    for name, x in (("x1", x1), ("x2", x2)):
        if x is None:
            h.update(f"|{name}:none".encode())
            continue
        x = np.ascontiguousarray(x)
        h.update(f"|{name}:{x.dtype.str}:{x.shape}|".encode())
        h.update(memoryview(x).cast("B"))
    return h.hexdigest()


def digest(block: np.ndarray) -> np.ndarray:
    """SHA-256 of a tile's bytes (C order) as 32 uint8."""
    raw = hashlib.sha256(memoryview(np.ascontiguousarray(block)).cast("B")).digest()
    return np.frombuffer(raw, dtype=np.uint8)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_chunk(root: Path, name: str, array: zarr.Array, coords: Tuple[int, ...]) -> None:
    """Flush one chunk file of ``array`` (stored under ``root/name``) and its directory to disk
    (zarr's local store writes atomically by rename but does not fsync)."""
    chunk = root / name / array.metadata.encode_chunk_key(coords)
    if chunk.exists():
        _fsync_path(chunk)
        _fsync_path(chunk.parent)


def as_kernel_dtype(dtype) -> torch.dtype:
    """float32 or float64 from a torch/numpy dtype or its name."""
    table = {"float32": torch.float32, "float64": torch.float64}
    if isinstance(dtype, torch.dtype):
        name = str(dtype).replace("torch.", "")
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = str(dtype)
    if name not in table:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return table[name]


def check_device(device: str) -> str:
    """"cpu" or "cuda" (a worker's current CUDA device)."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return device


def load_arch(attrs: dict):
    """The architecture pickled into a store's attributes."""
    return pickle.loads(base64.b64decode(attrs["ntkit"]["architecture_pickle"]))


def read_attrs(path: Path) -> dict:
    """A store's attributes; NotAKernelStore if ``path`` is not one."""
    if not path.exists():
        raise NotAKernelStore(f"{path}: no such kernel store")
    if not path.is_dir():
        raise NotAKernelStore(f"{path} is a file, not an ntkit kernel store (a Zarr folder)")
    if not (path / "zarr.json").exists():
        raise NotAKernelStore(f"{path} is not an ntkit kernel store (no zarr.json in it); "
                              f"give compute_kernel a new or empty folder")
    try:
        attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    except Exception as err:  # not a readable Zarr v3 group
        raise NotAKernelStore(f"{path} is not an ntkit kernel store ({err})") from None
    meta = attrs.get("ntkit")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise NotAKernelStore(f"{path} is a Zarr group but not an ntkit kernel store "
                              f"(no '{FORMAT}' format marker in its attributes)")
    if int(meta.get("version", 0)) > VERSION:
        raise NotAKernelStore(f"{path}: kernel store format version {meta.get('version')} is "
                              f"newer than this ntkit reads ({VERSION}); upgrade ntkit")
    return attrs


def is_new_location(path: Path) -> bool:
    """True when ``path`` does not exist or is an empty folder."""
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def check_compatible(path: Path, stored: StoreSpec, wanted: StoreSpec) -> None:
    """StoreMismatch naming every difference between a store and the requested computation."""
    labels = {"architecture": "architecture", "fingerprint": "input fingerprint (other x1/x2)",
              "dtype": "dtype", "tile": "tile size", "n1": "number of x1 rows",
              "n2": "number of x2 rows (None: x1 against itself)", "kernels": "kernels (get=)",
              "options": "kernel options that change the bits", "device": "device"}
    diffs = [f"  {label}: store has {getattr(stored, k)!r}, asked for {getattr(wanted, k)!r}"
             for k, label in labels.items() if getattr(stored, k) != getattr(wanted, k)]
    if diffs:
        raise StoreMismatch(f"{path} holds another kernel computation; refusing to resume it:\n"
                            + "\n".join(diffs) + "\nuse a new store path, or the same arguments")


def write_new(path: Path, spec: StoreSpec, arch, x1: np.ndarray, x2: Optional[np.ndarray],
              version: str) -> zarr.Group:
    """Create the group, its arrays and inputs; state 'ready' is set last."""
    meta = {"format": FORMAT, "version": VERSION, "ntkit_version": version, "state": "writing",
            "architecture_pickle": base64.b64encode(pickle.dumps(arch)).decode("ascii"),
            **spec.to_attrs()}
    group = zarr.open_group(str(path), mode="w", attributes={"ntkit": meta})
    t = spec.tile
    for name, x in (("x1", x1), ("x2", x2)):
        if x is None:
            continue
        arr = group.create_array(name, shape=x.shape, dtype=x.dtype,
                                 chunks=(min(t, x.shape[0]),) + x.shape[1:])
        arr[...] = x
    n1, n2 = spec.shape
    for name in spec.kernels:  # uncompressed: kernel values hardly compress (zstd: ~10 %)
        group.create_array(name, shape=(n1, n2), chunks=(t, t), dtype=spec.dtype,
                           fill_value=float("nan"), compressors=None,
                           config={"write_empty_chunks": True})
    group.create_array("done", shape=(len(spec.plan()), len(spec.kernels), DIGEST_BYTES),
                       chunks=(1, len(spec.kernels), DIGEST_BYTES), dtype="uint8", fill_value=0,
                       config={"write_empty_chunks": True})
    meta["state"] = "ready"
    group.attrs.update({"ntkit": meta})
    return group


def reads_directly(array: zarr.Array) -> bool:
    """True when every chunk of ``array`` is a file of its raw values in this machine's byte
    order (no compressor, no filter, no sharding: the kernel arrays ``write_new`` creates), so a
    reader may ``np.fromfile`` the chunk file
    ``<array folder>/<array.metadata.encode_chunk_key(coords)>`` instead of going through Zarr.
    Stores with compressed chunks (older ones) are read through Zarr."""
    from zarr.codecs import BytesCodec
    codecs = array.metadata.codecs
    return (len(codecs) == 1 and isinstance(codecs[0], BytesCodec)
            and (codecs[0].endian is None or codecs[0].endian.value == sys.byteorder)
            and np.dtype(array.dtype).isnative)


def done_digests(group: zarr.Group) -> np.ndarray:
    """(n_tiles, n_kernels, 32) recorded digests; a row of zeros is a tile not done."""
    return np.asarray(group["done"][...])
