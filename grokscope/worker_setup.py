"""What a Dask worker process sets before it computes grokscope tasks: malloc and threads.

**Why a step cost ~1.4x the CPU in a worker** (measured, ``docs/distributed.md``): Dask's
nanny starts every worker process with ``MALLOC_TRIM_THRESHOLD_=65536`` (its
``distributed.nanny.pre-spawn-environ``, so that freed memory goes back to the operating
system). Setting *any* of glibc's malloc tunables turns off glibc's dynamic mmap threshold:
it then stays at 128 KiB for the life of the process, instead of rising to the size of the
blocks the program frees (up to 32 MiB). Every tensor above 128 KiB (a checkpoint's Jacobian,
activations, gradients: most of a step's memory traffic) is then a fresh ``mmap`` whose pages
are zero-filled by the kernel at first touch and unmapped again at ``free``. Twelve full-
Jacobian alignment steps took 355,000 minor page faults and 0.77 s of system time in a worker,
against 38,000 and 0.09 s in a plain process: 1.71 CPU s against 1.22 (1.4x). The same
environment variable on a plain process gives the same cost (1.53-1.75 CPU s, 359,000
faults); so does ``MALLOC_MMAP_THRESHOLD_=131072`` alone, and so does a *large*
``MALLOC_TRIM_THRESHOLD_`` (1 GiB): the fixed mmap threshold is the cause, not trimming.

**The fix**: :func:`tune_malloc` sets, through ``mallopt``, fixed values in the spirit of
glibc's dynamic rule: the mmap threshold at the rule's ceiling (32 MiB on 64-bit) and the trim
threshold at twice that, as the rule sets it. In a worker the 12 steps then cost 1.05-1.07 CPU s and 2,000-39,000
faults, as in a plain process. It runs once per worker process, from the first grokscope
task (so it also holds on clusters started by others). The memory a worker keeps after a task
is then at most ~64 MiB more than Dask's setting would keep. ``GROKSCOPE_WORKER_MALLOC=dask``
in a worker's environment keeps Dask's setting.

**Threads**: each worker process runs its tasks with an explicit torch thread count (one per
task slot by default), rather than whatever the process started with: Dask's nanny sets
``OMP_NUM_THREADS=1``, but a worker started without a nanny (``dask worker --no-nanny``, an
in-house launcher) would run torch with every core in every worker process.

Workers that are threads of the calling process (``LocalCluster(processes=False)``) are left
alone: the malloc thresholds are process-wide, torch's threads partly so (MKL's count), and
both belong to the caller there. torch's count through OpenMP is per thread: it is set in the
task's thread (the worker's executor thread), where the task's torch work runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from dataclasses import dataclass, field

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "WorkerSetup", "prepare_process", "tune_malloc"]

#: glibc's ``mallopt`` parameter numbers (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: blocks up to this size come from the heap and are reused: glibc's dynamic threshold
#: ceiling on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``), where a torch program's settles
MMAP_THRESHOLD = 32 * 1024 * 1024
#: free memory at the heap's top kept for reuse: twice the mmap threshold, as glibc's
#: dynamic rule sets it
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
#: the environment variable that keeps Dask's malloc setting in a worker (value ``dask``)
KEEP_ENV = "GROKSCOPE_WORKER_MALLOC"

_TUNED: bool | None = None  # None: not tried in this process yet


def tune_malloc() -> bool:
    """Set glibc's mmap and trim thresholds to :data:`MMAP_THRESHOLD` / :data:`TRIM_THRESHOLD`.

    Once per process; later calls return the first call's outcome.

    Returns
    -------
    bool
        True when the thresholds were set; False where there is no glibc (macOS, Windows,
        musl), where ``mallopt`` refused, or where ``GROKSCOPE_WORKER_MALLOC=dask`` asks to
        keep the process's setting.
    """
    global _TUNED
    if _TUNED is not None:
        return _TUNED
    _TUNED = False
    if not sys.platform.startswith("linux") or os.environ.get(KEEP_ENV, "").lower() == "dask":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success, 0 on error
    _TUNED = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _TUNED


@dataclass(frozen=True)
class WorkerSetup:
    """What the caller asks of the worker processes that run its tasks.

    Attributes
    ----------
    threads : int or None
        torch CPU threads per task slot (None: leave the worker's setting alone).
    caller_pid : int
        The calling process: a worker running inside it (a thread of an in-process cluster)
        changes nothing.
    """

    threads: int | None = 1
    caller_pid: int = field(default_factory=os.getpid)


def prepare_process(setup: WorkerSetup | None) -> bool:
    """Apply ``setup`` in the process running a task; called at the start of every task.

    Parameters
    ----------
    setup : WorkerSetup or None
        None does nothing.

    Returns
    -------
    bool
        True when this process is a separate worker process (and was prepared), False when it
        is the caller's own process or ``setup`` is None.
    """
    if setup is None or os.getpid() == setup.caller_pid:
        return False
    import torch  # here: the malloc part works (and is tested) without torch

    tune_malloc()
    if setup.threads is not None and torch.get_num_threads() != setup.threads:
        torch.set_num_threads(setup.threads)
    return True
