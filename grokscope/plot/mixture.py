"""Gaussian mixtures over the per-neuron order parameter (the ``mixture`` measure).

:func:`plot_mixture` draws the per-step histograms of ``phi`` as a heat map (step x phi) with
the fitted component means on top; :func:`plot_mixture_k` the number of components chosen by
BIC and the droplet fraction vs step.

Each step's histogram has its own bin edges (the full range of ``phi`` at that step); the heat
map resamples every step's density ``counts / (n * width)`` onto one common grid of ``phi``
spanning all steps (piecewise-constant, so no mass is invented between bins).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ._style import (
    PlotDataError,
    any_finite,
    cell_edges,
    color,
    draw_marks,
    finish,
    finish_panel,
    legend,
    milestone_marks,
    new_axes,
    require,
    set_step_axis,
    split_axes,
    steps_of,
    title_or,
    values,
)

__all__ = ["mixture_density", "plot_mixture", "plot_mixture_k"]

#: component colours that stay visible on the heat map (sky blue, orange, green, purple)
_COMPONENT_COLORS = (color(5), color(3), color(2), color(4), color(6), color(0))


def mixture_density(ds: xr.Dataset, n_grid: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-step densities of ``phi`` resampled on a common grid.

    Parameters
    ----------
    ds : xr.Dataset
        ``hist_counts`` ``(step, bin)`` and ``hist_edges`` ``(step, edge)``.
    n_grid : int, optional
        Cells of the common grid (default: the number of bins).

    Returns
    -------
    density : ndarray, shape ``(n_grid, n_steps)``
        ``p(phi)`` per step (0 where no neuron falls).
    grid_edges : ndarray, shape ``(n_grid + 1,)``
    """
    counts = values(ds["hist_counts"])
    edges = values(ds["hist_edges"])
    if counts.ndim == 1:
        counts, edges = counts[None], edges[None]
    n_steps, n_bins = counts.shape
    finite = np.isfinite(edges)
    if not finite.any():
        raise PlotDataError("plot_mixture: hist_edges has no finite value (non-finite weights?)")
    lo, hi = float(edges[finite].min()), float(edges[finite].max())
    n_grid = int(n_grid or n_bins)
    grid = np.linspace(lo, hi, n_grid + 1)
    centres = 0.5 * (grid[1:] + grid[:-1])
    density = np.zeros((n_grid, n_steps))
    for j in range(n_steps):
        e, c = edges[j], counts[j]
        total = np.nansum(c)
        if not (np.isfinite(e).all() and total > 0):
            density[:, j] = np.nan
            continue
        widths = np.diff(e)
        d = c / (total * widths)
        idx = np.searchsorted(e, centres, side="right") - 1
        ok = (idx >= 0) & (idx < n_bins)
        density[ok, j] = d[idx[ok]]
    return density, grid


#: marker area of a component mean: ``_SIZE0 + _SIZE1 * weight`` (points^2)
_SIZE0, _SIZE1 = 10.0, 60.0


def plot_mixture(
    ds: xr.Dataset,
    ax: Axes | None = None,
    *,
    color_by: str = "neglogp",
    means: bool = True,
    title: str | None = None,
    marks: Any = None,
) -> Axes:
    """Histogram of the order parameter over steps as a heat map, component means overlaid.

    Parameters
    ----------
    ds : xr.Dataset
        The ``mixture`` result: dims ``step``, ``bin``, ``edge``, ``component``
        [, ``feature``]; ``hist_counts``, ``hist_edges``, ``means``, ``weights``.
    color_by : {"neglogp", "density"}
        Colour = ``-log p(phi)`` (nats; empty cells blank) or ``p(phi)``.
    means : bool
        Overlay the fitted component means (marker area ~ component weight, explained in the
        legend), one colour per component slot (the measure keeps a component's slot along
        the trajectory), and the null band: the random-init distribution's mean +-
        ``null_sds`` of its stds (dotted), where the result has ``null_mean``/``null_std``
        for a scalar order parameter. The y range covers every mean, and markers are never
        clipped at the axes' edge.
    title : str, optional
        None: the default title; ``""``: none.
    marks : optional
        ``t_train``/``t_test`` marks (see :func:`grokscope.plot._style.milestone_marks`).

    Returns
    -------
    Axes
        The legend is below the axes (the colour bar is on the right).
    """
    require(ds, "hist_counts", "hist_edges", what="plot_mixture")
    if color_by not in ("neglogp", "density"):
        raise PlotDataError(f"color_by must be 'neglogp' or 'density', got {color_by!r}")
    steps = steps_of(ds, "plot_mixture")
    density, grid = mixture_density(ds)
    ax = new_axes(ax, figsize=(7.0, 4.8))
    scale = set_step_axis(ax, steps)
    xe = cell_edges(steps, scale)
    with np.errstate(divide="ignore"):
        c = -np.log(density) if color_by == "neglogp" else density
    c = np.ma.masked_invalid(np.where(density > 0, c, np.nan))
    mesh = ax.pcolormesh(xe, grid, c, cmap="magma" if color_by == "neglogp" else "magma_r",
                         shading="flat", rasterized=True)
    ax.set_xlim(xe[0], xe[-1])
    lo, hi = float(grid[0]), float(grid[-1])
    label = (r"$-\log p(\varphi)$ (nats); blank = no neuron" if color_by == "neglogp"
             else r"$p(\varphi)$")
    ax.figure.colorbar(mesh, ax=ax, label=label, pad=0.01)
    handles: list = []
    if means and "means" in ds:
        m = values(ds["means"])
        if m.ndim == 3:  # (step, component, feature): the histogram is of the first feature
            m = m[:, :, 0]
        w = values(ds["weights"]) if "weights" in ds else np.ones_like(m)
        m = m.reshape(len(steps), -1)
        w = w.reshape(len(steps), -1)
        for k in range(m.shape[1]):
            if not any_finite(m[:, k]):
                continue
            col = _COMPONENT_COLORS[k % len(_COMPONENT_COLORS)]
            handles += ax.plot(steps, m[:, k], color=col, linewidth=1.2,
                               label=f"component {k} mean")
            sizes = _SIZE0 + _SIZE1 * np.nan_to_num(w[:, k])
            ax.scatter(steps, m[:, k], s=sizes, color=col, edgecolors="white", linewidths=0.6,
                       zorder=3, clip_on=False)
            fin = m[:, k][np.isfinite(m[:, k])]
            lo, hi = min(lo, float(fin.min())), max(hi, float(fin.max()))
        handles += _null_band(ds, ax, steps)
        if handles:  # explain the marker sizes
            handles += [Line2D([], [], linestyle="none", marker="o", color="#777777",
                               markeredgecolor="white",
                               markersize=float(np.sqrt(_SIZE0 + _SIZE1 * wt)),
                               label=f"weight {wt:g}") for wt in (0.1, 0.5, 1.0)]
    # the y range covers the histogram and every mean, with room for the largest marker
    pad = 0.04 * (hi - lo) if hi > lo else 0.5
    ax.set_ylim(lo - pad, hi + pad)
    mk = milestone_marks(marks, ds)
    handles += draw_marks(ax, mk)
    kind = ds.attrs.get("order_parameter_used")
    ylabel = rf"$\varphi$ ({kind} order parameter)" if kind else r"order parameter $\varphi$"
    finish(ax, title_or(title, "Neuron order parameter: histogram and mixture means"), ylabel)
    ax.grid(False)
    if handles:
        legend(ax, handles, where="below", ncols=4, title="marker area ∝ component weight"
               if means and "means" in ds else None, title_fontsize=8)
    return ax


def _null_band(ds: xr.Dataset, ax: Axes, steps: np.ndarray) -> list:
    """Dotted lines at the null mean +- null_sds null stds (scalar order parameters)."""
    if "null_mean" not in ds or "null_std" not in ds or ds["null_mean"].ndim > 1:
        return []
    mean = values(ds["null_mean"]).reshape(-1)
    std = values(ds["null_std"]).reshape(-1)
    if mean.size != len(steps) or not any_finite(mean, std):
        return []
    n_sd = float(ds.attrs.get("param_null_sds", 3.0))
    out = []
    for sign, label in ((1.0, f"null mean ± {n_sd:g} null std"), (-1.0, "_null band")):
        out += ax.plot(steps, mean + sign * n_sd * std, color="#BBBBBB", linestyle=":",
                       linewidth=1.1, label=label)
    return out[:1]


def plot_mixture_k(ds: xr.Dataset, ax: Any = None, *, title: str | None = None,
                   panels: bool = False, marks: Any = None) -> Axes:
    """Number of mixture components chosen by BIC and the droplet fraction vs step.

    Parameters
    ----------
    ds : xr.Dataset
        The ``mixture`` result: ``k`` and ``droplet_fraction`` (dim ``step``); also
        ``neurons_outside_null`` (dotted) where present.
    ax : Axes or (Axes, Axes), optional
        A pair selects the two-panel layout.
    title : str, optional
        None: the default title; ``""``: none.
    panels : bool
        The fractions on their own panel below (a new figure).
    marks : optional
        ``t_train``/``t_test`` marks (see :func:`grokscope.plot._style.milestone_marks`).

    Returns
    -------
    Axes
        Axes of ``k``; the droplet fraction is on ``ax.grokscope_twin`` (or
        ``ax.grokscope_panel``).
    """
    require(ds, "k", "droplet_fraction", what="plot_mixture_k")
    steps = steps_of(ds, "plot_mixture_k")
    k = values(ds["k"])
    frac = values(ds["droplet_fraction"])
    if not any_finite(k, frac):
        raise PlotDataError("plot_mixture_k: k and droplet_fraction have no finite value")
    ax, panel = split_axes(ax, panels, what="plot_mixture_k")
    set_step_axis(ax, steps)
    mk = milestone_marks(marks, ds)
    handles = ax.plot(steps, k, color=color(0), drawstyle="steps-mid", marker="o", markersize=3,
                      label="k (BIC)", clip_on=False)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    kmax = np.nanmax(k) if any_finite(k) else 1
    ax.set_ylim(0.5, kmax + 0.5)
    handles += draw_marks(ax, mk)
    if panel is not None:
        set_step_axis(panel, steps)
        other = panel
    else:
        other = ax.twinx()
    dashed = "--" if panel is None else "-"
    fhandles = other.plot(steps, frac, color=color(1), linestyle=dashed, marker=".",
                          label="droplet fraction", clip_on=False)
    if "neurons_outside_null" in ds and any_finite(values(ds["neurons_outside_null"])):
        fhandles += other.plot(steps, values(ds["neurons_outside_null"]), color=color(2),
                               linestyle=":", label="neurons beyond the null (no fit)")
    other.set_ylim(-0.03, 1.03)
    if panel is not None:
        draw_marks(panel, mk, label=False)
        finish(panel, "", "fraction of neurons")
        finish_panel(ax, panel)
        legend(panel, fhandles)
    else:
        handles += fhandles
        other.set_ylabel("droplet fraction (dashed)")
        ax.grokscope_twin = other  # type: ignore[attr-defined]
    finish(ax, title_or(title, "Mixture components and droplet fraction"),
           "components k (chosen by BIC)")
    legend(ax, handles)
    return ax
