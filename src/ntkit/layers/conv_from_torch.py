"""``from_torch`` support for convolutional torch modules (nn.Conv2d, nn.AvgPool2d,
nn.AdaptiveAvgPool2d(1), nn.Flatten)."""
from __future__ import annotations

from typing import Optional

from torch import nn

from .base import Layer
from .conv import Conv2d
from .pooling import AvgPool2d, Flatten, GlobalAvgPool2d


def _conv_padding(module: nn.Conv2d) -> str:
    kh, kw = module.kernel_size
    pad = module.padding
    if module.dilation != (1, 1) or module.groups != 1:
        raise ValueError(f"from_torch: {module!r}: dilation and groups are not supported")
    if isinstance(pad, str):
        mode = pad
    elif tuple(pad) == (0, 0):
        mode = "valid"
    elif tuple(pad) == ((kh - 1) // 2, (kw - 1) // 2) and kh % 2 == 1 and kw % 2 == 1 \
            and module.stride == (1, 1):
        mode = "same"
    else:
        raise ValueError(f"from_torch: {module!r}: only padding 0 ('valid') or (k-1)/2 with odd "
                         f"kernels and stride 1 ('same') have an exact counterpart")
    if mode == "same" and module.padding_mode == "circular":
        return "circular"
    if module.padding_mode not in ("zeros", "circular"):
        raise ValueError(f"from_torch: {module!r}: padding_mode {module.padding_mode!r} is not "
                         f"supported")
    return mode


def convert_spatial(module: nn.Module, W_std: float, b_std: Optional[float],
                    parameterization: str) -> Optional[Layer]:
    """The infinite-width layer of a convolutional torch module, or None if not one."""
    if isinstance(module, nn.Conv2d):
        return Conv2d(module.out_channels, module.kernel_size, module.stride,
                      _conv_padding(module), W_std=W_std,
                      b_std=(b_std if module.bias is not None else None),
                      parameterization=parameterization,
                      trainable=module.weight.requires_grad)
    if isinstance(module, nn.AvgPool2d):
        if module.padding not in (0, (0, 0)) or module.ceil_mode:
            raise ValueError(f"from_torch: {module!r}: only padding=0 and ceil_mode=False")
        return AvgPool2d(module.kernel_size, module.stride or module.kernel_size)
    if isinstance(module, nn.AdaptiveAvgPool2d):
        size = module.output_size
        if size not in (1, (1, 1)):
            raise ValueError(f"from_torch: {module!r}: only output_size=1 (global pooling)")
        return GlobalAvgPool2d()
    if isinstance(module, nn.Flatten):
        return Flatten()
    return None
