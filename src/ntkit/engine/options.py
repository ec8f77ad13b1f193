"""``KernelOptions``: the knobs of a kernel computation, passed down to every tile.

Environment variables are read only when defaults are asked for (``KernelOptions.from_env``),
never at import, and nothing here changes a global torch setting.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Optional

_COMPILE_MODES = ("auto", "on", "off")


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() not in ("0", "off", "false", "no")


@dataclass(frozen=True)
class KernelOptions:
    """How to compute a kernel (never what it is: every setting gives the same numbers to
    rounding, and the same bits for the same tile and settings).

    memory_budget : bytes for a tile's intermediates (default 1 GiB; NTKIT_MEMORY_BUDGET).
    native        : use the native C++ CPU kernel where it applies (NTKIT_NATIVE=0 disables).
    compile       : torch.compile for the fused convolutional pass: "auto" (large problems),
                    "on" or "off" (NTKIT_COMPILE).
    fused         : run chains of [Conv2d, ReLU-family] layers as one fused pass per layer
                    (off: the layer-by-layer maps, the reference path).
    threads       : torch intra-op threads during the computation (None: leave as is).
    tile_size     : rows and columns of a tile (None: derived from the memory budget).
    """

    memory_budget: int = 1 << 30
    native: bool = True
    compile: str = "auto"
    fused: bool = True
    threads: Optional[int] = None
    tile_size: Optional[int] = None

    def __post_init__(self):
        if isinstance(self.memory_budget, bool) or int(self.memory_budget) < 1:
            raise ValueError(f"memory_budget must be a positive number of bytes, got "
                             f"{self.memory_budget!r}")
        object.__setattr__(self, "memory_budget", int(self.memory_budget))
        mode = {True: "on", False: "off", "1": "on", "0": "off"}.get(self.compile, self.compile)
        mode = str(mode).lower()
        if mode not in _COMPILE_MODES:
            raise ValueError(f"compile must be one of {_COMPILE_MODES}, got {self.compile!r}")
        object.__setattr__(self, "compile", mode)
        for name in ("threads", "tile_size"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or int(v) != v or int(v) < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")

    @classmethod
    def from_env(cls, **overrides) -> "KernelOptions":
        """Defaults from NTKIT_MEMORY_BUDGET, NTKIT_NATIVE and NTKIT_COMPILE, then overrides."""
        base = {}
        budget = os.environ.get("NTKIT_MEMORY_BUDGET")
        if budget:
            try:
                base["memory_budget"] = int(float(budget))
            except ValueError:
                raise ValueError(f"NTKIT_MEMORY_BUDGET={budget!r} is not a number of bytes") from None
        base["native"] = _env_flag("NTKIT_NATIVE", True)
        comp = os.environ.get("NTKIT_COMPILE")
        if comp:
            base["compile"] = comp.strip().lower()
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def replace(self, **changes) -> "KernelOptions":
        return replace(self, **changes)
