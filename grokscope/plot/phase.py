"""Draw a phase diagram (the dataset of :func:`grokscope.phase_diagram`) as a coloured grid.

Labels get fixed colours from the Okabe-Ito palette (safe for the common colour-vision
deficiencies); numeric variables (``final_test_acc_mean``, ``frac_grokking`` ...) a
perceptually uniform colour map with a colour bar. Every cell has the same width and height
whatever the spacing of the swept values (weight decay 0, 1e-3, 1, 10 ...): each axis is
categorical, the swept values are its tick labels, in the dataset's order. What the text in
the cells means is written in the caption under the x label.
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


def _tick_label(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):g}"
    return str(v)


def _set_axis(ax: Axes, which: str, values: np.ndarray, name: str) -> None:
    """A categorical axis: cell ``i`` spans ``[i - 0.5, i + 0.5]``, labelled ``values[i]``."""
    set_lim = ax.set_xlim if which == "x" else ax.set_ylim
    set_ticks = ax.set_xticks if which == "x" else ax.set_yticks
    set_label = ax.set_xlabel if which == "x" else ax.set_ylabel
    set_lim(-0.5, values.size - 0.5)
    set_ticks(np.arange(values.size), [_tick_label(v) for v in values])
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_minor_locator(_NullLocator())
    axis.set_tick_params(length=0)
    set_label(name)


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


def _caption(ds: xr.Dataset, cells: str = "") -> str:
    parts = [cells] if cells else []
    if "threshold" in ds.attrs:
        parts.append(f"threshold {ds.attrs['threshold']:g}")
    if "comprehension_gap" in ds.attrs:
        parts.append(f"grokking gap >= {ds.attrs['comprehension_gap']:g} steps")
    if "step_budget" in ds.attrs:
        parts.append(f"step budget {int(ds.attrs['step_budget'])}")
    if "seed" in ds.dims:
        parts.append(f"{ds.sizes['seed']} seed{'s' if ds.sizes['seed'] != 1 else ''}")
    if cells:  # what the cell text means on its own line
        return parts[0] + ("\n" + ", ".join(parts[1:]) if parts[1:] else "")
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
    ex = np.arange(xs.size + 1, dtype=np.float64) - 0.5
    ey = np.arange(ys.size + 1, dtype=np.float64) - 0.5
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
    _set_axis(ax, "x", xs, x)
    _set_axis(ax, "y", ys, y)
    cells = ""
    if annotate:
        cells = _annotate(ax, ds, da, mesh, categorical)
    ax.set_title(title if title is not None else _task_title(ds))
    caption = _caption(ds, cells)
    if caption:  # below the x label, inside the axes' layout box
        ax.annotate(caption, xy=(0.5, 0.0), xycoords=ax.xaxis.label, xytext=(0, -4),
                    textcoords="offset points", ha="center", va="top", fontsize="small",
                    color="0.3")
    return ax


def _ink(rgba: Any) -> str:
    """Black or white, whichever reads better on ``rgba``."""
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


def _annotate(ax: Axes, ds: xr.Dataset, da: xr.DataArray, mesh: Any, categorical: bool) -> str:
    """Write each cell's text; returns what the text means (for the caption), or ``""``."""
    x, y = ds.attrs["x"], ds.attrs["y"]
    nx, ny = ds.sizes[x], ds.sizes[y]
    colours = mesh.to_rgba(np.asarray(mesh.get_array())).reshape(ny, nx, 4)
    if categorical:
        if "n_runs" not in ds or "label_agreement" not in ds or "seed" not in ds.dims:
            return ""
        if ds.sizes["seed"] < 2:
            return ""
        n = ds["n_runs"].transpose(x, y).values
        agree = ds["label_agreement"].transpose(x, y).values
        for i in range(nx):
            for j in range(ny):
                if n[i, j] > 0:
                    k = int(round(agree[i, j] * n[i, j]))
                    ax.text(i, j, f"{k}/{int(n[i, j])}", ha="center", va="center",
                            fontsize="small", color=_ink(colours[j, i]))
        return "cell text k/n: k of the cell's n seeds have the colour's label"
    v = da.values.astype(np.float64)
    for i in range(nx):
        for j in range(ny):
            if np.isfinite(v[i, j]):
                ax.text(i, j, f"{v[i, j]:.3g}", ha="center", va="center",
                        fontsize="small", color=_ink(colours[j, i]))
    return f"cell text: {da.name}"
