"""How many intra-op threads an empirical-kernel call uses: no more than the cores idle now.

torch runs each parallel operation (matrix products, reductions, elementwise maps) as an OpenMP
region: the work is split statically into one share per thread and the operation ends at a
barrier when the last share is done. If another process keeps one of the cores busy, the thread
sharing that core runs only in the time slices the scheduler gives it (milliseconds apart), so
every operation waits for it, and the waiting threads spin. A call of ~100 small operations
(the empirical NTK of an MLP) then slows down by 5-10x with 2 threads on 2 cores, where one
thread on the idle core is not slowed at all. (JAX/XLA's thread pool lets idle workers take
over queued work, which is why neural-tangents degrades gracefully.)

The waiting is libgomp's active spin-wait at the end of each region: measured on a 2-core
machine at load 6-8 (other processes), the MLP 784-512-512-512-1 on 200 inputs (structured,
float32) took a median 200-1100 ms with 2 threads against 40-50 ms with 1, and 40-55 ms with 2
threads when libgomp was told to sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``). libgomp
reads that setting from the environment once, when torch is loaded, so a library cannot change
it; a user sharing a machine can export it before starting Python. What ntkit controls is the
thread count of each call, chosen here.

``idle_cores()`` counts the cores this process may use (``os.sched_getaffinity``) minus the
threads of other processes that are running or runnable right now (the running count in
``/proc/loadavg``, minus this process's own running threads); ``limited_threads(n)`` runs a
block with torch's intra-op thread count lowered to n and restores it afterwards.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch


def _running_threads_of_this_process() -> int:
    count = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    # the state follows the parenthesized command name
                    if f.read().rsplit(")", 1)[1].split()[0] == "R":
                        count += 1
            except OSError:
                continue
    except OSError:
        return 1
    return max(count, 1)


def idle_cores() -> Optional[int]:
    """Cores not used by other processes right now (at least 1); None where unknown."""
    try:
        cpus = len(os.sched_getaffinity(0))
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])
    except (OSError, AttributeError, ValueError, IndexError):
        return None
    others = max(0, running - _running_threads_of_this_process())
    return max(1, cpus - others)


def auto_threads() -> int:
    """torch's intra-op thread count, lowered to the idle cores (see the module doc)."""
    current = torch.get_num_threads()
    idle = idle_cores()
    return current if idle is None else max(1, min(current, idle))


@contextlib.contextmanager
def limited_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads; restore the previous count after."""
    before = torch.get_num_threads()
    if n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
