"""Fourier features of modular-arithmetic networks (the ``fourier`` measure).

:func:`plot_fourier` draws the share of neurons per frequency at one step with the key
frequencies highlighted; :func:`plot_fourier_evolution` the same shares over all steps as a
heat map; :func:`plot_fourier_losses` the restricted, excluded and full losses vs step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.patches import Patch

from ._style import (
    PlotDataError,
    any_finite,
    cell_edges,
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

__all__ = ["plot_fourier", "plot_fourier_evolution", "plot_fourier_losses"]

_KEY = color(1)
#: key frequencies are written over their bars only up to this many
_MAX_KEY_LABELS = 12
_OTHER = "#9FB7CC"


def plot_fourier(
    ds: xr.Dataset, ax: Axes | None = None, *, step: int | None = None, title: str | None = None
) -> Axes:
    """Share of neurons per frequency at one step; key frequencies highlighted.

    Parameters
    ----------
    ds : xr.Dataset
        The ``fourier`` result: ``freq_share`` (dims ``[step,] freq``) and optionally
        ``key_freqs_step`` (bool, same dims: the step's own key set), else ``key_freqs``.
    step : int, optional
        The step to show (the nearest stored one); default the last.

    Returns
    -------
    Axes
        One bar per frequency.
    """
    require(ds, "freq_share", what="plot_fourier")
    shown = None
    if "step" in ds.dims:
        if step is None:
            one = ds.isel(step=-1)
        else:
            one = ds.sel(step=step, method="nearest")
        shown = int(one["step"].values)
    else:
        one = ds
        shown = int(ds["step"].values) if "step" in ds.coords else None
    share = values(one["freq_share"])
    if not any_finite(share):
        raise PlotDataError(f"plot_fourier: freq_share has no finite value at step {shown}")
    freqs = (np.asarray(one["freq"].values) if "freq" in one.coords
             else np.arange(1, share.size + 1))
    key_var = "key_freqs_step" if "key_freqs_step" in one else "key_freqs"
    key = (np.asarray(one[key_var].values, dtype=bool) if key_var in one
           else np.zeros(share.size, dtype=bool))
    ax = new_axes(ax)
    ax.bar(freqs, share, color=[_KEY if k else _OTHER for k in key], width=0.8,
           edgecolor="white", linewidth=0.4)
    label_keys = int(key.sum()) <= _MAX_KEY_LABELS  # more would overlap (the axis names them)
    for f, s, k in zip(freqs, share, key, strict=True):
        if k and label_keys:
            ax.annotate(str(int(f)), (f, s), textcoords="offset points", xytext=(0, 2),
                        ha="center", fontsize=8, color=_KEY)
    ax.set_xlabel(r"frequency $k$ (of $2\pi k/p$)")
    kinds = [(_KEY, f"key ({int(key.sum())})", key.any()), (_OTHER, "other", (~key).any())]
    legend(ax, [Patch(color=c, label=lab) for c, lab, present in kinds if present])
    where = f" at step {shown:,}" if shown is not None else ""
    p = ds.attrs.get("p")
    head = f"Neuron frequencies (p = {p}){where}" if p else f"Neuron frequencies{where}"
    finish(ax, title_or(title, head), "share of neurons")
    ax.grid(True, axis="y", alpha=0.25)
    ax.grid(False, axis="x")
    return ax


def plot_fourier_evolution(
    ds: xr.Dataset, ax: Axes | None = None, *, title: str | None = None, marks: Any = None
) -> Axes:
    """Share of neurons per frequency over steps (heat map, step x frequency).

    Parameters
    ----------
    ds : xr.Dataset
        The ``fourier`` result: ``freq_share`` ``(step, freq)``.
    title : str, optional
        None: the default title; ``""``: none.
    marks : optional
        ``t_train``/``t_test`` marks (see :func:`grokscope.plot._style.milestone_marks`).

    Returns
    -------
    Axes
    """
    require(ds, "freq_share", what="plot_fourier_evolution")
    steps = steps_of(ds, "plot_fourier_evolution")
    share = values(ds["freq_share"].transpose("step", "freq"))
    if not any_finite(share):
        raise PlotDataError("plot_fourier_evolution: freq_share has no finite value")
    freqs = np.asarray(ds["freq"].values)
    ax = new_axes(ax, figsize=(7.0, 4.2))
    scale = set_step_axis(ax, steps)
    xe = cell_edges(steps, scale)
    ye = np.concatenate([freqs - 0.5, [freqs[-1] + 0.5]])
    mesh = ax.pcolormesh(xe, ye, np.ma.masked_invalid(share.T), cmap="cividis", shading="flat",
                         vmin=0, rasterized=True)
    ax.set_xlim(xe[0], xe[-1])
    ax.figure.colorbar(mesh, ax=ax, label="share of neurons", pad=0.01)
    ax.set_ylim(ye[0], ye[-1])
    mk = draw_marks(ax, milestone_marks(marks, ds))
    finish(ax, title_or(title, "Neuron frequencies over training"), r"frequency $k$")
    ax.grid(False)
    if mk:
        legend(ax, mk, where="below")
    return ax


def plot_fourier_losses(
    ds: xr.Dataset, ax: Axes | None = None, *, title: str | None = None, marks: Any = None
) -> Axes:
    """Restricted, excluded and full loss vs step (Nanda et al.'s progress measures).

    Parameters
    ----------
    ds : xr.Dataset
        The ``fourier`` result: ``restricted_loss`` (key frequencies only, all pairs),
        ``excluded_loss`` (key frequencies removed, training pairs), ``loss_all`` and
        ``loss_train`` (unablated), dim ``step``.
    title : str, optional
        None: the default title; ``""``: none.
    marks : optional
        ``t_train``/``t_test`` marks (see :func:`grokscope.plot._style.milestone_marks`).

    Returns
    -------
    Axes
        One line per loss with a finite value.
    """
    require(ds, "restricted_loss", "excluded_loss", what="plot_fourier_losses")
    steps = steps_of(ds, "plot_fourier_losses")
    lines = [
        ("restricted_loss", "restricted (key freqs only, all pairs)", color(2), "-"),
        ("excluded_loss", "excluded (key freqs removed, train)", color(4), "-"),
        ("loss_all", "full (all pairs)", color(7), "--"),
        ("loss_train", "full (train pairs)", "#777777", "-."),
    ]
    if ds.attrs.get("keys") == "final":  # every step ablates the final step's key set
        lines[0] = (lines[0][0], "restricted (final key freqs only, all pairs)", *lines[0][2:])
        lines[1] = (lines[1][0], "excluded (final key freqs removed, train)", *lines[1][2:])
    present = [ln for ln in lines if ln[0] in ds and any_finite(values(ds[ln[0]]))]
    if not present:
        why = ds.attrs.get("restricted_skipped", "all values are NaN")
        raise PlotDataError(f"plot_fourier_losses: no loss to draw ({why})")
    ax = new_axes(ax)
    set_step_axis(ax, steps)
    allv = []
    for name, label, c, style in present:
        v = values(ds[name])
        allv.append(v[np.isfinite(v)])
        ax.plot(steps, v, color=c, linestyle=style, marker="." if style == "-" else None,
                markersize=4, label=label)
    allv = np.concatenate(allv)
    if allv.size and allv.min() > 0:
        ax.set_yscale("log")
    head = "Fourier progress measures"
    if "all_frequencies_key" in ds and bool(np.asarray(ds["all_frequencies_key"].values).any()):
        head += "\n(key set = every frequency: no sparsity tested)"
    draw_marks(ax, milestone_marks(marks, ds))
    finish(ax, title_or(title, head), "cross-entropy loss (nats)")
    legend(ax, where="below", ncols=2)
    return ax
