"""The theory of activations, computed: Gaussian moments, dual activations, deep limits.

For Z ~ N(0, 1) and an activation φ (any ntkit activation layer, or a torch function):

    A = E[φ(Z)],   A' = E[φ'(Z)],   B = E[φ'(Z)²],   M = E[φ(Z)²]

(closed forms for the ReLU family, Erf, GELU, Sin, Identity and Hermite polynomials; adaptive
quadrature, scipy's QUADPACK on [-40, 0] and [0, 40] to 1e-13 relative, otherwise). The dual
activation (Daniely et al. 2016) ψ(ρ) = E[φ(u)φ(v)] for unit-variance (u, v) of correlation ρ,
and its derivative ψ'(ρ) = E[φ'(u)φ'(v)], come from the layer's own kernel map.

Deep limits (Radhakrishnan, Belkin & Uhler, PNAS 2023; seed 000). For the network of
``deep_architecture`` (inputs on the unit sphere, no biases, φ normalized to φ/√M so that every
pre-activation has variance 1) the NTK classifier sgn(y K⁻¹ k(x)) tends, as depth L → ∞, to
  * the majority vote                      if A ≠ 0            (their Proposition 1);
  * the 1-nearest-neighbour rule           if A = A' = 0       (Theorem 3);
  * a singular kernel classifier with
    k(x, x') ~ R(|x - x'|) / |x - x'|^α,   α = -4 log|Ã'| / log B̃,  if A = 0 ≠ A'  (Theorem 1),
where Ã' = A'/√M and B̃ = B/M are the moments of the normalized φ; it is Bayes optimal when
α = d (Theorem 2), reached by their eq. (32):

    φ_opt(z) = 2^(-d/4) h_3(z) + √(1 - 2^(1-d/2)) h_2(z) + 2^(-d/4) h_1(z),   d ≥ 2,

h_k = He_k/√k! the normalized Hermite polynomials (``PhiOpt``; A = 0, A' = 2^(-d/4), B = 2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import torch

from .layers.activation import Activation
from .layers.dense import Linear
from .layers.hermite import HermitePolynomial, hermite_functions
from .layers.quadrature import Elementwise, autograd_derivative
from .layers.relu import ABReLU
from .layers.sequential import Sequential
from .layers.smooth import GELU, Erf, Identity, Sin

ActivationLike = Union[Activation, Callable[[torch.Tensor], torch.Tensor]]

#: moments below this fraction of √M count as zero when classifying the deep limit
ZERO_TOL = 1e-10


@dataclass(frozen=True)
class Moments:
    """Gaussian moments of an activation: A = E[φ(Z)], A_prime = E[φ'(Z)], B = E[φ'(Z)²],
    M = E[φ(Z)²], Z ~ N(0, 1)."""

    A: float
    A_prime: float
    B: float
    M: float

    def normalized(self) -> "Moments":
        """The moments of φ/√M (unit output variance), as assumed by seed 000's theorems."""
        if not self.M > 0:
            raise ValueError("the activation is 0 almost everywhere (E[φ(Z)²] = 0): it cannot "
                             "be normalized")
        r = math.sqrt(self.M)
        return Moments(self.A / r, self.A_prime / r, self.B / self.M, 1.0)


def as_activation(act: ActivationLike) -> Activation:
    """An ntkit activation layer, or a torch function wrapped in ``Elementwise``."""
    if isinstance(act, Activation):
        return act
    if callable(act):
        return Elementwise(act)
    raise TypeError(f"expected an ntkit activation layer or a torch function, got "
                    f"{type(act).__name__}")


def hermite(k: int, x) -> np.ndarray:
    """The normalized Hermite polynomial h_k(x) = He_k(x)/√k! (orthonormal under N(0, 1))."""
    t = torch.as_tensor(np.asarray(x, dtype=np.float64))
    return hermite_functions(t, int(k) + 1)[..., int(k)].numpy()


def _quad(g: Callable[[np.ndarray], np.ndarray]) -> float:
    """∫ g(z) pdf(z) dz by adaptive Gauss–Kronrod on [-40, 0] and [0, 40] (a kink at 0 is a
    breakpoint; the Gaussian mass beyond 40 is e^-800)."""
    from scipy.integrate import quad

    def integrand(z):
        return float(g(np.array([z]))[0]) * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)

    total = 0.0
    for lo, hi in ((-40.0, 0.0), (0.0, 40.0)):
        value, _ = quad(integrand, lo, hi, epsabs=1e-15, epsrel=1e-13, limit=400)
        total += value
    return total


def _numeric_moments(fn: Callable, fn_prime: Callable) -> Moments:
    def f(z):
        return fn(torch.from_numpy(z)).numpy()

    def fp(z):
        return fn_prime(torch.from_numpy(z)).numpy()

    return Moments(_quad(f), _quad(fp), _quad(lambda z: fp(z) ** 2), _quad(lambda z: f(z) ** 2))


def _unit_moments(act: Activation):
    """(M, B) from the layer's own kernel map at unit variance and correlation 1."""
    one = torch.ones(1, dtype=torch.float64)
    _, dot, _ = act.pair_moments(one.clone(), one, one, torch.zeros(1, dtype=torch.float64), True)
    return float(act.var_moment(one.clone())), float(dot)


def gaussian_moments(act: ActivationLike) -> Moments:
    """A, A', B, M of an activation (module doc): closed forms where known, else adaptive
    quadrature to ~1e-13 relative."""
    act = as_activation(act)
    if isinstance(act, ABReLU):                     # φ = a min(x,0) + b max(x,0)
        a, b = act.a, act.b
        return Moments((b - a) / math.sqrt(2 * math.pi), (a + b) / 2, (a * a + b * b) / 2,
                       (a * a + b * b) / 2)
    if isinstance(act, Erf):                        # φ = a erf(b x) + c
        a, b, c = act.a, act.b, act.c
        return Moments(c, a * b * 2 / math.sqrt(math.pi * (1 + 2 * b * b)),
                       a * a * b * b * 4 / (math.pi * math.sqrt(1 + 4 * b * b)),
                       a * a * 2 / math.pi * math.asin(2 * b * b / (1 + 2 * b * b)) + c * c)
    if isinstance(act, Sin):                        # φ = a sin(b x + c)
        a, b, c = act.a, act.b, act.c
        e = math.exp(-b * b / 2)
        return Moments(a * math.sin(c) * e, a * b * math.cos(c) * e,
                       a * a * b * b / 2 * (1 + math.cos(2 * c) * e ** 4),
                       a * a / 2 * (1 - math.cos(2 * c) * e ** 4))
    if isinstance(act, Identity):
        return Moments(0.0, 1.0, 1.0, 1.0)
    if isinstance(act, HermitePolynomial):          # φ = Σ c_k h_k
        c = act.hermite_coefficients
        return Moments(c[0], c[1] if len(c) > 1 else 0.0,
                       sum(k * t * t for k, t in enumerate(c)), sum(t * t for t in c))
    if isinstance(act, GELU):                       # φ = x Φ(x): A = E[pdf(Z)], A' = 1/2
        m, b = _unit_moments(act)
        return Moments(1 / (2 * math.sqrt(math.pi)), 0.5, b, m)
    if isinstance(act, Elementwise):
        return _numeric_moments(act._fn, act._fn_prime)
    return _numeric_moments(act.fn, autograd_derivative(act.fn))


def dual_activation(act: ActivationLike, rho) -> tuple:
    """(ψ(ρ), ψ'(ρ)) = (E[φ(u)φ(v)], E[φ'(u)φ'(v)]) for unit-variance (u, v) with correlation ρ
    in [-1, 1] (array-like); float64 numpy arrays of ρ's shape."""
    act = as_activation(act)
    r = torch.as_tensor(np.asarray(rho, dtype=np.float64))
    if bool(((r < -1) | (r > 1) | ~torch.isfinite(r)).any()):
        raise ValueError("dual_activation: correlations must lie in [-1, 1]")
    ones = torch.ones_like(r)
    dist = 2 * (1 - r)
    value, dot, _ = act.pair_moments(r.clone(), ones, ones, dist, True)
    return value.numpy(), dot.numpy()


@dataclass(frozen=True)
class DeepLimit:
    """The classifier an infinitely deep NTK tends to (module doc): ``kind`` is 'majority',
    'nearest-neighbour', 'singular' (exponent ``alpha``) or 'linear' (φ linear: no deep
    limit); ``moments`` are those of the normalized activation."""

    kind: str
    alpha: Optional[float]
    moments: Moments


def deep_limit(act: ActivationLike) -> DeepLimit:
    """Seed 000's taxonomy from the normalized moments (A counts as 0 below ``ZERO_TOL``)."""
    m = gaussian_moments(act).normalized()
    if abs(m.A) > ZERO_TOL:
        return DeepLimit("majority", None, m)
    if abs(m.A_prime) <= ZERO_TOL:
        return DeepLimit("nearest-neighbour", None, m)
    if abs(m.B - 1) <= ZERO_TOL:
        return DeepLimit("linear", None, m)
    return DeepLimit("singular", -4 * math.log(abs(m.A_prime)) / math.log(m.B), m)


def singular_exponent(act: ActivationLike) -> float:
    """α = -4 log|Ã'| / log B̃ of seed 000's Theorem 1 (A must be 0, A' ≠ 0)."""
    limit = deep_limit(act)
    if limit.kind != "singular":
        raise ValueError(f"the deep limit of this activation is {limit.kind!r}, not a singular "
                         f"kernel (that needs A = 0 and A' ≠ 0; normalized moments {limit.moments})")
    return float(limit.alpha)


class PhiOpt(HermitePolynomial):
    """φ_opt of seed 000's eq. (32) for input dimension d ≥ 2 (module doc): A = 0,
    A' = 2^(-d/4), B = 2, M = 1, hence singular exponent α = d. Kernel exact (Hermite series)."""

    name = "PhiOpt"

    def __init__(self, d: float):
        d = float(d)
        if not math.isfinite(d) or d < 2:
            raise ValueError(f"PhiOpt: d must be a finite number >= 2, got {d!r}")
        self.d = d
        outer = 2 ** (-d / 4)
        super().__init__([0.0, outer, math.sqrt(max(0.0, 1 - 2 ** (1 - d / 2))), outer])

    def __repr__(self):
        return f"PhiOpt(d={self.d:g})"


def deep_architecture(act: ActivationLike, depth: int, d_in: int) -> Sequential:
    """Seed 000's network in ntkit layers: Linear(W_std=√d_in, no bias) (so that Σ¹ = x·x'),
    then ``depth`` times [φ, Linear(W_std=1/√M, no bias)] (φ normalized to unit variance), NTK
    parameterization. For unit-norm inputs every pre-activation has variance 1."""
    act = as_activation(act)
    if int(depth) != depth or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}")
    w = 1 / math.sqrt(gaussian_moments(act).M)
    layers: List = [Linear(1, W_std=math.sqrt(int(d_in)), b_std=None)]
    for _ in range(int(depth)):
        layers += [act, Linear(1, W_std=w, b_std=None)]
    return Sequential(*layers)


#: entries per block of ``deep_kernels``: the recursion state of a block (a few float64 vectors
#: and the map's temporaries) stays in the CPU cache through all the layers between two
#: requested depths, instead of streaming the whole matrix through memory at every layer
DEEP_BLOCK = 1 << 17


def _hidden_layer(act: Activation, m: float, cov: torch.Tensor, dist: torch.Tensor,
                  ntk: torch.Tensor):
    """One hidden layer of ``deep_kernels`` on unit variances (cov and dist are replaced, ntk is
    updated in place): Σ ← ψ(Σ)/M, Θ ← Θ ψ'(Σ)/M + Σ, |x - x'|² carried along."""
    ones = torch.ones((), dtype=cov.dtype, device=cov.device)
    value, dot, new_dist = act.pair_moments(cov, ones, ones, dist, True)
    cov = value.div_(m).clamp_(-1.0, 1.0)
    dist = (2 - 2 * cov) if new_dist is None else new_dist.div_(m)
    dist.clamp_(min=0.0)
    ntk.mul_(dot.div_(m)).add_(cov)
    return cov, dist


def deep_kernels(act: ActivationLike, rho: torch.Tensor, depths: Sequence[int],
                 dist: Optional[torch.Tensor] = None, block: int = DEEP_BLOCK):
    """NNGP and NTK of ``deep_architecture`` on unit-norm inputs with correlations ``rho``
    (a tensor of any shape, e.g. train-train and test-train rows stacked), at every depth in
    ``depths`` in one pass: yields (depth, nngp, ntk) in increasing depth (float64 tensors of
    rho's shape, valid until the next step); depth L is ``deep_architecture(act, L, d)``, L
    activations. The recursion, unit variances throughout, from the first layer's Σ = Θ = ρ:

        each hidden layer:   Σ ← ψ(Σ)/M,    Θ ← Θ ψ'(Σ)/M + Σ      (ψ the dual activation).

    ``dist`` is |x - x'|² (= 2 - 2ρ by default, exactly 0 where ρ = 1): it is carried along
    so that the ReLU family keeps nearly equal pairs and the diagonal exact (ntkit.layers.relu).
    |Σ| ≤ 1 and |Θ| ≤ Θ(x, x) = Σ_l B̃^l; for A = 0 the off-diagonal entries shrink like
    Ã'^(2L) and underflow float64 past L ≈ 700 / |log Ã'²| (doubly exponentially fast when
    A' = 0 too).

    Every entry follows its own recursion (the kernels on the sphere are functions of ρ alone),
    so the entries are advanced ``block`` at a time through all the layers up to the next
    requested depth: the same operations on each entry as one whole-matrix step per layer
    (bitwise the same result), with the block's state in cache (benchmarks/deep_limits.py).
    """
    act = as_activation(act)
    m = gaussian_moments(act).M
    wanted = sorted({int(d) for d in depths})
    if not wanted or wanted[0] < 1:
        raise ValueError(f"depths must be positive integers, got {list(depths)!r}")
    if int(block) != block or block < 1:
        raise ValueError(f"block must be a positive integer, got {block!r}")
    contiguous = torch.contiguous_format   # the flat views below must write through
    cov = torch.as_tensor(rho, dtype=torch.float64).clone(memory_format=contiguous).clamp_(-1, 1)
    dist = ((2 - 2 * cov) if dist is None
            else torch.as_tensor(dist, dtype=torch.float64).clone(memory_format=contiguous)
            ).clamp_(min=0.0)
    if dist.shape != cov.shape:
        raise ValueError(f"dist must have rho's shape {tuple(cov.shape)}, got {tuple(dist.shape)}")
    ntk = cov.clone()
    flat = [t.reshape(-1) for t in (cov, dist, ntk)]   # views: the blocks write through
    done = 0
    for target in wanted:
        for lo in range(0, cov.numel(), int(block)):
            c, d, t = (f[lo:lo + int(block)] for f in flat)
            c_new, d_new = c, d
            for _ in range(done, target):
                c_new, d_new = _hidden_layer(act, m, c_new, d_new, t)
            c.copy_(c_new)
            d.copy_(d_new)
        done = target
        yield target, cov, ntk
