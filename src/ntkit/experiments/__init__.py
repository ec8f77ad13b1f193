"""Reproductions of the seeds' results, one module per experiment.

Contract: each experiment module defines

    def run(out_dir: pathlib.Path, quick: bool = False, seed: int = 0,
            progress: Optional[bool] = None, **options) -> dict

which writes its PNG figure(s) and a ``results.json`` of the numbers into ``out_dir`` and returns
the same dict. ``quick=True`` is a small configuration for tests and the demo; ``progress``
shows progress bars on stderr (None: when stderr is a terminal). Its options are declared: as
keyword parameters of ``run`` with their defaults, and as the keys of the module's ``FULL`` and
``QUICK`` dicts (the full and quick configurations; an unknown option is a TypeError). The
registry below maps the command-line name (``ntkit experiment NAME``) to the module and a
one-line description; ``get(name)`` imports the module on demand and returns ``run``,
``module(name)`` the module itself.

Experiment modules use the public API of ntkit and ``common`` (their shared helpers); they never
import each other or the command line.
"""
from importlib import import_module
from types import ModuleType
from typing import Callable, Dict, Tuple

REGISTRY: Dict[str, Tuple[str, str]] = {
    # name: (module, description)
    "width-sweep": ("width_sweep", "empirical NTK -> analytic NTK as width grows (slope ~ -1/2)"),
    "unit-circle": ("unit_circle", "Jacot et al. Fig. 1: NTK on the unit circle at two widths (full run: 500 and 10,000; quick: 64 and 512), before/after training"),
    "ntk-drift": ("ntk_drift", "distance of the NTK after training from the NTK at init, against width"),
    "linearization": ("linearization", "outputs of a wide net during training vs its linearization f_t^lin"),
    "ntk-gp": ("ntk_gp", "Jacot et al.: trained networks vs the NTK-GP and the NTK-prior posterior, variance test"),
    "two-layer-sigmoid": ("two_layer_sigmoid", "seed 003: loss bound exp(-2 t lambda_min) and weight movement ~ m^-1/2"),
    "lazy-training": ("lazy_training", "seed 004: relative weight change and lazy-training ratio against width"),
    "cifar10-cntk": ("cifar10_cntk", "Arora et al. 2019: CNTK-V / CNTK-GAP on CIFAR-10, the paper's table"),
    "cifar10-fewshot": ("cifar10_fewshot", "Arora et al. 2020: few-shot CIFAR-10 (n = 10 ... 1280), CNTK-GAP-14 and Myrtle-5 vs the paper's CNTK and ResNet-34"),
    "uci": ("uci", "Arora et al. 2020: NTK vs RF, RBF-SVM, NNGP, MLP on the 90 UCI datasets"),
    "deep-limits": ("deep_limits", "seed 000: NNGP/NTK classifiers as depth grows vs majority vote, 1-NN, singular kernel, Bayes"),
    "kernel-pca": ("kernel_pca", "seed 002: NTK kernel PCA of 512 MNIST digits (depth 4, beta 0.1), leading eigenvalues"),
    "error-prediction": ("error_prediction", "seed 002: which test digits a trained width-500 depth-4 net gets wrong vs the NTK predictor"),
    "digits-kernels": ("digits_kernels", "NTK/NNGP kernel regression at several depths vs baselines on digits"),
    "ntk-principal": ("ntk_principal", "Jacot et al. Fig. 3: GD along the NTK principal components of 512 MNIST digits, widths 100 to 10,000"),
    "eigen-rate": ("eigen_rate", "seed 002: learning rate along each NTK principal direction vs its eigenvalue (slope 1)"),
    "nngp-init": ("nngp_init", "seeds 000/004: outputs of random networks at init vs the NNGP Gaussian process"),
}


def names():
    return sorted(REGISTRY)


def module(name: str) -> ModuleType:
    """The module of experiment ``name`` (ValueError naming the choices if unknown)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown experiment {name!r}; available: {', '.join(names())}")
    return import_module(f"{__name__}.{REGISTRY[name][0]}")


def get(name: str) -> Callable:
    """The ``run`` function of experiment ``name`` (ValueError naming the choices if unknown)."""
    return module(name).run
