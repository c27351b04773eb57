"""Where each stored curve changes fastest (the change points of the ``phases`` measure)."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from ._style import (
    PlotDataError,
    color,
    draw_marks,
    finish,
    legend,
    milestone_marks,
    new_axes,
    require,
    set_step_axis,
    title_or,
    values,
)

__all__ = ["plot_changepoints"]


def plot_changepoints(
    ds: xr.Dataset, ax: Axes | None = None, *, top: int = 20, title: str | None = None,
    marks: Any = None,
) -> Axes:
    """Change-point step of each curve (dot size ~ rate), with ``t_train`` and ``t_test``.

    Parameters
    ----------
    ds : xr.Dataset
        The ``phases`` result: ``changepoint`` and ``changepoint_rate`` (dim ``curve``,
        coordinate ``"measure/variable"``); scalars ``t_train``, ``t_test``, ``label``.
    top : int
        Show the ``top`` curves with the largest rate, sorted by change-point step.
    title : str, optional
        None: the default title; ``""``: none.
    marks : optional
        ``t_train``/``t_test`` (see :func:`grokscope.plot._style.milestone_marks`); default
        the result's own ``t_train``/``t_test``.

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
    ax = new_axes(ax, figsize=(7.4, 1.4 + 0.24 * len(idx)))
    y = np.arange(len(idx))
    r = rate[idx]
    rmax = float(r.max()) if r.size and r.max() > 0 else 1.0
    ax.scatter(cp[idx], y, s=_size(r, rmax), color=color(0), edgecolors="black", linewidths=0.3,
               zorder=3, clip_on=False)
    ax.set_yticks(y, names[idx], fontsize=7)
    ax.set_ylim(len(idx) - 0.5, -0.5)  # first change point on top, half a row of margin
    mk = milestone_marks(ds if marks is None else marks)
    lines = draw_marks(ax, mk)
    set_step_axis(ax, np.concatenate([cp[idx], list(mk.values()), [0.0]]),
                  label="change-point step")
    # what a dot's size means: the steepest rate shown, and fractions of it
    sizes = [Line2D([], [], linestyle="none", marker="o", color=color(0), markeredgecolor="black",
                    markeredgewidth=0.3, markersize=float(np.sqrt(_size(np.array(f * rmax), rmax))),
                    label=f"rate {f * rmax:.3g}") for f in (0.25, 1.0)]
    legend(ax, lines + sizes, title="dot area ∝ rate of change", title_fontsize=8)
    label = str(values(ds["label"])) if "label" in ds else None
    head = "Change points of the stored curves" + (f" (run: {label})" if label else "")
    finish(ax, title_or(title, head), "curve (measure/variable)")
    return ax


def _size(rate: np.ndarray, rmax: float) -> np.ndarray:
    """Dot area (points^2) for a rate of change."""
    return 15 + 85 * np.asarray(rate, dtype=np.float64) / rmax
