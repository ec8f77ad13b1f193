"""The layer interface: every infinite-width layer maps a KernelState to the next one and can
build the finite torch module with the same parameterization."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn

from . import chord
from .state import KernelState


class Layer:
    """Base class of all infinite-width layers.

    Subclasses implement
    * ``apply(state) -> state``: the kernel map of the layer;
    * ``out_shape(in_shape) -> shape``: the per-example shape of the finite layer's output;
    * ``build(in_shape, generator) -> nn.Module``: the finite layer, initialized from
      ``generator`` exactly as the parameterization prescribes.
    """

    #: True for layers whose kernel map is not smooth at equal inputs (ReLU family); their
    #: presence switches on the precise recomputation of nearly-equal input pairs.
    nonsmooth: bool = False
    #: True for layers whose map needs pixel-pair covariances E[z(x)_p z(x')_p'] of image
    #: states (pooling); the engine then keeps pixel pairs up to the readout.
    needs_pixel_pairs: bool = False
    #: True for layers with parameters (their gradients enter the NTK unless trainable=False).
    has_params: bool = False
    #: True for layers that map ``KernelState.chord`` (Linear, the ReLU family); ``apply_chain``
    #: drops it around every other layer (``ntkit.layers.chord``).
    maps_chord: bool = False

    def apply(self, state: KernelState) -> KernelState:  # pragma: no cover - interface
        raise NotImplementedError

    def out_shape(self, in_shape: Tuple[int, ...]) -> Tuple[int, ...]:
        return tuple(in_shape)

    def build(self, in_shape: Tuple[int, ...], generator: torch.Generator) -> nn.Module:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def check_parameterization(parameterization: str) -> str:
    p = str(parameterization).lower()
    if p not in ("ntk", "standard"):
        raise ValueError(f"unknown parameterization {parameterization!r}: expected 'ntk' or 'standard'")
    return p


def apply_chain(layers: Sequence[Layer], state: KernelState, first: int = 0) -> KernelState:
    """Apply ``layers`` in order, the state renormalized after each (``KernelState
    .renormalized``: exact power-of-two rescaling, so deep kernels neither overflow nor
    underflow). ``first`` is the depth of ``layers[0]`` in the architecture; an OverflowError
    of a layer is re-raised naming the layer and its depth. A deep ReLU-family chain carries
    precise angles (``chord.for_chain``), dropped around layers that do not map them."""
    state = chord.for_chain(layers, state)
    for k, layer in enumerate(layers, first):
        if not layer.maps_chord:
            state = chord.dropped(state)
        try:
            state = layer.apply(state)
        except OverflowError as err:
            raise OverflowError(f"layer {k} ({type(layer).__name__}): {err}") from None
        if not layer.maps_chord:
            state = chord.dropped(state)
        state = state.renormalized()
    return state
