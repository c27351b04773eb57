"""Centroid alignment of the input-output Jacobian (the ``alignment`` measure)."""

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

__all__ = ["plot_alignment"]


def plot_alignment(
    ds: xr.Dataset, ax: Axes | None = None, *, jacobian: bool = True, title: str | None = None
) -> Axes:
    """Mean centroid alignment with its min-max band vs step; Jacobian norm on a twin axis.

    Parameters
    ----------
    ds : xr.Dataset
        The ``alignment`` result: dim ``step``; ``centroid_alignment_mean`` and optionally
        ``centroid_alignment_min``/``_max`` (the band) and ``jacobian_norm``.
    jacobian : bool
        Draw ``jacobian_norm`` (mean ``||J_x||_F``, log scale) on a twin y axis when present.

    Returns
    -------
    Axes
        The alignment axes (the twin is ``ax.grokscope_twin`` when drawn).
    """
    ax, steps, mean = step_series(ds, "centroid_alignment_mean", ax, what="plot_alignment")
    handles = ax.plot(steps, mean, color=color(0), marker=".", markersize=4,
                      label="centroid alignment (mean)")
    if "centroid_alignment_min" in ds and "centroid_alignment_max" in ds:
        band = ax.fill_between(steps, values(ds["centroid_alignment_min"]),
                               values(ds["centroid_alignment_max"]), color=color(0), alpha=0.2,
                               linewidth=0, label="min–max over inputs")
        handles.append(band)
    if jacobian and "jacobian_norm" in ds and any_finite(values(ds["jacobian_norm"])):
        jn = values(ds["jacobian_norm"])
        twin = ax.twinx()
        handles += twin.plot(steps, jn, color=color(1), linestyle="--", linewidth=1.0,
                             label="mean ||J_x||_F")
        if (jn[jn == jn] > 0).all():
            twin.set_yscale("log")
        twin.set_ylabel("Jacobian Frobenius norm (dashed)")
        ax.grokscope_twin = twin  # type: ignore[attr-defined]
    finish(ax, title or "Centroid alignment vs step", "cos(centroid, input)")
    legend(ax, handles, loc="best", fontsize=8)
    return ax
