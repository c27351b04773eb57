"""Forecast v2: fit on the FIT runs at dense points, evaluate v1 and v2 on the fresh HELDOUT2 set.

The runs come from ``analyses/07_forecast_runs.py`` (FIT runs in ``--runs``, default
/tmp/gs/forecast_runs; HELDOUT2 runs in ``--runs2``, default /tmp/gs/forecast_runs2). The first
held-out set (HELDOUT) had been looked at when v2 was built, so it is not used to judge v2.

``--fit`` (FIT runs only): each FIT run is cut at the last stored step at or before
15, 25, ..., 85% of its true ``t_test`` (never-generalising runs: of the median ``t_test`` of
their task family), so the forecast points spread over the whole approach and no constant
can encode one forecasting fraction (v1's ``FALLBACK_RATIO`` ~ 4 came from points at 25%).
On those points it fits

* ``EARLY_COEF`` -- the branch without a clearly falling test loss: least squares of
  ``log(t_test / upto)`` on ``[1, test_acc]`` over the grokking points of that branch;
* ``Q_TREND`` / ``Q_EARLY`` -- each branch's 10% and 90% quantiles of ``true / predicted``;
* ``LOGIT_COEF`` / ``LOGIT_BIAS`` -- the logistic model of ``p_grok`` (v1's five inputs plus
  ``gini_embed_rel`` and its indicator), ``horizon`` = the step cap.

The trend branch's ``LOSS_CRIT``, ``LOSS_GAIN``, ``TREND_MIN`` are v1's. Candidate signals were
chosen by leave-one-configuration-out cross-validation over the FIT runs (both seeds of a
configuration held out together); the numbers are written with the constants to
``reports/forecast/constants_v2.json``; paste the constants into ``grokscope/forecast.py``.

Without ``--fit``: checks the module's constants are the fitted ones, then evaluates v2
(:data:`grokscope.forecast.CONSTANTS_V2`), v1 (:data:`grokscope.forecast.CONSTANTS_V1`) and the two baselines on the
HELDOUT2 runs with the protocol of ``analyses/08_forecast_eval.py`` (25/50/75% of ``t_test``)
and writes ``reports/forecast/table_v2.md``, ``results_v2.json``, ``pred_vs_true_v2.png`` and
the v2 block of ``reports/forecast/README.md``.

Decision rule, fixed before HELDOUT2 was looked at (:data:`DECISION`): v2 stays the default if,
on HELDOUT2 at 50% of ``t_test``, it meets at least as many of the issue's three targets
(AUROC >= 0.9, median relative error <= 25%, 80% coverage in [70%, 90%]) as v1; a tie goes
to v2, whose early branch does not encode the forecasting protocol. Otherwise v1's constants
become the default again.

Usage::

    python analyses/10_forecast_v2.py --fit   # fit on the FIT runs
    python analyses/10_forecast_v2.py         # evaluate v1 and v2 on HELDOUT2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DECISION = ("v2 stays the default if, on HELDOUT2 at 50% of t_test, it meets at least as many of "
            "the three targets (AUROC >= 0.9, median rel. err <= 25%, 80% coverage in "
            "[70%, 90%]) as v1 (a tie goes to v2); otherwise v1's constants become the default")
DENSE = tuple(float(f) for f in np.round(np.arange(0.15, 0.86, 0.1), 2))


def _load_module(name: str, file: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, HERE / file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


EV = _load_module("forecast_eval", "08_forecast_eval.py")
fc = EV.fc
RUNS = EV.RUNS
OUT = EV.OUT
THRESHOLD = EV.THRESHOLD


def dense_points(runs: list[dict], fractions: tuple[float, ...] = DENSE) -> list[dict]:
    """Forecast points at ``fractions`` of each run's (reference) ``t_test``; a stored step is
    used once per run and only before the threshold is seen."""
    saved = EV.FRACTIONS
    EV.FRACTIONS = fractions
    try:
        pts = EV.points(runs)
    finally:
        EV.FRACTIONS = saved
    seen, out = set(), []
    for p in pts:
        key = (p["run"]["name"], p["upto"])
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def signals(p: dict, constants: dict) -> dict:
    return fc.forecast_signals(EV.cut(p["run"]["series"], p["upto"]), THRESHOLD, constants)


def predict(p: dict, constants: dict, horizon: float = RUNS.CAP) -> dict:
    """One version's forecast at point ``p`` (its signals computed with its constants)."""
    sig = signals(p, constants)
    t, branch = fc.predict_time(sig, constants)
    lo, hi = fc.interval(t, p["upto"], branch, constants)
    return {"p": fc.p_grok(sig, t, branch, horizon, constants)[0],
            "t": t, "lo": lo, "hi": hi, "branch": branch}


def group_of(p: dict) -> str:
    return p["run"]["name"].rsplit("_s", 1)[0]


# ------------------------------------------------------------------ fit
def fit_time(pts: list[dict], c: dict) -> dict:
    """EARLY_COEF, Q_TREND, Q_EARLY from grokking points ``pts`` (updates ``c``)."""
    sig = [signals(p, c) for p in pts]
    true = np.array([p["run"]["t_test"] for p in pts])
    u = np.array([p["upto"] for p in pts], dtype=np.float64)
    trend = np.array([np.isfinite(s["t_loss_cross"]) for s in sig])
    te = np.array([s["test_acc"] for s in sig])
    x = np.column_stack([np.ones((~trend).sum()), te[~trend]])
    coef, *_ = np.linalg.lstsq(x, np.log(true[~trend] / u[~trend]), rcond=None)
    c["EARLY_COEF"] = (float(coef[0]), float(coef[1]))
    q = {"trend": [], "early": []}
    for p, s in zip(pts, sig):
        t, br = fc.predict_time(s, c)
        q[br].append(p["run"]["t_test"] / t)
    c["Q_TREND"] = tuple(float(v) for v in np.quantile(q["trend"], [0.1, 0.9]))
    c["Q_EARLY"] = tuple(float(v) for v in np.quantile(q["early"], [0.1, 0.9]))
    return c


def fit_logit(pts: list[dict], c: dict) -> dict:
    from sklearn.linear_model import LogisticRegression

    c = {**c, "LOGIT_COEF": (0.0,) * 7}  # seven inputs
    x = np.array([fc.logit_features(s := signals(p, c), fc.predict_time(s, c)[0], RUNS.CAP, c)
                  for p in pts])
    y = np.array([p["run"]["groks"] for p in pts])
    lr = LogisticRegression(C=1.0, max_iter=5000).fit(x, y)
    c["LOGIT_COEF"] = tuple(float(v) for v in lr.coef_[0])
    c["LOGIT_BIAS"] = float(lr.intercept_[0])
    return c


def fit_all(pts: list[dict]) -> dict:
    c = {"VERSION": 2, **{k: fc.CONSTANTS_V1[k] for k in ("LOSS_CRIT", "LOSS_GAIN", "TREND_MIN")},
         "EARLY_COEF": (0.0, 0.0), "Q_TREND": (1.0, 1.0), "Q_EARLY": (1.0, 1.0),
         "LOGIT_COEF": (0.0,) * 7, "LOGIT_BIAS": 0.0}
    c = fit_time([p for p in pts if p["run"]["groks"]], c)
    return fit_logit(pts, c)


def fit_v1_form(pts: list[dict]) -> dict:
    """v1's model form refitted on ``pts`` (same points as v2): FALLBACK_RATIO (median
    ``true / upto`` of the fallback branch), per-branch quantiles, the five-input logistic."""
    from sklearn.linear_model import LogisticRegression

    c = dict(fc.CONSTANTS_V1)
    grok = [p for p in pts if p["run"]["groks"]]
    fb = [p["run"]["t_test"] / p["upto"] for p in grok
          if not np.isfinite(signals(p, c)["t_loss_cross"])]
    c["FALLBACK_RATIO"] = float(np.median(fb))
    q = {"trend": [], "fallback": []}
    for p in grok:
        t, br = fc.predict_time(signals(p, c), c)
        q[br].append(p["run"]["t_test"] / t)
    c["Q_TREND"] = tuple(float(v) for v in np.quantile(q["trend"], [0.1, 0.9]))
    c["Q_FALLBACK"] = tuple(float(v) for v in np.quantile(q["fallback"], [0.1, 0.9]))
    x = np.array([fc.logit_features(s := signals(p, c), fc.predict_time(s, c)[0], RUNS.CAP, c)
                  for p in pts])
    lr = LogisticRegression(C=1.0, max_iter=5000).fit(x, [p["run"]["groks"] for p in pts])
    c["LOGIT_COEF"] = tuple(float(v) for v in lr.coef_[0])
    c["LOGIT_BIAS"] = float(lr.intercept_[0])
    return c


def cross_validate(pts: list[dict], v2: dict) -> dict:
    """Leave-one-configuration-out (both seeds of a configuration out together): v1's form and
    v2 refitted per fold on the other configurations' dense points, scored on the held-out
    configuration's; pooled over folds. Also in-sample: v1's shipped constants and ``v2``."""
    groups = sorted({group_of(p) for p in pts})
    rows = {"v1 form, refitted per fold": [], "v2, refitted per fold": [],
            "v1 shipped constants, in-sample": [(p, predict(p, fc.CONSTANTS_V1)) for p in pts],
            "v2 constants, in-sample": [(p, predict(p, v2)) for p in pts]}
    for g in groups:
        train = [p for p in pts if group_of(p) != g]
        test = [p for p in pts if group_of(p) == g]
        c1, c2 = fit_v1_form(train), fit_all(train)
        for p in test:
            rows["v1 form, refitted per fold"].append((p, predict(p, c1)))
            rows["v2, refitted per fold"].append((p, predict(p, c2)))
    out = {}
    for name, pairs in rows.items():
        ps, qs = [a for a, _ in pairs], [b for _, b in pairs]
        s = summarize(ps, qs)
        out[name] = {k: s[k] for k in ("auroc", "median_rel_err", "coverage80", "by_branch")}
    return out


# ------------------------------------------------------------------ evaluate
def summarize(pts: list[dict], preds: list[dict]) -> dict:
    s = EV.summarize(pts, [{k: v for k, v in q.items() if k != "branch"} for q in preds])
    g = np.array([p["run"]["groks"] for p in pts])
    true = np.array([p["run"]["t_test"] for p in pts])[g]
    qs = [q for q, ok in zip(preds, g) if ok]
    by = {}
    for b in sorted({q.get("branch", "") for q in qs} - {""}):
        m = np.array([q["branch"] == b for q in qs])
        t = np.array([q["t"] for q in qs])[m]
        lo, hi = np.array([q["lo"] for q in qs])[m], np.array([q["hi"] for q in qs])[m]
        by[b] = {"n": int(m.sum()), "median_rel_err": float(np.median(np.abs(t - true[m])
                                                                      / true[m])),
                 "coverage80": float(((lo <= true[m]) & (true[m] <= hi)).mean())}
    s["by_branch"] = by
    return s


def meets(s: dict) -> int:
    a, e, c = s["auroc"], s["median_rel_err"], s["coverage80"]
    return int(a >= 0.9) + int(e <= 0.25) + int(0.7 <= c <= 0.9)


def warning(runs: list[dict], c: dict) -> dict:
    """Earliest sustained warning and false alarms (:func:`EV.warning_leads`) of the forecast
    with constants ``c``."""
    return EV.warning_leads(runs, lambda r, u: predict({"run": r, "upto": u}, c)["p"])


def figure(pts: list[dict], preds: dict[str, list[dict]], path: Path,
           set_name: str = "HELDOUT2") -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(preds), 4.8))
    axes = fig.subplots(1, len(preds), sharex=True, sharey=True)
    colors = {0.25: "tab:blue", 0.5: "tab:orange", 0.75: "tab:green"}
    for ax, (name, qs) in zip(axes, preds.items()):
        lo_all, hi_all = math.inf, 0.0
        for f in EV.FRACTIONS:
            sel = [(p, q) for p, q in zip(pts, qs) if p["fraction"] == f and p["run"]["groks"]]
            if not sel:
                continue
            true = np.array([p["run"]["t_test"] for p, _ in sel])
            pred = np.array([q["t"] for _, q in sel])
            yerr = np.array([[q["t"] - q["lo"] for _, q in sel],
                             [q["hi"] - q["t"] for _, q in sel]])
            ax.errorbar(true, pred, yerr=np.clip(yerr, 0, None), fmt="o", ms=3, lw=0.6,
                        color=colors[f], alpha=0.7, label=f"at {int(f * 100)}% of t_test")
            lo_all = min(lo_all, true.min(), pred.min())
            hi_all = max(hi_all, true.max(), pred.max())
        ax.plot([lo_all, hi_all], [lo_all, hi_all], "k--", lw=0.8, label="predicted = true")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("true t_test (steps)")
        ax.set_ylabel("predicted t_test (steps, 80% interval)")
        ax.set_title(f"{name} on {set_name}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def branch_rows(results: dict) -> str:
    rows = ["| version | at | branch | points | median rel. err t_test | 80% coverage |",
            "|---|---|---|---|---|---|"]
    for name in ("gs.forecast v2", "gs.forecast v1"):
        for f, s in results[name].items():
            for b, x in s["by_branch"].items():
                rows.append(f"| {name} | {f} | {b} | {x['n']} | "
                            f"{100 * x['median_rel_err']:.0f}% | {100 * x['coverage80']:.0f}% |")
    return "\n".join(rows)


def readme_block(results: dict, doc: dict, fitted: dict) -> str:
    s2, s1 = results["gs.forecast v2"]["50%"], results["gs.forecast v1"]["50%"]
    cv = fitted["cv"]
    cv_rows = "\n".join(
        f"| {k} | {v['auroc']:.2f} | {100 * v['median_rel_err']:.0f}% | "
        f"{100 * v['coverage80']:.0f}% |" for k, v in cv.items())
    w1, w2 = doc["warning"]["v1"], doc["warning"]["v2"]
    return f"""<!-- forecast-v2: generated by analyses/10_forecast_v2.py -->
## Forecast v2 on a fresh held-out set (HELDOUT2)

v2 was fitted on the FIT runs only, at dense forecast points (15-85% of `t_test`), and frozen
before the {doc['n_heldout2_runs']} HELDOUT2 runs ({doc['n_heldout2_grok']} grokking,
{doc['n_heldout2_runs'] - doc['n_heldout2_grok']} never within the {RUNS.CAP}-step cap; seeds 20-23,
configurations in neither earlier set, `analyses/07_forecast_runs.py`) were looked at. What
changed from v1: the fallback `FALLBACK_RATIO * upto` (which encoded forecasting at 25% of
`t_test`) is replaced by an *early* branch `upto * exp(a + b * test_acc)`, each branch has its
own 80% interval, `p_grok` also reads the embedding's Fourier sparsity on modular tasks
(`gini_embed_rel`), and `horizon` defaults to the step budget that `gs.train` now records.

Decision rule (fixed before HELDOUT2 was evaluated): {DECISION}.
**Outcome: v2 meets {meets(s2)} of 3 targets at 50%, v1 meets {meets(s1)}: {doc['default']} is
the default.**

Table (every row on **HELDOUT2**; the v1 table further down is on the first held-out set):

{EV.table(results)}

By branch (grokking runs):

{branch_rows(results)}

Earliest sustained warning (median over grokking runs; share of never-generalising runs with
`p_grok >= 0.5` at some stored step / at their last step): v2 {w2['median_lead_steps']:.0f}
steps ({100 * w2['median_lead_fraction']:.0f}% of `t_test`), {100 * w2['never_runs_ever_alarmed']:.0f}% /
{100 * w2['never_runs_alarmed_at_last_step']:.0f}%; v1 {w1['median_lead_steps']:.0f} steps
({100 * w1['median_lead_fraction']:.0f}%), {100 * w1['never_runs_ever_alarmed']:.0f}% /
{100 * w1['never_runs_alarmed_at_last_step']:.0f}%.

Targets at 50% on HELDOUT2, v2:

{EV.targets_text(s2)}

v1:

{EV.targets_text(s1)}

On the FIT runs' dense points (15-85% of `t_test`; {fitted['n_fit_points']} points), leave one
configuration out (both seeds together) vs in-sample:

| model | AUROC p_grok | median rel. err t_test | 80% coverage |
|---|---|---|---|
{cv_rows}

![v1 and v2: predicted vs true t_test on HELDOUT2](pred_vs_true_v2.png)
<!-- /forecast-v2 -->
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="/tmp/gs/forecast_runs")
    ap.add_argument("--runs2", default="/tmp/gs/forecast_runs2")
    ap.add_argument("--fit", action="store_true", help="fit v2 on the FIT runs")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    fit_runs = EV.load(Path(args.runs), "fit")
    if args.fit:
        pts = dense_points(fit_runs)
        c = fit_all(pts)
        doc = {"constants": c, "n_fit_points": len(pts),
               "n_fit_grok_points": sum(p["run"]["groks"] for p in pts),
               "n_fit_runs": len(fit_runs), "fractions": DENSE, "decision": DECISION,
               "cv": cross_validate(pts, c)}
        (OUT / "constants_v2.json").write_text(json.dumps(doc, indent=1, default=float))
        print(json.dumps(doc, default=float, indent=1))
        return 0
    fitted = json.loads((OUT / "constants_v2.json").read_text())
    for k, v in fitted["constants"].items():
        have = fc.CONSTANTS_V2[k]
        if not np.allclose(np.asarray(have, float), np.asarray(v, float), rtol=1e-5, atol=1e-6):
            raise SystemExit(f"grokscope.forecast.CONSTANTS_V2[{k!r}] = {have} but the fit gave "
                             f"{v}: paste reports/forecast/constants_v2.json's constants")
    held = EV.load(Path(args.runs2), "heldout2")
    if len(held) < len(RUNS.runs("heldout2")):
        raise SystemExit(f"only {len(held)} of {len(RUNS.runs('heldout2'))} HELDOUT2 runs are "
                         "finished: train them first (analyses/07_forecast_runs.py)")
    pts = EV.points(held)
    v1_fit = json.loads((OUT / "constants.json").read_text())
    tau, side = v1_fit["norm_tau"], v1_fit["norm_side"]
    for p in pts:
        p["sig"] = signals(p, fc.CONSTANTS_V1)  # the baselines read v1's signals
    methods = {
        "gs.forecast v2": lambda p: predict(p, fc.CONSTANTS_V2),
        "gs.forecast v1": lambda p: predict(p, fc.CONSTANTS_V1),
        "baseline: test-accuracy extrapolation": EV.acc_baseline,
        "baseline: weight-norm threshold": lambda p: EV.norm_baseline(p, tau, side),
    }
    results, all_preds = EV.score_methods(pts, methods, summarize)
    n2 = meets(results["gs.forecast v2"]["50%"])
    n1 = meets(results["gs.forecast v1"]["50%"])
    doc = {
        "decision": DECISION, "targets_met_50": {"v2": n2, "v1": n1},
        "default": "v2" if n2 >= n1 else "v1",
        "results": results,
        "warning": {"v2": warning(held, fc.CONSTANTS_V2), "v1": warning(held, fc.CONSTANTS_V1)},
        "n_heldout2_runs": len(held), "n_heldout2_grok": sum(r["groks"] for r in held),
        "heldout2_runs": [{"name": r["name"], "t_test": r["t_test"], "t_train": r["t_train"],
                           "last_step": r["last_step"]} for r in held],
    }
    figure(pts, {"v2": all_preds["gs.forecast v2"], "v1": all_preds["gs.forecast v1"]},
           OUT / "pred_vs_true_v2.png")
    (OUT / "results_v2.json").write_text(json.dumps(doc, indent=1, default=float))
    (OUT / "table_v2.md").write_text("All rows on HELDOUT2 (seeds 20-23).\n\n"
                                     + EV.table(results) + "\n\n" + branch_rows(results) + "\n")
    readme = (OUT / "README.md").read_text()
    block = readme_block(results, doc, fitted)
    if "<!-- forecast-v2" in readme:
        head, rest = readme.split("<!-- forecast-v2", 1)
        readme = head + block + rest.split("<!-- /forecast-v2 -->\n", 1)[1]
    else:
        title, rest = readme.split("\n", 1)
        readme = title + "\n\n" + block + rest
    (OUT / "README.md").write_text(readme)
    print(EV.table(results))
    print(branch_rows(results))
    print("warning:", doc["warning"], "default:", doc["default"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
