"""Where each stored curve changes fastest (the change points of the ``phases`` measure)."""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.axes import Axes

from ._style import (
    TEST_COLOR,
    TRAIN_COLOR,
    PlotDataError,
    color,
    finish,
    new_axes,
    require,
    set_step_axis,
    values,
)

__all__ = ["plot_changepoints"]


def plot_changepoints(
    ds: xr.Dataset, ax: Axes | None = None, *, top: int = 20, title: str | None = None
) -> Axes:
    """Change-point step of each curve (dot size ~ rate), with ``t_train`` and ``t_test``.

    Parameters
    ----------
    ds : xr.Dataset
        The ``phases`` result: ``changepoint`` and ``changepoint_rate`` (dim ``curve``,
        coordinate ``"measure/variable"``); scalars ``t_train``, ``t_test``, ``label``.
    top : int
        Show the ``top`` curves with the largest rate, sorted by change-point step.

    Returns
    -------
    Axes
    """
    require(ds, "changepoint", "changepoint_rate", what="plot_changepoints")
    cp = values(ds["changepoint"])
    rate = values(ds["changepoint_rate"])
    names = np.asarray(ds["curve"].values).astype(str)
    ok = np.isfinite(cp)
    if not ok.any():
        raise PlotDataError("plot_changepoints: no curve has a change point (all constant?)")
    idx = np.flatnonzero(ok)
    idx = idx[np.argsort(-rate[idx], kind="stable")][: max(1, int(top))]
    idx = idx[np.argsort(cp[idx], kind="stable")]
    ax = new_axes(ax, figsize=(7.0, 1.2 + 0.24 * len(idx)))
    y = np.arange(len(idx))
    r = rate[idx]
    sizes = 15 + 85 * (r / r.max() if r.max() > 0 else np.ones_like(r))
    ax.scatter(cp[idx], y, s=sizes, color=color(0), edgecolors="black", linewidths=0.3, zorder=3)
    ax.set_yticks(y, names[idx], fontsize=7)
    ax.invert_yaxis()
    marks = []
    for var, c in (("t_train", TRAIN_COLOR), ("t_test", TEST_COLOR)):
        if var in ds:
            t = float(values(ds[var]))
            if np.isfinite(t):
                ax.axvline(t, color=c, linestyle=":",
                           label=f"{var} = {int(t):,}")
                marks.append(t)
    set_step_axis(ax, np.concatenate([cp[idx], marks, [0.0]]), label="change-point step")
    if marks:
        ax.legend(loc="lower right", fontsize=8)
    label = str(values(ds["label"])) if "label" in ds else None
    head = "Change points of the stored curves" + (f" (run: {label})" if label else "")
    finish(ax, title or head, "curve (measure/variable)")
    return ax
