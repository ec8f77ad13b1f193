"""Resident memory of this process, for the benchmark scripts (stdlib only: also imported by
the neural-tangents scripts under .peer-venv)."""
import resource


def peak_rss_mb() -> float:
    """VmHWM: the peak resident memory of this process image, in MiB (ru_maxrss can report the
    parent's peak: Linux carries it over a vfork + exec)."""
    with open("/proc/self/status") as f:
        return [int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM")][0]


def rss_mb() -> float:
    """The resident memory now, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20
