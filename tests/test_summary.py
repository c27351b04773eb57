"""The milestone table names the steps it shows and never invents a milestone."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import xarray as xr

from grokscope.summary import milestone_columns, milestone_table


def _run(train_acc, test_acc):
    steps = np.arange(0, 10 * len(train_acc), 10)
    metrics = xr.Dataset({"train_acc": ("step", np.asarray(train_acc, float)),
                          "test_acc": ("step", np.asarray(test_acc, float))},
                         coords={"step": steps})
    return SimpleNamespace(steps=steps, metrics=metrics, results={})


def _result(steps):
    return {"m": xr.Dataset({"v": ("step", np.arange(len(steps), dtype=float) * 1.5)},
                            coords={"step": steps})}


def test_a_grokking_run_has_first_memorised_generalised_and_last_columns():
    run = _run([0.1, 0.5, 0.95, 1.0, 1.0, 1.0], [0.0, 0.0, 0.1, 0.3, 0.92, 1.0])
    assert milestone_columns(run, {}) == [("first step", 0), ("memorised", 20),
                                          ("generalised", 40), ("last step", 50)]
    table = milestone_table(run, _result(run.steps))
    row = next(line for line in table.splitlines() if line.startswith("m.v"))
    # the values at steps 0, 20, 40, 50 (index 0, 2, 4, 5) of v = 1.5 * index
    assert [float(x) for x in row.split()[1:]] == [0.0, 3.0, 6.0, 7.5]


def test_a_run_that_never_generalised_has_no_grokking_column():
    run = _run([0.1, 0.95, 1.0, 1.0], [0.0, 0.0, 0.01, 0.02])
    cols = milestone_columns(run, {})
    assert [c for c, _ in cols] == ["first step", "memorised", "last step"]
    table = milestone_table(run, _result(run.steps))
    assert "generalisation (test acc >= 0.9): never (up to step 30)" in table
    assert "generalised" not in table.splitlines()[3] and "after grok" not in table


def test_a_measure_constant_over_the_run_is_listed_not_dropped():
    """A result that is 0 at every step (the demo's modular RQI) used to vanish from the table."""
    run = _run([0.1, 0.95, 1.0, 1.0], [0.0, 0.0, 0.5, 0.95])
    steps = run.steps
    results = {**_result(steps),
               "rqi": xr.Dataset({"rqi": ("step", np.zeros(len(steps))),
                                  "n_quadruples": ("step", np.full(len(steps), 23954))},
                                 coords={"step": steps})}
    lines = milestone_table(run, results).splitlines()
    assert not any(line.startswith("rqi.") for line in lines)  # no row of identical values
    tail = lines[lines.index("constant at every analysed step (no row above):") + 1:]
    assert tail == ["  rqi.rqi = 0", "  rqi.n_quadruples = 2.395e+04"]
    # a table with no constant series has no such section
    assert "constant at every" not in milestone_table(run, _result(steps))
