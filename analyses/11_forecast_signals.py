"""Forecast signals that need a forward pass: AGOP / NFA, GrokAlign alignment, class separation.

Issue 12 lists signals for ``gs.forecast`` that the earlier evaluations (``08``, ``09``, ``10``)
never looked at because each needs the model at a checkpoint. This script computes them on
the FIT, HELDOUT and HELDOUT2 runs of ``analyses/07_forecast_runs.py`` (157 runs; never the
third held-out set, which is kept untouched for forecast v3) at the forecast points the
other scripts use:

* the dense points of ``10_forecast_v2.py`` (15, 25, ..., 85% of the run's true ``t_test``;
  never-generalising runs: of their task family's median) -- for the cross-validation;
* the 25 / 50 / 75% points of ``08_forecast_eval.py`` -- for the univariate tables.

At a point ``upto`` only checkpoints at steps ``<= upto`` are read: the first stored step
(the reference), ``upto`` itself and up to :data:`N_WINDOW` steps spread over the trend window
(the latest 30% of the steps seen, :func:`grokscope.forecast._window`). On each checkpoint:

* **AGOP / NFA** of the first hidden layer's in-map (the anatomy's ``hidden[0]["in"]``:
  ``layers.0``, ``blocks.0.mlp.W_in``) over the first :data:`N_AGOP` training inputs
  (:func:`grokscope.measures.nfa.layer_agops`): ``nfa`` = Pearson(W^T W, G^(1/2)) and its
  trend, ``nfa_init_removed`` = Pearson((W-W0)^T (W-W0), G^(1/2)), ``agop_stability`` =
  cosine(G at the window's first sampled step, G at ``upto``) and ``agop_init_cos`` =
  cosine(G at the first step, G at ``upto``). (The ``nfa`` measure's ``agop_alignment`` is
  the cosine with the *final* AGOP of the run: it reads the future, so it cannot be a
  forecast signal; these are its causal versions.)
* **GrokAlign** (:func:`grokscope.measures.alignment.centroid_per_point` on the first
  :data:`N_CENTROID` training inputs, :func:`~grokscope.measures.alignment.jacobian_per_point`
  on the first :data:`N_JACOBIAN`): ``centroid_align`` and its trend; ``jac_norm_rel`` = log of
  the mean ``||J_x||_F`` over its first-step value, ``jac_norm_trend`` (slope of its log over
  the window, times ``upto``); ``rank_one``.
* **Class separation** of the first hidden layer's post-activation (last position for
  transformers) on the first :data:`N_SEP` train and test inputs: ``sep_train``,
  ``sep_test`` = log of the ANOVA ratio ``(tr S_B / (k - 1)) / (tr S_W / (n - k))``
  (between- over within-class scatter, each per degree of freedom, so ~0 for features that do
  not depend on the class whatever ``k`` and ``n``); ``sep_gap = sep_test - sep_train``;
  ``sep_train_trend``, ``sep_test_trend`` (slopes times ``upto``).

Per-checkpoint values are cached in ``/tmp/gs/signals/checkpoints.json`` (a restarted script
continues), the points with their signals in ``/tmp/gs/signals/points.json``.

Evaluation (``reports/forecast/extra_signals.md``):

* univariate AUROC for "reaches test accuracy 0.9 within the step cap" at 25 / 50 / 75%,
  overall and per task family (higher signal = groks; < 0.5 means the other way round);
* leave-one-configuration-out cross-validated AUROC (both seeds of a configuration held out
  together, folds over FIT + HELDOUT + HELDOUT2, dense points): v2's model refitted per fold
  (``10_forecast_v2.fit_all``) on its seven inputs, against the same with the signal added
  (standardised on the fold's training points, NaN -> 0 with an indicator);
* Spearman correlation of the signal with ``log(t_test / upto)`` over the grokking points
  (a timing signal), beside v2's own ``log(t_test_pred / upto)``.

Usage::

    python analyses/11_forecast_signals.py                # compute (resumes), then report
    python analyses/11_forecast_signals.py --report-only  # report from the cache
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import grokscope as gs

HERE = Path(__file__).resolve().parent
CACHE = Path("/tmp/gs/signals")
#: training inputs the AGOP averages over; centroid / Jacobian / class-separation subsamples
N_AGOP, N_CENTROID, N_JACOBIAN, N_SEP = 256, 256, 64, 512
#: checkpoints sampled in a point's trend window (its first and last included)
N_WINDOW = 4
#: configuration-bootstrap resamples for the CV gain's interval
N_BOOT = 300
#: a signal is worth adding when it raises the cross-validated AUROC by at least this much
GAIN_MIN = 0.03
#: the sets evaluated (HELDOUT3 is never read here)
SETS = (("fit", "/tmp/gs/forecast_runs"), ("heldout", "/tmp/gs/forecast_runs"),
        ("heldout2", "/tmp/gs/forecast_runs2"))
SIGNALS = ("nfa", "nfa_trend", "nfa_init_removed", "agop_stability", "agop_init_cos",
           "centroid_align", "centroid_align_trend", "jac_norm_rel", "jac_norm_trend",
           "rank_one", "sep_train", "sep_test", "sep_gap", "sep_train_trend", "sep_test_trend")
#: forecast signals gs.forecast already computes, scored the same way for comparison
REFERENCE = ("acc_trend", "loss_trend", "gini_embed_rel")


def _load_module(name: str, file: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, HERE / file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


V2 = _load_module("forecast_v2", "10_forecast_v2.py")
EV = V2.EV
fc = EV.fc


def task_family(name: str) -> str:
    """``modular MLP`` / ``transformer`` / ``parity`` / ``digits`` from a run name."""
    f = EV.family(name)
    return ("transformer" if f.startswith("tr") else "modular MLP" if f.startswith("mod")
            else "parity" if f.startswith("par") else "digits")


# ------------------------------------------------------------------ per-checkpoint values
def class_separation(h: torch.Tensor, y: torch.Tensor) -> float:
    """log of the ANOVA ratio of between- to within-class scatter of features ``h``.

    Parameters
    ----------
    h : tensor, shape ``(n, N)``
        One feature vector per sample.
    y : tensor, shape ``(n,)``
        Integer class labels.

    Returns
    -------
    float
        ``log((tr S_B / (k - 1)) / (tr S_W / (n - k)))`` with ``tr S_B = sum_c n_c |mu_c -
        mu|^2`` and ``tr S_W = sum_i |h_i - mu_{y_i}|^2`` over the ``k`` classes present; NaN
        with fewer than 2 classes, ``n <= k``, or no within-class scatter.
    """
    h = h.double().reshape(h.shape[0], -1)
    classes, inv, counts = torch.unique(y, return_inverse=True, return_counts=True)
    k, n = len(classes), h.shape[0]
    if k < 2 or n <= k:
        return math.nan
    mu = h.mean(0)
    sums = torch.zeros(k, h.shape[1], dtype=h.dtype).index_add_(0, inv, h)
    mus = sums / counts[:, None]
    sb = float((counts * ((mus - mu) ** 2).sum(1)).sum())
    sw = float(((h - mus[inv]) ** 2).sum())
    if sw <= 0 or sb <= 0:
        return math.nan
    return math.log((sb / (k - 1)) / (sw / (n - k)))


def _hidden(view: Any, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        a = view.hidden_activations(x, 0)
    return a[:, -1] if a.dim() == 3 else a  # a position axis: the last position


def checkpoint_values(view: Any, first: Any, data: Any) -> tuple[dict[str, float], np.ndarray]:
    """The raw per-checkpoint quantities and the AGOP matrix (float64, ``(in, in)``)."""
    from grokscope.measures.alignment import centroid_per_point, jacobian_per_point
    from grokscope.measures.nfa import layer_agops, matrix_power_psd, pearson

    layer = view.hidden_layer(0)["in"]
    xa = data.x_train[:N_AGOP]
    res = layer_agops(view, xa, layers=[layer], reference=None)[layer]
    w = res.weight
    root = matrix_power_psd(res.agop, 0.5)
    d = w - first.weight(layer).double()
    out = {
        "nfa": pearson(w.T @ w, root),
        "nfa_init_removed": pearson(d.T @ d, root) if bool(d.any()) else math.nan,
    }
    cen = centroid_per_point(view, data.x_train[:N_CENTROID])
    out["centroid_align"] = float(np.mean(cen["centroid_alignment"]))
    jac = jacobian_per_point(view, data.x_train[:N_JACOBIAN])
    out["jac_norm"] = float(np.mean(jac["jacobian_norm"]))
    r1 = jac["rank_one"][np.isfinite(jac["rank_one"])]
    out["rank_one"] = float(r1.mean()) if r1.size else math.nan
    for split, (x, y) in (("train", (data.x_train, data.y_train)),
                          ("test", (data.x_test, data.y_test))):
        out[f"sep_{split}"] = class_separation(_hidden(view, x[:N_SEP]), y[:N_SEP])
    return out, res.agop.cpu().numpy()


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float((a * b).sum() / (na * nb)) if na > 0 and nb > 0 else math.nan


def window_samples(steps: np.ndarray, u: int) -> list[int]:
    """Up to :data:`N_WINDOW` stored steps spread over the trend window of ``upto = u``
    (:func:`grokscope.forecast._window`; its first and last step included)."""
    seen = steps[steps <= u]
    w = seen[fc._window(seen)]
    idx = np.unique(np.round(np.linspace(0, len(w) - 1, min(N_WINDOW, len(w)))).astype(int))
    return [int(s) for s in w[idx]]


def run_values(r: dict, uptos: list[int]) -> dict:
    """Per-checkpoint values of run ``r`` at every step the points ``uptos`` need, and the AGOP
    cosines ``"a,b"`` each point reads."""
    from grokscope.anatomy import ModelView
    from grokscope.engine import run_anatomy

    run = gs.open_run(r["path"])
    steps = np.asarray(run.steps)
    first_step = int(steps[0])
    need = {first_step}
    for u in uptos:
        need.update(window_samples(steps, u))
    m0 = run.model_at(first_step)
    data = run.data
    anat = run_anatomy(run, m0, data)
    first = ModelView(m0, anat)
    vals: dict[str, dict] = {}
    agops: dict[int, np.ndarray] = {}
    for s in sorted(need):
        view = ModelView(run.model_at(s), anat) if s != first_step else first
        vals[str(s)], agops[s] = checkpoint_values(view, first, data)
    cos = {}
    for u in uptos:
        w0 = window_samples(steps, u)[0]
        for a in (first_step, w0):
            cos[f"{a},{u}"] = _cos(agops[a], agops[u])
    return {"steps": vals, "agop_cos": cos, "first_step": first_step}


# ------------------------------------------------------------------ signals at a point
def point_signals(cache: dict, steps: np.ndarray, u: int) -> dict[str, float]:
    """The candidate signals at ``upto = u`` from a run's cached checkpoint values."""
    vals = cache["steps"]
    s0 = cache["first_step"]
    ws = window_samples(steps, u)
    x = np.array(ws, dtype=np.float64)

    def series(k: str, log: bool = False) -> np.ndarray:
        v = np.array([vals[str(s)][k] for s in ws], dtype=np.float64)
        return np.log(np.where(v > 0, v, np.nan)) if log else v

    def trend(k: str, log: bool = False) -> float:
        return fc._slope(x, series(k, log)) * max(u, 1)

    cur = vals[str(u)]
    j0 = vals[str(s0)]["jac_norm"]
    out = {
        "nfa": cur["nfa"], "nfa_trend": trend("nfa"),
        "nfa_init_removed": cur["nfa_init_removed"],
        "agop_stability": cache["agop_cos"][f"{ws[0]},{u}"],
        "agop_init_cos": cache["agop_cos"][f"{s0},{u}"],
        "centroid_align": cur["centroid_align"], "centroid_align_trend": trend("centroid_align"),
        "jac_norm_rel": (math.log(cur["jac_norm"] / j0) if j0 > 0 and cur["jac_norm"] > 0
                         else math.nan),
        "jac_norm_trend": trend("jac_norm", log=True),
        "rank_one": cur["rank_one"],
        "sep_train": cur["sep_train"], "sep_test": cur["sep_test"],
        "sep_gap": cur["sep_test"] - cur["sep_train"],
        "sep_train_trend": trend("sep_train"), "sep_test_trend": trend("sep_test"),
    }
    return {k: float(v) for k, v in out.items()}


# ------------------------------------------------------------------ computing
def load_runs() -> list[dict]:
    runs = []
    for which, root in SETS:
        for r in EV.load(Path(root), which):
            r["set"] = which
            runs.append(r)
    return runs


def all_points(runs: list[dict]) -> tuple[list[dict], list[dict]]:
    """``(dense, eval)``: the dense points of ``10_forecast_v2.py`` and the 25/50/75% points of
    ``08_forecast_eval.py``; reference medians per set, as those scripts compute them."""
    dense, ev = [], []
    for which, _ in SETS:
        rs = [r for r in runs if r["set"] == which]
        dense += V2.dense_points(rs)
        ev += EV.points(rs)
    return dense, ev


def compute(runs: list[dict], dense: list[dict], ev: list[dict], limit_s: float) -> dict:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / "checkpoints.json"
    cache = json.loads(path.read_text()) if path.exists() else {}
    t_start = time.perf_counter()
    for r in runs:
        uptos = sorted({p["upto"] for p in dense + ev if p["run"] is r})
        have = cache.get(r["name"])
        if have is not None and all(f"{have['first_step']},{u}" in have["agop_cos"]
                                    for u in uptos):
            continue
        if time.perf_counter() - t_start > limit_s:
            print(f"time limit: stopping before {r['name']}", flush=True)
            break
        t0 = time.perf_counter()
        cache[r["name"]] = run_values(r, uptos)
        path.write_text(json.dumps(cache))
        print(f"{r['name']}: {len(cache[r['name']]['steps'])} checkpoints, "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    return cache


def attach(points: list[dict], cache: dict) -> list[dict]:
    """Points of runs with cached values, with ``extra`` (the candidate signals) and ``sig``
    (gs.forecast's own signals, v2 constants)."""
    out = []
    for p in points:
        c = cache.get(p["run"]["name"])
        if c is None:
            continue
        p["extra"] = point_signals(c, p["run"]["series"]["steps"], p["upto"])
        p["sig"] = V2.signals(p, fc.CONSTANTS)
        out.append(p)
    return out


# ------------------------------------------------------------------ evaluation
def values(pts: list[dict], k: str) -> np.ndarray:
    return np.array([p["extra"][k] if k in p["extra"] else p["sig"].get(k, math.nan)
                     for p in pts], dtype=np.float64)


def auroc_of(pts: list[dict], k: str) -> tuple[float, int, int]:
    """AUROC (higher = groks; NaN values left out) and the numbers of grokking / never points."""
    v = values(pts, k)
    y = np.array([p["run"]["groks"] for p in pts])
    ok = np.isfinite(v)
    return EV.auroc(y[ok], v[ok]), int(y[ok].sum()), int((~y[ok]).sum())


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    ok = np.isfinite(a) & np.isfinite(b)
    return float(spearmanr(a[ok], b[ok]).statistic) if ok.sum() >= 5 else math.nan


def timing(pts: list[dict], k: str) -> float:
    g = [p for p in pts if p["run"]["groks"]]
    y = np.log(np.array([p["run"]["t_test"] / p["upto"] for p in g]))
    return spearman(values(g, k), y)


def residual_timing(pts: list[dict], k: str) -> float:
    """Spearman of the signal with v2's log error ``log(t_test / t_test_pred)`` (grokking
    points): could the signal correct v2's time prediction?"""
    g = [p for p in pts if p["run"]["groks"]]
    y = np.log(np.array([p["run"]["t_test"] / fc.predict_time(p["sig"], fc.CONSTANTS)[0]
                         for p in g]))
    return spearman(values(g, k), y)


def v2_timing(pts: list[dict]) -> float:
    g = [p for p in pts if p["run"]["groks"]]
    y = np.log(np.array([p["run"]["t_test"] / p["upto"] for p in g]))
    t = np.log(np.array([fc.predict_time(p["sig"], fc.CONSTANTS)[0] / p["upto"] for p in g]))
    return spearman(t, y)


def _auroc_fast(y: np.ndarray, s: np.ndarray) -> float:
    """AUROC by ranks (ties count one half), as :func:`EV.auroc`."""
    from scipy.stats import rankdata

    n1, n0 = int(y.sum()), int((~y).sum())
    if not n1 or not n0:
        return math.nan
    r = rankdata(s)
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def cross_validate(pts: list[dict], extras: list[tuple[str, ...]]) -> dict[str, dict]:
    """Leave-one-configuration-out AUROC of v2's logistic model refitted per fold, alone and
    with each tuple of extra signals added; pooled over folds, also per fraction."""
    from sklearn.linear_model import LogisticRegression

    saved = V2.signals
    assert all(fc.CONSTANTS[k] == fc.CONSTANTS_V1[k] for k in ("LOSS_CRIT", "TREND_MIN"))
    # fit_all keeps LOSS_CRIT / TREND_MIN (the only constants the signals read): cache them
    V2.signals = lambda p, c: p["sig"]
    groups = sorted({V2.group_of(p) for p in pts})
    y = np.array([p["run"]["groks"] for p in pts])
    scores = {k: np.full(len(pts), np.nan) for k in [(), *extras]}
    try:
        for g in groups:
            te = np.array([V2.group_of(p) == g for p in pts])
            tr_pts = [p for p, t in zip(pts, te) if not t]
            base = _base(pts, V2.fit_all(tr_pts))
            for ks in scores:
                x = _design(pts, base, ks, tr_pts)
                lr = LogisticRegression(C=1.0, max_iter=5000).fit(x[~te], y[~te])
                scores[ks][te] = lr.predict_proba(x[te])[:, 1]
    finally:
        V2.signals = saved
    frac = np.array([p["fraction"] for p in pts])
    gid = np.array([groups.index(V2.group_of(p)) for p in pts])
    rng = np.random.default_rng(0)
    boots = [rng.integers(0, len(groups), len(groups)) for _ in range(N_BOOT)]
    idx = [np.concatenate([np.flatnonzero(gid == g) for g in b]) for b in boots]
    base_boot = np.array([_auroc_fast(y[i], scores[()][i]) for i in idx])
    out = {}
    for ks, s in scores.items():
        row = {"all": EV.auroc(y, s)}
        if ks:
            d = np.array([_auroc_fast(y[i], s[i]) for i in idx]) - base_boot
            row["gain_ci90"] = [float(np.quantile(d, 0.05)), float(np.quantile(d, 0.95))]
        for f in (0.25, 0.45, 0.55, 0.75):
            m = np.isclose(frac, f)
            row[f"{int(round(f * 100))}%"] = EV.auroc(y[m], s[m])
        out["+".join(ks) or "v2 inputs"] = row
    return out


def _base(pts: list[dict], c: dict) -> np.ndarray:
    """v2's logistic inputs at ``pts`` (constants ``c``), shape ``(n, 7)``."""
    return np.array([fc.logit_features(p["sig"], fc.predict_time(p["sig"], c)[0], EV.RUNS.CAP, c)
                     for p in pts])


def time_correction_cv(pts: list[dict], names: list[str]) -> dict[str, dict]:
    """Could a signal correct v2's time prediction? Leave one configuration out over the
    grokking dense points: ``log(t_test / t_pred) = a + b z`` (``z`` the signal standardised
    on the training configurations, NaN -> 0) fitted per fold by least squares, applied to
    the held-out configuration; median ``|pred - true| / true`` against v2 uncorrected and
    against the intercept alone (a recalibration that uses no signal)."""
    g = [p for p in pts if p["run"]["groks"]]
    t_pred = np.array([fc.predict_time(p["sig"], fc.CONSTANTS)[0] for p in g])
    true = np.array([p["run"]["t_test"] for p in g], dtype=np.float64)
    r = np.log(true / t_pred)
    gid = np.array([V2.group_of(p) for p in g])
    out = {"v2 uncorrected": float(np.median(np.abs(t_pred - true) / true))}
    for k in ["intercept only", *names]:
        v = np.zeros(len(g)) if k == "intercept only" else values(g, k)
        pred = np.empty(len(g))
        for grp in np.unique(gid):
            te = gid == grp
            fin = np.isfinite(v) & ~te
            mu, sd = (float(v[fin].mean()), float(v[fin].std())) if fin.any() else (0.0, 1.0)
            z = np.where(np.isfinite(v), (v - mu) / (sd if sd > 0 else 1.0), 0.0)
            x = np.column_stack([np.ones(len(g)), z])
            coef, *_ = np.linalg.lstsq(x[~te], r[~te], rcond=None)
            pred[te] = t_pred[te] * np.exp(x[te] @ coef)
        out[k] = float(np.median(np.abs(pred - true) / true))
    return out


def _design(pts: list[dict], base: np.ndarray, ks: tuple[str, ...],
            ref: list[dict]) -> np.ndarray:
    """``base`` (v2's inputs at ``pts``) plus the signals ``ks`` standardised on ``ref``."""
    cols = [base]
    for k in ks:
        v, r = values(pts, k), values(ref, k)
        mu = float(np.nanmean(r)) if np.isfinite(r).any() else 0.0
        sd = float(np.nanstd(r)) if np.isfinite(r).any() else 1.0
        fin = np.isfinite(v)
        cols.append(np.clip(np.where(fin, (v - mu) / (sd if sd > 0 else 1.0), 0.0),
                            -10, 10)[:, None])
        if not np.isfinite(r).all():
            cols.append(fin[:, None].astype(np.float64))
    return np.hstack(cols)


def fit_then_test(dense: list[dict], ev: list[dict],
                  extras: list[tuple[str, ...]]) -> dict[str, dict]:
    """Fit on the FIT runs' dense points only (v2's ``fit_all`` + logistic, with or without
    the signals), score HELDOUT and HELDOUT2 at 25/50/75% of ``t_test``: the out-of-sample
    check of a choice made on the FIT runs."""
    from sklearn.linear_model import LogisticRegression

    saved = V2.signals
    V2.signals = lambda p, c: p["sig"]
    try:
        train = [p for p in dense if p["run"]["set"] == "fit"]
        c = V2.fit_all(train)
        y_tr = np.array([p["run"]["groks"] for p in train])
        b_tr = _base(train, c)
        out = {}
        for ks in [(), *extras]:
            lr = LogisticRegression(C=1.0, max_iter=5000).fit(_design(train, b_tr, ks, train),
                                                              y_tr)
            row = {}
            for which in ("heldout", "heldout2"):
                for f in (0.25, 0.5, 0.75):
                    sel = [p for p in ev if p["run"]["set"] == which and p["fraction"] == f]
                    if not sel:
                        continue
                    s = lr.predict_proba(_design(sel, _base(sel, c), ks, train))[:, 1]
                    y = np.array([p["run"]["groks"] for p in sel])
                    row[f"{which} {int(f * 100)}%"] = EV.auroc(y, s)
            out["+".join(ks) or "v2 inputs"] = row
    finally:
        V2.signals = saved
    return out


def fmt(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.2f}"


def report(runs: list[dict], dense: list[dict], ev: list[dict], cache: dict) -> dict:
    covered = {r["name"] for r in runs if r["name"] in cache}
    by_set = {w: (sum(r["name"] in covered for r in runs if r["set"] == w),
                  sum(r["set"] == w for r in runs)) for w, _ in SETS}
    dense = attach(dense, cache)
    ev = attach(ev, cache)
    names = [*SIGNALS, *REFERENCE]
    fams = ("modular MLP", "transformer", "parity", "digits")
    uni: dict[str, dict] = {}
    for k in names:
        row = {}
        for f in (0.25, 0.5, 0.75):
            sel = [p for p in ev if p["fraction"] == f]
            row[f"{int(f * 100)}%"] = auroc_of(sel, k)[0]
        at50 = [p for p in ev if p["fraction"] == 0.5]
        for fam in fams:
            row[fam] = auroc_of([p for p in at50 if task_family(p["run"]["name"]) == fam], k)[0]
        row["spearman_timing"] = timing(dense, k)
        row["spearman_timing_50"] = timing([p for p in ev if p["fraction"] == 0.5], k)
        row["spearman_v2_residual"] = residual_timing(dense, k)
        uni[k] = row
    extras = [(k,) for k in names]
    cv = cross_validate(dense, extras)
    groups = {
        "agop": ("nfa", "nfa_trend", "agop_stability"),
        "alignment": ("centroid_align", "jac_norm_rel", "jac_norm_trend"),
        "separation": ("sep_test", "sep_gap", "sep_test_trend"),
        # v3 candidates: the test-accuracy trend (no forward pass) with the best new ones
        "acc_trend + best new": ("acc_trend", "agop_stability", "sep_gap"),
        "acc_trend + sep_train_trend": ("acc_trend", "sep_train_trend"),
    }
    cv.update(cross_validate(dense, list(groups.values())))
    fit_dense = [p for p in dense if p["run"]["set"] == "fit"]
    cv_fit = cross_validate(fit_dense, extras + list(groups.values()))
    held = fit_then_test(dense, ev, extras + list(groups.values()))
    timecv = time_correction_cv(dense, names)
    fam_counts = {}
    for fam in fams:
        sel = [p for p in ev if p["fraction"] == 0.5 and task_family(p["run"]["name"]) == fam]
        fam_counts[fam] = (sum(p["run"]["groks"] for p in sel),
                           sum(not p["run"]["groks"] for p in sel))
    doc = {
        "covered": sorted(covered), "by_set": by_set, "univariate": uni, "cv": cv,
        "cv_fit_only": cv_fit, "fit_then_heldout": held, "time_correction_cv": timecv,
        "groups": {k: list(v) for k, v in groups.items()},
        "n_dense": len(dense), "n_eval": len(ev), "family_counts_50": fam_counts,
        "v2_timing_spearman": v2_timing(dense),
        "v2_timing_spearman_50": v2_timing([p for p in ev if p["fraction"] == 0.5]),
        "params": {"N_AGOP": N_AGOP, "N_CENTROID": N_CENTROID, "N_JACOBIAN": N_JACOBIAN,
                   "N_SEP": N_SEP, "N_WINDOW": N_WINDOW},
    }
    (CACHE / "report.json").write_text(json.dumps(doc, indent=1, default=float))
    pts_doc = [{"run": p["run"]["name"], "fraction": p["fraction"], "upto": p["upto"],
                "groks": p["run"]["groks"], "t_test": p["run"]["t_test"], **p["extra"],
                **{k: p["sig"].get(k) for k in REFERENCE}} for p in dense + ev]
    (CACHE / "points.json").write_text(json.dumps(pts_doc, default=float))
    (EV.OUT / "extra_signals.md").write_text(markdown(doc, fams))
    return doc


def gain(row: dict, base: dict) -> str:
    lo, hi = row["gain_ci90"]
    return f"{row['all'] - base['all']:+.3f} ({lo:+.3f}, {hi:+.3f})"


def verdict(doc: dict) -> str:
    """The signals whose CV gain reaches :data:`GAIN_MIN` (the bar issue 12's brief set)."""
    base = doc["cv"]["v2 inputs"]["all"]
    gains = {k: v["all"] - base for k, v in doc["cv"].items() if k != "v2 inputs"}
    kept = [k for k, g in gains.items() if g >= GAIN_MIN]
    best = max(gains, key=gains.get)
    if kept:
        return (f"Signals whose cross-validated AUROC gain reaches {GAIN_MIN}: "
                + ", ".join(f"`{k}` ({gains[k]:+.3f})" for k in kept) + ".")
    return (f"No candidate reaches a cross-validated AUROC gain of {GAIN_MIN} over v2's inputs "
            f"(best: `{best}`, {gains[best]:+.3f}).")


def markdown(doc: dict, fams: tuple[str, ...]) -> str:
    cov = ", ".join(f"{w}: {a} of {b}" for w, (a, b) in doc["by_set"].items())
    base = doc["cv"]["v2 inputs"]
    rows = ["| signal | AUROC 25% | 50% | 75% | " + " | ".join(f"50% {f}" for f in fams)
            + " | CV AUROC (v2 inputs + signal) | gain (90% CI) | gain, CV on FIT only "
            "| Spearman with log(t_test/upto) | with v2's log(t_test/t_pred) "
            "| CV median rel. err, v2 time corrected by it |",
            "|---|---|---|---|" + "---|" * len(fams) + "---|---|---|---|---|---|"]
    tc = doc["time_correction_cv"]
    base_fit = doc["cv_fit_only"]["v2 inputs"]["all"]
    for k, u in doc["univariate"].items():
        c = doc["cv"][k]["all"]
        ref = " (already in gs.forecast's signals)" if k in REFERENCE else ""
        rows.append(f"| `{k}`{ref} | {fmt(u['25%'])} | {fmt(u['50%'])} | {fmt(u['75%'])} | "
                    + " | ".join(fmt(u[f]) for f in fams)
                    + f" | {fmt(c)} | {gain(doc['cv'][k], base)} | "
                    f"{doc['cv_fit_only'][k]['all'] - base_fit:+.3f} | "
                    f"{fmt(u['spearman_timing'])} | {fmt(u['spearman_v2_residual'])} | "
                    f"{100 * tc[k]:.1f}% |")
    for name, ks in doc["groups"].items():
        key = "+".join(ks)
        c = doc["cv"][key]["all"]
        rows.append(f"| group `{name}`: {', '.join(ks)} | | | | " + " | " * len(fams)
                    + f"{fmt(c)} | {gain(doc['cv'][key], base)} | "
                    f"{doc['cv_fit_only'][key]['all'] - base_fit:+.3f} | | | |")
    held = doc["fit_then_heldout"]
    cols = list(held["v2 inputs"])
    hrows = ["| model (fitted on FIT dense points) | " + " | ".join(cols) + " |",
             "|---|" + "---|" * len(cols)]
    for k, v in held.items():
        hrows.append(f"| {k} | " + " | ".join(fmt(v.get(c)) for c in cols) + " |")
    cvrows = ["| model | all dense points | at 25% | 45% | 55% | 75% |", "|---|---|---|---|---|---|"]
    for k, v in doc["cv"].items():
        cvrows.append(f"| {k} | {v['all']:.3f} | {fmt(v['25%'])} | {fmt(v['45%'])} | "
                      f"{fmt(v['55%'])} | {fmt(v['75%'])} |")
    fc50 = ", ".join(f"{f} {g}/{n}" for f, (g, n) in doc["family_counts_50"].items())
    p = doc["params"]
    return f"""# Forecast signals that need a forward pass (issue 12)

Generated by `analyses/11_forecast_signals.py` (cache: `/tmp/gs/signals/checkpoints.json`,
points and signals: `/tmp/gs/signals/points.json`, numbers: `/tmp/gs/signals/report.json`).
Runs covered: {cov} (HELDOUT3 is not read). {doc['n_eval']} points at 25/50/75% of `t_test`
(`08_forecast_eval.py`), {doc['n_dense']} dense points at 15-85% (`10_forecast_v2.py`).
At 50%, grokking / never points per family: {fc50}.

Every signal reads checkpoints at steps <= `upto` only: the first stored step, `upto`, and
{p['N_WINDOW']} steps spread over the trend window (latest 30% of the steps seen). AGOP of the
first hidden layer's in-map over the first {p['N_AGOP']} training inputs; centroid alignment on
{p['N_CENTROID']}, Jacobian norm and rank-one-ness on {p['N_JACOBIAN']} training inputs; class
separation (log ANOVA ratio of between- to within-class scatter of the first hidden layer's
post-activation, last position for transformers) on {p['N_SEP']} train / test inputs. Trends
are least-squares slopes over the window times `upto`. Definitions: the script's docstring.

**AUROC** is for "reaches test accuracy 0.9 within the {EV.RUNS.CAP}-step cap", with higher
signal = groks (a value well below 0.5 separates the other way round), NaN points left out;
per family at 50% (n/a: one class only). **CV AUROC**: leave one configuration out (both
seeds together; {len(set(V2.group_of({'run': {'name': n}}) for n in doc['covered']))}
configurations), v2's model (`10_forecast_v2.fit_all`: time branch and logistic model)
refitted per fold, scored on the held-out configuration's dense points, pooled. Baseline (v2's
seven inputs): **{base['all']:.3f}**. **Spearman**: with `log(t_test / upto)` over the grokking
dense points (v2's own `log(t_test_pred / upto)`: {doc['v2_timing_spearman']:.2f}; at 50%:
{doc['v2_timing_spearman_50']:.2f}).

{verdict(doc)} The interval is a bootstrap over configurations (both seeds together,
{N_BOOT} resamples) of the paired difference of pooled CV AUROCs. "with v2's
log(t_test/t_pred)": Spearman with v2's time error over the grokking dense points (a signal
that could correct the time prediction would show here). "CV median rel. err": v2's
`t_test_pred` times `exp(a + b z)`, `z` the standardised signal, `a, b` fitted by least
squares on the other configurations' grokking dense points (leave one configuration out);
v2 uncorrected: {100 * doc['time_correction_cv']['v2 uncorrected']:.1f}%, intercept only
(no signal): {100 * doc['time_correction_cv']['intercept only']:.1f}%.

{chr(10).join(rows)}

Cross-validated AUROC by forecasting fraction (dense points; 50% is not a dense fraction):

{chr(10).join(cvrows)}

Out of sample: v2's form (`fit_all`) with and without each signal, fitted on the FIT runs'
dense points only and scored at 25/50/75% of `t_test` on HELDOUT and HELDOUT2 (AUROC of
`p_grok`; "gain, CV on FIT only" above is what a choice made on the FIT runs alone would
have seen):

{chr(10).join(hrows)}
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--limit-s", type=float, default=math.inf,
                    help="stop computing new runs after this many seconds, then report")
    ap.add_argument("--only-set", choices=[w for w, _ in SETS],
                    help="compute only this set's runs (the report uses every cached run)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    runs = load_runs()
    dense, ev = all_points(runs)
    if args.report_only:
        cache = json.loads((CACHE / "checkpoints.json").read_text())
    else:
        todo = [r for r in runs if args.only_set in (None, r["set"])]
        cache = compute(todo, dense, ev, args.limit_s)
    doc = report(runs, dense, ev, cache)
    print((EV.OUT / "extra_signals.md").read_text())
    print("covered:", doc["by_set"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
