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


# ---------------------------------------------------------------------------- 4. typable dims
def test_tensor_dims_are_identifiers_and_unique():
    from grokscope.store.schema import identifier, tensor_dims

    assert identifier("layers.0.weight") == "layers_0_weight" and identifier("0.bias") == "_0_bias"
    dims = tensor_dims({"a.b": 1, "a_b": 2, "0.w": 1, "blocks.0.mlp.W_in": 2, "x-y": 0})
    assert dims["a_b"] == ("step", "a_b_dim0", "a_b_dim1")  # already an identifier: kept
    assert dims["a.b"] == ("step", "a_b_2_dim0")
    assert dims["0.w"] == ("step", "_0_w_dim0")
    assert dims["blocks.0.mlp.W_in"] == ("step", "blocks_0_mlp_W_in_dim0", "blocks_0_mlp_W_in_dim1")
    assert dims["x-y"] == ("step",)
    flat = [d for ds in dims.values() for d in ds[1:]]
    assert len(flat) == len(set(flat)) and all(d.isidentifier() for d in flat)
    # a dim never takes an array's name
    clash = tensor_dims({"w": 1, "w_dim0": 1})
    assert clash["w"] == ("step", "w_2_dim0") and clash["w_dim0"] == ("step", "w_dim0_dim0")
    assert tensor_dims({"a.b": 1}, style=None)["a.b"] == ("step", "a.b.dim0")


def test_new_stores_have_typable_dims(analysed):
    path, run, _, _ = analysed
    assert run.params["layers.0.weight"].dims == ("step", "layers_0_weight_dim0", "layers_0_weight_dim1")
    w = run.params["layers.0.weight"].isel(layers_0_weight_dim0=0)  # typed as a keyword
    assert w.shape == (len(STEPS), run.params["layers.0.weight"].shape[2])
    root = _quiet_open(path)
    assert root["layers.0.weight"].dims == run.params["layers.0.weight"].dims
    data = _quiet_open(path, group="data")
    assert data["x_train"].dims == ("x_train_dim0", "x_train_dim1")
    assert data["extra.pairs_train"].dims == ("extra_pairs_train_dim0", "extra_pairs_train_dim1")
    for name in ("layers.0.weight", "x_train"):
        for d in (root if name in root else data)[name].dims:
            assert d.isidentifier(), d


def test_stores_with_dotted_dims_keep_reading(tmp_path):
    """A store written before typable dims (no ``dims`` key, ``fc1.weight.dim0`` on disk)."""
    import zarr

    path = tmp_path / "old.zarr"
    model = TinyNet()
    with Recorder(path, model, tiny_data()) as rec:
        for s in (0, 1):
            fill_step(model, s)
            rec.record(s)
    doc = json.loads((path / "zarr.json").read_text())
    del doc["attributes"]["grokscope"]["dims"]
    (path / "zarr.json").write_text(json.dumps(doc))
    for key, shape in (("fc1.weight", 2), ("fc1.bias", 1), ("fc2.weight", 2), ("fc2.bias", 1)):
        adoc = json.loads((path / key / "zarr.json").read_text())
        adoc["dimension_names"] = ["step", *(f"{key}.dim{i}" for i in range(shape))]
        (path / key / "zarr.json").write_text(json.dumps(adoc))
    run = open_run(path)
    assert run.params["fc1.weight"].dims == ("step", "fc1.weight.dim0", "fc1.weight.dim1")
    np.testing.assert_array_equal(run.params["fc1.weight"].values, run.trajectory("fc1.weight"))
    assert _quiet_open(path)["fc1.weight"].dims == run.params["fc1.weight"].dims
    # a writer appending to it keeps its spelling
    with Recorder(path, model, tiny_data()) as rec:
        fill_step(model, 2)
        rec.record(2)
    run = open_run(path)
    assert run.params["fc1.weight"].dims[1] == "fc1.weight.dim0" and list(run.steps) == [0, 1, 2]
    assert zarr.open_array(path, path="fc1.weight", mode="r").metadata.dimension_names[1] == "fc1.weight.dim0"


# ---------------------------------------------------------------------------- 2. open_datatree
def test_open_datatree_shows_every_result(analysed):
    path, run, res, _ = analysed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        tree = xr.open_datatree(path, engine="zarr")
    for name in res:
        node = tree[f"results/{name}"]
        assert set(node.data_vars) == set(run.results[name].data_vars), name
        for v in node.data_vars:
            np.testing.assert_array_equal(node[v].values, run.results[name][v].values)
    np.testing.assert_array_equal(tree["step"].values, STEPS)
    assert "x_train" in tree["data"].data_vars


def test_open_groups_reads_a_result_of_some_steps(tmp_path):
    """xarray's DataTree requires a child's ``step`` to align with the root's: a result of
    some of the steps opens with ``xr.open_groups`` (or one ``open_zarr`` per group) and sits
    in ``run.to_datatree()``."""
    path = tmp_path / "run.zarr"
    model = TinyNet()
    with Recorder(path, model, tiny_data()) as rec:
        for s in (0, 1, 2):
            fill_step(model, s)
            rec.record(s)
    write_result(path, "some", xr.Dataset({"v": ("step", [1.0, 2.0])}, coords={"step": [0, 2]}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        groups = xr.open_groups(path, engine="zarr")
    np.testing.assert_array_equal(groups["/results/some"].step.values, [0, 2])
    tree = open_run(path).to_datatree()
    np.testing.assert_array_equal(tree["results/some"].step.values, [0, 2])
    np.testing.assert_array_equal(tree["params"].step.values, [0, 1, 2])


# ---------------------------------------------------------------------------- 5. Run.to_datatree
def test_run_to_datatree(analysed):
    path, run, res, _ = analysed
    tree = run.to_datatree()
    assert isinstance(tree, xr.DataTree)
    assert {"params", "metrics", "data", "results"} <= set(tree.children)
    assert set(tree["results"].children) == set(res)
    params = tree["params"].to_dataset()
    w = params["layers.0.weight"]
    assert w.dims == ("step", "layers_0_weight_dim0", "layers_0_weight_dim1")
    assert w.chunks is not None  # lazy: nothing read yet
    np.testing.assert_array_equal(w.values, run.trajectory("layers.0.weight"))
    m = tree["metrics"].to_dataset()
    assert m["test_acc"].chunks is not None
    np.testing.assert_array_equal(m["test_acc"].values, run.metrics["test_acc"].values)
    np.testing.assert_array_equal(tree["data"]["x_train"].values, run.data.x_train.numpy())
    assert tree["data"]["x_train"].dims == ("x_train_dim0", "x_train_dim1")
    for name in res:
        got = tree[f"results/{name}"].to_dataset()
        xr.testing.assert_identical(got, run.results[name])
    meta = json.loads(tree.attrs["grokscope"])
    assert meta["commit"]["count"] == len(STEPS)
    for node in tree.subtree:  # netCDF-compatible attributes everywhere
        for k, v in node.attrs.items():
            assert isinstance(v, str | int | float | list) and not isinstance(v, bool), (node.path, k)


def test_to_datatree_of_a_run_without_data_and_with_dotted_dims(tmp_path):
    import torch

    path = tmp_path / "nodata.zarr"
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with Recorder(path, model, None) as rec:
        rec.record(0)
    doc = json.loads((path / "zarr.json").read_text())
    del doc["attributes"]["grokscope"]["dims"]  # as written before typable dims
    (path / "zarr.json").write_text(json.dumps(doc))
    run = open_run(path)
    assert run.params["0.weight"].dims == ("step", "0.weight.dim0", "0.weight.dim1")
    tree = run.to_datatree()
    assert "data" not in tree.children
    assert tree["params"]["0.weight"].dims == ("step", "_0_weight_dim0", "_0_weight_dim1")
