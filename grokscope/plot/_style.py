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

Style options shared by every ``plot_*`` function
-------------------------------------------------
``title``
    None draws the function's default title; ``""`` draws none (the caption of a paper goes
    under the figure, not in it).
``marks``
    Per-step figures draw ``t_train`` / ``t_test`` as dotted vertical lines (train and test
    colours). They come from ``marks``: a mapping ``{"t_train": 63, "t_test": 1400}``, a
    Dataset with ``train_acc``/``test_acc`` (``run.metrics``, the ``curves`` result) or
    with scalar ``t_train``/``t_test`` (the ``phases`` result), or a Run (its metrics); with
    ``marks=None`` a dataset that holds accuracies marks itself; ``marks=False`` draws none.
``panels`` / ``ax=(top, bottom)``
    Figures that show two quantities on different scales draw them on a twin y axis by
    default; ``panels=True`` (a new figure) or ``ax=(top, bottom)`` (your axes) draws the
    second on its own panel below, sharing the step axis.
Legends sit outside the axes (right of them, or below a heat map with a colour bar), so they
never cover data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import ScaledTranslation

from ..errors import GrokscopeError

__all__ = [
    "OKABE_ITO",
    "PlotDataError",
    "cell_edges",
    "color",
    "draw_marks",
    "legend",
    "milestone_marks",
    "new_axes",
    "new_panels",
    "split_axes",
    "title_or",
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


def step_series(ds: xr.Dataset, name: str, ax: Any, *, what: str, panels: bool = False,
                second: str | None = "") -> tuple[Axes, Axes | None, np.ndarray, np.ndarray]:
    """Start a plot of ``ds[name]`` against step.

    Checks the variable exists and has a finite value, makes (or takes) the axes and sets the
    step axis. Returns ``(ax, panel, steps, values)``; ``panel`` is the lower Axes of the
    two-panel layout (``panels=True`` or ``ax=(top, bottom)``), else None; ``second`` as in
    :func:`split_axes`.
    """
    require(ds, name, what=what)
    steps = steps_of(ds, what)
    y = values(ds[name])
    if not any_finite(y):
        raise PlotDataError(f"{what}: {name} has no finite value")
    ax, panel = split_axes(ax, panels, what=what, second=second)
    set_step_axis(ax, steps)
    if panel is not None:
        set_step_axis(panel, steps)
    return ax, panel, steps, y


def title_or(title: str | None, default: str) -> str:
    """``default`` when ``title`` is None, else ``title`` (``""``: no title)."""
    return default if title is None else str(title)


def new_panels(n: int = 2, figsize: tuple[float, float] | None = None,
               height_ratios: tuple[float, ...] | None = None) -> tuple[Axes, ...]:
    """``n`` stacked Axes of a new pyplot-free figure sharing the x (step) axis.

    Parameters
    ----------
    n : int
        Number of panels, top to bottom.
    figsize : (width, height) in inches, optional
        Default ``(6.4, 2.2 + 1.9 * n)``.
    height_ratios : tuple of float, optional
        Relative panel heights (default: the first panel 1.3x the others).

    Returns
    -------
    tuple of Axes, length ``n``
        Only the bottom one shows x tick labels.
    """
    if n < 1:
        raise PlotDataError(f"new_panels needs n >= 1 panels, got {n}")
    fig = Figure(figsize=figsize or (6.4, 2.2 + 1.9 * n), layout="constrained")
    ratios = height_ratios or ((1.3,) + (1.0,) * (n - 1))
    axes = fig.subplots(n, 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": list(ratios)})[:, 0]
    for a in axes[:-1]:
        a.tick_params(labelbottom=False)
    return tuple(axes)


def split_axes(ax: Any, panels: bool, *, figsize: tuple[float, float] = (6.4, 4.2),
               what: str = "this plot", second: str | None = "") -> tuple[Axes, Axes | None]:
    """The main Axes and, in the two-panel layout, the lower panel (else None).

    ``ax`` may be None, one Axes, or a pair ``(top, bottom)`` (which implies panels).
    ``second`` names what the lower panel would show; None means the data has none, so a
    pair is refused (it would leave an empty panel) and ``panels=True`` draws one axes.
    """
    if isinstance(ax, (tuple, list)):
        if len(ax) != 2 or not all(isinstance(a, Axes) for a in ax):
            raise PlotDataError(
                f"{what}: ax must be one Axes or a pair (top, bottom) of Axes for the two-panel "
                f"layout, got {len(ax)} item(s)"
            )
        if second is None:
            raise PlotDataError(
                f"{what}: the data has nothing for the lower panel of ax=(top, bottom) (it "
                "would stay empty); pass one Axes"
            )
        return ax[0], ax[1]
    panels = panels and second is not None
    if panels:
        if ax is not None:
            raise PlotDataError(
                f"{what}: panels=True draws a new two-panel figure; to draw on your own figure "
                "pass ax=(top, bottom), e.g. from grokscope.plot.new_panels()"
            )
        top, bottom = new_panels(2, figsize=(figsize[0], figsize[1] + 1.4))
        return top, bottom
    return new_axes(ax, figsize), None


def finish_panel(top: Axes, bottom: Axes) -> None:
    """Link a two-panel layout: the step label only under the bottom panel."""
    top.grokscope_panel = bottom  # type: ignore[attr-defined]
    if top.get_shared_x_axes().joined(top, bottom):
        top.tick_params(labelbottom=False)
        top.set_xlabel("")


def milestone_marks(marks: Any, ds: Any = None, *, threshold: float = 0.9
                    ) -> dict[str, float]:
    """``{"t_train": .., "t_test": ..}`` (only the milestones reached) from ``marks``.

    Parameters
    ----------
    marks : mapping, xr.Dataset, Run, False or None
        A mapping with ``t_train`` / ``t_test`` (None or NaN: not reached); a Dataset with
        ``train_acc`` / ``test_acc`` over ``step`` (the first step whose accuracy is
        ``>= threshold``) or with scalar ``t_train`` / ``t_test`` (the ``phases`` result); a
        Run (its metrics, else its ``curves`` result). None: taken from ``ds`` when it holds
        accuracies, else no marks. False: no marks.
    ds : xr.Dataset, optional
        The plotted dataset (used when ``marks`` is None).
    threshold : float
        Accuracy that counts as reached.

    Returns
    -------
    dict of str to float
    """
    from ..summary import first_crossing

    if marks is False:
        return {}
    if marks is None:
        if isinstance(ds, xr.Dataset) and "train_acc" in ds and "test_acc" in ds:
            marks = ds
        else:
            return {}
    if not isinstance(marks, (xr.Dataset, dict)) and hasattr(marks, "metrics"):
        from .curves import curves_dataset

        marks = curves_dataset(marks)
    out: dict[str, float] = {}
    if isinstance(marks, xr.Dataset):
        if "train_acc" in marks and "test_acc" in marks and "step" in marks.dims:
            steps = steps_of(marks, "marks")
            for key, var in (("t_train", "train_acc"), ("t_test", "test_acc")):
                t = first_crossing(steps, values(marks[var]), threshold)
                if t is not None:
                    out[key] = float(t)
            return out
        if "t_train" in marks or "t_test" in marks:
            marks = {k: marks[k].values for k in ("t_train", "t_test") if k in marks}
        else:
            raise PlotDataError(
                "marks: the dataset has neither train_acc/test_acc over step nor t_train/t_test;"
                " pass run.metrics, the 'phases' result or {'t_train': .., 't_test': ..}"
            )
    if not hasattr(marks, "items"):
        raise PlotDataError(
            f"marks must be a mapping {{'t_train': .., 't_test': ..}}, a Dataset, a Run, None or "
            f"False; got {type(marks).__name__}"
        )
    unknown = sorted(set(map(str, marks)) - {"t_train", "t_test"})
    if unknown:
        raise PlotDataError(f"marks: unknown key(s) {unknown}; use 't_train' and 't_test'")
    for key in ("t_train", "t_test"):
        v = marks.get(key)
        if v is None:
            continue
        f = float(np.asarray(v, dtype=np.float64))
        if np.isfinite(f):
            out[key] = f
    return out


def draw_marks(ax: Axes, marks: dict[str, float], *, label: bool = True) -> list:
    """Dotted vertical lines at ``t_train`` (train colour) and ``t_test`` (test colour).

    Each line has ``gid`` ``"t_train"`` / ``"t_test"``; ``label=False`` keeps them out of
    the legend (a second panel). Returns the lines drawn.
    """
    lines = []
    for key, c in (("t_train", TRAIN_COLOR), ("t_test", TEST_COLOR)):
        if key in marks:
            t = marks[key]
            name = f"{key} = {int(t):,}" if float(t).is_integer() else f"{key} = {t:g}"
            ln = ax.axvline(t, color=c, linestyle=":", linewidth=1.2,
                            label=name if label else f"_{name}")
            ln.set_gid(key)
            lines.append(ln)
    return lines


def legend(ax: Axes, handles: list | None = None, *, where: str = "right", **kwargs: Any
           ) -> Any:
    """A legend outside the axes, so it never covers data.

    Parameters
    ----------
    where : {"right", "below"}
        Right of the axes (past a twin axis's labels when there is one), or below the x label
        (for heat maps, whose colour bar is on the right).
    **kwargs
        Passed to :meth:`~matplotlib.axes.Axes.legend`.

    Returns
    -------
    Legend or None
        None when there is nothing to label.
    """
    if handles is None:
        handles = [h for h in ax.get_lines() if not str(h.get_label()).startswith("_")]
    if not handles:
        return None
    kwargs.setdefault("fontsize", 8)
    kwargs.setdefault("frameon", False)
    fig = ax.figure
    if where == "below":
        dy = -(0.62 if ax.get_xlabel() else 0.35)
        ncols = kwargs.pop("ncols", min(3, len(handles)))
        return ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                         bbox_transform=ax.transAxes + ScaledTranslation(0, dy, fig.dpi_scale_trans),
                         ncols=ncols, borderaxespad=0.0, **kwargs)
    if where != "right":
        raise PlotDataError(f"legend: where must be 'right' or 'below', got {where!r}")
    twin = getattr(ax, "grokscope_twin", None)
    dx = 0.08 + (0.72 if twin is not None else 0.0)
    target = twin if twin is not None else ax
    return target.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0),
                         bbox_transform=ax.transAxes + ScaledTranslation(dx, 0, fig.dpi_scale_trans),
                         borderaxespad=0.0, **kwargs)


def finish(ax: Axes, title: str, ylabel: str) -> Axes:
    """Set the title (``""``: none) and y label (the x label is set by :func:`set_step_axis`)."""
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.25, linewidth=0.6)
    return ax
