"""Forecast, part-way through a run, whether and when test accuracy will reach a threshold.

>>> import grokscope as gs
>>> fc = gs.forecast("runs/demo", upto=400)            # doctest: +SKIP
>>> float(fc.p_grok), float(fc.t_test_pred)             # doctest: +SKIP

:func:`forecast` reads only what a store holds at steps ``<= upto``: the scalar metrics (test
and train accuracy and loss), the parameter norms of the checkpoints and, on modular-arithmetic
tasks, the embedding table at the first step and at ``upto``. From them it computes a few
*signals* (all returned in the result's attrs) and turns them into (forecast v3)

* ``t_test_pred`` -- the predicted first step with test accuracy ``>= threshold``, from one of
  two branches. ``"trend"``: the log test loss falls clearly over the latest 30% of the steps
  seen (during the memorisation plateau of a grokking run it falls roughly exponentially in
  the step long before test accuracy moves); extrapolated linearly to a critical loss
  ``LOSS_CRIT * test_loss(step 0)`` it gives the remaining steps, scaled by ``LOSS_GAIN``.
  ``"early"`` (no clearly falling test loss: its log falls by less than ``TREND_MIN`` per
  ``upto`` steps, or there is no test loss): ``upto * exp(a + b * test_acc)``, a wide guess
  fitted on forecast points spread over 15-85% of ``t_test`` (v1's ``FALLBACK_RATIO * upto``
  encoded forecasting at 25% of ``t_test``).
* ``t_test_low`` / ``t_test_high`` -- an 80% interval: ``t_test_pred`` times its branch's 10%
  and 90% quantiles of ``true / predicted`` on the fit runs (``Q_TREND``, ``Q_EARLY``).
* ``p_grok = p_generalises * p_by_horizon`` -- the probability that test accuracy reaches the
  threshold by ``horizon`` (default: the step budget ``gs.train`` records in the config, else
  ``10 * upto``). ``p_generalises`` is a logistic model of ``test_acc``, ``acc_trend``,
  ``loss_rel_peak`` and ``loss_trend`` (``PG_*``); ``p_by_horizon`` the log-normal chance, from
  the branch's interval, that ``t_test <= horizon`` (:func:`p_by_horizon`). Signals that do
  not enter the model (the weight norm, the loss roughness and, on modular tasks, the growth
  of the embedding's Fourier sparsity ``gini_embed_rel``, :func:`embedding_gini`) are still
  computed and returned in attrs.

A run whose test accuracy has already reached the threshold at a step ``<= upto`` gets
``p_grok = 1`` and ``t_test_pred = t_test_low = t_test_high =`` that step.

The constants in :data:`CONSTANTS` (forecast v3) were fitted by
``analyses/12_forecast_v3.py --fit`` on the FIT, HELDOUT and HELDOUT2 runs of
``analyses/07_forecast_runs.py`` (157 runs: modular-arithmetic MLPs and small transformers,
sparse parity and digits MLPs) and judged, with v2's (:data:`CONSTANTS_V2`) and v1's
(:data:`CONSTANTS_V1`), on the separate HELDOUT3 runs; ``reports/forecast/README.md`` has the
evaluation, docs/forecast.md the signals that were tried and dropped.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

from ._version import __version__
from .errors import ConfigError, MeasureNotApplicable

__all__ = ["CONSTANTS", "CONSTANTS_V1", "CONSTANTS_V2", "ForecastError", "embedding_gini",
           "forecast", "forecast_signals", "p_grok"]


class ForecastError(MeasureNotApplicable):
    """A run cannot be forecast (no test accuracy metric, nothing recorded up to ``upto``)."""


#: forecast v3, fitted by analyses/12_forecast_v3.py --fit on the FIT, HELDOUT and HELDOUT2 runs
#: of analyses/07_forecast_runs.py at dense forecast points (never on HELDOUT3, the set it was
#: judged on); regenerate with that script after changing a signal. The time branches are v2's
#: form (LOSS_* / TREND_MIN are v1's); ``p_grok`` is ``P(generalises) * P(t_test <= horizon)``:
#: a logistic model of the four curve signals ``PG_INPUTS`` times the log-normal chance, from
#: the branch's interval, that the crossing falls before ``horizon``.
CONSTANTS: dict[str, Any] = {
    "VERSION": 3,
    "LOSS_CRIT": 0.1,
    "LOSS_GAIN": 0.8,
    "TREND_MIN": 0.7,
    "EARLY_COEF": (1.780107, -1.072284),
    "Q_TREND": (0.763563, 1.340778),
    "Q_EARLY": (0.597601, 1.94745),
    "PG_INPUTS": ("test_acc", "acc_trend", "loss_rel_peak", "loss_trend"),
    "PG_COEF": (6.746338, -4.189098, 1.733873, -4.299433),
    "PG_BIAS": -1.244978,
}

#: forecast v2 (fitted by analyses/10_forecast_v2.py --fit on the FIT runs; judged on
#: HELDOUT2): kept so the evaluations can score every version
CONSTANTS_V2: dict[str, Any] = {
    "VERSION": 2,
    "LOSS_CRIT": 0.1,
    "LOSS_GAIN": 0.8,
    "TREND_MIN": 0.7,
    "EARLY_COEF": (1.782074, -0.987989),
    "Q_TREND": (0.743775, 1.557143),
    "Q_EARLY": (0.613179, 1.952138),
    "LOGIT_COEF": (-1.6626, 1.691985, -1.235671, 1.477783, 2.443709, 3.236688, 0.641544),
    "LOGIT_BIAS": -6.093919,
}

#: forecast v1 (fitted by analyses/08_forecast_eval.py --fit at 25/50/75% of t_test): kept
#: so the evaluation can score both versions; its fallback ``FALLBACK_RATIO * upto`` encodes
#: where the fit set's forecasts were made (reports/forecast/README.md)
CONSTANTS_V1: dict[str, Any] = {
    "LOSS_CRIT": 0.1,
    "LOSS_GAIN": 0.8,
    "TREND_MIN": 0.7,
    "FALLBACK_RATIO": 4.076923,
    "Q_TREND": (0.706591, 1.519746),
    "Q_FALLBACK": (0.490566, 1.188679),
    "LOGIT_COEF": (-0.794822, 1.700413, -2.043157, 0.604015, 1.070443),
    "LOGIT_BIAS": -1.93011,
}

#: fraction of the steps seen (the latest ones) over which trends are fitted
WINDOW = 0.3
#: fewest points a trend is fitted on
MIN_POINTS = 3
#: the standard normal's 90% quantile (an 80% interval spans +-_Z90 sigma)
_Z90 = 1.2815515655446004


# ----------------------------------------------------------------------------- inputs
def _metric(metrics: xr.Dataset, names: tuple[str, ...]) -> str | None:
    for n in names:
        if n in metrics:
            return n
    return None


def _series(run: Any, upto: int | None, *, all_norms: bool = False) -> dict[str, Any]:
    """The curves and parameter norms of ``run`` at stored steps ``<= upto`` (the norms at
    the first step and the window only, NaN elsewhere, unless ``all_norms``)."""
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
    if not np.isfinite(te).any():
        raise ForecastError(
            f"forecast: the test accuracy metric {te_name!r} is NaN at every stored step <= "
            f"upto={upto}; record it at the checkpoints (or pass a later upto, --upto STEP)."
        )
    tr = read(_metric(metrics, TRAIN_ACC_NAMES))
    scale = 0.01 if np.nanmax(np.concatenate([te, tr if tr is not None else te])) > 1 + 1e-9 \
        else 1.0
    # the norm signals use only the first step and the window: read just those checkpoints
    # (a forecast on a long run stays cheap, and a live follower can call it every step)
    need = np.arange(len(idx)) if all_norms else np.union1d([0], _window(steps[idx]))
    sel_steps = [int(s) for s in steps[idx][need]]
    sq_need = np.zeros(len(need))
    for key in run.params.data_vars:
        a = run.trajectory(key, steps=sel_steps)
        if not np.issubdtype(a.dtype, np.floating):
            continue
        sq_need += np.square(a.reshape(len(need), -1).astype(np.float64)).sum(axis=1)
    sq = np.full(len(idx), np.nan)
    sq[need] = sq_need
    gini = np.full(len(idx), np.nan)
    gini_need, gini_note = _embedding_gini(run, sel_steps)
    if gini_need is not None:
        gini[need] = gini_need
    return {
        "steps": steps[idx],
        "test_acc": te * scale,
        "train_acc": None if tr is None else tr * scale,
        "test_loss": read(_metric(metrics, TEST_LOSS_NAMES)),
        "train_loss": read(_metric(metrics, TRAIN_LOSS_NAMES)),
        "norm": np.sqrt(sq),
        "gini_embed": gini,
        "names": {"test_acc": te_name, "gini_embed": gini_note},
    }


def _modulus(run: Any) -> int | None:
    """The modulus ``p`` of a modular-arithmetic run's task config, else None."""
    task = dict(run.config).get("task")
    if not isinstance(task, dict) or task.get("name", "modular") != "modular":
        return None
    p = task.get("p")
    return int(p) if isinstance(p, int | np.integer) and p >= 3 else None


def _embedding_spec(run: Any) -> dict | None:
    """The embedding role ``{"param", "orientation"}``: the caller's anatomy first (a
    parameter key or a role dict), else the anatomy recorded in the store's config."""
    for source in (getattr(run, "anatomy_override", None) or {},
                   dict(run.config).get("anatomy") or {}):
        emb = source.get("embedding") if isinstance(source, dict) else None
        if isinstance(emb, str):
            return {"param": emb, "orientation": None}
        if isinstance(emb, dict) and isinstance(emb.get("param"), str):
            return {"param": emb["param"], "orientation": emb.get("orientation")}
    return None


def _rows_table(w: np.ndarray, p: int, orientation: str | None) -> np.ndarray | None:
    """The embedding as ``(rows, d)`` with a row per input unit / token (None: no fit)."""
    if w.ndim != 2:
        return None
    if orientation == "rows":
        return w
    if orientation == "columns":
        return w.T
    for t in (w, w.T):  # orientation unknown: the axis of length 2p (two-hot) or >= p
        if t.shape[0] == 2 * p:
            return t
    for t in (w, w.T):
        if p <= t.shape[0] < 2 * p:
            return t
    return None


def embedding_gini(table: np.ndarray, p: int) -> float:
    """Gini coefficient of the embedding's per-frequency Fourier norms (``gini_embed``).

    Parameters
    ----------
    table : ndarray, shape ``(2p, d)`` or ``(>= p, d)``
        Row ``k`` is what input unit / token ``k`` adds: two-hot inputs (``2p`` rows, the
        halves of operands ``a`` and ``b`` transformed separately, squared norms added) or
        tokens (the first ``p`` rows).
    p : int
        The modulus.

    Returns
    -------
    float
        0 when every frequency ``k = 1..(p-1)/2`` holds the same norm, near 1 when one does
        (the sparse Fourier embedding of a generalising modular-arithmetic network).
    """
    import torch

    from .measures.fourier import freq_norms, gini

    t = torch.as_tensor(np.asarray(table, dtype=np.float64))
    if t.shape[0] == 2 * p:
        norms = torch.sqrt(freq_norms(t[:p], p) ** 2 + freq_norms(t[p:], p) ** 2)
    else:
        norms = freq_norms(t[:p], p)
    return gini(norms.numpy())


def _embedding_gini(run: Any, steps: list[int]) -> tuple[np.ndarray | None, str]:
    """``gini_embed`` at ``steps`` for a modular task with an embedding role, else
    ``(None, why not)``."""
    p = _modulus(run)
    if p is None:
        return None, "not a modular-arithmetic task with a modulus p in the store's config"
    spec = _embedding_spec(run)
    if spec is None:
        return None, ("no embedding role (pass anatomy={'embedding': PARAM_KEY} for a model "
                      "the anatomy did not understand)")
    if spec["param"] not in run.params.data_vars:
        return None, f"the embedding parameter {spec['param']!r} is not stored"
    out = []
    for w in run.trajectory(spec["param"], steps=steps):
        table = _rows_table(np.asarray(w, dtype=np.float64), p, spec["orientation"])
        if table is None:
            return None, (f"the embedding {spec['param']!r} {tuple(np.shape(w))} has no axis "
                          f"of p = {p} tokens or 2p two-hot units")
        out.append(embedding_gini(table, p))
    return np.asarray(out), f"gini of {spec['param']!r} (p = {p})"


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
def forecast_signals(series: dict[str, Any], threshold: float = 0.9,
                     constants: dict[str, Any] | None = None) -> dict[str, float]:
    """The forecast's signals from curves up to the last step of ``series``.

    Parameters
    ----------
    series : dict
        ``steps`` ``(n,)`` and ``test_acc``, ``train_acc``, ``test_loss``, ``train_loss``,
        ``norm`` ``(n,)`` arrays (or None), as :func:`forecast` reads them from a store
        (``norm`` is read at the first step and the window only, NaN elsewhere).
    threshold : float
        The accuracy threshold.
    constants : dict, optional
        ``LOSS_CRIT`` and ``TREND_MIN`` for ``t_loss_cross``; default :data:`CONSTANTS`.

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
        signature of Notsawo et al. 2023), ``gini_embed`` (Fourier sparsity of the embedding
        at ``upto``, modular tasks only, see :func:`embedding_gini`) and ``gini_embed_rel``
        (its log over the first step's value).
    """
    c = CONSTANTS if constants is None else constants
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
        crit = math.log(c["LOSS_CRIT"]) + float(logl[np.isfinite(logl)][0])
        if np.isfinite(s) and s * scale <= -c["TREND_MIN"] and np.isfinite(logl[-1]):
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

    g = series.get("gini_embed")
    g = np.asarray(g, dtype=np.float64) if g is not None and len(g) else np.array([math.nan])
    out["gini_embed"] = float(g[-1])
    out["gini_embed_rel"] = (math.log(g[-1] / g[0]) if np.isfinite(g[[0, -1]]).all()
                             and g[0] > 0 and g[-1] > 0 else math.nan)
    return out


def predict_time(sig: dict[str, float],
                 constants: dict[str, Any] | None = None) -> tuple[float, str]:
    """``(t_test_pred, branch)`` from the signals.

    ``"trend"``: the log test loss falls clearly; ``upto + LOSS_GAIN * (t_loss_cross - upto)``.
    Otherwise v2's ``"early"`` branch, ``upto * exp(a + b * test_acc)`` with
    ``(a, b) = EARLY_COEF`` (v1's ``"fallback"``: ``FALLBACK_RATIO * upto``), never before
    ``upto``.
    """
    c = CONSTANTS if constants is None else constants
    u = max(sig["upto"], 1.0)
    t = sig["t_loss_cross"]
    if np.isfinite(t):
        return u + c["LOSS_GAIN"] * (t - u), "trend"
    if "FALLBACK_RATIO" in c:
        return c["FALLBACK_RATIO"] * u, "fallback"
    a, b = c["EARLY_COEF"]
    te = sig["test_acc"] if np.isfinite(sig["test_acc"]) else 0.0
    return u * max(1.0, math.exp(min(a + b * te, 20.0))), "early"


def interval(t_pred: float, upto: float, branch: str,
             constants: dict[str, Any] | None = None) -> tuple[float, float]:
    """The 80% interval ``(low, high)``: ``t_pred`` times its branch's 10% and 90% quantiles of
    ``true / predicted`` on the fit runs (``Q_TREND``; ``Q_EARLY`` or v1's ``Q_FALLBACK``),
    never before ``upto``."""
    c = CONSTANTS if constants is None else constants
    q = c["Q_TREND"] if branch == "trend" else c.get("Q_EARLY", c.get("Q_FALLBACK"))
    return max(float(upto), q[0] * t_pred), max(float(upto), q[1] * t_pred)


def logit_features(sig: dict[str, float], t_pred: float, horizon: float,
                   constants: dict[str, Any] | None = None) -> np.ndarray:
    """The logistic model's inputs, shape ``(len(LOGIT_COEF),)``; NaN signals enter as 0.

    ``log(t_pred / horizon)``, ``loss_rel_peak``, ``loss_trend``, ``train_acc``, ``test_acc``
    (v1: these five), then ``gini_embed_rel`` and 1 where it exists (0 and 0 otherwise).
    """
    c = CONSTANTS if constants is None else constants
    f = [
        math.log(max(t_pred, 1.0) / max(horizon, 1.0)),
        sig["loss_rel_peak"],
        sig["loss_trend"],
        sig["train_acc"],
        sig["test_acc"],
    ]
    if len(c["LOGIT_COEF"]) > 5:
        g = sig.get("gini_embed_rel", math.nan)
        f += [g, float(np.isfinite(g))]
    return np.nan_to_num(np.clip(np.array(f, dtype=np.float64), -20, 20), nan=0.0)


def p_grok_of(features: np.ndarray, constants: dict[str, Any] | None = None) -> float:
    """The logistic model of :data:`CONSTANTS` (or ``constants``) at ``features``."""
    c = CONSTANTS if constants is None else constants
    z = float(np.dot(c["LOGIT_COEF"], features) + c["LOGIT_BIAS"])
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


def p_by_horizon(t_pred: float, branch: str, horizon: float,
                 constants: dict[str, Any] | None = None) -> float:
    """``P(t_test <= horizon)`` for a run that generalises: ``log(true / t_pred)`` is taken as
    normal with the 10% and 90% quantiles of the branch's interval (``Q_TREND`` /
    ``Q_EARLY``), so ``horizon`` at ``t_test_high`` gives 0.9 and at ``t_test_low`` 0.1."""
    c = CONSTANTS if constants is None else constants
    q = c["Q_TREND"] if branch == "trend" else c.get("Q_EARLY", c.get("Q_FALLBACK"))
    lo, hi = math.log(q[0]), math.log(q[1])
    mu, sigma = 0.5 * (lo + hi), max((hi - lo) / (2 * _Z90), 1e-6)
    z = (math.log(max(horizon, 1.0) / max(t_pred, 1.0)) - mu) / sigma
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def p_generalises(sig: dict[str, float], constants: dict[str, Any] | None = None) -> float:
    """v3's logistic model of whether the run generalises at all, from the signals named in
    ``PG_INPUTS`` (a NaN signal enters as 0: no trend, no accuracy)."""
    c = CONSTANTS if constants is None else constants
    x = np.nan_to_num(np.clip([sig.get(k, math.nan) for k in c["PG_INPUTS"]], -20, 20), nan=0.0)
    z = float(np.dot(c["PG_COEF"], x) + c["PG_BIAS"])
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


def p_grok(sig: dict[str, float], t_pred: float, branch: str, horizon: float,
           constants: dict[str, Any] | None = None) -> tuple[float, float, float]:
    """``(p_grok, p_generalises, p_by_horizon)`` of one forecast.

    v3 (``PG_COEF`` in the constants): ``p_grok = p_generalises * p_by_horizon``, so a short
    ``horizon`` lowers it by exactly the chance that the predicted crossing comes later.
    v1 / v2 (``LOGIT_COEF``): their one logistic model with ``log(t_pred / horizon)`` among the
    inputs (fitted at one horizon); the two parts are NaN.
    """
    c = CONSTANTS if constants is None else constants
    if "PG_COEF" in c:
        g, h = p_generalises(sig, c), p_by_horizon(t_pred, branch, horizon, c)
        return g * h, g, h
    return p_grok_of(logit_features(sig, t_pred, horizon, c), c), math.nan, math.nan


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
        A run (:func:`grokscope.open_run`) or its store; the store may be growing (a path
        reads what is committed now; a ``Run`` what it held when opened or last
        ``refresh()``-ed).
    upto : int, optional
        Use only checkpoints and metrics at steps ``<= upto``; default all recorded so far.
    threshold : float
        Test accuracy in ``(0, 1]`` that counts as generalised.
    horizon : int, optional
        ``p_grok`` is the probability of reaching ``threshold`` by this step; default the
        step budget ``config["steps"]`` that ``gs.train`` records (when it lies beyond
        ``upto``), else ``10 * upto``.
    model, anatomy
        Passed to :func:`grokscope.open_run` when ``run_or_path`` is a path. The forecast
        reads metrics, parameter norms and (modular tasks) the ``embedding`` role's table,
        from the caller's ``anatomy`` or the one recorded with the run; any recorded model
        works, the Fourier signal only where an embedding is known.

    Returns
    -------
    xr.Dataset
        No dims. ``p_grok`` (probability in [0, 1]) and its two factors ``p_generalises``
        and ``p_by_horizon`` (NaN under v1 / v2 constants), ``t_test_pred``, ``t_test_low``,
        ``t_test_high`` (float64 steps; the 80% interval), ``upto`` (the last step used),
        ``t_test_observed`` (NaN unless the threshold was already reached). attrs:
        ``signal_<name>`` for every signal of :func:`forecast_signals`, ``branch``
        (``"observed"``, ``"trend"`` or ``"early"``), ``threshold``, ``horizon``,
        ``test_metric``, ``gini_embed_source`` (where ``gini_embed`` came from, or why it is
        NaN), ``forecast_version``, the constants and the grokscope version.

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
        budget = dict(run.config).get("steps")
        horizon = (int(budget) if isinstance(budget, int | np.integer) and budget > u
                   else 10 * max(u, 1))
    observed = _first_reach(series["steps"], series["test_acc"], threshold)
    if np.isfinite(observed):
        p, t, lo, hi, branch = 1.0, observed, observed, observed, "observed"
        p_gen = p_h = 1.0
    else:
        t, branch = predict_time(sig)
        lo, hi = interval(t, u, branch)
        p, p_gen, p_h = p_grok(sig, t, branch, float(horizon))
    ds = xr.Dataset({
        "p_grok": ((), float(p)),
        "p_generalises": ((), float(p_gen)),
        "p_by_horizon": ((), float(p_h)),
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
        gini_embed_source=series["names"]["gini_embed"],
        forecast_version=int(CONSTANTS["VERSION"]),
        constants=repr(CONSTANTS), grokscope_version=__version__,
    )
    return ds
