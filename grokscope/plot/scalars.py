"""Scalar-per-step measures without a dedicated figure (e.g. ``rqi``)."""

from __future__ import annotations

from collections.abc import Sequence

import xarray as xr
from matplotlib.axes import Axes

from ._style import (
    PlotDataError,
    any_finite,
    color,
    finish,
    new_axes,
    set_step_axis,
    steps_of,
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
) -> Axes:
    """Each of ``variables`` (dim ``step`` only) as one line vs step.

    Parameters
    ----------
    ds : xr.Dataset
        A per-step result.
    variables : sequence of str
        Variables with dims ``("step",)``.

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
    measure = ds.attrs.get("measure")
    finish(ax, title or (f"{measure}: " if measure else "") + ", ".join(variables) + " vs step",
           ylabel)
    if len(variables) > 1:
        ax.legend(loc="best", fontsize=8)
    return ax


def plot_rqi(ds: xr.Dataset, ax: Axes | None = None, *, title: str | None = None) -> Axes:
    """Representation quality index of the embedding vs step (integer or modular variant).

    Parameters
    ----------
    ds : xr.Dataset
        The ``rqi`` result: ``rqi`` (dim ``step``).

    Returns
    -------
    Axes
    """
    variant = ds.attrs.get("variant")
    what = ("fraction of parallel-chord quadruples" if variant == "modular"
            else "fraction of parallelograms")
    ax = plot_scalars(ds, ["rqi"], ax, ylabel=f"RQI ({what})",
                      title=title or "Representation quality index vs step"
                      + (f" ({variant})" if variant else ""))
    return ax
