"""Training curves: accuracy (and loss) vs step with the grokking gap; parameter norms.

:func:`plot_curves` takes the run's recorded metrics (``run.metrics``), the stored ``curves``
result, or a :class:`~grokscope.store.run.Run` (its metrics when they hold accuracies, else
its ``curves`` result). ``t_train`` / ``t_test`` are the first stored steps whose accuracy is
``>= threshold`` (:func:`grokscope.summary.first_crossing`, no interpolation), and the span
between them is shaded and annotated.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes

from ..summary import first_crossing
from ._style import (
    GAP_COLOR,
    TEST_COLOR,
    TRAIN_COLOR,
    PlotDataError,
    any_finite,
    color,
    finish,
    legend,
    new_axes,
    set_step_axis,
    step_series,
    steps_of,
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


def _shade_gap(
    ax: Axes, steps: np.ndarray, tr: np.ndarray, te: np.ndarray, threshold: float, scale: str
) -> None:
    t_train = first_crossing(steps, tr, threshold)
    t_test = first_crossing(steps, te, threshold)
    trans = ax.get_xaxis_transform()
    for t, c, name in ((t_train, TRAIN_COLOR, "t_train"), (t_test, TEST_COLOR, "t_test")):
        if t is not None:
            ax.axvline(t, color=c, linestyle=":", linewidth=1.2, label=f"{name} = {t}")
    if t_train is not None and t_test is not None and t_test > t_train:
        ax.axvspan(t_train, t_test, color=GAP_COLOR, alpha=0.18, linewidth=0)
        ax.annotate(
            f"grokking gap\n{t_test - t_train:,} steps", xy=(_mid(t_train, t_test, scale), 0.5),
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
    ax: Axes | None = None,
    *,
    threshold: float = 0.9,
    loss: bool = True,
    title: str | None = None,
    label: str | None = None,
    colors: tuple[str, str] | None = None,
) -> Axes:
    """Train/test accuracy vs step, the grokking gap shaded; loss on a twin axis.

    Parameters
    ----------
    ds_or_run_metrics : xr.Dataset or Run
        Dim ``step``; variables ``train_acc``, ``test_acc`` (accuracy in [0, 1]) and optionally
        ``train_loss``, ``test_loss``. A Run uses :func:`curves_dataset`.
    ax : Axes, optional
    threshold : float
        Accuracy that counts as reached (marks ``t_train`` and ``t_test``).
    loss : bool
        Draw the losses (log scale) on a twin y axis when present.
    title : str, optional
        ``""`` draws no title.
    label : str, optional
        Prefixes every legend entry (``"wd=1: train acc"``), to draw several runs on one axes.
    colors : (train colour, test colour), optional
        Default: the palette's train/test colours. A second call on the same ``ax`` reuses its
        loss twin axis (never a second one).

    Returns
    -------
    Axes
        The accuracy axes (the loss twin is ``ax.grokscope_twin`` when drawn).
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
    ax = new_axes(ax)
    if title is None and getattr(ax, "grokscope_twin", None) is not None:
        title = ax.get_title()  # a second run on the same axes keeps the first one's title
    train_c, test_c = colors if colors is not None else (TRAIN_COLOR, TEST_COLOR)
    pre = f"{label}: " if label else ""
    scale = set_step_axis(ax, steps)
    loss_units = "loss (MSE)" if ds.attrs.get("loss") == "mse" else "loss (nats)"
    handles = []
    if any_finite(tr, te):
        handles += ax.plot(steps, tr, color=train_c, marker=".", markersize=4, label=f"{pre}train acc")
        handles += ax.plot(steps, te, color=test_c, marker=".", markersize=4, label=f"{pre}test acc")
        ax.axhline(threshold, color="#555555", linewidth=0.8, linestyle="--", alpha=0.6)
        ax.set_ylim(-0.02, 1.04)
        _shade_gap(ax, steps, tr, te, threshold, scale)
        default = "Accuracy and loss vs step" if loss and loss_names else "Accuracy vs step"
        finish(ax, default if title is None else title, "accuracy")
        if loss and loss_names:
            twin = getattr(ax, "grokscope_twin", None) or ax.twinx()
            for name, c in zip(loss_names, (train_c, test_c), strict=False):
                v = values(ds[name])
                handles += twin.plot(steps, v, color=c, linestyle="--", linewidth=1.0, alpha=0.8,
                                     label=pre + name.replace("_", " "))
            if any_finite(*(values(ds[n]) for n in loss_names)) and np.nanmin(
                np.concatenate([values(ds[n]) for n in loss_names])
            ) > 0:
                twin.set_yscale("log")
            twin.set_ylabel(f"{loss_units}, dashed")
            ax.grokscope_twin = twin  # type: ignore[attr-defined]
    else:
        for name, c in zip(loss_names, (train_c, test_c), strict=False):
            handles += ax.plot(steps, values(ds[name]), color=c, marker=".", markersize=4,
                               label=pre + name.replace("_", " "))
        if np.nanmin(np.concatenate([values(ds[n]) for n in loss_names])) > 0:
            ax.set_yscale("log")
        finish(ax, "Loss vs step" if title is None else title, loss_units)
    # every labelled line on the axes and its twin: a second run drawn on the same axes
    # keeps the first one's entries
    twin = getattr(ax, "grokscope_twin", None)
    lines = list(ax.get_lines()) + (list(twin.get_lines()) if twin is not None else [])
    legend(ax, [h for h in lines if not h.get_label().startswith("_")], loc="best")
    return ax


def plot_norms(ds: xr.Dataset, ax: Axes | None = None, *, title: str | None = None) -> Axes:
    """Total parameter L2 norm and relative distance from the first checkpoint vs step.

    Parameters
    ----------
    ds : xr.Dataset
        The ``curves`` result: dim ``step``; ``param_norm`` and optionally
        ``rel_distance_init`` (drawn on a twin axis).

    Returns
    -------
    Axes
    """
    ax, steps, norm = step_series(ds, "param_norm", ax, what="plot_norms")
    handles = ax.plot(steps, norm, color=color(0), marker=".", markersize=4, label="||θ||₂")
    if "rel_distance_init" in ds and any_finite(values(ds["rel_distance_init"])):
        twin = ax.twinx()
        handles += twin.plot(steps, values(ds["rel_distance_init"]), color=color(1),
                             linestyle="--", label="||θ − θ₀|| / ||θ₀||")
        twin.set_ylabel("relative distance from init (dashed)")
        ax.grokscope_twin = twin  # type: ignore[attr-defined]
    finish(ax, title or "Parameter norm and distance from init", "parameter L2 norm")
    legend(ax, handles, loc="best", fontsize=8)
    return ax
