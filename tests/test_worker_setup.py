"""Dask worker processes: glibc's malloc thresholds (the cause of the 1.4x CPU per step in a
worker) and torch's threads, set by every grokscope task; the caller's own process untouched."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import xarray as xr

import grokscope as gs
from grokscope import chunked, worker_setup
from grokscope.worker_setup import WorkerSetup, prepare_process

from .conftest import record_tiny_run

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

#: a process that mallocs, touches and frees 1 MiB forty times, counting minor page faults
#: before and after tune_malloc(); worker_setup is loaded from its file (no torch, fast)
_FAULTS = textwrap.dedent("""
    import ctypes, ctypes.util, importlib.util, resource, sys
    spec = importlib.util.spec_from_file_location("ws", sys.argv[1])
    ws = importlib.util.module_from_spec(spec)
    sys.modules["ws"] = ws
    spec.loader.exec_module(ws)
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    SIZE, N = 1 << 20, 40
    def faults():
        r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(N):
            p = libc.malloc(SIZE)
            ctypes.memset(p, 1, SIZE)
            libc.free(p)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0
    before = faults()
    tuned = ws.tune_malloc()
    print(before, tuned, faults())
""")
PAGES = 40 * (1 << 20) // 4096  # every allocation faulting in all its pages: 10,240


def _faults(**env: str) -> tuple[int, bool, int]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k != worker_setup.KEEP_ENV}
    out = subprocess.run([sys.executable, "-c", _FAULTS, worker_setup.__file__],
                         env={**clean, **env}, capture_output=True, text=True, timeout=60,
                         check=True).stdout.split()
    return int(out[0]), out[1] == "True", int(out[2])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc tunables")
def test_dasks_trim_threshold_makes_every_large_block_fault_and_tune_malloc_ends_it():
    # a plain process: glibc's dynamic mmap threshold rises after the first free, blocks
    # are reused
    plain, _, _ = _faults()
    assert plain < PAGES // 5
    # as Dask's nanny starts a worker: the threshold stays at 128 KiB, each 1 MiB block is
    # a fresh mmap whose 256 pages fault in
    before, tuned, after = _faults(MALLOC_TRIM_THRESHOLD_="65536")
    assert before >= 0.9 * PAGES
    assert tuned
    assert after < PAGES // 5
    # and a worker told to keep Dask's setting keeps its cost
    before, tuned, after = _faults(MALLOC_TRIM_THRESHOLD_="65536",
                                   GROKSCOPE_WORKER_MALLOC="dask")
    assert not tuned and after >= 0.9 * PAGES


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def malloc_calls(monkeypatch):
    """tune_malloc replaced by a recorder (this test process's allocator is left alone)."""
    calls: list[int] = []
    monkeypatch.setattr(worker_setup, "tune_malloc", lambda: calls.append(1) or True)
    return calls


def test_a_worker_process_gets_its_threads_and_malloc(restore_threads, malloc_calls):
    torch.set_num_threads(1)
    assert prepare_process(WorkerSetup(threads=3, caller_pid=-1))  # another process's task
    assert torch.get_num_threads() == 3
    assert malloc_calls == [1]
    # None: the worker's own thread count stays
    assert prepare_process(WorkerSetup(threads=None, caller_pid=-1))
    assert torch.get_num_threads() == 3


def test_the_callers_own_process_is_left_alone(restore_threads, malloc_calls):
    """An in-process cluster's workers are threads of the caller: nothing process-wide."""
    torch.set_num_threads(2)
    assert WorkerSetup().caller_pid == os.getpid()
    assert not prepare_process(WorkerSetup(threads=1))
    assert not prepare_process(None)
    assert torch.get_num_threads() == 2
    assert malloc_calls == []


SETUPS: list[WorkerSetup] = []
_COMPUTE_CHUNK = chunked.compute_chunk


def _recording_compute_chunk(*args, **kwargs):
    """Module-level (pickled by reference: the in-process workers append to this list)."""
    SETUPS.append(kwargs["setup"])
    return _COMPUTE_CHUNK(*args, **kwargs)


@pytest.mark.parametrize(("num_threads", "expected"), [("auto", 1), (2, 2), (None, None)])
def test_analyze_sends_the_thread_count_to_every_chunk(tmp_path, monkeypatch, num_threads,
                                                       expected):
    from distributed import Client, LocalCluster

    path = record_tiny_run(tmp_path / "run.zarr", steps=(0, 1, 2, 3, 4, 5)).path
    SETUPS.clear()
    monkeypatch.setattr(chunked, "compute_chunk", _recording_compute_chunk)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as c, Client(c) as client:
        gs.analyze(path, ["curves"], device="cpu", progress=False, scheduler=client,
                   steps_per_task=2, num_threads=num_threads)
    assert len(SETUPS) == 3
    assert {s.threads for s in SETUPS} == {expected}
    assert {s.caller_pid for s in SETUPS} == {os.getpid()}


def _worker_state() -> dict:
    return {"threads": torch.get_num_threads(), "tuned": worker_setup._TUNED,
            "dask_env": os.environ.get("MALLOC_TRIM_THRESHOLD_")}


@pytest.mark.slow
def test_worker_processes_are_prepared_and_results_equal_serial(tmp_path):
    """A real worker process (Dask's nanny: MALLOC_TRIM_THRESHOLD_ set) after an analysis
    with num_threads=2: two torch threads, malloc tuned, the serial bits."""
    from distributed import Client, LocalCluster

    path = record_tiny_run(tmp_path / "run.zarr", steps=(0, 2, 4, 6)).path
    copy = tmp_path / "copy.zarr"
    shutil.copytree(path, copy)
    serial = gs.analyze(path, ["nfa"], device="cpu", progress=False, num_threads=1)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as c, Client(c) as client:
        before = list(client.run(_worker_state).values())[0]
        res = gs.analyze(Path(copy), ["nfa"], device="cpu", progress=False, scheduler=client,
                         steps_per_task=2, num_threads=2)
        # in a task: torch's count (OpenMP's) is per thread, and tasks run in the worker's
        # executor thread, not in the thread client.run uses
        after = client.submit(_worker_state, pure=False).result()
    assert before["dask_env"] == "65536" and before["tuned"] is None
    assert after["threads"] == 2
    assert after["tuned"] is GLIBC
    xr.testing.assert_allclose(res["nfa"], serial["nfa"])


def test_the_nannys_variables_leave_the_callers_environment(monkeypatch):
    """What a nanny writes into the caller's os.environ is undone on exit: later child
    processes would otherwise inherit Dask's malloc setting and one OpenMP thread."""
    from grokscope.distributed import nanny_environ_undone

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.setenv("SOMETHING_ELSE", "a")
    with nanny_environ_undone():
        os.environ.update({"MALLOC_TRIM_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"})
        os.environ["SOMETHING_ELSE"] = "b"  # not the nanny's: left as the caller set it
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ
    assert os.environ["OMP_NUM_THREADS"] == "7"
    assert os.environ["SOMETHING_ELSE"] == "b"


@pytest.mark.slow
def test_a_private_cluster_leaves_the_callers_environment_as_it_was(monkeypatch):
    from grokscope.distributed import dask_client

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with dask_client(workers=1) as client:
        seen = list(client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values())
    assert seen == ["65536"]  # the worker got Dask's setting (worker_setup tunes it there)
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ
    assert "OMP_NUM_THREADS" not in os.environ
