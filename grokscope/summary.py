"""Plain-text summaries of a run: crossing steps and measure values at its milestones."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr


def first_crossing(steps: np.ndarray, values: np.ndarray, threshold: float) -> int | None:
    """The first step whose value is >= ``threshold`` (None if never; NaNs never cross)."""
    values = np.asarray(values, dtype=float)
    hit = np.flatnonzero(np.nan_to_num(values, nan=-np.inf) >= threshold)
    return int(np.asarray(steps)[hit[0]]) if hit.size else None


def accuracy_curves(run: Any, results: Mapping[str, xr.Dataset] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(steps, train_acc, test_acc)`` from the recorded metrics, else the ``curves`` result."""
    metrics = run.metrics
    if "train_acc" in metrics and "test_acc" in metrics:
        return (
            np.asarray(metrics.step.values),
            np.asarray(metrics["train_acc"].values, dtype=float),
            np.asarray(metrics["test_acc"].values, dtype=float),
        )
    curves = (results or {}).get("curves")
    if curves is None:
        curves = run.results.get("curves") if hasattr(run.results, "get") else None
    if curves is not None and "train_acc" in curves:
        return (
            np.asarray(curves.step.values),
            np.asarray(curves["train_acc"].values, dtype=float),
            np.asarray(curves["test_acc"].values, dtype=float),
        )
    return None


def milestones(run: Any, results: Mapping[str, xr.Dataset] | None = None, threshold: float = 0.9) -> dict[str, int | None]:
    """Steps where train and test accuracy first reach ``threshold``."""
    curves = accuracy_curves(run, results)
    if curves is None:
        return {"t_train": None, "t_test": None}
    steps, tr, te = curves
    return {"t_train": first_crossing(steps, tr, threshold), "t_test": first_crossing(steps, te, threshold)}


def _all_scalar_series(ds: xr.Dataset) -> dict[str, xr.DataArray]:
    """Scalar curves of a result (per layer for layered ones)."""
    out = {}
    for name, var in ds.data_vars.items():
        if var.dims == ("step",) and var.dtype.kind in "fiu" and name != "nonfinite_weights":
            out[name] = var
        elif set(var.dims) == {"step", "layer"} and var.dtype.kind == "f":
            for layer in var["layer"].values:
                out[f"{name}[{layer}]"] = var.sel(layer=layer)
    return out


def _scalar_series(ds: xr.Dataset) -> dict[str, xr.DataArray]:
    """Scalar curves of a result (per layer for layered ones), constants left out."""
    return {k: v for k, v in _all_scalar_series(ds).items() if not _constant(v)}


def _constant(var: xr.DataArray) -> bool:
    values = np.asarray(var.values, dtype=float)
    finite = values[np.isfinite(values)]
    return finite.size == values.size and finite.size > 1 and bool(np.all(finite == finite[0]))


def _at(var: xr.DataArray, step: int) -> float:
    """The value at the stored step nearest ``step``."""
    steps = var.step.values
    if steps.size == 0:
        return float("nan")
    return float(var.values[int(np.argmin(np.abs(steps - step)))])


def milestone_columns(run: Any, results: Mapping[str, xr.Dataset],
                      threshold: float = 0.9) -> list[tuple[str, int]]:
    """``(label, step)`` of the table's columns: the first stored step (the baseline before
    any training signal), memorisation and generalisation when they happen, the last step.
    A milestone the run never reached has no column (never a column of the wrong step)."""
    ms = milestones(run, results, threshold)
    cols = [("first step", int(run.steps[0]))]
    if ms["t_train"] is not None:
        cols.append(("memorised", ms["t_train"]))
    if ms["t_test"] is not None:
        cols.append(("generalised", ms["t_test"]))
    cols.append(("last step", int(run.steps[-1])))
    return cols


def milestone_table(run: Any, results: Mapping[str, xr.Dataset], threshold: float = 0.9) -> str:
    """A text table: each scalar measure at the first stored step, when train accuracy first
    reaches ``threshold`` (memorised), when test accuracy does (generalised) and at the last
    step; milestones the run never reached are said so and get no column. Series that keep one
    value over the whole run get no row but are listed after the table with that value (a
    measure that is 0 throughout is a result, never silently left out)."""
    ms = milestones(run, results, threshold)
    cols = milestone_columns(run, results, threshold)

    def when(t: int | None) -> str:
        return f"step {t}" if t is not None else f"never (up to step {int(run.steps[-1])})"

    lines = [
        f"memorisation (train acc >= {threshold}): {when(ms['t_train'])}",
        f"generalisation (test acc >= {threshold}): {when(ms['t_test'])}",
        "",
        f"{'measure':<44} " + " ".join(f"{label:>12}" for label, _ in cols),
        f"{'':<44} " + " ".join(f"{'(' + str(step) + ')':>12}" for _, step in cols),
    ]
    constant = []
    for mname in results:
        ds = results[mname]
        if "step" not in ds.dims:
            continue
        for vname, var in _all_scalar_series(ds).items():
            if _constant(var):
                constant.append(f"{mname}.{vname} = {float(var.values[0]):.4g}")
                continue
            label = f"{mname}.{vname}"[:44]
            lines.append(f"{label:<44} " + " ".join(f"{_at(var, step):>12.4g}" for _, step in cols))
    if constant:
        lines += ["", "constant at every analysed step (no row above):"]
        lines += [f"  {c}" for c in constant]
    return "\n".join(lines)
