"""Shared plumbing of the experiment modules: the configuration and output folder of a run,
saving figures and results, and the standalone ``python -m ntkit.experiments.<name>`` entry."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple


def start_run(out_dir, quick: bool, options: Dict, quick_cfg: Dict, full_cfg: Dict
              ) -> Tuple[Dict, Path, float]:
    """(configuration: the preset overridden by ``options``, the created output folder, the
    start time for ``seconds``)."""
    cfg = {**(quick_cfg if quick else full_cfg), **options}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return cfg, out, time.perf_counter()


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    """tight_layout, write the PNG, close the figure (frees its memory in long sessions)."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def write_results(out_dir: Path, results: Dict, indent: Optional[int] = 1) -> None:
    (Path(out_dir) / "results.json").write_text(json.dumps(results, indent=indent))


def standalone_main(doc: str, run: Callable[..., Dict], summary: Callable[[Dict], Dict],
                    argv: Optional[Sequence[str]] = None) -> None:
    """``OUT_DIR [--quick] [--seed S]``: run the experiment, print ``summary(results)`` as JSON."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(json.dumps(summary(run(args.out_dir, quick=args.quick, seed=args.seed))))
