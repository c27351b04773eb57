"""Draw a phase diagram (the dataset of :func:`grokscope.phase_diagram`) as a coloured grid.

Labels get fixed colours from the Okabe-Ito palette (safe for the common colour-vision
deficiencies); numeric variables (``final_test_acc_mean``, ``frac_grokking`` ...) a
perceptually uniform colour map with a colour bar. Cells are centred on the swept values: an
axis is log-scaled when its values are positive and span a decade or more, symlog-scaled when
they also include 0 (e.g. weight decay 0, 1e-3, ..., 1), linear otherwise, and categorical
for non-numeric values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..errors import ConfigError

__all__ = ["LABEL_COLORS", "plot_phase_diagram"]

#: Okabe-Ito colours per phase label; grey for cells without a run
LABEL_COLORS: dict[str, str] = {
    "comprehension": "#009E73",  # bluish green
    "grokking": "#0072B2",  # blue
    "memorisation": "#E69F00",  # orange
    "confusion": "#D55E00",  # vermillion
    "semi-grokking": "#56B4E9",  # sky blue
    "ungrokking": "#CC79A7",  # reddish purple
    "missing": "#D9D9D9",  # light grey
}


def _scale(values: np.ndarray) -> str:
    if values.dtype.kind not in "iuf" or values.size < 2:
        return "linear" if values.dtype.kind in "iuf" else "category"
    v = values.astype(np.float64)
    if np.all(v > 0) and v.max() / v.min() >= 10:
        return "log"
    pos = v[v > 0]
    if np.all(v >= 0) and pos.size >= 2 and pos.max() / pos.min() >= 10:
        return "symlog"
    return "linear"


def _transform(scale: str, values: np.ndarray) -> tuple[Any, Any]:
    """Forward and inverse maps of an axis scale, as numpy functions."""
    if scale == "log":
        return np.log10, lambda u: 10.0**u
    if scale == "symlog":
        t = float(values[values > 0].min())

        def fwd(v: np.ndarray) -> np.ndarray:
            v = np.asarray(v, dtype=np.float64)
            a = np.maximum(np.abs(v), t)
            return np.where(np.abs(v) <= t, v / t, np.sign(v) * (1 + np.log10(a / t)))

        def inv(u: np.ndarray) -> np.ndarray:
            u = np.asarray(u, dtype=np.float64)
            return np.where(np.abs(u) <= 1, u * t, np.sign(u) * t * 10.0 ** (np.abs(u) - 1))

        return fwd, inv
    return (lambda v: np.asarray(v, dtype=np.float64)), (lambda u: u)


def _edges(values: np.ndarray, scale: str) -> tuple[np.ndarray, np.ndarray]:
    """Cell edges ``(n + 1,)`` and centres ``(n,)`` in data coordinates."""
    if scale == "category":
        centres = np.arange(values.size, dtype=np.float64)
        return np.arange(values.size + 1, dtype=np.float64) - 0.5, centres
    fwd, inv = _transform(scale, values)
    u = fwd(values.astype(np.float64))
    if u.size == 1:
        half = np.array([0.5])
    else:
        half = np.diff(u) / 2
    inner = u[:-1] + half[: u.size - 1] if u.size > 1 else np.array([])
    lo = u[0] - (half[0] if u.size > 1 else 0.5)
    hi = u[-1] + (half[-1] if u.size > 1 else 0.5)
    edges = inv(np.concatenate([[lo], inner, [hi]]))
    if scale == "linear" and u.size == 1:
        width = 0.5 * abs(values[0]) if values[0] != 0 else 0.5
        edges = np.array([values[0] - width, values[0] + width], dtype=np.float64)
    return np.asarray(edges, dtype=np.float64), values.astype(np.float64)


def _set_axis(ax: Axes, which: str, values: np.ndarray, scale: str, edges: np.ndarray,
              name: str) -> None:
    set_scale = ax.set_xscale if which == "x" else ax.set_yscale
    set_lim = ax.set_xlim if which == "x" else ax.set_ylim
    set_ticks = ax.set_xticks if which == "x" else ax.set_yticks
    set_label = ax.set_xlabel if which == "x" else ax.set_ylabel
    if scale == "log":
        set_scale("log")
    elif scale == "symlog":
        set_scale("symlog", linthresh=float(values[values > 0].min()), linscale=1.0)
    set_lim(edges[0], edges[-1])
    centres = np.arange(values.size) if scale == "category" else values.astype(np.float64)
    labels = [str(v) if scale == "category" else f"{float(v):g}" for v in values]
    set_ticks(centres, labels)
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_minor_locator(_NullLocator())
    suffix = {"log": " (log scale)", "symlog": " (symlog scale)"}.get(scale, "")
    set_label(f"{name}{suffix}")


def _NullLocator() -> Any:  # noqa: N802 (a factory, named like the class it returns)
    from matplotlib.ticker import NullLocator

    return NullLocator()


def _task_title(ds: xr.Dataset) -> str:
    import json

    try:
        task = json.loads(ds.attrs.get("task", "null"))
    except (TypeError, ValueError):
        task = None
    if not isinstance(task, dict) or "name" not in task:
        return "Phase diagram"
    swept = {ds.attrs.get("x", ""), ds.attrs.get("y", "")}
    swept |= {s.split(".", 1)[-1] for s in swept}
    keep = [f"{k}={task[k]}" for k in ("p", "op", "train_frac", "n_bits", "k", "d", "n_train")
            if k in task and k not in swept]
    extra = f" ({', '.join(keep)})" if keep else ""
    return f"Phase diagram: {task['name']}{extra}"


def _caption(ds: xr.Dataset) -> str:
    parts = []
    if "threshold" in ds.attrs:
        parts.append(f"threshold {ds.attrs['threshold']:g}")
    if "comprehension_gap" in ds.attrs:
        parts.append(f"grokking gap >= {ds.attrs['comprehension_gap']:g} steps")
    if "step_budget" in ds.attrs:
        parts.append(f"step budget {int(ds.attrs['step_budget'])}")
    if "seed" in ds.dims:
        parts.append(f"{ds.sizes['seed']} seed{'s' if ds.sizes['seed'] != 1 else ''}")
    return ", ".join(parts)


def plot_phase_diagram(
    ds: xr.Dataset,
    ax: Axes | None = None,
    *,
    var: str = "label_mode",
    annotate: bool = True,
    title: str | None = None,
    cmap: str = "viridis",
) -> Axes:
    """Draw ``ds[var]`` as a coloured grid over the two swept hyperparameters.

    Parameters
    ----------
    ds : xr.Dataset
        The output of :func:`grokscope.phase_diagram` (attrs ``x`` and ``y`` name the dims).
    ax : Axes, optional
        Where to draw; a new :class:`matplotlib.figure.Figure` (no pyplot state) when None.
    var : str
        A 2-D ``(x, y)`` variable: a label variable (``label_mode``) is drawn with the
        categorical palette :data:`LABEL_COLORS` and a legend; a numeric one with ``cmap``
        and a colour bar. For a per-seed variable select a seed first
        (``ds.isel(seed=0)``, then ``var="label"``).
    annotate : bool
        Write in each cell the seed agreement ``k/n`` (labels, when several seeds) or the
        value (numeric variables).
    title : str, optional
        Replaces the default title (the task and its fixed parameters); the caption below
        the x label (thresholds, step budget, seeds) is always drawn.
    cmap : str
        Colour map of numeric variables.

    Returns
    -------
    Axes
    """
    if not isinstance(ds, xr.Dataset):
        raise ConfigError(f"plot_phase_diagram needs the Dataset of gs.phase_diagram, got "
                          f"{type(ds).__name__}")
    x, y = ds.attrs.get("x"), ds.attrs.get("y")
    if x is None or y is None:
        raise ConfigError("plot_phase_diagram: the dataset has no 'x'/'y' attrs; build it with "
                          "gs.phase_diagram")
    if var not in ds:
        raise ConfigError(f"plot_phase_diagram: no variable {var!r}; choose one of "
                          f"{sorted(ds.data_vars)}")
    da = ds[var]
    extra = [d for d in da.dims if d not in (x, y)]
    if extra:
        raise ConfigError(
            f"plot_phase_diagram: {var!r} has dims {da.dims}; select the extra dims first "
            f"(e.g. ds.isel(seed=0)) or draw an aggregate such as 'label_mode'"
        )
    da = da.transpose(x, y)
    if ax is None:
        fig = Figure(figsize=(6.4, 4.8), layout="constrained")
        ax = fig.add_subplot()
    xs, ys = np.asarray(ds[x].values), np.asarray(ds[y].values)
    sx, sy = _scale(xs), _scale(ys)
    ex, cx = _edges(xs, sx)
    ey, cy = _edges(ys, sy)
    values = np.asarray(da.values)
    categorical = values.dtype.kind in "USO"
    if categorical:
        names = list(LABEL_COLORS)
        unknown = sorted(set(values.ravel().tolist()) - set(names))
        names += unknown
        colors = list(LABEL_COLORS.values()) + ["#000000"] * len(unknown)
        codes = np.vectorize(names.index, otypes=[np.int64])(values)
        cmap_obj = ListedColormap(colors)
        norm = BoundaryNorm(np.arange(len(names) + 1) - 0.5, len(names))
        mesh = ax.pcolormesh(ex, ey, codes.T, cmap=cmap_obj, norm=norm, edgecolors="white",
                             linewidth=1.0)
        present = [n for n in names if n in set(values.ravel().tolist())]
        handles = [Patch(facecolor=colors[names.index(n)], edgecolor="none", label=n)
                   for n in present]
        ax.legend(handles=handles, title="phase", loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0.0, frameon=False)
    else:
        mesh = ax.pcolormesh(ex, ey, values.astype(np.float64).T, cmap=cmap,
                             edgecolors="white", linewidth=1.0)
        label = var + (f" [{da.attrs['units']}]" if "units" in da.attrs else "")
        ax.figure.colorbar(mesh, ax=ax, label=label)
    _set_axis(ax, "x", xs, sx, ex, x)
    _set_axis(ax, "y", ys, sy, ey, y)
    if annotate:
        _annotate(ax, ds, da, mesh, cx, cy, categorical, sx, sy)
    ax.set_title(title if title is not None else _task_title(ds))
    caption = _caption(ds)
    if caption:  # below the x label, inside the axes' layout box
        ax.annotate(caption, xy=(0.5, 0.0), xycoords=ax.xaxis.label, xytext=(0, -4),
                    textcoords="offset points", ha="center", va="top", fontsize="small",
                    color="0.3")
    return ax


def _ink(rgba: Any) -> str:
    """Black or white, whichever reads better on ``rgba``."""
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


def _annotate(ax: Axes, ds: xr.Dataset, da: xr.DataArray, mesh: Any, cx: np.ndarray,
              cy: np.ndarray, categorical: bool, sx: str, sy: str) -> None:
    x, y = ds.attrs["x"], ds.attrs["y"]
    colours = mesh.to_rgba(np.asarray(mesh.get_array())).reshape(cy.size, cx.size, 4)
    px = np.arange(cx.size) if sx == "category" else cx
    py = np.arange(cy.size) if sy == "category" else cy
    if categorical:
        if "n_runs" not in ds or "label_agreement" not in ds or "seed" not in ds.dims:
            return
        if ds.sizes["seed"] < 2:
            return
        n = ds["n_runs"].transpose(x, y).values
        agree = ds["label_agreement"].transpose(x, y).values
        for i in range(px.size):
            for j in range(py.size):
                if n[i, j] > 0:
                    k = int(round(agree[i, j] * n[i, j]))
                    ax.text(px[i], py[j], f"{k}/{int(n[i, j])}", ha="center", va="center",
                            fontsize="small", color=_ink(colours[j, i]))
        return
    v = da.values.astype(np.float64)
    for i in range(px.size):
        for j in range(py.size):
            if np.isfinite(v[i, j]):
                ax.text(px[i], py[j], f"{v[i, j]:.3g}", ha="center", va="center",
                        fontsize="small", color=_ink(colours[j, i]))
