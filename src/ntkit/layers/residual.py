"""Residual blocks and sums of parallel branches: ``Residual(branch, shortcut=None)`` and
``ParallelSum(*branches)``.

A block feeds the same input x to every branch and sums the outputs, z = Σ_a f_a(x)
(neural-tangents' ``FanOut(n) >> parallel(...) >> FanInSum()``; He et al. 2016 for the
residual form x + f(x)). In the infinite-width limit the kernels of the branches add
(Novak et al. 2019, Sec. C; Lee et al. 2020, the WideResNet kernels):

    Σ' = Σ_a Σ_a          Θ' = Σ_a Θ_a          var' = Σ_a var_a

with Σ_a, Θ_a, var_a each branch's maps applied to the common input state (and the exact
squared distance of the precise pairwise path adding the same way). This is exact when the
branches are uncorrelated: for every pair of branches, at least one of them ends with a fresh
zero-mean affine layer (``Linear``/``Conv2d``, possibly followed by layers that keep a
zero-mean output odd in those weights: pooling, ``Flatten``, ``LocalAvgPool2d``,
``LayerNorm``, ``Dropout``, ``Identity``), since E[x · W h] = 0 for W independent of x and h.
So at most one branch may end otherwise (the identity shortcut, or a branch ending with an
activation); a block with two such branches (e.g. ``ParallelSum(Identity(), Identity())``,
whose true kernel is 4Σ, not neural-tangents' 2Σ) is refused with an error.

As everywhere in ntkit, an activation after the block assumes Gaussian pre-activations: that
holds when the one non-affine branch carries a Gaussian (the identity of a Linear/Conv2d
output or of another such block), as in the WideResNet of Zagoruyko & Komodakis 2016.

Shapes: every branch must map the input shape to the same output shape (the finite network
sums the tensors); the standard parameterization's width after the block is that common
channel (or feature) count.

Branches act on the state's tensors in place, so each branch but one runs on a copy; the
identity branch is the input state itself. A branch with a pooling layer makes the block
declare ``needs_pixel_pairs``; pooling computes its own output variances, so any layer may
follow it inside the branch.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from .base import Layer
from .state import KernelState


class BranchSum(nn.Module):
    """Finite counterpart: z = Σ_a f_a(x) over ``branches`` (an ``nn.ModuleList``;
    ``nn.Identity()`` for the identity)."""

    def __init__(self, branches: Sequence[nn.Module]):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for f in self.branches[1:]:
            out = out + f(x)
        return out


class ResidualBlock(nn.Module):
    """A residual block of torch modules: ``forward(x) = shortcut(x) + branch(x)``, the identity
    when ``shortcut`` is None. ``nk.Residual(...).init(...)`` builds one, and ``nk.from_torch``
    turns one (or any module with ``.branch`` and ``.shortcut`` attributes computing
    ``shortcut(x) + branch(x)``) back into ``nk.Residual``."""

    def __init__(self, branch: nn.Module, shortcut: Optional[nn.Module] = None):
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x if self.shortcut is None else self.shortcut(x)
        return s + self.branch(x)


# -- which branch outputs are uncorrelated with everything else --------------------------------
def _is_identity(layer: Optional[Layer]) -> bool:
    from .smooth import Identity
    return layer is None or type(layer) is Identity


def _keeps_zero_mean(layer: Layer) -> bool:
    """Layers whose output is odd in the weights of a preceding fresh affine layer."""
    from .dropout import Dropout
    from .local_pool import LocalAvgPool2d
    from .normalization import LayerNorm
    from .pooling import AvgPool2d, Flatten, GlobalAvgPool2d
    return _is_identity(layer) or isinstance(
        layer, (AvgPool2d, GlobalAvgPool2d, Flatten, LocalAvgPool2d, LayerNorm, Dropout))


def ends_with_fresh_affine(layer: Optional[Layer]) -> bool:
    """True when the layer's output is zero-mean given its input, through weights of its own:
    a Linear/Conv2d, a chain ending with one (up to zero-mean-keeping layers), or a block of
    such branches."""
    from .conv import Conv2d
    from .dense import Linear
    from .sequential import Sequential
    if layer is None:
        return False
    if isinstance(layer, (Linear, Conv2d)):
        return True
    if isinstance(layer, ParallelSum):
        return all(ends_with_fresh_affine(b) for b in layer.branches)
    if isinstance(layer, Sequential):
        for inner in reversed(layer.layers):
            if not _keeps_zero_mean(inner):
                return ends_with_fresh_affine(inner)
    return False


# -- the state operations of a block ------------------------------------------------------------
def _clone(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.clone()


def copy_state(state: KernelState) -> KernelState:
    """A copy of the state's tensors (var2 stays var1 for a state of inputs with themselves)."""
    var1 = _clone(state.var1)
    var2 = var1 if state.same_inputs else _clone(state.var2)
    return state.replace(cov=_clone(state.cov), var1=var1, var2=var2, ntk=_clone(state.ntk),
                         dist=_clone(state.dist))


def _add_all(ts: List[Optional[torch.Tensor]], none_is_zero: bool) -> Optional[torch.Tensor]:
    """Sum of the tensors into the first one; None counts as 0 (``none_is_zero``) or makes the
    sum unknown (None)."""
    present = [t for t in ts if t is not None]
    if not none_is_zero and len(present) != len(ts):
        return None
    if not present:
        return None
    out = present[0]
    for t in present[1:]:
        out = out.add_(t)
    return out


def sum_states(outs: List[KernelState]) -> KernelState:
    """The state of the sum of independent branches: covariances, NTKs, variances add (the
    branches' outputs first brought to the largest of their scales, ``log2_scale``, and their
    NTKs to the largest of theirs: exact power-of-two rescaling, so a negligible branch may
    underflow to 0)."""
    top = max(o.log2_scale for o in outs)
    outs = [o.at_scale(top) for o in outs]
    offsets = [o.ntk_log2_offset for o in outs if o.ntk is not None]
    if offsets:  # the NTKs too, at the largest of their scales
        outs = [o.ntk_at_offset(max(offsets)) for o in outs]
    first = outs[0]
    for o in outs[1:]:
        if o.spatial != first.spatial or o.layout != first.layout or o.width != first.width:
            raise ValueError(f"ParallelSum: branch outputs differ (spatial {o.spatial!r} vs "
                             f"{first.spatial!r}, width {o.width} vs {first.width}); every branch "
                             f"must give the same output shape")
    # the first output may be the (unmodified) input state of an identity branch: sum into copies
    # only where a branch has produced fresh tensors; identity outputs are read, never written.
    cov = _add_all([o.cov for o in outs], none_is_zero=False)
    ntk = _add_all([o.ntk for o in outs], none_is_zero=True)
    dist = _add_all([o.dist for o in outs], none_is_zero=False)
    same = all(o.same_inputs for o in outs)
    var1 = _add_all([o.var1 for o in outs], none_is_zero=False)
    var2 = var1 if same else _add_all([o.var2 for o in outs], none_is_zero=False)
    return first.replace(cov=cov, ntk=ntk, dist=dist, var1=var1, var2=var2,
                         ntk_log2_offset=max(offsets) if offsets else 0)


class ParallelSum(Layer):
    """``ParallelSum(*branches)``: the sum of the branches' outputs on a common input (see the
    module doc for the kernel map, Σ' = Σ_a Σ_a, Θ' = Σ_a Θ_a, and when it is exact).

    A branch is an ntkit layer or ``Sequential``; ``None`` or ``Identity()`` is the identity.
    neural-tangents: ``stax.serial(stax.FanOut(n), stax.parallel(*branches), stax.FanInSum())``.
    """

    #: its arguments are layers (the architecture-file parser builds them from entries)
    takes_layers = True

    def __init__(self, *branches: Optional[Layer]):
        if len(branches) < 1:
            raise ValueError("ParallelSum needs at least one branch")
        for b in branches:
            if b is not None and not isinstance(b, Layer):
                raise TypeError(f"ParallelSum: branch {b!r} is not an ntkit layer (got "
                                f"{type(b).__name__}); use ntkit layers or nk.Sequential, None "
                                f"for the identity")
        self.branches: Tuple[Optional[Layer], ...] = tuple(
            None if _is_identity(b) else b for b in branches)
        loose = [k for k, b in enumerate(self.branches) if not ends_with_fresh_affine(b)]
        if len(loose) > 1:
            raise ValueError(
                f"{type(self).__name__}: branches {loose} do not end with their own Linear/Conv2d "
                f"layer (an identity or an activation), so their outputs are correlated and the "
                f"kernels of the sum do not add; at most one branch may end that way")

    # -- declarations ---------------------------------------------------------------------------
    def _layers(self) -> List[Layer]:
        return [b for b in self.branches if b is not None]

    @property
    def nonsmooth(self) -> bool:  # type: ignore[override]
        return any(b.nonsmooth for b in self._layers())

    @property
    def has_params(self) -> bool:  # type: ignore[override]
        return any(b.has_params for b in self._layers())

    @property
    def needs_pixel_pairs(self) -> bool:
        from .sequential import Sequential
        for b in self._layers():
            inner = b.layers if isinstance(b, Sequential) else [b]
            if any(_needs_pixel_pairs(layer) for layer in inner):
                return True
        return False

    # -- kernel map -----------------------------------------------------------------------------
    def apply(self, state: KernelState) -> KernelState:
        if state.cov is None:  # a lazy pixel-pair input state
            from .image_state import materialize
            state = materialize(state)
        layers = self._layers()
        has_identity = len(layers) < len(self.branches)
        outs = []
        for k, b in enumerate(layers):
            last_may_consume = not has_identity and k == len(layers) - 1
            outs.append(b.apply(state if last_may_consume else copy_state(state)))
        if has_identity:
            # the identity output is the input state; sum_states adds into the first output, so
            # put a branch output first (its tensors are fresh copies)
            outs.append(state)
        return sum_states(outs)

    # -- finite network -------------------------------------------------------------------------
    def out_shape(self, in_shape: Tuple[int, ...]) -> Tuple[int, ...]:
        shapes = [tuple(in_shape) if b is None else tuple(b.out_shape(in_shape))
                  for b in self.branches]
        if any(s != shapes[0] for s in shapes[1:]):
            raise ValueError(f"{type(self).__name__}: the branches give different output shapes "
                             f"{shapes} for input shape {tuple(in_shape)}; a sum needs equal shapes "
                             f"(use a Conv2d/Linear shortcut to change channels or resolution)")
        return shapes[0]

    def _build_branch(self, b: Optional[Layer], in_shape, generator) -> nn.Module:
        return nn.Identity() if b is None else b.build(in_shape, generator)

    def build(self, in_shape, generator: torch.Generator) -> nn.Module:
        self.out_shape(in_shape)
        return BranchSum([self._build_branch(b, in_shape, generator) for b in self.branches])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(repr(b) for b in self.branches)})"


class Residual(ParallelSum):
    """``Residual(branch, shortcut=None)``: z = shortcut(x) + branch(x), the identity shortcut
    when ``shortcut`` is None (He et al. 2016); the kernels add as in ``ParallelSum`` (module
    doc). ``branch`` must end with its own Linear/Conv2d unless the shortcut does.

    neural-tangents: ``stax.serial(stax.FanOut(2), stax.parallel(branch, shortcut),
    stax.FanInSum())`` with ``stax.Identity()`` for the identity shortcut.
    """

    def __init__(self, branch: Layer, shortcut: Optional[Layer] = None):
        if branch is None:
            raise ValueError("Residual: branch must be an ntkit layer or Sequential, got None")
        super().__init__(branch, shortcut)

    @property
    def branch(self) -> Layer:
        return self.branches[0]

    @property
    def shortcut(self) -> Optional[Layer]:
        return self.branches[1]

    def build(self, in_shape, generator: torch.Generator) -> nn.Module:
        self.out_shape(in_shape)
        branch = self._build_branch(self.branch, in_shape, generator)
        shortcut = None if self.shortcut is None else self.shortcut.build(in_shape, generator)
        return ResidualBlock(branch, shortcut)

    def __repr__(self) -> str:
        return f"Residual(branch={self.branch!r}, shortcut={self.shortcut!r})"


def _needs_pixel_pairs(layer: Layer) -> bool:
    """Whether a layer needs pixel-pair covariances (pooling over positions), as it declares."""
    return bool(getattr(layer, "needs_pixel_pairs", False))


