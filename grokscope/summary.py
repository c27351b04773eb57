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


def _scalar_series(ds: xr.Dataset) -> dict[str, xr.DataArray]:
    """Scalar curves of a result (per layer for layered ones), constants left out."""
    out = {}
    for name, var in ds.data_vars.items():
        if var.dims == ("step",) and var.dtype.kind in "fiu" and name != "nonfinite_weights":
            out[name] = var
        elif set(var.dims) == {"step", "layer"} and var.dtype.kind == "f":
            for layer in var["layer"].values:
                out[f"{name}[{layer}]"] = var.sel(layer=layer)
    return {k: v for k, v in out.items() if not _constant(v)}


def _constant(var: xr.DataArray) -> bool:
    values = np.asarray(var.values, dtype=float)
    finite = values[np.isfinite(values)]
    return finite.size == values.size and finite.size > 1 and bool(np.all(finite == finite[0]))


def _at(var: xr.DataArray, step: int | None, side: str) -> float:
    steps = var.step.values
    if step is None or steps.size == 0:
        return float("nan")
    if side == "before":
        idx = np.flatnonzero(steps < step)
        idx = idx[-1] if idx.size else 0
    elif side == "at":
        idx = int(np.argmin(np.abs(steps - step)))
    else:
        idx = len(steps) - 1
    return float(var.values[idx])


def milestone_table(run: Any, results: Mapping[str, xr.Dataset], threshold: float = 0.9) -> str:
    """A text table: each scalar measure before memorisation, at memorisation, after grokking."""
    ms = milestones(run, results, threshold)
    t_train, t_test = ms["t_train"], ms["t_test"]
    last = int(run.steps[-1])
    lines = [
        f"memorisation (train acc >= {threshold}): step {t_train}",
        f"generalisation (test acc >= {threshold}): step {t_test}",
        "",
        f"{'measure':<44} {'before mem.':>12} {'at mem.':>12} {'after grok':>12}",
        f"{'':<44} {'(< ' + str(t_train) + ')':>12} {'(' + str(t_train) + ')':>12} {'(' + str(last) + ')':>12}",
    ]
    for mname in results:
        ds = results[mname]
        if "step" not in ds.dims:
            continue
        for vname, var in _scalar_series(ds).items():
            label = f"{mname}.{vname}"[:44]
            vals = [_at(var, t_train, "before"), _at(var, t_train, "at"), _at(var, last, "after")]
            lines.append(f"{label:<44} " + " ".join(f"{v:>12.4g}" for v in vals))
    return "\n".join(lines)
