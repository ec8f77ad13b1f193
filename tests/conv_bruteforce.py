"""Brute-force CNN-GP / CNTK written directly from Arora et al. 2019 (seed 001), with explicit
loops over pixel pairs and patch offsets; numpy float64. Test reference only (slow: tiny images).

``kernel_pair(..., mp=mpmath.mp)`` runs the same loops in mpmath's arbitrary precision (the
reference for nearly equal images, where float64's arccos loses digits).

State of a pair of inputs (x, x'): three full covariances Σ(x,x), Σ(x',x'), Σ(x,x') indexed
[i, j, i', j'] and the NTK Θ(x,x'). The seed's normalization c_σ/q² appears as W_std²/(q_h q_w)
(neural-tangents' convention, see ntkit.layers.conv).
"""
import math

import numpy as np


def _src(o, a, k, s, n, padding):
    """Input index of output o, offset a, or None for a zero-padded pixel."""
    if padding == "valid":
        return s * o + a
    out = -(-n // s)
    lo = max((out - 1) * s + k - n, 0) // 2
    i = s * o + a - lo
    if padding == "circular":
        return i % n
    return i if 0 <= i < n else None


def _out(n, k, s, padding):
    return (n - k) // s + 1 if padding == "valid" else -(-n // s)


def _zeros(shape, like):
    return np.zeros(shape, dtype=like.dtype if like.dtype == object else float)


def conv(K, kh, kw, s, padding, w2, b2):
    """[Σ']_{o,o'} = w2/(kh kw) Σ_{a,b} K[o+(a,b), o'+(a,b)] + b2 (zero outside the image)."""
    H, W = K.shape[0], K.shape[1]
    Ho, Wo = _out(H, kh, s[0], padding), _out(W, kw, s[1], padding)
    out = _zeros((Ho, Wo, Ho, Wo), K)
    for i in range(Ho):
        for j in range(Wo):
            for i2 in range(Ho):
                for j2 in range(Wo):
                    acc = 0.0
                    for a in range(kh):
                        for b in range(kw):
                            p, q = _src(i, a, kh, s[0], H, padding), _src(j, b, kw, s[1], W, padding)
                            p2, q2 = _src(i2, a, kh, s[0], H, padding), _src(j2, b, kw, s[1], W, padding)
                            if None in (p, q, p2, q2):
                                continue
                            acc += K[p, q, p2, q2]
                    out[i, j, i2, j2] = w2 * acc / (kh * kw) + b2
    return out


def pool(K, k, s, padding):
    """[Σ']_{o,o'} = 1/k⁴ Σ_{a,b,a',b'} K[o+(a,b), o'+(a',b')]."""
    H, W = K.shape[0], K.shape[1]
    Ho, Wo = _out(H, k, s, padding), _out(W, k, s, padding)
    out = _zeros((Ho, Wo, Ho, Wo), K)
    for i in range(Ho):
        for j in range(Wo):
            for i2 in range(Ho):
                for j2 in range(Wo):
                    acc = 0.0
                    for a in range(k):
                        for b in range(k):
                            for a2 in range(k):
                                for b2 in range(k):
                                    idx = (_src(i, a, k, s, H, padding), _src(j, b, k, s, W, padding),
                                           _src(i2, a2, k, s, H, padding), _src(j2, b2, k, s, W, padding))
                                    if None not in idx:
                                        acc += K[idx]
                    out[i, j, i2, j2] = acc / k ** 4
    return out


def relu_entry(c, v1, v2, a=0.0, b=1.0, mp=None):
    """(E[φ(u)φ(v)], E[φ'(u)φ'(v)]) for φ = a·min(x,0) + b·max(x,0); in float64 a correlation
    within 4 ulps of ±1 counts as ±1 (as in ntkit.layers.conv_fused); with ``mp`` (mpmath)
    the same formula in arbitrary precision, without snapping."""
    fn = math if mp is None else mp
    hs, d2 = (a * a + b * b) / 2, (a - b) ** 2
    sv = fn.sqrt(v1 * v2)
    rho = 0.0 if sv == 0 else max(-1.0, min(1.0, c / sv))
    if mp is None and abs(rho) > 1 - 4 * np.finfo(float).eps:
        rho = math.copysign(1.0, rho)
    th = fn.acos(rho)
    nngp = hs * c + d2 / (2 * fn.pi) * sv * (fn.sin(th) - th * fn.cos(th))
    return nngp, hs - d2 / (2 * fn.pi) * th


def _act(Kxx, Kyy, Kxy, T, a, b, mp=None):
    """Elementwise activation on full covariances: uses the diagonals Σ(x,x)[p,p]."""
    shp = Kxy.shape
    H, W = shp[0], shp[1]
    outs = []
    for K, A, B in ((Kxx, Kxx, Kxx), (Kyy, Kyy, Kyy), (Kxy, Kxx, Kyy)):
        o = _zeros(shp, Kxy)
        d = _zeros(shp, Kxy)
        for i in range(H):
            for j in range(W):
                for i2 in range(H):
                    for j2 in range(W):
                        o[i, j, i2, j2], d[i, j, i2, j2] = relu_entry(
                            K[i, j, i2, j2], A[i, j, i, j], B[i2, j2, i2, j2], a, b, mp)
        outs.append((o, d))
    T = None if T is None else T * outs[2][1]
    return outs[0][0], outs[1][0], outs[2][0], T


def kernel_pair(x, y, spec, mp=None):
    """NNGP and NTK of one pair of images x, y (C, H, W) for a list of layer specs:
    ("conv", kh, kw, stride, padding, W_std, b_std_or_None, trainable), ("relu", a, b),
    ("pool", k, s, padding), ("flatten",), ("gap",), ("dense", W_std, b_std, trainable),
    ("relu_flat", a, b). ``mp``: mpmath's context, for arbitrary precision (floats returned)."""
    if mp is not None:
        x = np.vectorize(mp.mpf, otypes=[object])(x)
        y = np.vectorize(mp.mpf, otypes=[object])(y)
    C = x.shape[0]
    Kxx = np.einsum("chw,cij->hwij", x, x) / C
    Kyy = np.einsum("chw,cij->hwij", y, y) / C
    Kxy = np.einsum("chw,cij->hwij", x, y) / C
    T = None
    flat = False
    for layer in spec:
        kind = layer[0]
        if kind == "conv":
            _, kh, kw, s, padding, ws, bs, trainable = layer
            w2, b2 = ws ** 2, (0.0 if bs is None else bs ** 2)
            Kxx, Kyy = conv(Kxx, kh, kw, s, padding, w2, b2), conv(Kyy, kh, kw, s, padding, w2, b2)
            new = conv(Kxy, kh, kw, s, padding, w2, b2)
            T = None if T is None else conv(T, kh, kw, s, padding, w2, 0.0)
            if trainable:
                T = new.copy() if T is None else T + new
            Kxy = new
        elif kind == "relu":
            Kxx, Kyy, Kxy, T = _act(Kxx, Kyy, Kxy, T, layer[1], layer[2], mp)
        elif kind == "pool":
            _, k, s, padding = layer
            Kxx, Kyy, Kxy = pool(Kxx, k, s, padding), pool(Kyy, k, s, padding), pool(Kxy, k, s, padding)
            T = None if T is None else pool(T, k, s, padding)
        elif kind == "flatten":
            H, W = Kxy.shape[0], Kxy.shape[1]
            tr = lambda K: sum(K[i, j, i, j] for i in range(H) for j in range(W)) / (H * W)
            Kxx, Kyy, Kxy = tr(Kxx), tr(Kyy), tr(Kxy)
            T = None if T is None else tr(T)
            flat = True
        elif kind == "gap":
            Kxx, Kyy, Kxy = Kxx.sum() / Kxx.size, Kyy.sum() / Kyy.size, Kxy.sum() / Kxy.size
            T = None if T is None else T.sum() / T.size
            flat = True
        elif kind == "dense":
            assert flat
            _, ws, bs, trainable = layer
            w2, b2 = ws ** 2, (0.0 if bs is None else bs ** 2)
            Kxx, Kyy, Kxy = w2 * Kxx + b2, w2 * Kyy + b2, w2 * Kxy + b2
            T = None if T is None else w2 * T
            if trainable:
                T = Kxy if T is None else T + Kxy
        elif kind == "relu_flat":
            a, b = layer[1], layer[2]
            nx, _ = relu_entry(Kxx, Kxx, Kxx, a, b, mp)
            ny, _ = relu_entry(Kyy, Kyy, Kyy, a, b, mp)
            nxy, dot = relu_entry(Kxy, Kxx, Kyy, a, b, mp)
            T = None if T is None else T * dot
            Kxx, Kyy, Kxy = nx, ny, nxy
        else:
            raise ValueError(kind)
    return float(Kxy), (0.0 if T is None else float(T))


def kernel_matrix(x1, x2, spec):
    n1, n2 = len(x1), len(x2)
    nngp, ntk = np.zeros((n1, n2)), np.zeros((n1, n2))
    for a in range(n1):
        for b in range(n2):
            nngp[a, b], ntk[a, b] = kernel_pair(x1[a], x2[b], spec)
    return nngp, ntk
