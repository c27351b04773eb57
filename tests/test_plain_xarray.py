"""A store and its results open with plain xarray calls and export to netCDF.

``xr.open_zarr(path, group="results/<name>")`` with default arguments on a store recorded,
closed and then analysed; ``xr.open_datatree`` shows the results; ``to_netcdf`` works for every
result; tensor dims a user can type; ``Run.to_datatree()``.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import xarray as xr

import grokscope as gs
from grokscope.results_io import write_result
from grokscope.store import Recorder, open_run

from ._store_helpers import TinyNet, fill_step, tiny_data
from .conftest import record_tiny_run

STEPS = (0, 5, 10, 20)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """A tiny MLP run recorded, closed, then analysed with every measure that applies."""
    path = tmp_path_factory.mktemp("plain") / "run.zarr"
    run = record_tiny_run(path, steps=STEPS)
    root_before = (path / "zarr.json").read_bytes()
    res = gs.analyze(run, None, device="cpu", progress=False, num_threads=1)
    return path, gs.open_run(path), dict(res), root_before


def _quiet_open(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # xarray: no consolidated metadata
        return xr.open_zarr(*args, **kwargs)


# ---------------------------------------------------------------------------- 1. open_zarr(group=)
def test_results_open_with_default_open_zarr(analysed):
    path, run, res, _ = analysed
    assert {"curves", "nfa", "phases"} <= set(res)
    for name in res:
        ds = _quiet_open(path, group=f"results/{name}")  # default consolidated=None
        assert set(ds.data_vars) == set(run.results[name].data_vars), name
        if "step" in ds.dims:
            np.testing.assert_array_equal(ds.step.values, run.results[name].step.values)
    # the run itself still opens, exactly the committed rows
    root = _quiet_open(path)
    np.testing.assert_array_equal(root.step.values, STEPS)
    assert set(run.params.data_vars) <= set(root.data_vars)


def test_the_results_writer_never_rewrites_the_root(analysed):
    path, _, _, root_before = analysed
    assert (path / "zarr.json").read_bytes() == root_before
    assert "consolidated_metadata" not in json.loads(root_before)


def test_a_consolidated_recording_drops_its_consolidated_metadata_on_close(tmp_path):
    path = tmp_path / "run.zarr"
    model = TinyNet()
    with Recorder(path, model, tiny_data(), commit="consolidated") as rec:
        for s in range(3):
            fill_step(model, s)
            rec.record(s, metrics={"train_loss": s * 0.5})
        # while recording, plain consolidated reads see the committed prefix
        assert xr.open_zarr(path, consolidated=True).sizes["step"] == 3
    assert "consolidated_metadata" not in json.loads((path / "zarr.json").read_text())
    ds = xr.Dataset({"v": ("step", [1.0, 2.0])}, coords={"step": [0, 2]})
    write_result(path, "late", ds)
    got = _quiet_open(path, group="results/late")
    np.testing.assert_array_equal(got.v.values, [1.0, 2.0])
