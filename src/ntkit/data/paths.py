"""Where the shared datasets live.

``default_data_dir()`` is the one place that decides it: the ``NTKIT_DATA_DIR`` environment
variable when it is set, otherwise ``../shared/data`` next to the repository checkout (the layout
described in ``shared/data/README.md``). Loaders and the command line use it when no path is
given; nothing is downloaded.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "NTKIT_DATA_DIR"


def repository_root() -> Path:
    """The checkout this module lives in (``src/ntkit/data/paths.py`` -> the repository)."""
    return Path(__file__).resolve().parents[3]


def default_data_dir() -> Path:
    """``$NTKIT_DATA_DIR`` if set (and non-empty), else ``<repository>/../shared/data``.

    The directory is not required to exist: loaders check for the files they need and say
    where they looked.
    """
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    return repository_root().parent / "shared" / "data"
