"""Several runs on one axes: one line per run, or per setting a median line and a seed band."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes

from ._style import (
    PlotDataError,
    color,
    draw_marks,
    finish,
    legend,
    milestone_marks,
    new_axes,
    set_step_axis,
    values,
)


def plot_runs(
    ds: xr.Dataset,
    variable: str,
    ax: Axes | None = None,
    *,
    bands: bool = True,
    label: str | None = None,
    color_index: int | None = None,
    title: str | None = None,
    marks: Any = None,
) -> Axes:
    """``variable`` of :func:`grokscope.open_runs`'s dataset against step, all runs on ``ax``.

    With ``bands`` (default) the runs that differ only by seed are drawn as one line, their
    median, and a band from their minimum to their maximum; each setting of the
    hyperparameter coordinates gets its own colour and a legend entry naming it (``label``
    prefixes every entry). Without ``bands`` every run is its own line. Call it again on the
    same ``ax`` with ``color_index`` to add another group in the next colours. ``title=""``
    draws no title. Runs have their own milestones, so no ``t_train``/``t_test`` is drawn
    unless ``marks`` gives them (a mapping, or one run's metrics; see
    :func:`grokscope.plot._style.milestone_marks`).
    """
    from ..many import seed_groups

    if not isinstance(ds, xr.Dataset) or "run" not in ds.dims or "step" not in ds.dims:
        raise PlotDataError("plot_runs needs the Dataset of grokscope.open_runs (dims run, step)")
    if variable not in ds.data_vars:
        raise PlotDataError(f"plot_runs: no variable {variable!r}; have {sorted(map(str, ds.data_vars))}")
    ax = new_axes(ax)
    steps = np.asarray(ds["step"].values)
    start = color_index if color_index is not None else len(ax.get_lines())
    if bands:
        groups = list(seed_groups(ds))
    else:
        groups = [({"run": str(r)}, ds.sel(run=[r])) for r in ds["run"].values]
    drawn = 0
    for k, (setting, sub) in enumerate(groups):
        y = values(sub[variable].transpose("run", "step"))
        finite = np.isfinite(y)
        if not finite.any():
            continue
        c = color(start + k)
        name = ", ".join(f"{key}={_fmt(v)}" for key, v in setting.items()) or "runs"
        if label:
            name = f"{label}: {name}"
        n = y.shape[0]
        if bands and n > 1:
            with np.errstate(all="ignore"):
                lo, hi = np.nanmin(y, axis=0), np.nanmax(y, axis=0)
                mid = np.nanmedian(y, axis=0)
            ax.fill_between(steps, lo, hi, color=c, alpha=0.2, linewidth=0)
            ax.plot(steps, mid, color=c, label=f"{name} (median of {n}, band: min-max)")
        else:
            ax.plot(steps, y[0], color=c, label=name)
        drawn += 1
    if not drawn:
        raise PlotDataError(f"plot_runs: {variable!r} has no finite value in any run")
    set_step_axis(ax, steps)
    draw_marks(ax, milestone_marks(marks if marks is not None else False))
    long_name = ds[variable].attrs.get("long_name", variable)
    legend(ax)
    return finish(ax, f"{long_name} across runs" if title is None else title, long_name)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)
