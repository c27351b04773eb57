"""Neural feature ansatz per layer (the ``nfa`` measure)."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from ._style import (
    PlotDataError,
    any_finite,
    color,
    draw_marks,
    finish,
    legend,
    milestone_marks,
    new_axes,
    require,
    set_step_axis,
    steps_of,
    title_or,
    values,
)

__all__ = ["plot_nfa"]


def plot_nfa(
    ds: xr.Dataset,
    ax: Axes | None = None,
    *,
    agop_alignment: bool = False,
    title: str | None = None,
    marks: Any = None,
) -> Axes:
    """NFA correlation per layer vs step: ``s = 1/2`` solid, ``s = 1`` dashed.

    Parameters
    ----------
    ds : xr.Dataset
        The ``nfa`` result: dims ``(step, layer)``; ``nfa_corr_sqrt`` (Pearson of ``W^T W``
        with ``AGOP^(1/2)``), optionally ``nfa_corr`` (``s = 1``) and ``agop_alignment``.
    agop_alignment : bool
        Also draw the cosine of each step's AGOP with the final one (dotted).
    title : str, optional
        None: the default title; ``""``: none.
    marks : optional
        ``t_train``/``t_test`` marks (see :func:`grokscope.plot._style.milestone_marks`).

    Returns
    -------
    Axes
        One line per layer and variable drawn (``n_layers * (1 + has nfa_corr + agop)``).
    """
    require(ds, "nfa_corr_sqrt", what="plot_nfa")
    steps = steps_of(ds, "plot_nfa")
    names = [("nfa_corr_sqrt", "-", "$s=1/2$")]
    if "nfa_corr" in ds:
        names.append(("nfa_corr", "--", "$s=1$"))
    if agop_alignment and "agop_alignment" in ds:
        names.append(("agop_alignment", ":", "AGOP vs final"))
    ref = ds["nfa_corr_sqrt"]
    layers = [str(v) for v in ref["layer"].values] if "layer" in ref.dims else [""]
    if not any_finite(values(ref)):
        raise PlotDataError("plot_nfa: nfa_corr_sqrt has no finite value")
    ax = new_axes(ax)
    set_step_axis(ax, steps)
    for i, layer in enumerate(layers):
        for var, style, tag in names:
            da = ds[var]
            v = values(da.isel(layer=i)) if "layer" in da.dims else values(da)
            label = f"{layer} ({tag})" if layer else tag
            ax.plot(steps, np.asarray(v).reshape(-1), color=color(i), linestyle=style,
                    marker="." if style == "-" else None, markersize=4, label=label)
    mk = draw_marks(ax, milestone_marks(marks, ds))
    finish(ax, title_or(title, "Neural feature ansatz per layer"),
           r"$\mathrm{corr}(W^\top W,\ \mathrm{AGOP}^{s})$ (Pearson)")
    if len(layers) <= 2:
        legend(ax)
        return ax
    # many layers: one legend entry per layer (colour) plus one per variable (line style)
    handles = [Line2D([], [], color=color(i), label=layer) for i, layer in enumerate(layers)]
    handles += [Line2D([], [], color="#444444", linestyle=style, label=tag)
                for _var, style, tag in names]
    legend(ax, handles + mk)
    return ax
