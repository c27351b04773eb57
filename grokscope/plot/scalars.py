"""Scalar-per-step measures without a dedicated figure (e.g. ``rqi``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import xarray as xr
from matplotlib.axes import Axes

from ._style import (
    PlotDataError,
    any_finite,
    color,
    draw_marks,
    finish,
    legend,
    milestone_marks,
    new_axes,
    set_step_axis,
    steps_of,
    title_or,
    values,
)

__all__ = ["plot_rqi", "plot_scalars"]


def plot_scalars(
    ds: xr.Dataset,
    variables: Sequence[str],
    ax: Axes | None = None,
    *,
    ylabel: str = "value",
    title: str | None = None,
    marks: Any = None,
) -> Axes:
    """Each of ``variables`` (dim ``step`` only) as one line vs step.

    Parameters
    ----------
    ds : xr.Dataset
        A per-step result.
    variables : sequence of str
        Variables with dims ``("step",)``.
    title : str, optional
        None: the default title; ``""``: none.
    marks : optional
        ``t_train``/``t_test`` marks (see :func:`grokscope.plot._style.milestone_marks`).

    Returns
    -------
    Axes
    """
    steps = steps_of(ds, "plot_scalars")
    bad = [v for v in variables if v not in ds or ds[v].dims != ("step",)]
    if not variables or bad:
        raise PlotDataError(
            f"plot_scalars needs variables with dims ('step',); not usable: {bad or variables}; "
            f"the dataset has {sorted(map(str, ds.data_vars))}"
        )
    if not any_finite(*(values(ds[v]) for v in variables)):
        raise PlotDataError(f"plot_scalars: {list(variables)} have no finite value")
    ax = new_axes(ax)
    set_step_axis(ax, steps)
    for i, v in enumerate(variables):
        ax.plot(steps, values(ds[v]), color=color(i), marker=".", markersize=4,
                label=ds[v].attrs.get("long_name", v))
    mk = draw_marks(ax, milestone_marks(marks, ds))
    measure = ds.attrs.get("measure")
    default = (f"{measure}: " if measure else "") + ", ".join(variables) + " vs step"
    finish(ax, title_or(title, default), ylabel)
    if len(variables) > 1 or mk:
        legend(ax)
    return ax


def plot_rqi(ds: xr.Dataset, ax: Axes | None = None, *, title: str | None = None,
             marks: Any = None) -> Axes:
    """Representation quality index of the embedding vs step (integer or modular variant).

    Parameters
    ----------
    ds : xr.Dataset
        The ``rqi`` result: ``rqi`` (dim ``step``).
    title : str, optional
        None: the default title; ``""``: none.
    marks : optional
        ``t_train``/``t_test`` marks (see :func:`grokscope.plot._style.milestone_marks`).

    Returns
    -------
    Axes
    """
    variant = ds.attrs.get("variant")
    what = ("fraction of parallel-chord quadruples" if variant == "modular"
            else "fraction of parallelograms")
    default = "Representation quality index vs step" + (f" ({variant})" if variant else "")
    ax = plot_scalars(ds, ["rqi"], ax, ylabel=f"RQI ({what})", title=title_or(title, default),
                      marks=marks)
    ax.set_ylim(-0.03, 1.03)  # a fraction: its whole range, so a flat 0 reads as 0
    return ax
