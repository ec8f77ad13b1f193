"""The Dask client a computation runs on: a given one, one connected to a scheduler address, or
a LocalCluster sized to the machine (started and closed around the computation)."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Union

from distributed import Client, LocalCluster


def local_workers() -> int:
    """Worker processes for a LocalCluster: the CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def check_client(client) -> None:
    """TypeError unless ``client`` is None, a scheduler address or a ``distributed.Client``."""
    if client is not None and not isinstance(client, (str, Client)):
        raise TypeError(f"client must be a distributed.Client, a scheduler address string or "
                        f"None, got {type(client).__name__}")


@contextlib.contextmanager
def dask_client(client: Union[None, str, Client]) -> Iterator[Client]:
    """``client`` as is; a scheduler address ("tcp://host:8786") connected to and closed after;
    None: a LocalCluster of one single-threaded worker process per core, closed after."""
    check_client(client)
    if isinstance(client, Client):
        yield client
        return
    if isinstance(client, str):
        with Client(client) as c:
            yield c
        return
    with LocalCluster(n_workers=local_workers(), threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as c:
        yield c
