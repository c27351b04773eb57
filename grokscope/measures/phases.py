"""Grokking phases and change points of a trajectory (docs/methods.md section 1).

:func:`phase_summary` is the pure core: from accuracy curves sampled at (usually
non-uniform) steps it finds ``t_train`` and ``t_test`` and labels the run. The registered
measure ``phases`` reads the curves of a stored run and adds a change point for every scalar
curve of every other stored result.

Accuracy source
---------------
The ``curves`` result's ``train_acc``/``test_acc``; else the run's stored metrics, under
grokscope's names or a foreign trainer's (``train_accuracy``, ``val_acc``, ``val_accuracy``,
``test_accuracy``... see ``TRAIN_ACC_NAMES``/``TEST_ACC_NAMES``), so an imported run whose
``curves`` could not be computed is still labelled. A source whose accuracies are all NaN is
passed over; accuracies stored in percent (largest finite value in ``(1, 100]``) are divided by
100 [ours]. A run that stored losses but no accuracy is **not labelled**: its label is
``"unavailable"``, ``t_*`` are NaN and ``attrs["accuracy_unavailable"]`` says why (its change
points are still computed). The attrs name the source and variables used.

Labels (checked in this order; ``threshold`` and the other constants are parameters)
--------------------------------------------------------------------------------------
``ungrokking``
    test accuracy reached ``threshold`` at some step but ends below
    ``threshold - ungrok_margin`` [ours, after Varma et al.].
``comprehension``
    test accuracy reached ``threshold`` and either ``t_test - t_train < comprehension_gap``
    or train accuracy never reached it (generalisation without a memorisation phase, e.g.
    under label noise) [the second case is ours].
``grokking``
    both reached and ``t_test - t_train >= comprehension_gap``.
``semi-grokking``
    train reached, test never did, and the final test accuracy exceeds the test accuracy at
    ``t_train`` by at least ``semi_rise`` (a delayed rise that ends between chance and the
    threshold) [ours, after Varma et al.].
``memorisation``
    train reached, test never did, no such rise.
``confusion``
    neither reached.

``t_*`` is the first *stored* step whose accuracy is ``>= threshold`` (no interpolation; NaN
if never). NaN accuracies count as "not reached"; "final" means the last finite value.

Change points [ours]
--------------------
For a curve ``v`` at sorted steps ``s``: drop non-finite values; map steps to
``x = log(1 + s)`` (``scale="log"``, default) or ``x = s`` (``"linear"``); the normalised rate
of each interval is ``|v[i+1] - v[i]| / (range(v) * (x[i+1] - x[i]))`` (``scale="jump"`` uses
``|v[i+1] - v[i]| / range(v)``, ignoring spacing). The change point is the midpoint (in ``x``)
of the interval with the largest rate, and ``changepoint_rate`` that rate. A flat curve (its
range below ``min_range`` times ``max(1, max |v|)``, 5% by default: a test accuracy that
wobbles between 0.000 and 0.003 has no change point, however its noise normalises) or one with
fewer than 3 finite points has change point NaN and rate 0. The log scale keeps the
densely sampled early steps (log-spaced schedule) from dominating. Identifiers (variables
documented with ``curve=False``, e.g. the mixture's ``null_component`` slot) are not curves
and get no change point.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from ..errors import ConfigError, MeasureNotApplicable
from .registry import register

__all__ = ["changepoint", "collect_curves", "phase_summary", "phases"]

LABELS = ("comprehension", "grokking", "memorisation", "confusion", "semi-grokking", "ungrokking")
#: the label of a run with losses but no accuracy curves: it is not labelled
UNAVAILABLE = "unavailable"
_SCALES = ("log", "linear", "jump")


def _first_reach(steps: np.ndarray, acc: np.ndarray, threshold: float) -> tuple[float, int]:
    hit = np.flatnonzero(np.isfinite(acc) & (acc >= threshold))
    if hit.size == 0:
        return float("nan"), -1
    return float(steps[hit[0]]), int(hit[0])


def _last_finite(a: np.ndarray) -> float:
    finite = a[np.isfinite(a)]
    return float(finite[-1]) if finite.size else float("nan")


def _sorted_curve(steps: Any, values: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(steps, dtype=np.float64).reshape(-1)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if s.shape != v.shape:
        raise ConfigError(f"{name}: {s.size} steps but {v.size} values; they must match")
    order = np.argsort(s, kind="stable")
    s, v = s[order], v[order]
    if s.size and np.any(np.diff(s) <= 0):
        raise ConfigError(f"{name}: steps must be distinct (got repeated step values)")
    return s, v


def phase_summary(
    steps: Any,
    train_acc: Any,
    test_acc: Any,
    *,
    threshold: float = 0.9,
    comprehension_gap: float = 1000,
    semi_rise: float = 0.2,
    ungrok_margin: float = 0.1,
) -> xr.Dataset:
    """Label a run from its accuracy curves.

    Parameters
    ----------
    steps : array, shape ``(n,)``
        Training steps of the samples (any order, distinct, non-uniform allowed).
    train_acc, test_acc : array, shape ``(n,)``
        Accuracies in ``[0, 1]`` at ``steps`` (NaN = unknown).
    threshold : float
        Accuracy that counts as "reached" (0.9 as in EFT; 0.99 as in Power et al.).
    comprehension_gap : float
        ``t_test - t_train`` (in steps) below which the run is ``comprehension``.
    semi_rise : float
        Minimum rise of test accuracy after ``t_train`` for ``semi-grokking``.
    ungrok_margin : float
        How far below ``threshold`` the final test accuracy must end for ``ungrokking``.

    Returns
    -------
    xr.Dataset
        No dims. ``t_train``, ``t_test``, ``gap`` (float64 steps, NaN when undefined),
        ``label`` (str), ``final_train_acc``, ``final_test_acc``, ``max_test_acc``,
        ``test_acc_at_t_train``; the thresholds in attrs.
    """
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"threshold must be in (0, 1], got {threshold}")
    s, tr = _sorted_curve(steps, train_acc, "train_acc")
    s2, te = _sorted_curve(steps, test_acc, "test_acc")
    if s.size == 0:
        raise ConfigError("phase_summary needs at least one step of accuracy curves")

    t_train, i_train = _first_reach(s, tr, threshold)
    t_test, _ = _first_reach(s2, te, threshold)
    gap = t_test - t_train
    final_tr, final_te = _last_finite(tr), _last_finite(te)
    max_te = float(np.nanmax(te)) if np.isfinite(te).any() else float("nan")
    te_at_train = float("nan")
    if i_train >= 0:
        after = te[i_train:]
        finite = after[np.isfinite(after)]
        te_at_train = float(finite[0]) if finite.size else float("nan")

    train_ok, test_ok = np.isfinite(t_train), np.isfinite(t_test)
    if test_ok and np.isfinite(final_te) and final_te < threshold - ungrok_margin:
        label = "ungrokking"
    elif test_ok and (not train_ok or gap < comprehension_gap):
        label = "comprehension"
    elif test_ok:
        label = "grokking"
    elif train_ok:
        rise = final_te - te_at_train
        label = "semi-grokking" if np.isfinite(rise) and rise >= semi_rise else "memorisation"
    else:
        label = "confusion"

    ds = xr.Dataset(
        {
            "t_train": ((), t_train),
            "t_test": ((), t_test),
            "gap": ((), gap),
            "label": ((), np.array(label, dtype=str)),
            "final_train_acc": ((), final_tr),
            "final_test_acc": ((), final_te),
            "max_test_acc": ((), max_te),
            "test_acc_at_t_train": ((), te_at_train),
        }
    )
    ds.attrs.update(
        threshold=float(threshold),
        comprehension_gap=float(comprehension_gap),
        semi_rise=float(semi_rise),
        ungrok_margin=float(ungrok_margin),
        t_definition="first stored step with accuracy >= threshold (no interpolation)",
        labels=list(LABELS),
    )
    return ds


def changepoint(steps: Any, values: Any, *, scale: str = "log",
                min_range: float = 0.05) -> tuple[float, float]:
    """The step where a curve moves fastest (see the module docstring).

    Parameters
    ----------
    steps, values : array, shape ``(n,)``
    scale : {"log", "linear", "jump"}
    min_range : float
        A curve whose range is below ``min_range * max(1, max |v|)`` is flat (no change point).

    Returns
    -------
    step : float
        Midpoint (in the chosen scale) of the fastest interval; NaN if undefined.
    rate : float
        Its normalised rate (range units per unit of ``x``); 0 if undefined.
    """
    if scale not in _SCALES:
        raise ConfigError(f"changepoint scale must be one of {list(_SCALES)}, got {scale!r}")
    s, v = _sorted_curve(steps, values, "curve")
    keep = np.isfinite(v) & np.isfinite(s)
    s, v = s[keep], v[keep]
    if s.size < 3:
        return float("nan"), 0.0
    span = float(v.max() - v.min())
    if span <= 0 or span < min_range * max(1.0, float(np.abs(v).max())):
        return float("nan"), 0.0
    if scale == "log":
        if s.min() <= -1:
            raise ConfigError("changepoint scale 'log' needs steps > -1; use scale='linear'")
        x = np.log1p(s)
    else:
        x = s
    dv = np.abs(np.diff(v)) / span
    rate = dv if scale == "jump" else dv / np.diff(x)
    i = int(np.argmax(rate))
    if scale == "log":
        mid = float(np.expm1(0.5 * (x[i] + x[i + 1])))
    else:
        mid = float(0.5 * (s[i] + s[i + 1]))
    return mid, float(rate[i])


def collect_curves(
    results: Mapping[str, xr.Dataset], metrics: xr.Dataset | None = None, *, skip: tuple = ()
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar-per-step numeric variable of the stored results (and run metrics),
    identifiers left out (a variable documented with ``curve=False``, e.g. the mixture's
    ``null_component`` slot: its jump from slot 0 to -1 is a renaming, not a change of rate).

    Returns
    -------
    dict
        ``"measure/variable"`` (``"metrics/variable"`` for run metrics) to ``(steps, values)``.
    """
    from ._variables import VARIABLES

    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    sources = [(name, ds) for name, ds in results.items() if name not in skip]
    if metrics is not None:
        sources.append(("metrics", metrics))
    for name, ds in sources:
        if "step" not in ds.coords and "step" not in ds.dims:
            continue
        for var, da in ds.data_vars.items():
            if da.dims != ("step",) or da.dtype.kind not in "iuf":
                continue
            documented = VARIABLES.get(name, {}).get(str(var))
            if documented is not None and not documented.curve:
                continue
            found[f"{name}/{var}"] = (np.asarray(ds["step"].values), np.asarray(da.values))
    return found


#: names a run's stored metrics may give its accuracies and losses (grokscope's own first,
#: then common names of other trainers; an importer turns "train/acc" into "train.acc")
TRAIN_ACC_NAMES = ("train_acc", "train_accuracy", "train_accs", "train_accuracies",
                   "train.acc", "train.accuracy")
TEST_ACC_NAMES = ("test_acc", "test_accuracy", "test_accs", "test_accuracies", "val_acc",
                  "val_accuracy", "val_accs", "valid_acc", "valid_accuracy", "test.acc",
                  "test.accuracy", "val.acc", "val.accuracy")
TRAIN_LOSS_NAMES = ("train_loss", "train_losses", "train.loss")
TEST_LOSS_NAMES = ("test_loss", "test_losses", "val_loss", "val_losses", "valid_loss",
                   "test.loss", "val.loss")


def _first_var(ds: Any, names: tuple[str, ...]) -> str | None:
    for n in names:
        if n in ds:
            return n
    return None


def _finite(a: np.ndarray) -> bool:
    return bool(np.isfinite(np.asarray(a, dtype=np.float64)).any())


class _Accuracy:
    """Where the accuracy curves come from (or why there are none)."""

    def __init__(self, source: str, steps: np.ndarray | None = None,
                 train: np.ndarray | None = None, test: np.ndarray | None = None,
                 names: tuple[str, str] = ("train_acc", "test_acc"), scale: float = 1.0,
                 unavailable: str = "") -> None:
        self.source, self.steps, self.train, self.test = source, steps, train, test
        self.names, self.scale, self.unavailable = names, scale, unavailable


def _accuracy_source(run: Any) -> _Accuracy:
    """The ``curves`` result's accuracies, else the run's stored metrics (grokscope's names or
    a foreign trainer's, see ``TRAIN_ACC_NAMES``/``TEST_ACC_NAMES``); a source whose values are
    all NaN is passed over. Accuracies stored in percent (finite maximum in ``(1, 100]``) are
    divided by 100. With losses but no accuracies, the result says accuracy is unavailable
    (``source == "none"``); with neither, MeasureNotApplicable."""
    results = getattr(run, "results", None) or {}
    metrics = getattr(run, "metrics", None)
    cands: list[tuple[str, Any, str, str]] = []
    if "curves" in results:
        ds = results["curves"]
        if "train_acc" in ds and "test_acc" in ds:
            cands.append(("results/curves", ds, "train_acc", "test_acc"))
    if metrics is not None:
        tr, te = _first_var(metrics, TRAIN_ACC_NAMES), _first_var(metrics, TEST_ACC_NAMES)
        if tr is not None and te is not None:
            cands.append(("metrics", metrics, tr, te))
    for source, ds, tr_name, te_name in cands:
        tr, te = (np.asarray(ds[k].values, dtype=np.float64) for k in (tr_name, te_name))
        if not (_finite(tr) and _finite(te)):
            continue
        top = max(float(np.nanmax(tr)), float(np.nanmax(te)))
        scale = 1.0
        if 1.0 + 1e-9 < top <= 100.0:
            scale = 0.01  # stored in percent
        elif top > 100.0:
            continue  # not an accuracy
        return _Accuracy(source, np.asarray(ds["step"].values), tr * scale, te * scale,
                         (tr_name, te_name), scale)
    losses = []
    if metrics is not None:
        losses = [n for n in (_first_var(metrics, TRAIN_LOSS_NAMES),
                              _first_var(metrics, TEST_LOSS_NAMES)) if n is not None]
    tried = "; ".join(f"{src} {a}/{b} (all NaN or not in [0, 1] or [0, 100])"
                      for src, _, a, b in cands)
    if losses:
        return _Accuracy("none", unavailable=(
            f"accuracy is unavailable: the run stores losses ({', '.join(losses)}) but no "
            "accuracies" + (f" usable ({tried})" if tried else "") + ", and no 'curves' result "
            "with accuracies; the run is not labelled (label 'unavailable'). Compute 'curves' "
            "(needs the model and the data) or record train_acc/test_acc metrics."
        ))
    raise MeasureNotApplicable(
        "phases needs accuracy curves: run the 'curves' measure first, or record "
        "train_acc/test_acc metrics while training (also read: "
        f"{', '.join(TRAIN_ACC_NAMES[1:])} / {', '.join(TEST_ACC_NAMES[1:])})"
        + (f"; unusable: {tried}" if tried else "")
    )


def _applies(_view: Any, data: Any) -> str | None:
    if data is not None and not getattr(data, "is_classification", True):
        return "phases labels runs by accuracy, which a regression task does not have"
    return None


def _unlabelled(threshold: float, comprehension_gap: float, semi_rise: float,
                ungrok_margin: float) -> xr.Dataset:
    """The :func:`phase_summary` variables with no accuracy: NaN, label ``"unavailable"``."""
    nan = float("nan")
    ds = xr.Dataset({k: ((), nan) for k in ("t_train", "t_test", "gap")})
    ds["label"] = ((), np.array(UNAVAILABLE, dtype=str))
    for k in ("final_train_acc", "final_test_acc", "max_test_acc", "test_acc_at_t_train"):
        ds[k] = ((), nan)
    ds.attrs.update(threshold=float(threshold), comprehension_gap=float(comprehension_gap),
                    semi_rise=float(semi_rise), ungrok_margin=float(ungrok_margin),
                    labels=list(LABELS))
    return ds


@register("phases", kind="trajectory", after=("curves",), applies=_applies)
def phases(
    run: Any,
    steps: np.ndarray,
    *,
    threshold: float = 0.9,
    comprehension_gap: float = 1000,
    semi_rise: float = 0.2,
    ungrok_margin: float = 0.1,
    changepoint_scale: str = "log",
    changepoint_min_range: float = 0.05,
) -> xr.Dataset:
    """Phase label, ``t_train``/``t_test`` and change points of every stored curve.

    Parameters
    ----------
    run : Run
        Reads ``run.results`` (``curves`` and every other result) and ``run.metrics``
        (accuracies under grokscope's or common foreign names when ``curves`` is absent; see
        the module docstring).
    steps : array of int or None
        Steps to use; accuracy samples at other steps are ignored (None or empty: all).
    threshold, comprehension_gap, semi_rise, ungrok_margin
        See :func:`phase_summary`.
    changepoint_scale : {"log", "linear", "jump"}
        See :func:`changepoint`.
    changepoint_min_range : float
        A curve moving less than this share of ``max(1, max |v|)`` has no change point.

    Returns
    -------
    xr.Dataset
        The variables of :func:`phase_summary` plus ``changepoint`` and ``changepoint_rate``
        (dim ``curve``, coordinate ``"measure/variable"``). Attrs ``accuracy_source``
        (``"results/curves"``, ``"metrics"`` or ``"none"``), ``train_acc_variable`` and
        ``test_acc_variable`` (the names read), ``accuracy_scale`` (0.01 for percent),
        ``accuracy_unavailable`` (why there is no label; empty when labelled).

    Raises
    ------
    MeasureNotApplicable
        When the run has neither accuracy curves nor stored losses.
    """
    acc = _accuracy_source(run)
    if acc.source == "none":
        ds = _unlabelled(threshold, comprehension_gap, semi_rise, ungrok_margin)
    else:
        s, tr, te = acc.steps, acc.train, acc.test
        if steps is not None and len(steps):
            keep = np.isin(s, np.asarray(steps))
            if not keep.any():
                raise MeasureNotApplicable(
                    f"none of the requested steps has accuracy values in {acc.source}; "
                    "compute 'curves' at those steps first"
                )
            s, tr, te = s[keep], tr[keep], te[keep]
        ds = phase_summary(
            s,
            tr,
            te,
            threshold=threshold,
            comprehension_gap=comprehension_gap,
            semi_rise=semi_rise,
            ungrok_margin=ungrok_margin,
        )
    curves = collect_curves(
        getattr(run, "results", None) or {}, getattr(run, "metrics", None), skip=("phases",)
    )
    names = sorted(curves)
    cps = [changepoint(*curves[n], scale=changepoint_scale, min_range=changepoint_min_range)
           for n in names]
    ds["changepoint"] = (("curve",), np.array([c[0] for c in cps], dtype=np.float64))
    ds["changepoint_rate"] = (("curve",), np.array([c[1] for c in cps], dtype=np.float64))
    ds = ds.assign_coords(curve=np.array(names, dtype=str))
    ds.attrs.update(
        accuracy_source=acc.source,
        train_acc_variable=acc.names[0] if acc.source != "none" else "",
        test_acc_variable=acc.names[1] if acc.source != "none" else "",
        accuracy_scale=acc.scale,
        accuracy_unavailable=acc.unavailable,
        changepoint_definition=(
            "midpoint of the interval between consecutive stored steps with the largest "
            "|dv| / range(v) per unit of x, x = log(1+step) ('log'), step ('linear') or "
            "per interval ('jump')"
        ),
    )
    return ds
