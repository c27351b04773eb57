"""Linear mapping number (the ``lmn`` measure): vs test loss, or vs step."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.colors import Normalize, SymLogNorm

from ._style import (
    TEST_COLOR,
    TRAIN_COLOR,
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
    step_scale,
    steps_of,
    title_or,
    values,
)

__all__ = ["align_test_loss", "plot_lmn"]

_YLABEL = r"$\mathrm{LMN} = 2^{H}$ (linear regions)"


def align_test_loss(ds: xr.Dataset, test_loss: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair each LMN step with its test loss.

    Parameters
    ----------
    ds : xr.Dataset
        The ``lmn`` result (dim ``step``).
    test_loss : xr.DataArray, xr.Dataset or array
        A DataArray with a ``step`` coordinate, a Dataset holding ``test_loss`` (the run's
        metrics or the ``curves`` result), or an array with one value per step of ``ds``.

    Returns
    -------
    steps, lmn, loss : ndarray, shape ``(n,)``
        The steps present in both (sorted).
    """
    steps = steps_of(ds, "plot_lmn")
    lmn = values(ds["lmn"])
    if isinstance(test_loss, xr.Dataset):
        if "test_loss" not in test_loss:
            raise PlotDataError(
                "plot_lmn: the test_loss dataset has no 'test_loss' variable; pass run.metrics "
                "or the 'curves' result"
            )
        test_loss = test_loss["test_loss"]
    if isinstance(test_loss, xr.DataArray) and "step" in test_loss.coords:
        ls = np.asarray(test_loss["step"].values)
        common, i, j = np.intersect1d(steps, ls, return_indices=True)
        if common.size == 0:
            raise PlotDataError(
                "plot_lmn: the test loss has none of the LMN steps; compute both at the same steps"
            )
        return common, lmn[i], values(test_loss)[j]
    loss = values(test_loss).reshape(-1)
    if loss.shape != lmn.shape:
        raise PlotDataError(
            f"plot_lmn: test_loss has {loss.size} values but the LMN has {lmn.size} steps; "
            "pass a DataArray with a 'step' coordinate to align them"
        )
    return steps, lmn, loss


def plot_lmn(
    ds: xr.Dataset, ax: Axes | None = None, *, test_loss: Any = None, title: str | None = None,
    marks: Any = None,
) -> Axes:
    """LMN vs test loss (points coloured by step, least-squares line), or LMN vs step.

    Parameters
    ----------
    ds : xr.Dataset
        The ``lmn`` result: ``lmn`` (dim ``step``).
    test_loss : xr.DataArray, xr.Dataset, array or None
        See :func:`align_test_loss`. None draws LMN vs step.
    title : str, optional
        None: the default title; ``""``: none.
    marks : optional
        LMN vs step: ``t_train``/``t_test`` marks (see
        :func:`grokscope.plot._style.milestone_marks`). LMN vs test loss: the first point at
        or after each milestone is ringed in the train/test colours (a milestone before the
        first plotted step is not drawn).

    Returns
    -------
    Axes
    """
    require(ds, "lmn", what="plot_lmn")
    ax_given = ax
    if test_loss is None:
        steps = steps_of(ds, "plot_lmn")
        lmn = values(ds["lmn"])
        if not any_finite(lmn):
            raise PlotDataError("plot_lmn: lmn has no finite value")
        ax = new_axes(ax_given)
        set_step_axis(ax, steps)
        ax.plot(steps, lmn, color=color(0), marker=".", markersize=4, label="LMN")
        ax.yaxis.get_major_formatter().set_useOffset(False)
        if draw_marks(ax, milestone_marks(marks, ds)):
            legend(ax)
        return finish(ax, title_or(title, "Linear mapping number vs step"), _YLABEL)

    steps, lmn, loss = align_test_loss(ds, test_loss)
    ok = np.isfinite(lmn) & np.isfinite(loss)
    if not ok.any():
        raise PlotDataError("plot_lmn: no step has both a finite LMN and a finite test loss")
    ax = new_axes(ax_given)
    scale = step_scale(steps)
    s = steps.astype(np.float64)
    norm = (SymLogNorm(linthresh=1.0, vmin=s.min(), vmax=s.max()) if scale == "symlog"
            else Normalize(vmin=s.min(), vmax=s.max()))
    pts = ax.scatter(loss[ok], lmn[ok], c=s[ok], cmap="viridis", norm=norm, s=28,
                     edgecolors="black", linewidths=0.3, zorder=3, clip_on=False)
    for key, t in milestone_marks(marks, ds).items():
        at = np.flatnonzero(ok & (steps >= t))
        if at.size and t >= steps[ok].min():  # the first LMN step at or after the milestone
            i = at[0]
            ax.scatter([loss[i]], [lmn[i]], s=110, facecolors="none", linewidths=1.6, zorder=4,
                       edgecolors=TRAIN_COLOR if key == "t_train" else TEST_COLOR,
                       label=f"{key} = {int(t):,}", clip_on=False)
    ax.figure.colorbar(pts, ax=ax, label="step" + (" (log scale)" if scale == "symlog" else ""))
    x, y = loss[ok], lmn[ok]
    if x.size >= 2 and np.ptp(x) > 0:
        slope, icpt = np.polyfit(x, y, 1)
        r = float(np.corrcoef(x, y)[0, 1]) if np.ptp(y) > 0 else float("nan")
        xs = np.linspace(x.min(), x.max(), 50)
        ax.plot(xs, slope * xs + icpt, color=color(7), linewidth=1.2,
                label=f"linear fit: slope {slope:.3g}, r = {r:.2f}")
    handles = [h for h in ax.get_lines() + ax.collections[1:]
               if not str(h.get_label()).startswith("_")]
    ax.set_xlabel("test loss (nats)")
    legend(ax, handles, where="below", ncols=1)
    ax.yaxis.get_major_formatter().set_useOffset(False)
    return finish(ax, title_or(title, "Linear mapping number vs test loss"), _YLABEL)
