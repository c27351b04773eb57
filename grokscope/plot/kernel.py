"""Empirical-NTK change from initialisation (the ``kernel`` measure)."""

from __future__ import annotations

from typing import Any

import xarray as xr
from matplotlib.axes import Axes

from ._style import (
    any_finite,
    color,
    draw_marks,
    finish,
    finish_panel,
    legend,
    milestone_marks,
    step_series,
    title_or,
    values,
)

__all__ = ["plot_kernel"]

_DIST = r"$1-\cos(\Theta_t, \Theta_0)$"
_CHANGE = r"$\|\Theta_t-\Theta_0\|_F\,/\,\|\Theta_0\|_F$"
_ALIGN = r"$\cos(\Theta_t, \Theta_0)$"


def plot_kernel(
    ds: xr.Dataset, ax: Any = None, *, alignment: bool = True, title: str | None = None,
    panels: bool = False, marks: Any = None,
) -> Axes:
    """Scale-free kernel distance ``1 − cos(Θ_t, Θ_0)`` vs step (the headline); the relative
    change ``||Θ_t − Θ_0|| / ||Θ_0||`` (dominated by weight growth) on a twin axis or a panel.

    Parameters
    ----------
    ds : xr.Dataset
        The ``kernel`` result: dim ``step``; ``kernel_distance`` and optionally
        ``kernel_change``. A result stored before ``kernel_distance`` existed draws
        ``kernel_change`` (and ``kernel_alignment`` as the second series) as it used to.
    ax : Axes or (Axes, Axes), optional
        A pair selects the two-panel layout.
    alignment : bool
        Draw the second series when present: on a twin y axis, or on the lower panel.
    title : str, optional
        None: the default title; ``""``: none.
    panels : bool
        The second series on its own panel below (a new figure).
    marks : optional
        ``t_train``/``t_test`` marks (see :func:`grokscope.plot._style.milestone_marks`).

    Returns
    -------
    Axes
    """
    if "kernel_distance" in ds:
        main, label, ylabel = "kernel_distance", "kernel distance", _DIST
        second, second_label = "kernel_change", _CHANGE
        second_axis = "relative kernel change"
    else:  # a result stored before kernel_distance existed
        main, label, ylabel = "kernel_change", "kernel change", _CHANGE
        second, second_label = "kernel_alignment", _ALIGN
        second_axis = "kernel alignment with init"
    draw_second = alignment and second in ds and any_finite(values(ds[second]))
    ax, panel, steps, series = step_series(ds, main, ax, what="plot_kernel",
                                           panels=panels,
                                           second=second if draw_second else None)
    mk = milestone_marks(marks, ds)
    handles = ax.plot(steps, series, color=color(0), marker=".", markersize=4, label=label)
    handles += draw_marks(ax, mk)
    if draw_second:
        if panel is not None:
            panel.plot(steps, values(ds[second]), color=color(1), marker=".", markersize=4,
                       linewidth=1.0, label=second_label)
            draw_marks(panel, mk, label=False)
            finish(panel, "", f"{second_axis}\n{second_label}")
            finish_panel(ax, panel)
        else:
            twin = ax.twinx()
            handles += twin.plot(steps, values(ds[second]), color=color(1),
                                 linestyle="--", linewidth=1.0, label=second_label)
            twin.set_ylabel(f"{second_axis} (dashed)")
            ax.grokscope_twin = twin  # type: ignore[attr-defined]
    finish(ax, title_or(title, "Empirical NTK distance from init"), ylabel)
    legend(ax, handles)
    return ax
