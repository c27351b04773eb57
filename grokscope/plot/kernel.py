"""Empirical-NTK change from initialisation (the ``kernel`` measure)."""

from __future__ import annotations

import xarray as xr
from matplotlib.axes import Axes

from ._style import (
    any_finite,
    color,
    finish,
    legend,
    step_series,
    values,
)

__all__ = ["plot_kernel"]


def plot_kernel(
    ds: xr.Dataset, ax: Axes | None = None, *, alignment: bool = True, title: str | None = None
) -> Axes:
    """Scale-free kernel distance ``1 − cos(Θ_t, Θ_0)`` vs step (the headline); the relative
    change ``||Θ_t − Θ_0|| / ||Θ_0||`` (dominated by weight growth) on a twin axis.

    Parameters
    ----------
    ds : xr.Dataset
        The ``kernel`` result: dim ``step``; ``kernel_distance`` and optionally
        ``kernel_change``. A result stored before ``kernel_distance`` existed draws
        ``kernel_change`` (and ``kernel_alignment`` on the twin) as it used to.
    alignment : bool
        Draw the second series on a twin y axis when present.

    Returns
    -------
    Axes
    """
    if "kernel_distance" in ds:
        main, label, ylabel = "kernel_distance", "kernel distance", "1 − cos(Θ_t, Θ_0)"
        second, second_label = "kernel_change", "||Θ_t − Θ_0||_F / ||Θ_0||_F"
        second_axis = "relative kernel change (dashed)"
    else:  # a result stored before kernel_distance existed
        main, label, ylabel = "kernel_change", "kernel change", "||Θ_t − Θ_0||_F / ||Θ_0||_F"
        second, second_label = "kernel_alignment", "cos(Θ_t, Θ_0)"
        second_axis = "kernel alignment with init (dashed)"
    ax, steps, series = step_series(ds, main, ax, what="plot_kernel")
    handles = ax.plot(steps, series, color=color(0), marker=".", markersize=4, label=label)
    if alignment and second in ds and any_finite(values(ds[second])):
        twin = ax.twinx()
        handles += twin.plot(steps, values(ds[second]), color=color(1),
                             linestyle="--", linewidth=1.0, label=second_label)
        twin.set_ylabel(second_axis)
        ax.grokscope_twin = twin  # type: ignore[attr-defined]
    finish(ax, title or "Empirical NTK distance from init", ylabel)
    legend(ax, handles, loc="best", fontsize=8)
    return ax
