"""Several parameterisations of one measure side by side, and no silent replacement."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import grokscope as gs
from grokscope.errors import ConfigError

from .conftest import record_tiny_run


@pytest.fixture
def run(tmp_path):
    return record_tiny_run(tmp_path / "run.zarr", steps=[0, 5, 10])


def test_a_named_parameterisation_is_stored_beside_the_default(run):
    gs.analyze(run, ["curves"], progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is replaced
        res = gs.analyze(run, {"curves_small": {"measure": "curves", "chunk": 2}}, progress=False)
    assert set(res) == {"curves_small"}
    assert set(run.results) >= {"curves", "curves_small"}
    named, default = run.results["curves_small"], run.results["curves"]
    assert named.attrs["measure"] == "curves" and named.attrs["param_chunk"] == 2
    assert default.attrs["param_chunk"] == 4096
    # the same numbers (the chunk size bounds memory only), kept under two names
    np.testing.assert_allclose(named["train_loss"], default["train_loss"], rtol=1e-12)
    assert named["train_loss"].attrs["long_name"]  # described like the measure's own result
    # analysing the named one again computes nothing
    again = gs.analyze(run, {"curves_small": {"measure": "curves", "chunk": 2}}, progress=False)
    assert again.timings["curves_small"] == 0.0


def test_replacing_a_result_computed_with_other_parameters_says_so(run, capsys):
    gs.analyze(run, ["curves"], progress=False)
    with pytest.warns(UserWarning, match=r"replacing results/curves.*chunk: 4096 -> 2.*curves_2"):
        gs.analyze(run, {"curves": {"chunk": 2}}, progress=True)
    assert "replacing results/curves" in capsys.readouterr().err
    assert run.results["curves"].attrs["param_chunk"] == 2


def test_the_same_parameters_replace_nothing(run):
    gs.analyze(run, ["curves"], progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gs.analyze(run, {"curves": {"chunk": 4096}}, progress=False)


@pytest.mark.parametrize("name", ["nfa", "a/b", ".hidden", ""])
def test_a_parameterisation_needs_a_new_plain_name(run, name):
    with pytest.raises(ConfigError, match="cannot name a parameterisation"):
        gs.analyze(run, {name: {"measure": "curves"}}, progress=False)


def test_an_unknown_measure_in_a_parameterisation_is_named(run):
    with pytest.raises(gs.GrokscopeError, match="nope"):
        gs.analyze(run, {"x": {"measure": "nope"}}, progress=False)
