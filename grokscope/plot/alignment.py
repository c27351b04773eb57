"""Centroid alignment of the input-output Jacobian (the ``alignment`` measure)."""

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

__all__ = ["plot_alignment"]

_JX = r"$\|J_x\|_F$"


def plot_alignment(
    ds: xr.Dataset, ax: Any = None, *, jacobian: bool = True, title: str | None = None,
    panels: bool = False, marks: Any = None,
) -> Axes:
    """Mean centroid alignment with its min-max band vs step; Jacobian norm on a twin axis.

    Parameters
    ----------
    ds : xr.Dataset
        The ``alignment`` result: dim ``step``; ``centroid_alignment_mean`` and optionally
        ``centroid_alignment_min``/``_max`` (the band) and ``jacobian_norm``.
    ax : Axes or (Axes, Axes), optional
        A pair selects the two-panel layout.
    jacobian : bool
        Draw ``jacobian_norm`` (mean Frobenius norm of the input Jacobian, log scale) when present: on a twin
        y axis, or on the lower panel.
    title : str, optional
        None: the default title; ``""``: none.
    panels : bool
        The Jacobian norm on its own panel below (a new figure).
    marks : optional
        ``t_train``/``t_test`` marks (see :func:`grokscope.plot._style.milestone_marks`).

    Returns
    -------
    Axes
        The alignment axes (``ax.grokscope_twin`` / ``ax.grokscope_panel`` when drawn).
    """
    draw_jac = jacobian and "jacobian_norm" in ds and any_finite(values(ds["jacobian_norm"]))
    ax, panel, steps, mean = step_series(ds, "centroid_alignment_mean", ax,
                                         what="plot_alignment", panels=panels,
                                         second="jacobian_norm" if draw_jac else None)
    mk = milestone_marks(marks, ds)
    handles = ax.plot(steps, mean, color=color(0), marker=".", markersize=4,
                      label="centroid alignment (mean)")
    if "centroid_alignment_min" in ds and "centroid_alignment_max" in ds:
        band = ax.fill_between(steps, values(ds["centroid_alignment_min"]),
                               values(ds["centroid_alignment_max"]), color=color(0), alpha=0.2,
                               linewidth=0, label="min–max over inputs")
        handles.append(band)
    handles += draw_marks(ax, mk)
    if draw_jac:
        jn = values(ds["jacobian_norm"])
        other = panel if panel is not None else ax.twinx()
        handles += other.plot(steps, jn, color=color(1), linestyle="--" if panel is None else "-",
                              marker=None if panel is None else ".", markersize=4,
                              linewidth=1.0, label=f"mean {_JX}")
        if (jn[jn == jn] > 0).all():
            other.set_yscale("log")
        if panel is not None:
            draw_marks(panel, mk, label=False)
            finish(panel, "", f"Jacobian norm {_JX}")
            finish_panel(ax, panel)
            handles = [h for h in handles if h.axes is ax]
            legend(panel)
        else:
            other.set_ylabel(f"Jacobian norm {_JX} (dashed)")
            ax.grokscope_twin = other  # type: ignore[attr-defined]
    finish(ax, title_or(title, "Centroid alignment vs step"),
           r"$\cos(\mathrm{centroid}, \mathrm{input})$")
    legend(ax, handles)
    return ax
