"""One run's steps split into Dask tasks: identical to the serial path, stateful measures
carried across chunk boundaries, failures named and nothing written, the CLI flags."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import xarray as xr

import grokscope as gs
from grokscope import chunked
from grokscope.chunked import ChunkError, auto_steps_per_task, split_steps
from grokscope.cli import main
from grokscope.distributed import analyze_many
from grokscope.errors import ConfigError, GrokscopeError
from grokscope.measures import registry

from .conftest import record_tiny_run

STEPS = (0, 2, 4, 6, 9, 12, 16, 20)
#: cheap but real: nfa (stateless, per layer), curves, and mixture (stateful warm start)
MEASURES = {"curves": {}, "nfa": {}, "mixture": {"n_init": 1, "max_components": 2}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("chunked")
    record_tiny_run(root / "run.zarr", steps=STEPS)
    return root


@pytest.fixture(scope="module")
def serial(store):
    path = store / "serial.zarr"
    shutil.copytree(store / "run.zarr", path)
    return gs.analyze(path, MEASURES, device="cpu", progress=False, num_threads=1)


def _copy(store, name):
    path = store / name
    shutil.copytree(store / "run.zarr", path)
    return path


@pytest.fixture(scope="module")
def cluster():
    """An in-process cluster of two single-threaded workers (fast to start)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as c, Client(c) as client:
        yield client


@pytest.fixture
def failing_measure():
    """A step measure that fails at step 9 (a GrokscopeError), removed afterwards."""

    @registry.register("_fails_at_9")
    def _fails_at_9(ckpt):
        """Test measure: the first weight's mean; fails at step 9."""
        if ckpt.step == 9:
            raise GrokscopeError("this checkpoint cannot be measured")
        w = next(iter(ckpt.model.parameters())).detach()
        return xr.Dataset({"value": ((), float(w.mean()))})

    yield "_fails_at_9"
    registry._REGISTRY.pop("_fails_at_9", None)


@pytest.fixture
def raising_on_nan():
    """A measure that raises on non-finite weights (the engine then copies the layout of the
    previous step's result with NaN) and returns an int and a float."""

    @registry.register("_raises_on_nan")
    def _raises_on_nan(ckpt):
        """Test measure."""
        w = next(iter(ckpt.model.parameters())).detach()
        if not torch.isfinite(w).all():
            raise ValueError("NaN weights")
        return xr.Dataset({"mean": ((), float(w.mean())), "n": ((), np.int64(w.numel())),
                           "row": (("i",), w[0, :3].double().numpy())})

    yield "_raises_on_nan"
    registry._REGISTRY.pop("_raises_on_nan", None)


def test_split_and_default_chunk_size():
    assert split_steps([0, 1, 5, 9, 10], 2) == [[0, 1], [5, 9], [10]]
    assert split_steps([3], 4) == [[3]]
    # ~4 tasks per worker slot, within [4, 512] steps
    assert auto_steps_per_task(100, 2) == 13
    assert auto_steps_per_task(100_000, 8) == 512
    assert auto_steps_per_task(10, 8) == 4
    with pytest.raises(ConfigError, match="steps_per_task must be a positive integer"):
        chunked.check_steps_per_task(0)
    with pytest.raises(ConfigError, match="steps_per_task must be a positive integer"):
        chunked.check_steps_per_task(True)


def test_chunked_equals_serial_bitwise_with_mixture_state_carried(store, serial, cluster):
    path = _copy(store, "chunked.zarr")
    res = gs.analyze(path, MEASURES, device="cpu", progress=False, scheduler=cluster,
                     steps_per_task=3)
    assert sorted(res) == sorted(serial)
    for name in MEASURES:
        xr.testing.assert_identical(res[name], serial[name])  # values bitwise, attrs too
        assert res.timings[name] > 0
    # the state crossed the chunk boundaries (3 | 3 | 2 steps): only step 0 starts cold
    mix = res["mixture"]
    assert mix.warm_started.values.tolist() == [False] + [True] * (len(STEPS) - 1)
    stored = gs.open_run(path).results["mixture"].load()
    xr.testing.assert_identical(stored, serial["mixture"])


def test_chunked_extension_rewarms_like_the_serial_path(store, cluster):
    """Half the steps stored first, the rest in chunks: equal to the serial extension."""
    a = _copy(store, "ext_serial.zarr")
    m = {"mixture": MEASURES["mixture"]}
    gs.analyze(a, m, steps="0:6", device="cpu", progress=False, num_threads=1)
    b = store / "ext_chunked.zarr"
    shutil.copytree(a, b)  # the same stored prefix
    ser = gs.analyze(a, m, device="cpu", progress=False, num_threads=1)["mixture"]
    chk = gs.analyze(b, m, device="cpu", progress=False, scheduler=cluster,
                     steps_per_task=2)["mixture"]
    xr.testing.assert_identical(chk, ser)
    assert bool(chk.warm_started.sel(step=9))  # the replayed stored step 6 warmed step 9


def test_a_failed_chunk_names_run_and_steps_and_writes_nothing(store, cluster, failing_measure):
    path = _copy(store, "failing.zarr")
    with pytest.raises(ChunkError) as info:
        gs.analyze(path, ["curves", failing_measure], device="cpu", progress=False,
                   scheduler=cluster, steps_per_task=3)
    msg = str(info.value)
    assert str(path) in msg
    assert "steps 6..12 (3 steps)" in msg and "'_fails_at_9' failed at step 9" in msg
    assert "cannot be measured" in msg and "nothing was written" in msg
    assert list(gs.open_run(path).results) == []  # not even the chunks that succeeded


def test_nonfinite_first_step_of_a_chunk_matches_serial(tmp_path, cluster, raising_on_nan):
    """A measure raising on NaN weights at a chunk's first step gets the serial layout."""
    a = record_tiny_run(tmp_path / "a.zarr", steps=(0, 5, 10, 20), break_at=10).path
    b = tmp_path / "b.zarr"
    shutil.copytree(a, b)
    with pytest.warns(UserWarning, match="non-finite"):
        ser = gs.analyze(a, [raising_on_nan], device="cpu", progress=False, num_threads=1)
    with pytest.warns(UserWarning, match="step 10 has non-finite"):
        chk = gs.analyze(b, [raising_on_nan], device="cpu", progress=False, scheduler=cluster,
                         steps_per_task=2)
    xr.testing.assert_identical(chk[raising_on_nan], ser[raising_on_nan])
    assert int(chk[raising_on_nan].n.sel(step=10)) == int(ser[raising_on_nan].n.sel(step=0))


CHUNKS_SEEN: list[list[int]] = []
_COMPUTE_CHUNK = chunked.compute_chunk


def _counting_compute_chunk(*args, **kwargs):
    """Module-level (pickled by reference: the in-process workers append to this list)."""
    CHUNKS_SEEN.append(args[2])
    return _COMPUTE_CHUNK(*args, **kwargs)


def test_analyze_many_splits_a_single_run(store, serial, cluster, monkeypatch):
    CHUNKS_SEEN.clear()
    monkeypatch.setattr(chunked, "compute_chunk", _counting_compute_chunk)
    path = _copy(store, "many.zarr")
    summary = analyze_many([path], {"curves": {}}, device="cpu", scheduler=cluster,
                           progress=False)
    assert summary[str(path)]["measures"] == ["curves"]
    # one run on 2 workers: 8 steps in chunks of 4 (the minimum default size)
    assert sorted(CHUNKS_SEEN) == [[0, 2, 4, 6], [9, 12, 16, 20]]
    xr.testing.assert_identical(gs.open_run(path).results["curves"].load(), serial["curves"])


def test_steps_per_task_needs_dask(store):
    with pytest.raises(ConfigError, match="pass workers=N or scheduler=ADDRESS"):
        gs.analyze(store / "run.zarr", ["curves"], steps_per_task=2, progress=False)


def test_cli_scheduler_and_steps_per_task(store, serial, cluster, capsys):
    path = _copy(store, "cli.zarr")
    rc = main(["analyze", str(path), "-m", "curves", "--device", "cpu", "--quiet",
               "--scheduler", cluster.scheduler.address, "--steps-per-task", "3"])
    assert rc == 0
    xr.testing.assert_identical(gs.open_run(path).results["curves"].load(), serial["curves"])
    rc = main(["analyze", str(path), "-m", "curves", "--steps-per-task", "3"])
    assert rc != 0
    assert "--workers N or --scheduler ADDRESS" in capsys.readouterr().err


@pytest.mark.slow
def test_local_cluster_processes_equal_serial(store, serial):
    """Two worker processes started by analyze(workers=2): the same bits as serial."""
    path = _copy(store, "processes.zarr")
    res = gs.analyze(path, MEASURES, device="cpu", progress=False, workers=2,
                     steps_per_task=2)
    for name in MEASURES:
        xr.testing.assert_identical(res[name], serial[name])


@pytest.mark.slow
def test_docs_example_runs_as_written(tmp_path):
    """docs/distributed.md's ``doc-test-slow`` block (worker processes: too slow for the
    default suite's tests/test_docs_examples.py)."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    page = (Path(__file__).parents[1] / "docs" / "distributed.md").read_text()
    blocks = re.findall(r"<!-- doc-test-slow: ([\w-]+) -->\n```python\n(.*?)```", page, re.S)
    assert [name for name, _ in blocks] == ["chunked-equals-serial"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", blocks[0][1]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "identical: ['nfa', 'mixture'] 12 steps" in proc.stdout


OPENED: list[str] = []


def test_each_worker_thread_opens_the_run_once_per_analysis(store, serial, cluster, monkeypatch):
    """4 chunks on 2 single-threaded workers: the caller's opening plus at most one per worker
    (3), not one per chunk (5); a second analysis opens afresh (it may see a grown store)."""
    from grokscope.store import run as run_module

    real = run_module.open_run

    def counting(path, **kw):
        OPENED.append(str(path))
        return real(path, **kw)

    monkeypatch.setattr(run_module, "open_run", counting)
    path = _copy(store, "opened.zarr")
    OPENED.clear()
    res = gs.analyze(path, {"curves": {}}, device="cpu", progress=False, scheduler=cluster,
                     steps_per_task=2, recompute=True)
    xr.testing.assert_identical(res["curves"], serial["curves"])
    assert 2 <= len([p for p in OPENED if p == str(path.resolve())]) <= 3, OPENED
    OPENED.clear()
    gs.analyze(path, {"curves": {}}, device="cpu", progress=False, scheduler=cluster,
               steps_per_task=2, recompute=True)
    assert 2 <= len([p for p in OPENED if p == str(path.resolve())]) <= 3, OPENED
