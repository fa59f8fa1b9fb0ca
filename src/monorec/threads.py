"""How many CPU threads torch may use: the one place that decides it.

torch's default (one intra-op thread per core) assumes idle cores. On a small machine that is busy with
something else, threads fighting for the same cores run far slower than one (3.4x seen on a loaded 2-core
machine), so the count follows the cores this process may run on (affinity and a cgroup CPU quota) that
are idle now (sampled from ``/proc/stat`` over a quarter of a second; a load average would still count
work that ended a minute ago). ``MONOREC_TORCH_THREADS`` overrides it.

Training is the exception: a float sum depends on how it is split among threads, so a count that follows
the machine's load would make the same seed give a different model on a busy machine. Training runs with a
count fixed by its config (:func:`training_threads`) and torch's deterministic algorithms
(:func:`reproducible`): same data, config, seed and thread count, same model, bit for bit.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "THREADS_ENV",
    "available_cores",
    "busy_cores",
    "configure_torch_threads",
    "reproducible",
    "set_gil_switch_interval",
    "torch_threads",
    "training_threads",
]

THREADS_ENV = "MONOREC_TORCH_THREADS"


def _cgroup_quota() -> float | None:
    """The CPU quota of this process's cgroup (v2 ``cpu.max``) in cores, or None when unlimited/unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs since boot, from /proc/stat (None off Linux)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields[:8])


def busy_cores(sample_s: float = 0.25) -> float:
    """How many of the machine's cores other work keeps busy now (sampled over ``sample_s``)."""
    before = _cpu_times()
    if before is None:
        try:
            return os.getloadavg()[0]
        except OSError:
            return 0.0
    time.sleep(sample_s)
    after = _cpu_times()
    assert after is not None
    idle, total = after[0] - before[0], after[1] - before[1]
    if total <= 0:
        return 0.0
    return (1 - idle / total) * (os.cpu_count() or 1)


def torch_threads(per_worker: int = 1) -> int:
    """Intra-op threads for torch: ``MONOREC_TORCH_THREADS`` when set, else the available cores that
    other work does not keep busy now, divided among ``per_worker`` concurrent workers; at least 1.

    Raises:
        ValueError: the environment variable is not a positive integer.
    """
    given = os.environ.get(THREADS_ENV)
    if given:
        if not given.isdigit() or int(given) < 1:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {given!r}")
        return int(given)
    cores = available_cores()
    idle = max(1, cores - math.floor(busy_cores() + 0.5))
    return max(1, idle // max(1, per_worker))


def configure_torch_threads(per_worker: int = 1) -> int:
    """Sets torch's intra-op thread count from :func:`torch_threads`; returns it."""
    import torch

    n = torch_threads(per_worker)
    torch.set_num_threads(n)
    return n


def set_gil_switch_interval(ms: float) -> None:
    """How long a thread running Python may keep the GIL once another thread asks for it (this process).

    A request releases the GIL many times (each ONNX Runtime run, index search, tantivy search; every torch
    op on the eager path) and must take it back after each. When a loader thread is running Python at
    that moment (a streamed batch's featurizing and bookkeeping), the request waits until the interval
    forces a switch: Python's 5 ms default, paid at each of those points, is what a request's p99 shows
    while changes stream in (B6). A shorter interval bounds each wait; switches cost microseconds."""
    sys.setswitchinterval(ms / 1000)


def training_threads(configured: int = 0) -> int:
    """Intra-op threads for training: ``MONOREC_TORCH_THREADS`` when set, else ``configured`` when above 0,
    else the cores this process may run on. Never the machine's momentary load (see the module docstring).

    Raises:
        ValueError: the environment variable is not a positive integer.
    """
    given = os.environ.get(THREADS_ENV)
    if given:
        return torch_threads()
    return configured if configured > 0 else available_cores()


@contextmanager
def reproducible(threads: int) -> Iterator[None]:
    """Within the block: ``threads`` intra-op threads and torch's deterministic algorithms (an op without a
    deterministic implementation warns); both restored after it."""
    import torch

    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=warn_only)
