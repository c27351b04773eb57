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
    """Relative kernel change ``||Θ_t − Θ_0|| / ||Θ_0||`` vs step; kernel alignment on a twin.

    Parameters
    ----------
    ds : xr.Dataset
        The ``kernel`` result: dim ``step``; ``kernel_change`` and optionally
        ``kernel_alignment`` (cosine of ``Θ_t`` with ``Θ_0``).
    alignment : bool
        Draw ``kernel_alignment`` on a twin y axis when present.

    Returns
    -------
    Axes
    """
    ax, steps, change = step_series(ds, "kernel_change", ax, what="plot_kernel")
    handles = ax.plot(steps, change, color=color(0), marker=".", markersize=4,
                      label="kernel change")
    if alignment and "kernel_alignment" in ds and any_finite(values(ds["kernel_alignment"])):
        twin = ax.twinx()
        handles += twin.plot(steps, values(ds["kernel_alignment"]), color=color(1),
                             linestyle="--", linewidth=1.0, label="cos(Θ_t, Θ_0)")
        twin.set_ylabel("kernel alignment with init (dashed)")
        ax.grokscope_twin = twin  # type: ignore[attr-defined]
    finish(ax, title or "Empirical NTK change from init", "||Θ_t − Θ_0||_F / ||Θ_0||_F")
    legend(ax, handles, loc="best", fontsize=8)
    return ax
