"""Architectures of the literature as ``Sequential`` presets: ``myrtle``, ``wide_resnet``,
``cntk``. Widths (channels) only matter to ``init`` and to the standard parameterization.
"""
from __future__ import annotations

import math
from typing import List

from .base import Layer
from .conv import Conv2d
from .dense import Linear
from .pooling import AvgPool2d, Flatten, GlobalAvgPool2d
from .relu import ReLU
from .residual import Residual
from .sequential import Sequential

_MYRTLE_STAGES = {5: (2, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}


def myrtle(depth: int = 5, width: int = 128, out_features: int = 10, pool_size: int = 8,
           parameterization: str = "ntk") -> Sequential:
    """Myrtle-5/7/10 of Shankar et al. 2020 ("Neural Kernels Without Tangents", Sec. 3; the
    neural-tangents example ``MyrtleNetwork``): three stages of [2,1,1] / [2,2,2] / [3,3,3]
    blocks of 3x3 "same" Conv2d + ReLU, 2x2 average pools after the first two stages, then a
    ``pool_size`` x ``pool_size`` average pool (8: global on the 8x8 maps of 32x32 inputs, the
    paper's three further 2x2 pools), Flatten and a Linear readout; W_std = √2, no bias.
    """
    if depth not in _MYRTLE_STAGES:
        raise ValueError(f"myrtle: depth must be one of {sorted(_MYRTLE_STAGES)}, got {depth!r}")
    s2 = math.sqrt(2.0)
    layers: List[Layer] = []
    for stage, blocks in enumerate(_MYRTLE_STAGES[depth]):
        if stage:
            layers.append(AvgPool2d(2))
        for _ in range(blocks):
            layers += [Conv2d(width, 3, padding="same", W_std=s2, b_std=None,
                              parameterization=parameterization), ReLU()]
    layers += [AvgPool2d(pool_size), Flatten(),
               Linear(out_features, W_std=s2, b_std=None, parameterization=parameterization)]
    return Sequential(*layers)


def _wrn_block(channels: int, stride: int, conv_shortcut: bool, parameterization: str) -> Residual:
    def conv(s: int) -> Conv2d:
        return Conv2d(channels, 3, stride=s, padding="same", W_std=1.0, b_std=None,
                      parameterization=parameterization)
    branch = Sequential(ReLU(), conv(stride), ReLU(), conv(1))
    return Residual(branch, conv(stride) if conv_shortcut else None)


def wide_resnet(depth: int = 16, k: int = 4, out_features: int = 10, pool_size: int = 8,
                parameterization: str = "ntk") -> Sequential:
    """WideResNet-depth-k (Zagoruyko & Komodakis 2016) as the kernel of Novak et al. 2019 and
    Lee et al. 2020, block for block the neural-tangents README's ``WideResnet``:

        Conv2d(16, 3) -> 3 groups of n = (depth - 4) / 6 blocks, 16k, 32k, 64k channels, the
        last two starting with stride 2 -> AvgPool2d(pool_size) -> Flatten -> Linear

    each block ``Residual([ReLU, Conv 3x3 (stride), ReLU, Conv 3x3], shortcut)`` with a 3x3
    Conv2d shortcut (with the stride) for the first block of a group, the identity otherwise;
    W_std = 1, no bias in the convolutions, Linear(W_std=1, b_std=0). ``pool_size`` 8 is global
    on the 8x8 maps of 32x32 inputs.
    """
    if int(depth) != depth or depth < 10 or (depth - 4) % 6:
        raise ValueError(f"wide_resnet: depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), "
                         f"got {depth!r}")
    if int(k) != k or k < 1:
        raise ValueError(f"wide_resnet: k must be a positive integer, got {k!r}")
    n = (int(depth) - 4) // 6
    layers: List[Layer] = [Conv2d(16, 3, padding="same", W_std=1.0, b_std=None,
                                  parameterization=parameterization)]
    for channels, stride in ((16 * k, 1), (32 * k, 2), (64 * k, 2)):
        layers.append(_wrn_block(channels, stride, True, parameterization))
        layers += [_wrn_block(channels, 1, False, parameterization) for _ in range(n - 1)]
    layers += [AvgPool2d(pool_size), Flatten(),
               Linear(out_features, W_std=1.0, b_std=0.0, parameterization=parameterization)]
    return Sequential(*layers)


def cntk(depth: int, readout: str = "gap", width: int = 256, out_features: int = 10) -> Sequential:
    """The depth-d CNTK of Arora et al. 2019 (their code): d - 1 layers of [3x3 "same" Conv2d,
    ReLU] with c_σ = 2 (W_std = √2) and no biases, then the readout: "flatten" (CNTK-V: the
    trace over positions into a trainable Linear) or "gap" (CNTK-GAP: the mean over all pixel
    pairs, with the first convolution and the last layer fixed, ``trainable=False``).
    """
    if readout not in ("gap", "flatten"):
        raise ValueError(f"cntk: readout must be 'gap' or 'flatten', got {readout!r}")
    if int(depth) != depth or depth < 2:
        raise ValueError(f"cntk: depth must be an integer >= 2, got {depth!r}")
    gap = readout == "gap"
    s2 = math.sqrt(2.0)
    layers: List[Layer] = []
    for layer_index in range(int(depth) - 1):
        layers += [Conv2d(width, 3, padding="same", W_std=s2, b_std=None,
                          trainable=not (gap and layer_index == 0)), ReLU()]
    layers += [GlobalAvgPool2d() if gap else Flatten(),
               Linear(out_features, W_std=1.0, b_std=None, trainable=not gap)]
    return Sequential(*layers)
