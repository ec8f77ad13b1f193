"""What every subcommand shares: the run context (global options), errors mapped to exit
codes, output-folder checks and progress bars."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

#: exit codes of the ``ntkit`` command
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input from the user (exit code 2): message printed as ``ntkit <cmd>: error: ...``."""


def resolve_device(name: str) -> str:
    """The device the global ``--device`` names: 'auto' is 'cuda' when torch sees a GPU, else
    'cpu'; 'cpu' and 'cuda' are kept as given (``Context.torch_device`` refuses a missing
    CUDA device)."""
    if name == "auto":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, got {name!r}")
    return name


@dataclass
class Context:
    """The global options: ``quiet``, ``device`` ('cpu'|'cuda', ``--device auto`` resolved by
    ``resolve_device``), ``dtype`` ('float32'|'float64'),
    ``seed``, ``data_dir``, ``threads`` (torch CPU threads; None: torch's default)."""

    quiet: bool = False
    device: str = "cpu"
    dtype: str = "float64"
    seed: int = 0
    data_dir: Optional[Path] = None
    threads: Optional[int] = None

    @property
    def np_dtype(self):
        return np.float32 if self.dtype == "float32" else np.float64

    @property
    def torch_dtype(self):
        import torch
        return torch.float32 if self.dtype == "float32" else torch.float64

    def torch_device(self):
        import torch
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available to torch "
                             "(torch.cuda.is_available() is False); use --device cpu")
        return torch.device(self.device)

    def say(self, *args) -> None:
        """Print unless --quiet."""
        if not self.quiet:
            print(*args, flush=True)

    def progress(self, iterable: Optional[Iterable] = None, **kwargs):
        """A tqdm progress bar on stderr, silenced by --quiet."""
        from tqdm.auto import tqdm
        kwargs.setdefault("leave", False)
        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, disable=self.quiet, **kwargs)

    def seed_everything(self) -> None:
        import torch
        np.random.seed(self.seed % (2 ** 32))
        torch.manual_seed(self.seed)


def writable_dir(path: Path, what: str = "output folder") -> Path:
    """Create ``path`` (and parents) and check a file can be written there; UsageError naming
    the folder and the reason otherwise."""
    path = Path(path).expanduser()
    for ancestor in [path, *path.parents]:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise UsageError(f"cannot write to the {what} {path}: {ancestor} is a file, "
                                 f"not a folder")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".ntkit-write-test-"):
            pass
    except OSError as err:
        reason = err.strerror or str(err)
        raise UsageError(f"cannot write to the {what} {path}: {reason}") from None
    return path


def writable_file(path: Path) -> Path:
    """Check the folder of output file ``path`` is writable (creating it if needed)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UsageError(f"the output file {path} is a directory; give a file name such as "
                         f"{path / 'kernels.npz'}")
    writable_dir(path.parent if str(path.parent) else Path("."), "folder of the output file")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"cannot write to the output file {path}: permission denied")
    return path
