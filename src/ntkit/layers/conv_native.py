"""Native CPU kernels, built on first use: the fused [Conv2d, ReLU-family] layer (the main one),
the pixel-pair input covariance, and the dense arc-cosine map of the fully-connected ReLU
family (``arccos_dense``, one pass instead of ~12 torch operations).

The pass of ``conv_fused._step`` (stencil sums of Σ and Θ, arc-cosine activation, writes into
the interior of the next zero-padded buffer) is written once in C++
(``native/fused_conv_relu.cpp``), compiled with the machine's C++ compiler (``$CXX`` or
``c++``, ``-O3 -march=native``) into a shared library that is cached under
``$NTKIT_CACHE_DIR`` (default ``~/.cache/ntkit``) and keyed by a hash of the source, the flags
the compiler and the CPU's feature flags, then called through ``ctypes``. The work is split into planes (the last two
padded axes of one leading index), each walked as one flat vectorized run; one pass per layer
reads each input entry from cache and writes each output once, which is what brings a layer
close to the memory floor.

Threads: the work is split over ``torch.get_num_threads()`` OpenMP threads. The library is
linked with ``-fopenmp`` and loaded after torch, so it binds to the OpenMP runtime torch
already loaded and both share one thread pool (a second pool on the same cores spins against
torch's: measured 1.5x slower). If the compiler has no OpenMP, a serial build is used.
When no compiler is available, the build fails, ``NTKIT_NATIVE=0`` is set, or
``set_native(False)`` was called, ``available()`` is False and the callers use the torch
implementation instead (``torch.compile`` or eager), with the same results to rounding.
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch

_SOURCE = Path(__file__).with_name("native") / "fused_conv_relu.cpp"
_FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math",
          "-std=c++17", "-fPIC", "-shared"]
_ABI_VERSION = 7
# regimes of the C++ kernel (see its header comment)
REGIME_DIAG_DENSE, REGIME_DIAG_PAIRED, REGIME_FULL = 0, 1, 2

_lock = threading.Lock()
_state = {"lib": None, "tried": False, "error": None}
_enabled = [os.environ.get("NTKIT_NATIVE", "1").lower() not in ("0", "off", "false", "no")]


def set_native(enabled: bool) -> bool:
    """Use the native CPU kernel when it can be built (default True); returns the old value."""
    old = _enabled[0]
    _enabled[0] = bool(enabled)
    return old


def cache_dir() -> Path:
    env = os.environ.get("NTKIT_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ntkit"


def _compiler() -> Optional[str]:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> bytes:
    """The CPU's model and feature flags: -march=native code must not be reused on another CPU
    (a cache directory shared between machines)."""
    try:
        with open("/proc/cpuinfo", "rb") as fh:
            lines = [ln for ln in fh.read().splitlines()
                     if ln.startswith((b"model name", b"flags", b"Features", b"CPU part"))]
        return b"\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor().encode()


def library_path(cxx: str, flags) -> Path:
    """Where the library built by ``cxx`` with ``flags`` is cached (a hash of the source, the
    flags, the compiler's version and the CPU)."""
    src = _SOURCE.read_bytes()
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    key = hashlib.sha256(src + " ".join(flags).encode() + version.encode()
                         + platform.machine().encode() + _cpu_signature()).hexdigest()[:16]
    return cache_dir() / "native" / f"fused_conv_relu-{key}.so"


def _build(cxx: str, flags) -> Path:
    target = library_path(cxx, flags)
    out_dir = target.parent
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    # build into a private file, then rename: concurrent builders (test workers) never see a
    # half-written library
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        proc = subprocess.run([cxx, *flags, str(_SOURCE), "-o", tmp], capture_output=True,
                              text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{cxx} failed: {proc.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _open(path: Path):
    lib = ctypes.CDLL(str(path))
    if lib.ntkit_abi_version() != _ABI_VERSION:
        raise RuntimeError("stale library (ABI version mismatch)")
    for name in ("ntkit_conv_relu_f32", "ntkit_conv_relu_f64"):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p] * 10 + [ctypes.c_int, ctypes.c_void_p]
    for name in ("ntkit_pair_input_f32", "ntkit_pair_input_f64"):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int]
    for name in ("ntkit_arccos_dense_f32", "ntkit_arccos_dense_f64"):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = ([ctypes.c_void_p] * 6 + [ctypes.c_int64] * 2 + [ctypes.c_double] * 2
                       + [ctypes.c_int])
    return lib


def _load():
    with _lock:
        if _state["tried"]:
            return _state["lib"]
        _state["tried"] = True
        cxx = _compiler()
        if cxx is None:
            _state["error"] = "no C++ compiler found (set CXX)"
            warnings.warn("ntkit: native convolution kernel unavailable (no C++ compiler found; "
                          "set CXX); using the torch implementation")
            return None
        try:
            flags = _FLAGS + ["-fopenmp"]
            try:
                path = _build(cxx, flags)
            except RuntimeError:  # no OpenMP: a serial build
                flags = _FLAGS
                path = _build(cxx, flags)
            try:
                lib = _open(path)
            except (OSError, RuntimeError, AttributeError):
                # a damaged or stale file in the cache: build it again, once
                path.unlink(missing_ok=True)
                lib = _open(_build(cxx, flags))
            _state["openmp"] = bool(lib.ntkit_has_openmp())
        except Exception as exc:  # build or load failure: fall back to torch
            _state["error"] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"ntkit: native convolution kernel unavailable ({_state['error']}); "
                          "using the torch implementation")
            return None
        _state["lib"] = lib
        return lib


def available() -> bool:
    """True when the native kernel is enabled and built (builds it on the first call)."""
    return _enabled[0] and _load() is not None


def last_error() -> Optional[str]:
    return _state["error"]


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _threads() -> int:
    return max(1, torch.get_num_threads()) if _state.get("openmp") else 1


def conv_relu_step(ps: torch.Tensor, pt: Optional[torch.Tensor], os_: torch.Tensor,
                   ot: Optional[torch.Tensor], r1: torch.Tensor, r2: torch.Tensor,
                   g1: torch.Tensor, g2: torch.Tensor, geom: Sequence[int],
                   consts: Sequence[float], sums: Optional[torch.Tensor] = None) -> None:
    """One fused layer on contiguous CPU tensors of one dtype (float32 or float64).

    geom = (regime, A, B, H, W, kh, kw): regime 2 (pixel pairs): arrays (A, Hp, Wp, Hp, Wp),
    r/g (A, H, W); regime 0 (same positions, dense): arrays (A, B, Hp, Wp), r1/g1 (A, H, W),
    r2/g2 (B, H, W); regime 1 (paired): arrays (A, Hp, Wp), r/g (A, H, W).
    consts = (W_std²/(kh·kw), b_std², (a²+b²)/2, (a-b)²/(2π), 4·eps, trainable).
    sums (regime 2 only): a float64 tensor of 2 to which Σ_{p,p'} S' and Σ_{p,p'} T' are added
    instead of writing os_/ot (a last layer followed by GlobalAvgPool2d)."""
    lib = _load()
    if lib is None:
        raise RuntimeError(f"native kernel unavailable: {_state['error']}")
    dtype = ps.dtype
    tensors = [ps, pt, os_, ot, r1, r2, g1, g2]
    for t in tensors:
        if t is not None and (t.dtype != dtype or t.device.type != "cpu"
                              or not t.is_contiguous()):
            raise ValueError("native kernel needs contiguous CPU tensors of one dtype")
    fn = {torch.float32: lib.ntkit_conv_relu_f32,
          torch.float64: lib.ntkit_conv_relu_f64}.get(dtype)
    if fn is None:
        raise ValueError(f"native kernel supports float32/float64, got {dtype}")
    regime = geom[0]
    if sums is not None and (regime != REGIME_FULL or sums.dtype != torch.float64
                             or sums.numel() != 2 or not sums.is_contiguous()):
        raise ValueError("sums: a contiguous float64 tensor of 2, pixel-pair regime only")
    g = (ctypes.c_int64 * 7)(*[int(v) for v in geom])
    c = (ctypes.c_double * 6)(*[float(v) for v in consts])
    fn(*[_ptr(t) for t in tensors], ctypes.addressof(g), ctypes.addressof(c), _threads(),
       _ptr(sums))


def pair_input(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, ph: int, pw: int) -> None:
    """Write the pixel-pair input covariance Σ⁰[p, p'] = (1/C) Σ_c a_c[p] b_c[p'] of one image
    pair a, b (C, H, W) into the interior of the zero-padded out (H+2ph, W+2pw, H+2ph, W+2pw)."""
    lib = _load()
    if lib is None:
        raise RuntimeError(f"native kernel unavailable: {_state['error']}")
    c, h, w = a.shape
    if b.shape != a.shape or out.shape != (h + 2 * ph, w + 2 * pw, h + 2 * ph, w + 2 * pw):
        raise ValueError(f"pair_input: shapes {tuple(a.shape)}, {tuple(b.shape)} and "
                         f"{tuple(out.shape)} do not match")
    for t in (a, b, out):
        if t.dtype != out.dtype or t.device.type != "cpu" or not t.is_contiguous():
            raise ValueError("native kernel needs contiguous CPU tensors of one dtype")
    fn = {torch.float32: lib.ntkit_pair_input_f32,
          torch.float64: lib.ntkit_pair_input_f64}.get(out.dtype)
    if fn is None:
        raise ValueError(f"native kernel supports float32/float64, got {out.dtype}")
    g = (ctypes.c_int64 * 5)(c, h, w, ph, pw)
    fn(a.data_ptr(), b.data_ptr(), out.data_ptr(), ctypes.addressof(g), _threads())


def arccos_dense(cov: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor, g1: torch.Tensor,
                 g2: torch.Tensor, half_sum: float, diff2: float, need_dot: bool
                 ) -> Optional[torch.Tensor]:
    """The ReLU-family (arc-cosine) maps on a dense block, in place (ntkit.layers.relu's fast
    path in one pass): cov (n1, n2) becomes E[φ(u)φ(v)]; returns E[φ'(u)φ'(v)] (n1, n2) when
    ``need_dot``. r = 1/sqrt(v) (0 for v = 0) and g = sqrt(v): (n1,) rows, (n2,) columns."""
    lib = _load()
    if lib is None:
        raise RuntimeError(f"native kernel unavailable: {_state['error']}")
    n1, n2 = cov.shape
    fn = {torch.float32: lib.ntkit_arccos_dense_f32,
          torch.float64: lib.ntkit_arccos_dense_f64}.get(cov.dtype)
    if fn is None:
        raise ValueError(f"native kernel supports float32/float64, got {cov.dtype}")
    for t, n in ((r1, n1), (g1, n1), (r2, n2), (g2, n2)):
        if t.shape != (n,) or t.dtype != cov.dtype or not t.is_contiguous():
            raise ValueError("arccos_dense: r/g must be contiguous vectors of the block's sides")
    if not cov.is_contiguous() or cov.device.type != "cpu":
        raise ValueError("native kernel needs contiguous CPU tensors")
    dot = torch.empty_like(cov) if need_dot else None
    fn(cov.data_ptr(), _ptr(dot), r1.data_ptr(), r2.data_ptr(), g1.data_ptr(), g2.data_ptr(),
       n1, n2, float(half_sum), float(diff2) / (2 * math.pi), _threads())
    return dot
