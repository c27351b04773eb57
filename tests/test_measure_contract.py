"""The registry-wide contract: every registered measure obeys the same rules.

Like scikit-learn's common tests, one test body runs over every measure: default parameters
work through the engine, results carry a ``step`` dim (step measures) and record every
parameter in attrs, recomputation is deterministic, and a one-step run is handled. Every
variable of every result has a ``long_name`` and ``units`` and is documented in
``docs/methods.md`` (its measure's section), whose tables and parameter defaults match the code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import grokscope as gs
from grokscope.measures import get, names
from grokscope.measures._variables import (
    ENGINE_VARIABLES,
    VARIABLES,
    annotate_variables,
    update_markdown,
)

from ._zoo import record
from .conftest import record_tiny_run

MEASURES = names()
METHODS_DOC = Path(__file__).parents[1] / "docs" / "methods.md"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("contract")
    return {
        "mlp": record_tiny_run(base / "mlp.zarr"),
        "transformer": record_tiny_run(base / "tf.zarr", model_name="transformer", encoding="tokens"),
        "one_step": record_tiny_run(base / "one.zarr", steps=(0,)),
        "raw_transformer": _open(record(base / "raw.zarr", "raw_transformer"), base / "raw.zarr"),
    }


def _open(_recorded, path):
    return gs.open_run(path)


def test_registry_is_populated():
    expected = {"curves", "phases", "mixture", "alignment", "lmn", "nfa", "fourier", "kernel", "rqi"}
    assert expected <= set(MEASURES)


@pytest.mark.parametrize("name", MEASURES)
def test_spec_declares_keyword_defaults(name):
    spec = get(name)
    assert spec.kind in ("step", "trajectory")
    assert spec.description, f"measure {name} needs a docstring"
    for dep in spec.after:
        assert dep in MEASURES


def _check_result(name, ds, spec):
    assert isinstance(ds, xr.Dataset)
    assert ds.attrs["measure"] == name
    assert "grokscope_version" in ds.attrs
    stored = json.loads(ds.attrs["params"])
    assert set(stored) == set(spec.defaults)
    for k in spec.defaults:
        assert f"param_{k}" in ds.attrs
    if spec.kind == "step":
        assert "step" in ds.dims
        assert ds.sizes["step"] >= 1
    assert len(ds.data_vars) > 0
    _check_variables(name, ds)


def _section(name: str) -> str:
    """The part of docs/methods.md about measure ``name``: from its ``### `name` `` heading,
    or the ``## N. ... (`name`)`` heading of a one-measure family, to the next such heading."""
    text = METHODS_DOC.read_text()
    heads = list(re.finditer(r"^(##|###) (.*)$", text, flags=re.M))
    for i, m in enumerate(heads):
        if f"`{name}`" in m.group(2):
            end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
            return text[m.end():end]
    raise AssertionError(f"docs/methods.md has no section headed with `{name}`")


def _variables_of(ds):
    return [*map(str, ds.data_vars), *(str(c) for c in ds.coords if c not in ds.indexes)]


def _check_variables(name, ds):
    """Every data variable and non-index coordinate has a long_name and units, is listed in
    grokscope/measures/_variables.py and appears in the measure's section of docs/methods.md.
    The engine's own variables are checked by test_engine_variables_are_described."""
    section = _section(name)
    for v in _variables_of(ds):
        if v in ENGINE_VARIABLES:
            continue
        attrs = ds[v].attrs
        assert str(attrs.get("long_name", "")).strip(), f"{name}.{v} has no long_name"
        assert str(attrs.get("units", "")).strip(), f"{name}.{v} has no units"
        assert v in VARIABLES.get(name, {}), (
            f"{name}.{v} is not described in grokscope/measures/_variables.py"
        )
        assert f"`{v}`" in section, f"{name}.{v} is not documented in docs/methods.md"


@pytest.mark.parametrize("which", ["mlp", "transformer", "raw_transformer"])
@pytest.mark.parametrize("name", MEASURES)
def test_defaults_work_and_are_deterministic(runs, which, name):
    run = runs[which]
    spec = get(name)
    res = gs.analyze(run, [name], device="cpu", progress=False, recompute=True)
    if name in res.skipped:
        assert isinstance(res.skipped[name], str) and res.skipped[name]
        # a Nanda-style raw-parameter transformer on a+b mod p: every measure applies
        assert which != "raw_transformer", res.skipped[name]
        pytest.skip(f"{name} does not apply to {which}: {res.skipped[name]}")
    ds = res[name]
    _check_result(name, ds, spec)
    if spec.kind == "step":
        assert ds.step.values.tolist() == run.steps.tolist()
    again = gs.analyze(run, [name], device="cpu", progress=False, recompute=True)[name]
    xr.testing.assert_allclose(ds.drop_attrs() if hasattr(ds, "drop_attrs") else ds,
                               again.drop_attrs() if hasattr(again, "drop_attrs") else again)


@pytest.mark.parametrize("name", MEASURES)
def test_one_step_run(runs, name):
    run = runs["one_step"]
    res = gs.analyze(run, [name], device="cpu", progress=False, recompute=True)
    if name in res.skipped:
        pytest.skip(res.skipped[name])
    ds = res[name]
    _check_result(name, ds, get(name))
    if get(name).kind == "step":
        assert ds.sizes["step"] == 1


def test_rerun_skips_and_changed_params_recompute(runs):
    run = runs["mlp"]
    first = gs.analyze(run, ["curves"], device="cpu", progress=False, recompute=True)["curves"]
    same = gs.analyze(run, ["curves"], device="cpu", progress=False)["curves"]
    xr.testing.assert_identical(first, same)
    spec = get("curves")
    # a changed parameter recomputes (and records the new value)
    k, v = next(iter(spec.defaults.items()))
    new = v * 2 if isinstance(v, int) and not isinstance(v, bool) else v
    changed = gs.analyze(run, {"curves": {k: new}}, device="cpu", progress=False)["curves"]
    assert changed.attrs[f"param_{k}"] == new
    assert np.array_equal(changed.step.values, run.steps)


# ------------------------------------------------------------------ variables and their docs
@pytest.mark.parametrize("name", MEASURES)
def test_every_described_variable_is_output(runs, name):
    """No stale entry: every variable described for a measure is output by it on some run
    (``nfa``'s matrices with ``store_matrices=True``)."""
    seen: set[str] = set()
    extra = {"nfa": {"store_matrices": True}}
    for which in ("mlp", "transformer", "raw_transformer"):
        for params in ({}, extra.get(name) if which == "mlp" else None):
            if params is None:
                continue
            res = gs.analyze(runs[which], {name: params}, device="cpu", progress=False)
            if name in res.skipped:
                continue
            _check_variables(name, res[name])
            seen |= set(_variables_of(res[name]))
    assert set(VARIABLES[name]) <= seen, sorted(set(VARIABLES[name]) - seen)


def test_engine_variables_are_described(runs):
    ds = gs.analyze(runs["mlp"], ["curves"], device="cpu", progress=False)["curves"]
    for v in ENGINE_VARIABLES:
        assert ds[v].attrs.get("long_name") and ds[v].attrs.get("units"), v


def test_engine_variables_are_documented():
    text = METHODS_DOC.read_text()
    for v in ENGINE_VARIABLES:
        assert f"`{v}`" in text


def test_methods_doc_tables_match_the_code():
    """docs/methods.md's variable tables are generated from grokscope/measures/_variables.py:
    rerun ``python -m grokscope.measures._variables docs/methods.md`` after changing it."""
    text = METHODS_DOC.read_text()
    assert update_markdown(text) == text
    for name in MEASURES:
        assert f"<!-- variables: {name} -->" in _section(name), name


def _default_text(v):
    return f'"{v}"' if isinstance(v, str) else repr(v)


@pytest.mark.parametrize("name", MEASURES)
def test_methods_doc_states_the_defaults_of_the_code(name):
    """Each measure's parameter table in docs/methods.md lists every parameter with the
    default the code declares (and nothing else)."""
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", _section(name), flags=re.M))
    want = {k: _default_text(v) for k, v in get(name).defaults.items()}
    assert rows == want


def test_annotation_keeps_a_measures_own_attrs_and_skips_unknown_names():
    ds = xr.Dataset({"nfa_corr": ((), 0.5), "mystery": ((), 1.0)})
    ds["nfa_corr"].attrs["long_name"] = "Pearson(W^T W, AGOP)"
    out = annotate_variables(ds, "nfa")
    assert out["nfa_corr"].attrs["long_name"] == "Pearson(W^T W, AGOP)"
    assert out["nfa_corr"].attrs["units"] == "1"
    assert out["mystery"].attrs == {}
    assert "units" not in ds["nfa_corr"].attrs  # the input is not modified
    # units that depend on the result or the parameters
    mse = xr.Dataset({"train_loss": ((), 0.1)}, attrs={"loss": "mse"})
    assert annotate_variables(mse, "curves")["train_loss"].attrs["units"] == "1"
    ce = xr.Dataset({"train_loss": ((), 0.1)}, attrs={"loss": "ce"})
    assert annotate_variables(ce, "curves")["train_loss"].attrs["units"] == "nats"
    rate = xr.Dataset({"changepoint_rate": (("curve",), [0.1])})
    assert annotate_variables(rate, "phases", {"changepoint_scale": "linear"})[
        "changepoint_rate"].attrs["units"] == "1/steps"
