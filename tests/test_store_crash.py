"""Crash safety with real processes: a forked writer is SIGKILLed at random moments; a reader
polls a store while a writer appends."""

from __future__ import annotations

import os
import random
import signal
import time

import numpy as np
import pytest
import xarray as xr

from grokscope.store import Recorder, open_run
from tests._store_helpers import TinyNet, check_run_exact, child_main, fill_step, tiny_data

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _spawn(path, *, seed, close_every=0, sleep=0.0, max_steps=10**9) -> int:
    pid = os.fork()
    if pid == 0:  # child
        child_main(str(path), seed, close_every, sleep, max_steps)
    return pid


def _kill(pid: int) -> int:
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return status


def _wait_for_store(path, timeout=30.0) -> None:
    t0 = time.monotonic()
    while not (path / "zarr.json").exists():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("the writer never created the store")
        time.sleep(0.005)


def _crash_trials(path, trials: int, seed: int) -> None:
    rnd = random.Random(seed)
    model = TinyNet()
    committed = 0
    for trial in range(trials):
        pid = _spawn(path, seed=seed * 1000 + trial, close_every=rnd.choice([0, 0, 7, 25]))
        if trial == 0:
            _wait_for_store(path)
        time.sleep(rnd.uniform(0.0, 0.12))
        status = _kill(pid)
        assert os.WIFSIGNALED(status), f"the writer exited by itself (status {status})"
        run = open_run(path)  # must open after any kill
        check_run_exact(run, model)
        assert len(run.steps) >= committed  # commits are never lost
        committed = len(run.steps)
    # a new writer trims the uncommitted tail and continues; a clean close leaves exact arrays
    with Recorder(path, model, tiny_data()) as rec:
        last = rec.last_step
        assert rec.count == committed
        step = 0 if last is None else last + 1
        fill_step(model, step)
        rec.record(step, metrics={"train_loss": step * 0.5})
    run = open_run(path)
    check_run_exact(run, model)
    assert run.steps[-1] == step and len(run.steps) == committed + 1
    ds = xr.open_zarr(path)
    assert ds.sizes["step"] == committed + 1
    np.testing.assert_array_equal(ds.step.values, run.steps)
    leftovers = [p for p in path.rglob("*") if p.name.endswith((".gstmp", ".partial"))]
    assert not leftovers


def test_sigkill_writer_never_corrupts(tmp_path):
    _crash_trials(tmp_path / "run.zarr", trials=20, seed=1)


@pytest.mark.slow
def test_sigkill_writer_never_corrupts_many(tmp_path):
    _crash_trials(tmp_path / "run.zarr", trials=200, seed=2)


def test_concurrent_reader_sees_consistent_prefix(tmp_path):
    path = tmp_path / "run.zarr"
    model = TinyNet()
    pid = _spawn(path, seed=7, close_every=40, sleep=0.001, max_steps=150)
    _wait_for_store(path)
    seen, opens = 0, 0
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            run = open_run(path)
            check_run_exact(run, model)
            assert len(run.steps) >= seen
            seen = len(run.steps)
            if len(run.steps):
                np.testing.assert_array_equal(run.params["fc2.bias"].values[:, 0],
                                              (run.steps + 3 / 1000).astype(np.float32))
            opens += 1
            if done:
                assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
                break
    finally:
        if not done:
            _kill(pid)
    assert opens > 3
    assert len(open_run(path).steps) == 150
