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


# ---------------------------------------------------------------------------- 3. to_netcdf
def test_every_result_exports_to_netcdf(analysed, tmp_path):
    path, run, res, _ = analysed
    for name in res:
        for how, ds in (("run.results", run.results[name]), ("analyze", res[name]),
                        ("open_zarr", _quiet_open(path, group=f"results/{name}"))):
            out = tmp_path / f"{name}-{how.replace('.', '_')}.nc"
            ds.to_netcdf(out)
            back = xr.open_dataset(out)
            assert set(back.data_vars) == set(ds.data_vars), (name, how)
            back.close()


def test_attrs_netcdf_cannot_hold_are_json_text_and_decode(tmp_path):
    from grokscope.results_io import JSON_ATTRS, annotate, decoded_attrs

    path = tmp_path / "run.zarr"
    model = TinyNet()
    with Recorder(path, model, tiny_data()) as rec:
        rec.record(0)
    ds = xr.Dataset({"v": ("step", [1.5])}, coords={"step": [0]},
                    attrs={"note": "", "flags": [True, False], "labels": ["a", "b"],
                           "nested": {"a": [1, {"b": None}]}, "steps_analyzed": [0]})
    ds["v"].attrs.update(units="1", long_name="v", extra=None)
    ds = annotate(ds, "toy", {"layers": None, "warm": True, "k": 3, "w": (0.5, 2)})
    write_result(path, "toy", ds)
    got = open_run(path).results["toy"]
    for where in (got.attrs, got["v"].attrs):  # only strings and numbers (lists of numbers)
        for k, v in where.items():
            assert isinstance(v, str | int | float | list) and not isinstance(v, bool), (k, v)
            assert not isinstance(v, list) or all(isinstance(x, int | float) for x in v), k
    assert got.attrs["param_layers"] == "null" and got.attrs["param_warm"] == "true"
    assert got.attrs["param_k"] == 3 and got.attrs["param_w"] == [0.5, 2]
    assert got.attrs["steps_analyzed"] == [0]
    assert "param_layers" in json.loads(got.attrs[JSON_ATTRS])
    logical = decoded_attrs(got.attrs)
    assert logical["param_layers"] is None and logical["param_warm"] is True
    assert logical["nested"] == {"a": [1, {"b": None}]} and logical["labels"] == ["a", "b"]
    assert logical["flags"] == [True, False] and JSON_ATTRS not in logical
    assert decoded_attrs(got["v"].attrs)["extra"] is None
    assert json.loads(got.attrs["params"]) == {"k": 3, "layers": None, "w": [0.5, 2], "warm": True}
    got.to_netcdf(tmp_path / "toy.nc")
    back = xr.open_dataset(tmp_path / "toy.nc")
    assert decoded_attrs(back.attrs)["nested"] == {"a": [1, {"b": None}]}
    back.close()
    # a result re-annotated from a stored one (the engine's incremental flush) keeps its values
    again = annotate(got, "toy", {"layers": None, "warm": False, "k": 3, "w": (0.5, 2)})
    write_result(path, "toy", again)
    logical = decoded_attrs(open_run(path).results["toy"].attrs)
    assert logical["param_warm"] is False and logical["labels"] == ["a", "b"]


def test_a_result_stored_with_native_attrs_still_reads_and_exports(tmp_path):
    """Results written before attributes were JSON-encoded (None and lists stored natively)."""
    import zarr

    from grokscope import results_io

    path = tmp_path / "run.zarr"
    model = TinyNet()
    with Recorder(path, model, tiny_data()) as rec:
        rec.record(0)
    ds = xr.Dataset({"v": ("step", [1.0])}, coords={"step": [3]},
                    attrs={"param_layers": None, "labels": ["a"], "flag": True})
    legacy = ds.copy()
    legacy.attrs[results_io.ATTRS_HASH] = results_io._attrs_digest(ds)
    legacy.to_zarr(path, group="results/old", mode="w", zarr_format=3, consolidated=False)
    zarr.open_group(path, path="results/old", mode="r+").attrs[results_io.COMPLETE_ATTR] = True
    got = open_run(path).results["old"]
    assert results_io.decoded_attrs(got.attrs) == ds.attrs
    got.to_netcdf(tmp_path / "old.nc")
