"""Per-run tasks on Dask: the same results as the serial path, failures collected and named."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import xarray as xr

import grokscope as gs
from grokscope.distributed import (
    DistributedError,
    analyze_many,
    dask_client,
    map_runs,
)
from grokscope.errors import ConfigError
from tests.conftest import record_tiny_run

MEASURES = ["curves", "phases"]


@pytest.fixture(scope="module")
def run_pairs(tmp_path_factory):
    """Two tiny runs, each stored twice (``serial/`` and ``dask/`` copies)."""
    root = tmp_path_factory.mktemp("dist")
    record_tiny_run(root / "serial" / "a.zarr", seed=0, steps=(0, 3, 8))
    record_tiny_run(root / "serial" / "b.zarr", seed=1, steps=(0, 3, 8))
    return root


def _copies(root, tag):
    dst = root / tag
    if not dst.exists():
        shutil.copytree(root / "serial", dst)
    return [str(dst / "a.zarr"), str(dst / "b.zarr")]


@pytest.fixture(scope="module")
def serial_results(run_pairs):
    paths = [str(run_pairs / "serial" / n) for n in ("a.zarr", "b.zarr")]
    summary = analyze_many(paths, MEASURES, device="cpu", progress=False)
    return paths, summary


def _assert_same(serial_paths, other_paths):
    for p, q in zip(serial_paths, other_paths):
        ra, rb = gs.open_run(p).results, gs.open_run(q).results
        assert sorted(ra) == sorted(rb) == sorted(MEASURES)
        for name in MEASURES:
            xr.testing.assert_allclose(ra[name].load(), rb[name].load())


def test_serial_summary(serial_results):
    paths, summary = serial_results
    assert list(summary) == paths
    for p in paths:
        assert summary[p]["measures"] == MEASURES
        assert summary[p]["skipped"] == {}
        assert summary[p]["seconds"] >= 0
        assert sorted(gs.open_run(p).results) == MEASURES


def test_dask_threads_match_serial(run_pairs, serial_results):
    """Fast variant: an in-process cluster, passed as a Client."""
    from distributed import Client, LocalCluster

    paths = _copies(run_pairs, "threads")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        summary = analyze_many(paths, MEASURES, device="cpu", scheduler=client,
                               progress=False)
        assert client.status == "running"  # a Client passed in is left open
    assert list(summary) == paths
    assert all(s["measures"] == MEASURES for s in summary.values())
    _assert_same(serial_results[0], paths)


@pytest.mark.slow
def test_dask_processes_match_serial(run_pairs, serial_results):
    """A real LocalCluster of two worker processes, reached by its address."""
    from distributed import LocalCluster

    paths = _copies(run_pairs, "processes")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        summary = analyze_many(paths, MEASURES, device="cpu",
                               scheduler=cluster.scheduler_address, progress=False)
    assert all(s["measures"] == MEASURES for s in summary.values())
    _assert_same(serial_results[0], paths)


@pytest.mark.slow
def test_sweep_on_local_cluster_matches_serial(tmp_path):
    from grokscope.sweep import sweep

    kw = dict(grid={"weight_decay": [0.0, 1.0]}, seeds=1, progress=False, steps=4, p=7,
              train_frac=0.5, width=8, lr=1e-2, device="cpu")
    serial = sweep("modular", "mlp", out=tmp_path / "serial", **kw)
    parallel = sweep("modular", "mlp", out=tmp_path / "dask", workers=2, **kw)
    for p, q in zip(serial, parallel):
        a, b = gs.open_run(p), gs.open_run(q)
        np.testing.assert_array_equal(a.steps, b.steps)
        for step in a.steps:
            sa, sb = a.state_dict_at(int(step)), b.state_dict_at(int(step))
            for k in sa:
                torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6)


def test_failures_are_collected_and_named(run_pairs, tmp_path):
    good = _copies(run_pairs, "failing")[0]
    missing = str(tmp_path / "no_such_run")
    with pytest.raises(DistributedError, match="1 of 2 analyze runs failed") as info:
        analyze_many([good, missing], ["curves"], device="cpu", progress=False)
    err = info.value
    assert list(err.failures) == [missing]
    assert "no_such_run" in str(err)
    assert list(err.results) == [good]
    assert err.results[good]["measures"] == ["curves"]


def _maybe_fail(x: int) -> int:
    if x == 2:
        raise ConfigError("two is not allowed")
    if x == 3:
        raise RuntimeError("a bug")
    return x * 10


def test_map_runs_serial_semantics():
    out = map_runs(_maybe_fail, {"a": {"x": 1}, "b": {"x": 4}}, progress=False)
    assert out == {"a": 10, "b": 40}
    with pytest.raises(DistributedError) as info:
        map_runs(_maybe_fail, {"a": {"x": 1}, "b": {"x": 2}, "c": {"x": 5}}, progress=False)
    assert info.value.results == {"a": 10, "c": 50}
    assert "two is not allowed" in info.value.failures["b"]
    assert isinstance(info.value.__cause__, ConfigError)
    with pytest.raises(RuntimeError, match="a bug"):  # a bug is not collected
        map_runs(_maybe_fail, {"a": {"x": 3}}, progress=False)
    assert map_runs(_maybe_fail, {}, progress=False) == {}


@pytest.mark.parametrize(
    ("workers", "scheduler", "match"),
    [(2, "tcp://127.0.0.1:8786", "not both"), (0, None, "positive"), (True, None, "positive"),
     (None, 8786, "address")],
)
def test_bad_cluster_arguments(workers, scheduler, match):
    with pytest.raises(ConfigError, match=match), dask_client(workers, scheduler):
        pass


def test_no_paths():
    with pytest.raises(ConfigError, match="no run paths"):
        analyze_many([], progress=False)
