"""Training curves: accuracy (and loss) vs step with the grokking gap; parameter norms.

:func:`plot_curves` takes the run's recorded metrics (``run.metrics``), the stored ``curves``
result, or a :class:`~grokscope.store.run.Run` (its metrics when they hold accuracies, else
its ``curves`` result). ``t_train`` / ``t_test`` are the first stored steps whose accuracy is
``>= threshold`` (:func:`grokscope.summary.first_crossing`, no interpolation), and the span
between them is shaded and annotated. Every per-step figure takes ``marks=`` (see
:func:`grokscope.plot._style.milestone_marks`) to draw the same two steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes

from ._style import (
    GAP_COLOR,
    TEST_COLOR,
    TRAIN_COLOR,
    PlotDataError,
    any_finite,
    color,
    draw_marks,
    finish,
    finish_panel,
    legend,
    milestone_marks,
    set_step_axis,
    split_axes,
    step_series,
    steps_of,
    title_or,
    values,
)

__all__ = ["curves_dataset", "plot_curves", "plot_norms"]


def curves_dataset(source: Any) -> xr.Dataset:
    """The dataset of accuracy/loss curves of ``source`` (a Dataset or a Run).

    A Run gives its metrics when they hold ``train_acc`` and ``test_acc``, else its stored
    ``curves`` result, else its metrics with losses.
    """
    if isinstance(source, xr.Dataset):
        return source
    metrics = getattr(source, "metrics", None)
    results = getattr(source, "results", None)
    if metrics is None:
        raise PlotDataError(
            f"plot_curves takes an xarray Dataset (run.metrics or run.results['curves']) or a "
            f"Run, got {type(source).__name__}"
        )
    if "train_acc" in metrics and "test_acc" in metrics:
        return metrics
    if results is not None and "curves" in results:
        return results["curves"]
    if any(k in metrics for k in ("train_loss", "test_loss")):
        return metrics
    raise PlotDataError(
        "this run has no accuracy or loss curves: record train_acc/test_acc metrics while "
        "training, or compute the 'curves' measure (grokscope analyze RUN -m curves)"
    )


def _mid(a: float, b: float, scale: str) -> float:
    if scale == "symlog" and a >= 0 and b >= 0:
        return float(np.sqrt((a + 1.0) * (b + 1.0)) - 1.0)
    return 0.5 * (a + b)


def _shade_gap(ax: Axes, steps: np.ndarray, marks: dict[str, float], threshold: float,
               scale: str) -> None:
    t_train, t_test = marks.get("t_train"), marks.get("t_test")
    trans = ax.get_xaxis_transform()
    if t_train is not None and t_test is not None and t_test > t_train:
        ax.axvspan(t_train, t_test, color=GAP_COLOR, alpha=0.18, linewidth=0)
        ax.annotate(
            f"grokking gap\n{int(t_test - t_train):,} steps",
            xy=(_mid(t_train, t_test, scale), 0.5),
            xycoords=trans, ha="center", va="center", fontsize=9,
            bbox={"boxstyle": "round", "fc": "white", "ec": GAP_COLOR, "alpha": 0.85},
        )
    elif t_train is not None and t_test is None:
        last = float(steps[-1])
        if last > t_train:
            ax.axvspan(t_train, last, color=GAP_COLOR, alpha=0.10, linewidth=0)
        at_end = last <= t_train
        ax.annotate(
            f"test acc < {threshold:g}\nby step {int(last):,}",
            xy=(t_train if at_end else _mid(t_train, last, scale), 0.5), xycoords=trans,
            xytext=(-6 if at_end else 0, 0), textcoords="offset points",
            ha="right" if at_end else "center", va="center",
            fontsize=9, bbox={"boxstyle": "round", "fc": "white", "ec": GAP_COLOR, "alpha": 0.85},
        )


def plot_curves(
    ds_or_run_metrics: Any,
    ax: Any = None,
    *,
    threshold: float = 0.9,
    loss: bool = True,
    title: str | None = None,
    label: str | None = None,
    colors: tuple[str, str] | None = None,
    panels: bool = False,
    marks: Any = None,
) -> Axes:
    """Train/test accuracy vs step, the grokking gap shaded; loss on a twin axis or a panel.

    Parameters
    ----------
    ds_or_run_metrics : xr.Dataset or Run
        Dim ``step``; variables ``train_acc``, ``test_acc`` (accuracy in [0, 1]) and optionally
        ``train_loss``, ``test_loss``. A Run uses :func:`curves_dataset`.
    ax : Axes or (Axes, Axes), optional
        A pair draws accuracy on the first and loss on the second (the two-panel layout).
    threshold : float
        Accuracy that counts as reached (marks ``t_train`` and ``t_test``).
    loss : bool
        Draw the losses (log scale) when present: on a twin y axis, or on the lower panel.
    title : str, optional
        None: the default title; ``""`` draws no title.
    label : str, optional
        Prefixes every legend entry (``"wd=1: train acc"``), to draw several runs on one axes.
    colors : (train colour, test colour), optional
        Default: the palette's train/test colours. A second call on the same ``ax`` reuses its
        loss twin axis (never a second one).
    panels : bool
        Draw the losses on their own panel below the accuracies (a new figure).
    marks : see :func:`grokscope.plot._style.milestone_marks`
        Default: ``t_train``/``t_test`` from these accuracy curves; ``False``: no marks.

    Returns
    -------
    Axes
        The accuracy axes (the loss twin is ``ax.grokscope_twin``, the loss panel
        ``ax.grokscope_panel``, when drawn).
    """
    ds = curves_dataset(ds_or_run_metrics)
    steps = steps_of(ds, "plot_curves")
    has_acc = "train_acc" in ds and "test_acc" in ds
    tr = values(ds["train_acc"]) if has_acc else np.array([np.nan])
    te = values(ds["test_acc"]) if has_acc else np.array([np.nan])
    loss_names = [n for n in ("train_loss", "test_loss") if n in ds]
    if not any_finite(tr, te) and not loss_names:
        raise PlotDataError(
            "plot_curves needs train_acc/test_acc or train_loss/test_loss with finite values; "
            f"the dataset has {sorted(map(str, ds.data_vars))}"
        )
    with_loss = loss and bool(loss_names) and any_finite(tr, te)
    ax, panel = split_axes(ax, panels, what="plot_curves",
                           second="loss" if with_loss else None)
    if title is None and getattr(ax, "grokscope_twin", None) is not None:
        title = ax.get_title()  # a second run on the same axes keeps the first one's title
    train_c, test_c = colors if colors is not None else (TRAIN_COLOR, TEST_COLOR)
    pre = f"{label}: " if label else ""
    scale = set_step_axis(ax, steps)
    loss_units = "loss (MSE)" if ds.attrs.get("loss") == "mse" else "loss (nats)"
    mk = milestone_marks(marks, ds, threshold=threshold)
    if any_finite(tr, te):
        ax.plot(steps, tr, color=train_c, marker=".", markersize=4, label=f"{pre}train acc")
        ax.plot(steps, te, color=test_c, marker=".", markersize=4, label=f"{pre}test acc")
        ax.axhline(threshold, color="#555555", linewidth=0.8, linestyle="--", alpha=0.6)
        ax.set_ylim(-0.03, 1.05)
        draw_marks(ax, mk, label=True)
        _shade_gap(ax, steps, mk, threshold, scale)
        default = "Accuracy and loss vs step" if with_loss else "Accuracy vs step"
        finish(ax, title_or(title, default), "accuracy")
        if with_loss:
            if panel is not None:
                other = panel
                set_step_axis(other, steps)
            else:
                other = getattr(ax, "grokscope_twin", None) or ax.twinx()
            for name, c in zip(loss_names, (train_c, test_c), strict=False):
                v = values(ds[name])
                other.plot(steps, v, color=c, linestyle="--" if panel is None else "-",
                           linewidth=1.0, alpha=0.8, label=pre + name.replace("_", " "))
            if any_finite(*(values(ds[n]) for n in loss_names)) and np.nanmin(
                np.concatenate([values(ds[n]) for n in loss_names])
            ) > 0:
                other.set_yscale("log")
            if panel is not None:
                draw_marks(other, mk, label=False)
                finish(other, "", loss_units)
                finish_panel(ax, other)
                legend(other)
            else:
                other.set_ylabel(f"{loss_units}, dashed")
                ax.grokscope_twin = other  # type: ignore[attr-defined]
    else:
        for name, c in zip(loss_names, (train_c, test_c), strict=False):
            ax.plot(steps, values(ds[name]), color=c, marker=".", markersize=4,
                    label=pre + name.replace("_", " "))
        if np.nanmin(np.concatenate([values(ds[n]) for n in loss_names])) > 0:
            ax.set_yscale("log")
        draw_marks(ax, mk, label=True)
        finish(ax, title_or(title, "Loss vs step"), loss_units)
    # every labelled line on the axes and its twin: a second run drawn on the same axes
    # keeps the first one's entries
    twin = getattr(ax, "grokscope_twin", None)
    lines = list(ax.get_lines()) + (list(twin.get_lines()) if twin is not None else [])
    legend(ax, [h for h in lines if not h.get_label().startswith("_")])
    return ax


def plot_norms(ds: xr.Dataset, ax: Any = None, *, title: str | None = None,
               panels: bool = False, marks: Any = None) -> Axes:
    """Total parameter L2 norm and relative distance from the first checkpoint vs step.

    Parameters
    ----------
    ds : xr.Dataset
        The ``curves`` result: dim ``step``; ``param_norm`` and optionally
        ``rel_distance_init`` (on a twin axis, or on the lower panel).
    ax : Axes or (Axes, Axes), optional
        A pair selects the two-panel layout.
    title : str, optional
        None: the default title; ``""``: none.
    panels : bool
        The distance on its own panel below (a new figure).
    marks : optional
        ``t_train``/``t_test`` marks (see :func:`grokscope.plot._style.milestone_marks`);
        default: from the result's own accuracies.

    Returns
    -------
    Axes
        The norm axes (``ax.grokscope_twin`` / ``ax.grokscope_panel`` hold the distance).
    """
    has_dist = "rel_distance_init" in ds and any_finite(values(ds["rel_distance_init"]))
    ax, panel, steps, norm = step_series(ds, "param_norm", ax, what="plot_norms", panels=panels,
                                         second="rel_distance_init" if has_dist else None)
    mk = milestone_marks(marks, ds)
    handles = ax.plot(steps, norm, color=color(0), marker=".", markersize=4,
                      label=r"$\|\theta\|_2$")
    handles += draw_marks(ax, mk)
    if has_dist:
        dist = values(ds["rel_distance_init"])
        label = r"$\|\theta-\theta_0\|_2\,/\,\|\theta_0\|_2$"
        if panel is not None:
            panel.plot(steps, dist, color=color(1), marker=".", markersize=4, label=label)
            draw_marks(panel, mk, label=False)
            finish(panel, "", "relative distance from init\n" + label)
            finish_panel(ax, panel)
        else:
            twin = ax.twinx()
            handles += twin.plot(steps, dist, color=color(1), linestyle="--", label=label)
            twin.set_ylabel("relative distance from init (dashed)")
            ax.grokscope_twin = twin  # type: ignore[attr-defined]
    finish(ax, title_or(title, "Parameter norm and distance from init"),
           r"parameter norm $\|\theta\|_2$")
    legend(ax, handles)
    return ax
