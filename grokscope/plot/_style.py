"""Shared style of grokscope figures: palette, new axes, the step axis, data checks.

Every figure uses the Okabe-Ito palette (distinguishable under the common colour-vision
deficiencies) and is drawn on a :class:`matplotlib.figure.Figure` created through the
object-oriented API, so no pyplot state is touched.

The step axis
-------------
Training steps are usually recorded log-spaced early and linearly later, and include step 0.
When the positive steps span two decades or more the axis is ``symlog`` with a linear region
``[0, 1]`` (so step 0 is drawn where it belongs, and integer steps >= 1 are on a log scale),
and the label says so: ``"step (log scale, 0 shown)"``. Otherwise it is linear: ``"step"``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..errors import GrokscopeError

__all__ = [
    "OKABE_ITO",
    "PlotDataError",
    "cell_edges",
    "color",
    "new_axes",
    "require",
    "set_step_axis",
    "step_scale",
    "steps_of",
    "values",
]

#: Okabe & Ito (2008) colour-blind-safe palette, in the order grokscope uses it.
OKABE_ITO: tuple[str, ...] = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#E69F00",  # orange
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
)

#: Roles used across figures (train vs test are the same colours everywhere).
TRAIN_COLOR = OKABE_ITO[0]
TEST_COLOR = OKABE_ITO[1]
GAP_COLOR = "#999999"

#: Decades the positive steps must span for a log step axis.
LOG_DECADES = 2.0


class PlotDataError(GrokscopeError, ValueError):
    """A dataset lacks what a plot needs (a variable, a dim, any finite value)."""


def color(i: int) -> str:
    """The ``i``-th palette colour (cycling)."""
    return OKABE_ITO[i % len(OKABE_ITO)]


def new_axes(ax: Axes | None, figsize: tuple[float, float] = (6.4, 4.2)) -> Axes:
    """``ax``, or the axes of a new pyplot-free :class:`~matplotlib.figure.Figure`."""
    if ax is not None:
        if not isinstance(ax, Axes):
            raise PlotDataError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
        return ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig.add_subplot()


def require(ds: xr.Dataset, *names: str, what: str) -> None:
    """Raise :class:`PlotDataError` unless ``ds`` has every variable in ``names``."""
    if not isinstance(ds, xr.Dataset):
        raise PlotDataError(f"{what} needs an xarray Dataset, got {type(ds).__name__}")
    missing = [n for n in names if n not in ds.variables]
    if missing:
        raise PlotDataError(
            f"{what} needs the variable(s) {missing}, but the dataset has "
            f"{sorted(map(str, ds.data_vars))}; pass the stored result of the right measure "
            "(run.results[name])"
        )


def steps_of(ds: xr.Dataset, what: str) -> np.ndarray:
    """The ``step`` coordinate as int64; error when absent or empty."""
    if "step" not in ds.dims:
        raise PlotDataError(
            f"{what} plots against training steps, but the dataset has no 'step' dimension "
            f"(dims {dict(ds.sizes)}); pass the per-step result, not one step of it"
        )
    steps = np.asarray(ds["step"].values)
    if steps.size == 0:
        raise PlotDataError(f"{what}: the dataset has no steps to plot")
    return steps.astype(np.int64) if steps.dtype.kind in "iu" else steps.astype(np.float64)


def values(da: xr.DataArray | np.ndarray | Any) -> np.ndarray:
    """The values as a float64 numpy array (dask-backed data is computed)."""
    arr = np.asarray(getattr(da, "values", da))
    return arr.astype(np.float64) if arr.dtype.kind in "biuf" else arr


def any_finite(*arrays: np.ndarray) -> bool:
    """Whether any of the arrays holds a finite value."""
    return any(np.isfinite(np.asarray(a, dtype=np.float64)).any() for a in arrays)


def step_scale(steps: np.ndarray) -> str:
    """``"symlog"`` when the positive steps span :data:`LOG_DECADES` decades, else ``"linear"``."""
    s = np.asarray(steps, dtype=np.float64)
    pos = s[np.isfinite(s) & (s > 0)]
    if pos.size >= 2 and np.log10(pos.max() / pos.min()) >= LOG_DECADES:
        return "symlog"
    return "linear"


def set_step_axis(ax: Axes, steps: np.ndarray, *, label: str = "step") -> str:
    """Scale and label the x axis for ``steps``; returns the scale used.

    Uses ``symlog`` (linear on ``[0, 1]``, log above) when training spans decades, so step 0 is
    shown; the label then ends in ``"(log scale, 0 shown)"``.
    """
    scale = step_scale(steps)
    if scale == "symlog":
        ax.set_xscale("symlog", linthresh=1.0, linscale=0.3)
        s = np.asarray(steps, dtype=np.float64)
        ax.set_xlim(max(float(np.nanmin(s)), 0.0) if np.nanmin(s) >= 0 else None,
                    float(np.nanmax(s)) * 1.15)
        ax.set_xlabel(f"{label} (log scale, 0 shown)")
    else:
        ax.set_xlabel(label)
    return scale


def cell_edges(steps: np.ndarray, scale: str) -> np.ndarray:
    """Edges of cells centred on ``steps`` in the displayed scale (for ``pcolormesh``).

    Returns
    -------
    ndarray, shape ``(n + 1,)``
    """
    s = np.asarray(steps, dtype=np.float64)
    if s.size == 1:
        return np.array([s[0] - 0.5, s[0] + 0.5])
    log = scale == "symlog" and s.min() >= 0
    u = np.log1p(s) if log else s
    mid = 0.5 * (u[1:] + u[:-1])
    e = np.concatenate([[u[0] - (mid[0] - u[0])], mid, [u[-1] + (u[-1] - mid[-1])]])
    return np.expm1(e) if log else e


def step_series(ds: xr.Dataset, name: str, ax: Axes | None, *, what: str) -> tuple[Axes, np.ndarray, np.ndarray]:
    """Start a plot of ``ds[name]`` against step.

    Checks the variable exists and has a finite value, makes (or takes) the axes and sets the
    step axis. Returns ``(ax, steps, values)``.
    """
    require(ds, name, what=what)
    steps = steps_of(ds, what)
    y = values(ds[name])
    if not any_finite(y):
        raise PlotDataError(f"{what}: {name} has no finite value")
    ax = new_axes(ax)
    set_step_axis(ax, steps)
    return ax, steps, y


def legend(ax: Axes, handles: list | None = None, **kwargs) -> None:
    """A legend drawn above every line: on the twin axes when there is one."""
    target = getattr(ax, "grokscope_twin", ax)
    kwargs.setdefault("fontsize", 8)
    kwargs.setdefault("framealpha", 0.85)
    if handles is None:
        ax.legend(**kwargs)
    else:
        target.legend(handles=handles, **kwargs)


def finish(ax: Axes, title: str, ylabel: str) -> Axes:
    """Set the title and y label (the x label is set by :func:`set_step_axis`)."""
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.25, linewidth=0.6)
    return ax
