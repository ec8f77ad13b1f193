"""The plan of an empirical-NTK call: which implementation ("auto" by cost), the block size
(from the memory budget, see ``memory``), and the fallbacks when torch.func.vmap cannot run the
model (``next_options``: per-example autograd, with a warning naming the reason). Nothing is
probed in advance: a fallback is taken when the first block fails, so a model vmap can run pays
nothing for the check.

The automatic choice among the three implementations is the least predicted time: multiply-adds
(``cost``: one example's forward pass profiled, structured layers' shapes) weighted by the
measured throughput of each implementation (``cost.SECONDS_PER_MAC``), with the block size each
implementation gets from the memory budget (small blocks recompute column features);
"structured" competes when modules with structured rules (Linear, Conv1d/2d,
Embedding, LayerNorm, eval BatchNorm, the linear maps of MultiheadAttention, ntkit's NTK layers)
hold differentiated parameters.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch

from . import cost, memory
from ._batch import Batch, batch_len, take
from ._model import ModelFunction
from .jacobian import VmapError
from .structured import LayoutError, StructuredDerivatives
from .tile import TileOptions

IMPLEMENTATIONS = ("auto", "jacobian", "ntvp", "structured")


class VmapFallbackWarning(UserWarning):
    """torch.func.vmap cannot run the model; per-example autograd is used instead."""


def check_implementation(implementation: str, caller: str) -> str:
    if not isinstance(implementation, str) or implementation not in IMPLEMENTATIONS:
        raise ValueError(f"{caller}: unknown implementation {implementation!r}; expected one of "
                         f"{', '.join(repr(i) for i in IMPLEMENTATIONS)}")
    return implementation


@dataclass
class Request:
    """One call's arguments, as the plan needs them."""

    fn: ModelFunction
    x1: Batch
    x2: Optional[Batch]
    full: bool
    budget: int
    batch_size: Optional[int] = None
    rules: Optional[StructuredDerivatives] = None

    def __post_init__(self):
        if self.rules is None:
            self.rules = StructuredDerivatives(self.fn)
        self._profile: Optional[cost.Profile] = None
        self._shapes: Optional[cost.Profile] = None

    @property
    def profile(self) -> cost.Profile:
        """``cost.profile`` of the first example of x1, computed once per call."""
        if self._profile is None:
            self._profile = cost.profile(self.fn, self.x1, self.rules)
        return self._profile

    @property
    def shapes(self) -> cost.Profile:
        """The profile without flop counting (its ``forward`` a lower bound; the layer shapes
        the memory model needs), unless the full one is at hand."""
        if self._profile is not None:
            return self._profile
        if self._shapes is None:
            self._shapes = cost.profile(self.fn, self.x1, self.rules, count_flops=False)
        return self._shapes

    @property
    def sizes(self) -> Tuple[int, int]:
        n1 = batch_len(self.x1)
        return n1, n1 if self.x2 is None else batch_len(self.x2)


def predicted_costs(req: Request, structured: bool = True, what=None,
                    prof: Optional[cost.Profile] = None) -> Dict[str, float]:
    """Multiply-adds of each implementation (``cost.costs``; ``what=cost.traffic``: the numbers
    moved), with the recomputation of column features that blocks smaller than the inputs
    imply; ``prof``: this profile instead of ``req.profile``."""
    n1, n2 = req.sizes
    prof = req.profile if prof is None else prof
    pairs = n1 * (n1 + 1) / 2 if req.x2 is None else n1 * n2
    out = {}
    for name in ("jacobian", "ntvp", "structured") if structured else ("jacobian", "ntvp"):
        block = min(req.batch_size or block_for(req, TileOptions(name, req.full)), n1)
        blocks = -(-n1 // block)
        # each row block recomputes the features of the column blocks it meets
        examples = n1 + (n1 * (blocks - 1) / 2 if req.x2 is None else n2 * blocks)
        out[name] = (what or cost.costs)(prof, req.fn.n_params, req.fn.k, examples, pairs,
                                         req.full)[name]
    return out


def predicted_times(req: Request, structured: bool = True,
                    prof: Optional[cost.Profile] = None) -> Dict[str, float]:
    """Relative predicted time of each implementation: multiply-adds weighted by
    ``cost.SECONDS_PER_MAC`` plus numbers moved (``cost.traffic``) weighted by
    ``cost.SECONDS_PER_NUMBER``."""
    macs = predicted_costs(req, structured, prof=prof)
    moved = predicted_costs(req, structured, cost.traffic, prof)
    return {name: macs[name] * cost.SECONDS_PER_MAC[name] + moved[name] * cost.SECONDS_PER_NUMBER
            for name in macs}


def choose(req: Request, implementation: str, structured: bool = True) -> str:
    """The implementation name for ``implementation``; "auto": the least predicted time
    (``predicted_times``) among the implementations that apply (structured: modules with
    rules hold at least one parameter)."""
    if implementation != "auto":
        return implementation
    structured = structured and bool(req.rules.covered)
    if structured and _structured_for_any_forward(req):
        return "structured"
    t = predicted_times(req, structured)
    return min(t, key=t.get)


def _structured_for_any_forward(req: Request) -> bool:
    """Whether structured derivatives win whatever the forward pass costs, decided without
    counting its flops: with no parameter left to Jacobians and one block for every
    implementation, each prediction is (1 + 2k)·N·F weighted by ``cost.SECONDS_PER_MAC`` (plus
    3k·pairs·F for ntvp) plus terms that do not depend on F, and structured derivatives have
    the smallest weight, so if they win at the lower bound F = Σ T·a·o (``Request.shapes``)
    they win at the true F."""
    w = cost.SECONDS_PER_MAC
    shapes = req.shapes
    if shapes.left or any(w["structured"] > w[name] for name in w):
        return False
    n = max(req.sizes)
    if any(block_for(req, TileOptions(name, req.full)) < n for name in w):
        return False
    t = predicted_times(req, True, shapes)
    return min(t, key=t.get) == "structured"


def tensor_bytes(tree: Any) -> int:
    """Bytes of all tensors in nested tuples/lists/dicts/dataclasses."""
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(tensor_bytes(v) for v in tree.values())
    if isinstance(tree, (tuple, list)):
        return sum(tensor_bytes(v) for v in tree)
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        return sum(tensor_bytes(getattr(tree, f.name)) for f in dataclasses.fields(tree))
    return 0


def feature_bytes(req: Request, options: TileOptions) -> float:
    """Bytes of one example's features (see ``memory``): Jacobians k·P numbers; NTK-vector
    products keep only inputs; structured features as counted from the profiled layer shapes
    (``cost.Profile.structured_numbers``)."""
    fn = req.fn
    itemsize = torch.empty((), dtype=fn.dtype).element_size()
    if options.implementation == "jacobian":
        return fn.k * fn.n_params * itemsize
    if options.implementation == "ntvp":
        return tensor_bytes(take(req.x1, 0, 1))
    return req.shapes.structured_numbers(fn.k) * itemsize


def block_for(req: Request, options: TileOptions) -> int:
    """The largest block size whose memory (``memory``) fits the budget."""
    fn = req.fn
    itemsize = torch.empty((), dtype=fn.dtype).element_size()
    tile = (fn.k * fn.k if options.full else fn.k) * itemsize
    transient = (1 + fn.k) * fn.activation_bytes
    structured = options.implementation == "structured"
    if structured and not req.shapes.left:  # activations once; the backward's cotangents
        transient = fn.activation_bytes + 2 * req.shapes.largest_cotangent(fn.k) * itemsize
    # one block for x2=None: structured features (autograd's outputs) exist once, Jacobians
    # once more while stacked
    whole = None if req.x2 is not None else 1.0 if structured else 2.0
    return memory.block_size(feature_bytes(req, options), transient, tile, req.budget,
                             max(req.sizes), whole)


def next_options(req: Request, options: TileOptions, exc: Exception, requested: str,
                 vectorize: Optional[bool]) -> Optional[TileOptions]:
    """The next path after ``exc`` (None: no fallback, re-raise), with a warning naming it.

    * structured derivatives chosen by "auto" for a model whose covered modules have no batch
      dimension in dimension 0 or 1 (``LayoutError``): the generic choice;
    * vmap failed (``VmapError``; with ``vectorize=None``): for NTK-vector products, Jacobian
      contraction under vmap (forward-mode AD is the part most often missing, e.g. in fused
      kernels), otherwise the same implementation with per-example autograd (correct for any
      model autograd can differentiate: nn.LSTM/nn.GRU, in-place updates, data-dependent
      control flow; one backward pass per example and output)."""
    fn = req.fn
    if isinstance(exc, LayoutError):
        if requested != "auto" or options.implementation != "structured":
            return None
        name = choose(req, requested, structured=False)
        warnings.warn(f"{fn.caller}: structured derivatives do not apply ({exc}); using the "
                      f"'{name}' implementation", UserWarning, stacklevel=3)
        return dataclasses.replace(options, implementation=name)
    if not isinstance(exc, VmapError) or vectorize is not None or not options.vectorize:
        return None
    if options.implementation == "ntvp":
        nxt = dataclasses.replace(options, implementation="jacobian")
        path = "Jacobian contraction under vmap"
    else:
        nxt = dataclasses.replace(options, vectorize=False)
        path = (f"the '{options.implementation}' implementation with per-example derivatives "
                f"by plain autograd (one backward pass per example and output: correct, but "
                f"slower)")
    warnings.warn(f"{fn.caller}: torch.func.vmap cannot evaluate this model ({exc.reason}); "
                  f"computing with {path} instead", VmapFallbackWarning, stacklevel=3)
    return nxt


def resolve(model, x1, x2=None, mode: str = "trace", implementation: str = "auto",
            batch_size: Optional[int] = None, params=None,
            memory_budget: Optional[int] = None) -> str:
    """Which implementation ``empirical_ntk`` would use for these arguments."""
    fn = ModelFunction(model, params=params)
    t1, t2 = fn.inputs(x1, x2)
    budget = memory.default_budget() if memory_budget is None else int(memory_budget)
    req = Request(fn, t1, t2, mode == "full", budget, batch_size)
    return choose(req, check_implementation(implementation, "empirical_ntk"))
