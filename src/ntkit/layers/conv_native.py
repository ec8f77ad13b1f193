"""Native CPU kernels, built on first use: the fused [Conv2d, ReLU-family] layer (the main one;
also the convolution alone, the activation alone, or the convolution plus an addend, for
``pair_program``), strided window sums of one pair's pixel pairs (strided or "valid"
convolutions, average pooling: ``window_sums``), the pixel-pair input covariance, and the
dense arc-cosine map of the fully-connected ReLU family (``arccos_dense``, one pass instead of
~12 torch operations).

The pass of ``conv_fused._step`` (stencil sums of Σ and Θ, arc-cosine activation, writes into
the interior of the next zero-padded buffer) is written once in C++
(``native/fused_conv_relu.cpp``), compiled with the machine's C++ compiler (``$CXX`` or
``c++``, ``-O3 -march=native``) into a shared library that is cached under
``$NTKIT_CACHE_DIR`` (default ``~/.cache/ntkit``) and keyed by a hash of the source, the
generated header, the flags, the compiler and the CPU's feature flags, then called through
``ctypes``. The work is split into planes (the last two padded axes of one leading index),
each walked as one flat vectorized run; one pass per layer reads each input entry from cache
and writes each output once, which is what brings a layer close to the memory floor.

Shared constants: ``relu_map``'s asin polynomials and snapping of correlations, and
``ABI_VERSION``, are written into a header ``ntkit_relu_map.h`` generated at build time
(``native_header``) and checked again when the library is loaded (``constants``); the C++
source holds no copy of them.

Threads: the work is split over ``torch.get_num_threads()`` OpenMP threads (at most
``thread_cap``'s in the calling thread; passes too small to gain run on one). Every output is
computed by one thread from the same operands, and the sums of a GAP-folded last layer are
per-plane partial sums added in plane order, so results are bit-identical for every thread
count. The library is linked with ``-fopenmp`` and loaded after torch, so it binds to the
OpenMP runtime torch already loaded and both share one thread pool (a second pool on the same
cores spins against torch's: measured 1.5x slower). If the compiler has no OpenMP, a serial
build is used.

When no compiler is available, the build fails, or the kernel's options say
``native=False`` (``KernelOptions``; NTKIT_NATIVE=0 sets that default), ``available()`` is False
and the callers use the torch implementation instead (``torch.compile`` or eager), with the same results to rounding.
"""
from __future__ import annotations

import ctypes
import hashlib
import contextlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from . import relu_map

_SOURCE = Path(__file__).with_name("native") / "fused_conv_relu.cpp"
_FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math",
          "-std=c++17", "-fPIC", "-shared"]
# the calling convention of the library's entry points; bump on any change of arguments
ABI_VERSION = 11
_HEADER = "ntkit_relu_map.h"
# regimes of the C++ kernel (see its header comment)
REGIME_DIAG_DENSE, REGIME_DIAG_PAIRED, REGIME_FULL = 0, 1, 2

_lock = threading.Lock()
_state = {"lib": None, "tried": False, "error": None}
# Whether the computation in progress may use the library: set for the duration of a kernel
# tile from its KernelOptions (``allowed``), so that layers deep inside (the dense arc-cosine
# block) follow the options without a module-level switch.
_allowed: ContextVar[bool] = ContextVar("ntkit_native_allowed", default=True)
# at most this many OpenMP threads per call in the current thread (``thread_cap``); None: all
_cap: ContextVar[Optional[int]] = ContextVar("ntkit_native_thread_cap", default=None)


@contextlib.contextmanager
def allowed(enabled: bool) -> Iterator[None]:
    """Within the block, ``available()`` is False unless ``enabled`` (KernelOptions.native)."""
    token = _allowed.set(bool(enabled))
    try:
        yield
    finally:
        _allowed.reset(token)


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


def _c_array(values) -> str:
    return "{" + ", ".join(repr(float(v)) for v in values) + "}"


def native_header() -> str:
    """The generated header of the C++ source: relu_map's constants and the ABI number
    (``repr`` of a float is the shortest literal that reads back to the same double)."""
    return ("// generated by ntkit.layers.conv_native from ntkit.layers.relu_map: do not edit\n"
            "#pragma once\n"
            f"#define NTKIT_ABI_VERSION {int(ABI_VERSION)}\n"
            f"constexpr int kSnapUlps = {int(relu_map.SNAP_ULPS)};\n"
            f"constexpr double kAsinF64[] = {_c_array(relu_map.ASIN_COEFS_F64)};\n"
            f"constexpr double kAsinF32[] = {_c_array(relu_map.ASIN_COEFS_F32)};\n")


def _expected_constants() -> list:
    return [*relu_map.ASIN_COEFS_F64, *relu_map.ASIN_COEFS_F32, float(relu_map.SNAP_ULPS)]


def library_path(cxx: str, flags) -> Path:
    """Where the library built by ``cxx`` with ``flags`` is cached (a hash of the source, the
    generated header, the flags, the compiler's version and the CPU)."""
    src = _SOURCE.read_bytes() + native_header().encode()
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
        with tempfile.TemporaryDirectory(dir=out_dir) as inc:  # the generated header
            Path(inc, _HEADER).write_text(native_header())
            proc = subprocess.run([cxx, *flags, "-I", inc, str(_SOURCE), "-o", tmp],
                                  capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{cxx} failed: {proc.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _open(path: Path):
    lib = ctypes.CDLL(str(path))
    if lib.ntkit_abi_version() != ABI_VERSION:
        raise RuntimeError("stale library (ABI version mismatch)")
    if constants(lib) != _expected_constants():
        raise RuntimeError("stale library (constants differ from ntkit.layers.relu_map)")
    for name in ("ntkit_conv_relu_f32", "ntkit_conv_relu_f64"):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p] * 12 + [ctypes.c_int, ctypes.c_void_p]
    for name in ("ntkit_pair_input_f32", "ntkit_pair_input_f64"):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int]
    for name in ("ntkit_window_f32", "ntkit_window_f64"):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_double] * 2 + [ctypes.c_int]
    for name in ("ntkit_arccos_dense_f32", "ntkit_arccos_dense_f64"):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = ([ctypes.c_void_p] * 6 + [ctypes.c_int64] * 2 + [ctypes.c_double] * 2
                       + [ctypes.c_int])
    return lib


def constants(lib=None) -> list:
    """The shared constants the library was built with: relu_map.ASIN_COEFS_F64,
    ASIN_COEFS_F32 and SNAP_ULPS, concatenated (as floats)."""
    lib = lib if lib is not None else _load()
    if lib is None:
        raise RuntimeError(f"native kernel unavailable: {_state['error']}")
    n = len(_expected_constants())
    out = (ctypes.c_double * n)()
    lib.ntkit_constants.restype = None
    lib.ntkit_constants.argtypes = [ctypes.c_void_p]
    lib.ntkit_constants(ctypes.addressof(out))
    return list(out)


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
    """True when the native kernel is allowed here (``allowed``) and built (builds it on the
    first call)."""
    return _allowed.get() and _load() is not None


def last_error() -> Optional[str]:
    return _state["error"]


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _threads() -> int:
    n = max(1, torch.get_num_threads()) if _state.get("openmp") else 1
    cap = _cap.get()
    return n if cap is None else max(1, min(n, cap))


@contextlib.contextmanager
def thread_cap(n: int) -> Iterator[None]:
    """Within the block (in this thread), the library's calls use at most ``n`` threads (callers
    that run several pairs at once in threads of their own pass 1)."""
    token = _cap.set(int(n))
    try:
        yield
    finally:
        _cap.reset(token)


def conv_relu_step(ps: torch.Tensor, pt: Optional[torch.Tensor], os_: torch.Tensor,
                   ot: Optional[torch.Tensor], r1: torch.Tensor, r2: torch.Tensor,
                   g1: torch.Tensor, g2: torch.Tensor, geom: Sequence[int],
                   consts: Sequence[float], sums: Optional[torch.Tensor] = None,
                   add: Optional[Sequence[Optional[torch.Tensor]]] = None) -> None:
    """One fused layer on contiguous CPU tensors of one dtype (float32 or float64).

    geom = (regime, A, B, H, W, kh, kw[, ph, pw]): regime 2 (pixel pairs): arrays
    (A, Hp, Wp, Hp, Wp), r/g (A, H, W); regime 0 (same positions, dense): arrays
    (A, B, Hp, Wp), r1/g1 (A, H, W), r2/g2 (B, H, W); regime 1 (paired): arrays (A, Hp, Wp),
    r/g (A, H, W). Hp = H + 2 ph, Wp = W + 2 pw: the arrays' zero border, at least (and by
    default) (kh-1)/2, (kw-1)/2.
    consts = (W_std²/(kh·kw), b_std², (a²+b²)/2, (a-b)²/(2π), trainable[, mode]): mode 1
    (default) the activation follows, relu_map's fast map (edge conventions there); mode 0
    writes the convolution alone; mode 2 the convolution plus ``add`` = (s_add, t_add),
    arrays of the outputs' shape (t_add needed when ot is written). r/g are read in mode 1
    only, but must have their shapes.
    sums (regime 2 only): a float64 tensor of 2 to which Σ_{p,p'} S' and Σ_{p,p'} T' are added
    instead of writing os_/ot (a last layer followed by GlobalAvgPool2d)."""
    lib = _load()
    if lib is None:
        raise RuntimeError(f"native kernel unavailable: {_state['error']}")
    dtype = ps.dtype
    s_add, t_add = (None, None) if add is None else add
    if len(consts) == 6 and int(consts[5]) == 2 and (
            s_add is None or s_add.shape != os_.shape
            or (ot is not None and (t_add is None or t_add.shape != ot.shape))):
        raise ValueError("mode 2: add = (s_add, t_add) of the outputs' shapes (t_add when the "
                         "NTK is written)")
    if len(consts) == 6 and int(consts[5]) != 2:
        s_add = t_add = None
    tensors = [ps, pt, os_, ot, s_add, t_add, r1, r2, g1, g2]
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
    geom = [int(v) for v in geom]
    if len(geom) == 7:
        geom += [(geom[5] - 1) // 2, (geom[6] - 1) // 2]
    if len(geom) != 9 or geom[7] < (geom[5] - 1) // 2 or geom[8] < (geom[6] - 1) // 2:
        raise ValueError(f"geom: (regime, A, B, H, W, kh, kw[, ph, pw]) with a border of at "
                         f"least half the window, got {tuple(geom)}")
    g = (ctypes.c_int64 * 9)(*geom)
    consts = [float(v) for v in consts]
    if len(consts) == 5:
        consts.append(1.0)
    if len(consts) != 6 or consts[5] not in (0.0, 1.0, 2.0):
        raise ValueError(f"consts: 5 or 6 values (scale, b2, half_sum, c, trainable"
                         f"[, mode 0|1|2]), got {consts}")
    c = (ctypes.c_double * 6)(*consts)
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
    """The ReLU-family (arc-cosine) maps on a dense block, in place (``relu_map.fast_map`` in
    one pass): cov (n1, n2) becomes E[φ(u)φ(v)]; returns E[φ'(u)φ'(v)] (n1, n2) when
    ``need_dot``. r, g = ``relu_map.rank_one_factors(v)``: (n1,) rows, (n2,) columns;
    half_sum, diff2 = ``relu_map.coefs(a, b)``."""
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


def window_sums(src: torch.Tensor, out: torch.Tensor, pad: int, kernel: Sequence[int],
                stride: Sequence[int], low: Sequence[int], box: bool, scale: float,
                b2: float = 0.0) -> None:
    """Strided window sums of one pair's pixel pairs (a strided or "valid" convolution's
    diagonal filter, ``box=False``, or average pooling's box filter, ``box=True``; see
    ``conv_ops``), from the interior of src (H+2P, W+2P, H+2P, W+2P) into the interior of out
    (Ho+2P, Wo+2P, Ho+2P, Wo+2P), P = ``pad``: out = scale * sums + b2. ``low``: the zero
    padding before each axis (at most P)."""
    lib = _load()
    if lib is None:
        raise RuntimeError(f"native kernel unavailable: {_state['error']}")
    h, w = src.shape[0] - 2 * pad, src.shape[1] - 2 * pad
    ho, wo = out.shape[0] - 2 * pad, out.shape[1] - 2 * pad
    (kh, kw), (sh, sw), (lo_h, lo_w) = kernel, stride, low
    if (src.shape != (h + 2 * pad, w + 2 * pad) * 2 or out.shape != (ho + 2 * pad, wo + 2 * pad) * 2
            or not 0 <= lo_h <= pad or not 0 <= lo_w <= pad
            or sh * (ho - 1) + kh - lo_h > h + pad or sw * (wo - 1) + kw - lo_w > w + pad):
        raise ValueError(f"window_sums: shapes {tuple(src.shape)} -> {tuple(out.shape)} do not "
                         f"match kernel {tuple(kernel)}, stride {tuple(stride)}, border {pad}")
    for t in (src, out):
        if t.dtype != src.dtype or t.device.type != "cpu" or not t.is_contiguous():
            raise ValueError("native kernel needs contiguous CPU tensors of one dtype")
    fn = {torch.float32: lib.ntkit_window_f32, torch.float64: lib.ntkit_window_f64}.get(src.dtype)
    if fn is None:
        raise ValueError(f"native kernel supports float32/float64, got {src.dtype}")
    g = (ctypes.c_int64 * 12)(h, w, pad, ho, wo, kh, kw, sh, sw, lo_h, lo_w, int(box))
    fn(src.data_ptr(), out.data_ptr(), ctypes.addressof(g), float(scale), float(b2), _threads())
