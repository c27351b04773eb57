"""Gaussian mixtures over the per-neuron order parameter (the ``mixture`` measure).

:func:`plot_mixture` draws the per-step histograms of ``phi`` as a heat map (step x phi) with
the fitted component means on top; :func:`plot_mixture_k` the number of components chosen by
BIC and the droplet fraction vs step.

Each step's histogram has its own bin edges (the full range of ``phi`` at that step); the heat
map resamples every step's density ``counts / (n * width)`` onto one common grid of ``phi``
spanning all steps (piecewise-constant, so no mass is invented between bins).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from ._style import (
    PlotDataError,
    any_finite,
    cell_edges,
    color,
    finish,
    legend,
    new_axes,
    require,
    set_step_axis,
    steps_of,
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


def plot_mixture(
    ds: xr.Dataset,
    ax: Axes | None = None,
    *,
    color_by: str = "neglogp",
    means: bool = True,
    title: str | None = None,
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
        Overlay the fitted component means (marker size ~ component weight), one colour per
        component slot (the measure keeps a component's slot along the trajectory), and the
        null band: the random-init distribution's mean +- ``null_sds`` of its stds (dotted),
        where the result has ``null_mean``/``null_std`` for a scalar order parameter.

    Returns
    -------
    Axes
    """
    require(ds, "hist_counts", "hist_edges", what="plot_mixture")
    if color_by not in ("neglogp", "density"):
        raise PlotDataError(f"color_by must be 'neglogp' or 'density', got {color_by!r}")
    steps = steps_of(ds, "plot_mixture")
    density, grid = mixture_density(ds)
    ax = new_axes(ax, figsize=(7.0, 4.4))
    scale = set_step_axis(ax, steps)
    xe = cell_edges(steps, scale)
    with np.errstate(divide="ignore"):
        c = -np.log(density) if color_by == "neglogp" else density
    c = np.ma.masked_invalid(np.where(density > 0, c, np.nan))
    mesh = ax.pcolormesh(xe, grid, c, cmap="magma" if color_by == "neglogp" else "magma_r",
                         shading="flat", rasterized=True)
    ax.set_xlim(xe[0], xe[-1])
    ax.set_ylim(grid[0], grid[-1])
    label = "−log p(φ) (nats); blank = no neuron" if color_by == "neglogp" else "p(φ)"
    ax.figure.colorbar(mesh, ax=ax, label=label, pad=0.01)
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
            ax.plot(steps, m[:, k], color=col, linewidth=1.2, label=f"component {k} mean")
            sizes = 10 + 60 * np.nan_to_num(w[:, k])
            ax.scatter(steps, m[:, k], s=sizes, color=col, edgecolors="white", linewidths=0.6,
                       zorder=3)
        _null_band(ds, ax, steps)
        if ax.get_lines():
            ax.legend(loc="upper left", fontsize=7, framealpha=0.8)
    kind = ds.attrs.get("order_parameter_used")
    ylabel = f"φ ({kind} order parameter)" if kind else "order parameter φ"
    finish(ax, title or "Neuron order parameter: histogram and mixture means", ylabel)
    ax.grid(False)
    return ax


def _null_band(ds: xr.Dataset, ax: Axes, steps: np.ndarray) -> None:
    """Dotted lines at the null mean +- null_sds null stds (scalar order parameters)."""
    if "null_mean" not in ds or "null_std" not in ds or ds["null_mean"].ndim > 1:
        return
    mean = values(ds["null_mean"]).reshape(-1)
    std = values(ds["null_std"]).reshape(-1)
    if mean.size != len(steps) or not any_finite(mean, std):
        return
    n_sd = float(ds.attrs.get("param_null_sds", 3.0))
    for sign, label in ((1.0, f"null mean ± {n_sd:g} null std"), (-1.0, None)):
        ax.plot(steps, mean + sign * n_sd * std, color="#BBBBBB", linestyle=":", linewidth=1.1,
                label=label)


def plot_mixture_k(ds: xr.Dataset, ax: Axes | None = None, *, title: str | None = None) -> Axes:
    """Number of mixture components chosen by BIC and the droplet fraction vs step.

    Parameters
    ----------
    ds : xr.Dataset
        The ``mixture`` result: ``k`` and ``droplet_fraction`` (dim ``step``); also
        ``neurons_outside_null`` (dotted) where present.

    Returns
    -------
    Axes
        Axes of ``k``; the droplet fraction is on ``ax.grokscope_twin``.
    """
    require(ds, "k", "droplet_fraction", what="plot_mixture_k")
    steps = steps_of(ds, "plot_mixture_k")
    k = values(ds["k"])
    frac = values(ds["droplet_fraction"])
    if not any_finite(k, frac):
        raise PlotDataError("plot_mixture_k: k and droplet_fraction have no finite value")
    ax = new_axes(ax)
    set_step_axis(ax, steps)
    handles = ax.plot(steps, k, color=color(0), drawstyle="steps-mid", marker="o", markersize=3,
                      label="k (BIC)")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    kmax = np.nanmax(k) if any_finite(k) else 1
    ax.set_ylim(0.5, kmax + 0.5)
    twin = ax.twinx()
    handles += twin.plot(steps, frac, color=color(1), linestyle="--", marker=".",
                         label="droplet fraction")
    if "neurons_outside_null" in ds and any_finite(values(ds["neurons_outside_null"])):
        handles += twin.plot(steps, values(ds["neurons_outside_null"]), color=color(2),
                             linestyle=":", label="neurons beyond the null (no fit)")
    twin.set_ylim(-0.02, 1.02)
    twin.set_ylabel("droplet fraction (dashed)")
    ax.grokscope_twin = twin  # type: ignore[attr-defined]
    finish(ax, title or "Mixture components and droplet fraction", "components k (chosen by BIC)")
    legend(ax, handles, loc="upper left", fontsize=8)
    return ax
