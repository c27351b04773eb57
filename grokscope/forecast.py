"""Forecast, part-way through a run, whether and when test accuracy will reach a threshold.

>>> import grokscope as gs
>>> fc = gs.forecast("runs/demo", upto=400)            # doctest: +SKIP
>>> float(fc.p_grok), float(fc.t_test_pred)             # doctest: +SKIP

:func:`forecast` reads only what a store holds at steps ``<= upto``: the scalar metrics (test
and train accuracy and loss) and the parameter norms of the checkpoints. From them it computes
a few *signals* (all returned in the result's attrs) and turns them into

* ``t_test_pred`` -- the predicted first step with test accuracy ``>= threshold``. The main
  signal is the trend of the log test loss over the latest 30% of the steps seen (during the
  memorisation plateau of a grokking run the test loss falls roughly exponentially in the
  step long before test accuracy moves): extrapolated linearly to a critical loss
  ``LOSS_CRIT * test_loss(step 0)`` it gives the remaining steps, scaled by ``LOSS_GAIN``.
  Without a falling test loss (or without a test loss at all) the prediction is
  ``FALLBACK_RATIO * upto``.
* ``t_test_low`` / ``t_test_high`` -- an 80% interval: ``t_test_pred`` times the 10% and 90%
  quantiles of ``true / predicted`` on the fit runs (a separate pair for the fallback branch).
* ``p_grok`` -- the probability that test accuracy reaches the threshold by ``horizon``
  (default ``10 * upto``; stores do not record a step budget): a
  logistic model of four signals (``log(t_test_pred / horizon)``, the test loss relative to
  its peak, the relative test-loss trend, train accuracy).

A run whose test accuracy has already reached the threshold at a step ``<= upto`` gets
``p_grok = 1`` and ``t_test_pred = t_test_low = t_test_high =`` that step.

The constants in :data:`CONSTANTS` were fitted by ``analyses/08_forecast_eval.py --fit`` on the
FIT runs of ``analyses/07_forecast_runs.py`` (30 runs: modular-addition MLPs and a small
transformer, sparse parity and digits MLPs; seeds 0-1) and evaluated on the separate
HELD-OUT runs; ``reports/forecast/README.md`` has the evaluation, docs/forecast.md the
signals that were tried and dropped.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

from ._version import __version__
from .errors import ConfigError, MeasureNotApplicable

__all__ = ["CONSTANTS", "ForecastError", "forecast", "forecast_signals"]


class ForecastError(MeasureNotApplicable):
    """A run cannot be forecast (no test accuracy metric, nothing recorded up to ``upto``)."""


#: fitted by analyses/08_forecast_eval.py --fit on the FIT runs of analyses/07_forecast_runs.py
#: (never on the held-out runs); regenerate with that script after changing a signal
CONSTANTS: dict[str, Any] = {
    "LOSS_CRIT": 0.12,
    "LOSS_GAIN": 1.0,
    "FALLBACK_RATIO": 2.5,
    "Q_TREND": (0.7, 1.4),
    "Q_FALLBACK": (0.5, 4.0),
    "LOGIT_COEF": (-2.0, -1.0, -5.0, 2.0),
    "LOGIT_BIAS": 0.0,
}

#: fraction of the steps seen (the latest ones) over which trends are fitted
WINDOW = 0.3
#: fewest points a trend is fitted on
MIN_POINTS = 3


# ----------------------------------------------------------------------------- inputs
def _metric(metrics: xr.Dataset, names: tuple[str, ...]) -> str | None:
    for n in names:
        if n in metrics:
            return n
    return None


def _series(run: Any, upto: int | None) -> dict[str, Any]:
    """The curves and parameter norms of ``run`` at stored steps ``<= upto``."""
    from .measures.phases import (
        TEST_ACC_NAMES,
        TEST_LOSS_NAMES,
        TRAIN_ACC_NAMES,
        TRAIN_LOSS_NAMES,
    )

    steps = np.asarray(run.steps, dtype=np.int64)
    metrics = run.metrics
    te_name = _metric(metrics, TEST_ACC_NAMES)
    if te_name is None:
        raise ForecastError(
            f"forecast needs a test accuracy metric; {run!r} stores "
            f"{sorted(metrics.data_vars)}. Record one of {', '.join(TEST_ACC_NAMES[:3])} "
            "while training (gs.train does)."
        )
    keep = steps <= upto if upto is not None else np.ones(len(steps), bool)
    if not keep.any():
        raise ForecastError(
            f"forecast: nothing is recorded at steps <= upto={upto} (first stored step "
            f"{int(steps[0]) if len(steps) else 'none'}); pass a later upto (--upto STEP)."
        )
    idx = np.flatnonzero(keep)

    def read(name: str | None) -> np.ndarray | None:
        if name is None:
            return None
        return np.asarray(metrics[name].values, dtype=np.float64)[idx]

    te = read(te_name)
    tr = read(_metric(metrics, TRAIN_ACC_NAMES))
    scale = 0.01 if np.nanmax(np.concatenate([te, tr if tr is not None else te])) > 1 + 1e-9 \
        else 1.0
    sel_steps = [int(s) for s in steps[idx]]
    sq = np.zeros(len(idx))
    for key in run.params.data_vars:
        a = run.trajectory(key, steps=sel_steps)
        if not np.issubdtype(a.dtype, np.floating):
            continue
        sq += np.square(a.reshape(len(idx), -1).astype(np.float64)).sum(axis=1)
    return {
        "steps": steps[idx],
        "test_acc": te * scale,
        "train_acc": None if tr is None else tr * scale,
        "test_loss": read(_metric(metrics, TEST_LOSS_NAMES)),
        "train_loss": read(_metric(metrics, TRAIN_LOSS_NAMES)),
        "norm": np.sqrt(sq),
        "names": {"test_acc": te_name},
    }


def _window(steps: np.ndarray) -> np.ndarray:
    """Indices of the latest ``WINDOW`` fraction of the steps (at least ``MIN_POINTS``)."""
    u = steps[-1]
    idx = np.flatnonzero(steps >= (1 - WINDOW) * u)
    if len(idx) < MIN_POINTS:
        idx = np.arange(max(0, len(steps) - MIN_POINTS), len(steps))
    return idx


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of ``y`` on ``x`` over the finite pairs (NaN with < 2 points)."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2 or np.ptp(x[ok]) == 0:
        return math.nan
    return float(np.polyfit(x[ok], y[ok], 1)[0])


def _first_reach(steps: np.ndarray, acc: np.ndarray, threshold: float) -> float:
    hit = np.flatnonzero(np.isfinite(acc) & (acc >= threshold))
    return float(steps[hit[0]]) if len(hit) else math.nan


# ----------------------------------------------------------------------------- signals
def forecast_signals(series: dict[str, Any], threshold: float = 0.9) -> dict[str, float]:
    """The forecast's signals from curves up to the last step of ``series``.

    Parameters
    ----------
    series : dict
        ``steps`` ``(n,)`` and ``test_acc``, ``train_acc``, ``test_loss``, ``train_loss``,
        ``norm`` ``(n,)`` arrays (or None), as :func:`forecast` reads them from a store.
    threshold : float
        The accuracy threshold.

    Returns
    -------
    dict
        Floats (NaN where a curve is missing): ``upto``, ``test_acc``, ``train_acc``,
        ``t_train`` (first step train accuracy >= threshold), ``loss_rel_peak`` (log of the
        test loss over its running peak), ``loss_trend`` (slope of log test loss per step over
        the window, times ``upto``), ``t_loss_cross`` (step at which that trend reaches
        ``LOSS_CRIT * test_loss[0]``; NaN when not falling), ``acc_trend`` (slope of test
        accuracy per step times ``upto``), ``t_acc_cross`` (linear test-accuracy
        extrapolation to the threshold), ``norm_ratio`` (weight norm over its step-0 value),
        ``norm_trend`` (slope of log weight norm times ``upto``), ``train_loss_roughness``
        (std of the second differences of log train loss over the window, the oscillation
        signature of Notsawo et al. 2023).
    """
    steps = np.asarray(series["steps"], dtype=np.float64)
    u = float(steps[-1])
    w = _window(steps)
    x = steps[w]
    te = series["test_acc"]
    tr = series.get("train_acc")
    out: dict[str, float] = {"upto": u, "test_acc": float(te[-1])}
    out["train_acc"] = float(tr[-1]) if tr is not None else math.nan
    out["t_train"] = _first_reach(steps, tr, threshold) if tr is not None else math.nan
    scale = max(u, 1.0)

    tl = series.get("test_loss")
    if tl is not None and np.isfinite(tl).any() and (tl > 0).any():
        logl = np.log(np.where(tl > 0, tl, np.nan))
        peak = np.fmax.accumulate(np.where(np.isfinite(logl), logl, -np.inf))
        out["loss_rel_peak"] = float(logl[-1] - peak[-1])
        s = _slope(x, logl[w])
        out["loss_trend"] = s * scale
        crit = math.log(CONSTANTS["LOSS_CRIT"]) + float(logl[np.isfinite(logl)][0])
        if np.isfinite(s) and s < 0 and np.isfinite(logl[-1]):
            out["t_loss_cross"] = u + max(0.0, (crit - logl[-1]) / s)
        else:
            out["t_loss_cross"] = math.nan
    else:
        out.update(loss_rel_peak=math.nan, loss_trend=math.nan, t_loss_cross=math.nan)

    sa = _slope(x, te[w])
    out["acc_trend"] = sa * scale
    out["t_acc_cross"] = (u + max(0.0, (threshold - te[-1]) / sa)
                          if np.isfinite(sa) and sa > 0 else math.nan)

    norm = series.get("norm")
    if norm is not None and len(norm) and norm[0] > 0:
        out["norm_ratio"] = float(norm[-1] / norm[0])
        out["norm_trend"] = _slope(x, np.log(norm[w])) * scale
    else:
        out.update(norm_ratio=math.nan, norm_trend=math.nan)

    trl = series.get("train_loss")
    if trl is not None and len(w) >= 4 and (trl[w] > 0).all():
        out["train_loss_roughness"] = float(np.std(np.diff(np.log(trl[w]), 2)))
    else:
        out["train_loss_roughness"] = math.nan
    return out


def predict_time(sig: dict[str, float]) -> tuple[float, str]:
    """``(t_test_pred, branch)`` from the signals: ``"trend"`` or ``"fallback"``."""
    u = max(sig["upto"], 1.0)
    t = sig["t_loss_cross"]
    if np.isfinite(t):
        return u + CONSTANTS["LOSS_GAIN"] * (t - u), "trend"
    return CONSTANTS["FALLBACK_RATIO"] * u, "fallback"


def logit_features(sig: dict[str, float], t_pred: float, horizon: float) -> np.ndarray:
    """The logistic model's inputs, shape ``(4,)``; NaN signals enter as 0."""
    f = np.array([
        math.log(max(t_pred, 1.0) / max(horizon, 1.0)),
        sig["loss_rel_peak"],
        sig["loss_trend"],
        sig["train_acc"],
    ], dtype=np.float64)
    return np.nan_to_num(np.clip(f, -20, 20), nan=0.0)


def p_grok_of(features: np.ndarray) -> float:
    """The logistic model of :data:`CONSTANTS` at ``features`` ``(4,)``."""
    z = float(np.dot(CONSTANTS["LOGIT_COEF"], features) + CONSTANTS["LOGIT_BIAS"])
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


# ----------------------------------------------------------------------------- public
def forecast(
    run_or_path: Any,
    *,
    upto: int | None = None,
    threshold: float = 0.9,
    horizon: int | None = None,
    model: Any = None,
    anatomy: Any = None,
) -> xr.Dataset:
    """Forecast whether and when test accuracy reaches ``threshold``, from steps ``<= upto``.

    Parameters
    ----------
    run_or_path : Run, str or Path
        A run (:func:`grokscope.open_run`) or its store; the store may be growing.
    upto : int, optional
        Use only checkpoints and metrics at steps ``<= upto``; default all recorded so far.
    threshold : float
        Test accuracy in ``(0, 1]`` that counts as generalised.
    horizon : int, optional
        ``p_grok`` is the probability of reaching ``threshold`` by this step; default
        ``10 * upto`` (a store does not record the step budget of its trainer).
    model, anatomy
        Passed to :func:`grokscope.open_run` when ``run_or_path`` is a path (the forecast
        itself reads only metrics and parameter norms, so any recorded model works).

    Returns
    -------
    xr.Dataset
        No dims. ``p_grok`` (probability in [0, 1]), ``t_test_pred``, ``t_test_low``,
        ``t_test_high`` (float64 steps; the 80% interval), ``upto`` (the last step used),
        ``t_test_observed`` (NaN unless the threshold was already reached). attrs:
        ``signal_<name>`` for every signal of :func:`forecast_signals`, ``branch``
        (``"observed"``, ``"trend"`` or ``"fallback"``), ``threshold``, ``horizon``,
        ``test_metric``, the constants and the grokscope version.

    Raises
    ------
    ForecastError
        The run has no test accuracy metric, or nothing is recorded at steps ``<= upto``.
    ConfigError
        ``threshold`` outside ``(0, 1]``, or ``upto`` / ``horizon`` not a non-negative int.
    """
    from .store.run import Run, open_run

    if not 0.0 < float(threshold) <= 1.0:
        raise ConfigError(f"forecast: threshold (--threshold) must be in (0, 1], got {threshold}")
    for name, value in (("upto", upto), ("horizon", horizon)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | np.integer)
                                  or value < 0):
            raise ConfigError(f"forecast: {name} (--{name}) must be a non-negative integer step, "
                              f"got {value!r}")
    run = run_or_path if isinstance(run_or_path, Run) else open_run(
        run_or_path, model=model, anatomy=anatomy)
    series = _series(run, None if upto is None else int(upto))
    sig = forecast_signals(series, threshold)
    u = int(series["steps"][-1])
    if horizon is None:
        horizon = 10 * max(u, 1)
    observed = _first_reach(series["steps"], series["test_acc"], threshold)
    if np.isfinite(observed):
        p, t, lo, hi, branch = 1.0, observed, observed, observed, "observed"
    else:
        t, branch = predict_time(sig)
        q = CONSTANTS["Q_TREND"] if branch == "trend" else CONSTANTS["Q_FALLBACK"]
        lo, hi = max(float(u), q[0] * t), max(float(u), q[1] * t)
        p = p_grok_of(logit_features(sig, t, float(horizon)))
    ds = xr.Dataset({
        "p_grok": ((), float(p)),
        "t_test_pred": ((), float(t)),
        "t_test_low": ((), float(lo)),
        "t_test_high": ((), float(hi)),
        "upto": ((), u),
        "t_test_observed": ((), float(observed)),
    })
    ds.attrs.update({f"signal_{k}": float(v) for k, v in sig.items()})
    ds.attrs.update(
        branch=branch, threshold=float(threshold), horizon=int(horizon),
        test_metric=series["names"]["test_acc"], interval=0.8,
        constants=repr(CONSTANTS), grokscope_version=__version__,
    )
    return ds
