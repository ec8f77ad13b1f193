"""Dataset loaders and the dataset registry. Every loader takes a path (nothing is downloaded at
run time).

Submodules, one per dataset family, are imported on first use:
``load_digits`` (scikit-learn's embedded digits), ``load_mnist``, ``load_cifar10``, ``load_uci``
and ``uci_datasets`` (the 90 datasets of Arora et al. 2020); ``registry``: ``load_dataset`` by
name ('digits', 'mnist', 'cifar10', 'uci:<name>') as a train/test ``Dataset``, and
``inputs_for`` (rows shaped as an architecture's layers declare).
"""
from importlib import import_module

_WHERE = {
    "load_digits": "digits",
    "load_mnist": "mnist",
    "load_cifar10": "cifar10",
    "load_uci": "uci",
    "uci_datasets": "uci",
    "default_data_dir": "paths",
    "load_dataset": "registry",
    "inputs_for": "registry",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
