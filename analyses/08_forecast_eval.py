"""Fit the forecaster's constants on the FIT runs and evaluate it on the HELD-OUT runs.

The runs come from ``analyses/07_forecast_runs.py`` (train them first). Each run is forecast
at the last stored step at or before 25%, 50% and 75% of its true ``t_test`` (first stored
step with test accuracy >= 0.9); a run that never reaches 0.9 within the step cap is forecast
at the same fractions of the median ``t_test`` of the grokking runs of its task family in the
same set. A point is used only if the threshold has not yet been seen there.

``--fit`` fits :data:`grokscope.forecast.CONSTANTS` on the FIT runs (never on the held-out
ones) and writes them to ``reports/forecast/constants.json``; paste them into
``grokscope/forecast.py``. Without ``--fit`` the script checks that the module's constants
are the fitted ones, then evaluates the module on the HELD-OUT runs and on the two baselines
and writes ``reports/forecast/table.md``, ``results.json`` and ``pred_vs_true.png``.

Usage::

    python analyses/08_forecast_eval.py --fit      # fit on the FIT runs
    python analyses/08_forecast_eval.py            # evaluate on the HELD-OUT runs
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

import grokscope as gs

#: the module (``grokscope.forecast`` is the function)
fc = importlib.import_module("grokscope.forecast")
HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "reports" / "forecast"
FRACTIONS = (0.25, 0.5, 0.75)
THRESHOLD = 0.9


def _runs_module() -> Any:
    spec = importlib.util.spec_from_file_location("forecast_runs", HERE / "07_forecast_runs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


RUNS = _runs_module()


def family(name: str) -> str:
    """``mod31`` / ``par20`` / ``dig`` / ``tr31`` ... from ``fit/mod31_f50_wd1_s0``."""
    return name.split("/")[-1].split("_")[0]


def load(root: Path, which: str) -> list[dict]:
    """Every finished run of one set with its full series and true ``t_test``."""
    out = []
    for name, cfg, seed in RUNS.runs(which):
        path = root / name
        if not (path / "finished.json").exists():
            continue
        run = gs.open_run(path)
        series = fc._series(run, None)
        t_test = fc._first_reach(series["steps"], series["test_acc"], THRESHOLD)
        t_train = fc._first_reach(series["steps"], series["train_acc"], THRESHOLD)
        out.append({"name": name, "path": str(path), "family": family(name), "seed": seed,
                    "series": series, "t_test": t_test, "t_train": t_train,
                    "groks": bool(np.isfinite(t_test)), "config": cfg,
                    "last_step": int(series["steps"][-1])})
    return out


def cut(series: dict, u: int) -> dict:
    keep = series["steps"] <= u
    return {k: (v[keep] if isinstance(v, np.ndarray) else v) for k, v in series.items()}


def points(runs: list[dict]) -> list[dict]:
    """The forecast points (run, fraction, upto) of a set, with their signals."""
    ref: dict[str, float] = {}
    for fam in {r["family"] for r in runs}:
        ts = [r["t_test"] for r in runs if r["family"] == fam and r["groks"]]
        ref[fam] = float(np.median(ts)) if ts else math.nan
    all_ts = [r["t_test"] for r in runs if r["groks"]]
    pts = []
    for r in runs:
        t_ref = r["t_test"] if r["groks"] else ref[r["family"]]
        if not np.isfinite(t_ref):
            t_ref = float(np.median(all_ts))
        for f in FRACTIONS:
            steps = r["series"]["steps"]
            ok = steps[(steps <= f * t_ref) & (steps >= 1)]
            if not len(ok):
                continue
            u = int(ok[-1])
            s = cut(r["series"], u)
            if np.isfinite(fc._first_reach(s["steps"], s["test_acc"], THRESHOLD)):
                continue
            sig = fc.forecast_signals(s, THRESHOLD)
            pts.append({"run": r, "fraction": f, "upto": u, "sig": sig})
    return pts


# ------------------------------------------------------------------ the forecaster and baselines
def model_predict(p: dict) -> dict:
    t, branch = fc.predict_time(p["sig"])
    q = fc.CONSTANTS["Q_TREND"] if branch == "trend" else fc.CONSTANTS["Q_FALLBACK"]
    u = p["upto"]
    return {"p": fc.p_grok_of(fc.logit_features(p["sig"], t, RUNS.CAP)), "t": t,
            "lo": max(u, q[0] * t), "hi": max(u, q[1] * t), "branch": branch}


def acc_baseline(p: dict) -> dict:
    """Extrapolate test accuracy linearly to the threshold."""
    t = p["sig"]["t_acc_cross"]
    score = -math.log(t) if np.isfinite(t) else -math.inf
    return {"p": score, "t": t if np.isfinite(t) else math.inf, "lo": math.nan, "hi": math.nan}


def norm_baseline(p: dict, tau: float) -> dict:
    """Weight-norm threshold: groks when the norm is below ``tau`` x its step-0 value."""
    return {"p": -p["sig"]["norm_ratio"], "t": math.nan, "lo": math.nan, "hi": math.nan,
            "call": p["sig"]["norm_ratio"] < tau}


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN with one class only."""
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return math.nan
    gt = (pos[:, None] > neg[None, :]).sum()
    eq = (pos[:, None] == neg[None, :]).sum()
    return float((gt + 0.5 * eq) / (len(pos) * len(neg)))


def summarize(pts: list[dict], preds: list[dict]) -> dict:
    labels = np.array([p["run"]["groks"] for p in pts])
    scores = np.array([q["p"] for q in preds], dtype=np.float64)
    g = labels
    true = np.array([p["run"]["t_test"] for p in pts])[g]
    pred = np.array([q["t"] for q in preds], dtype=np.float64)[g]
    rel = np.abs(pred - true) / true
    rel = np.where(np.isfinite(rel), rel, math.inf)
    lo = np.array([q["lo"] for q in preds], dtype=np.float64)[g]
    hi = np.array([q["hi"] for q in preds], dtype=np.float64)[g]
    cover = (lo <= true) & (true <= hi)
    has_int = np.isfinite(lo).any()
    called = scores[g] >= 0.5 if np.nanmax(np.abs(scores)) <= 1 else np.isfinite(pred)
    lead = (true - np.array([p["upto"] for p in pts])[g])[called]
    return {
        "n_points": int(len(pts)), "n_grok": int(g.sum()), "n_never": int((~g).sum()),
        "auroc": auroc(labels, scores),
        "median_rel_err": float(np.median(rel)) if len(rel) else math.nan,
        "coverage80": float(cover.mean()) if has_int and len(cover) else math.nan,
        "median_lead": float(np.median(lead)) if len(lead) else math.nan,
        "frac_called": float(called.mean()) if len(called) else math.nan,
    }


# ------------------------------------------------------------------ fit
def fit(pts: list[dict]) -> dict:
    """The constants, from the FIT set's points only."""
    from sklearn.linear_model import LogisticRegression

    saved = dict(fc.CONSTANTS)
    grok = [p for p in pts if p["run"]["groks"]]
    best = None
    for crit in (0.02, 0.03, 0.05, 0.07, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3):
        fc.CONSTANTS["LOSS_CRIT"] = crit
        sigs = [fc.forecast_signals(cut(p["run"]["series"], p["upto"]), THRESHOLD)
                for p in grok]
        for gain in np.round(np.arange(0.5, 2.01, 0.05), 2):
            fc.CONSTANTS["LOSS_GAIN"] = float(gain)
            errs = []
            for p, s in zip(grok, sigs):
                t, br = fc.predict_time(s)
                if br == "trend":
                    errs.append(abs(math.log(t / p["run"]["t_test"])))
            if len(errs) < 5:
                continue
            score = float(np.median(errs))
            if best is None or score < best[0]:
                best = (score, crit, float(gain))
    fc.CONSTANTS.update(LOSS_CRIT=best[1], LOSS_GAIN=best[2])
    for p in pts:
        p["sig"] = fc.forecast_signals(cut(p["run"]["series"], p["upto"]), THRESHOLD)
    fb = [p["run"]["t_test"] / p["upto"] for p in grok
          if not np.isfinite(p["sig"]["t_loss_cross"])]
    fc.CONSTANTS["FALLBACK_RATIO"] = float(np.median(fb)) if fb else saved["FALLBACK_RATIO"]
    q_tr, q_fb = [], []
    for p in grok:
        t, br = fc.predict_time(p["sig"])
        (q_tr if br == "trend" else q_fb).append(p["run"]["t_test"] / t)
    fc.CONSTANTS["Q_TREND"] = tuple(float(x) for x in np.quantile(q_tr, [0.1, 0.9]))
    fc.CONSTANTS["Q_FALLBACK"] = (tuple(float(x) for x in np.quantile(q_fb, [0.1, 0.9]))
                                  if len(q_fb) >= 3 else saved["Q_FALLBACK"])
    x = np.array([fc.logit_features(p["sig"], fc.predict_time(p["sig"])[0], RUNS.CAP)
                  for p in pts])
    y = np.array([p["run"]["groks"] for p in pts])
    lr = LogisticRegression(C=1.0).fit(x, y)
    fc.CONSTANTS["LOGIT_COEF"] = tuple(float(c) for c in lr.coef_[0])
    fc.CONSTANTS["LOGIT_BIAS"] = float(lr.intercept_[0])
    return {"constants": {k: v for k, v in fc.CONSTANTS.items()},
            "fit_median_abs_log_err": best[0], "n_fit_points": len(pts),
            "n_fit_runs": len({p["run"]["name"] for p in pts})}


def fit_norm_tau(pts: list[dict]) -> float:
    """The weight-norm baseline's threshold: the best accuracy on the FIT points."""
    r = np.array([p["sig"]["norm_ratio"] for p in pts])
    y = np.array([p["run"]["groks"] for p in pts])
    cands = np.unique(r[np.isfinite(r)])
    accs = [((r < c) == y).mean() for c in cands]
    return float(cands[int(np.argmax(accs))])


def signal_aurocs(pts: list[dict]) -> dict[str, float]:
    """Univariate AUROC of each signal for 'groks', oriented (max(a, 1 - a)), NaN -> median."""
    y = np.array([p["run"]["groks"] for p in pts])
    out = {}
    for k in pts[0]["sig"]:
        v = np.array([p["sig"][k] for p in pts], dtype=np.float64)
        if not np.isfinite(v).any():
            continue
        v = np.where(np.isfinite(v), v, np.nanmedian(v))
        a = auroc(y, v)
        out[k] = round(max(a, 1 - a), 3)
    return out


# ------------------------------------------------------------------ report
def figure(pts: list[dict], preds: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    colors = {0.25: "tab:blue", 0.5: "tab:orange", 0.75: "tab:green"}
    lo_all, hi_all = math.inf, 0
    for f in FRACTIONS:
        sel = [(p, q) for p, q in zip(pts, preds) if p["fraction"] == f and p["run"]["groks"]]
        if not sel:
            continue
        true = np.array([p["run"]["t_test"] for p, _ in sel])
        pred = np.array([q["t"] for _, q in sel])
        yerr = np.array([[q["t"] - q["lo"] for _, q in sel], [q["hi"] - q["t"] for _, q in sel]])
        ax.errorbar(true, pred, yerr=np.clip(yerr, 0, None), fmt="o", ms=3, lw=0.6,
                    color=colors[f], alpha=0.7, label=f"forecast at {int(f * 100)}% of t_test")
        lo_all, hi_all = min(lo_all, true.min(), pred.min()), max(hi_all, true.max(), pred.max())
    ax.plot([lo_all, hi_all], [lo_all, hi_all], "k--", lw=0.8, label="predicted = true")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("true t_test (steps)")
    ax.set_ylabel("predicted t_test (steps, 80% interval)")
    ax.set_title("gs.forecast on the held-out runs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(results: dict) -> str:
    rows = ["| method | at | points (grok / never) | AUROC p_grok | median rel. err t_test | "
            "80% coverage | median lead (steps) | grokking runs flagged |",
            "|---|---|---|---|---|---|---|---|"]
    for method, by_f in results.items():
        for f, s in by_f.items():
            def fmt(x: float, pct: bool = False) -> str:
                if x is None or not np.isfinite(x):
                    return "inf" if x == math.inf else "n/a"
                return f"{100 * x:.0f}%" if pct else f"{x:.2f}"
            rows.append(
                f"| {method} | {f} | {s['n_points']} ({s['n_grok']} / {s['n_never']}) | "
                f"{fmt(s['auroc'])} | {fmt(s['median_rel_err'], True)} | "
                f"{fmt(s['coverage80'], True)} | "
                f"{'n/a' if not np.isfinite(s['median_lead']) else int(s['median_lead'])} | "
                f"{fmt(s['frac_called'], True)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="/tmp/gs/forecast_runs")
    ap.add_argument("--fit", action="store_true", help="fit the constants on the FIT runs")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(args.runs)
    OUT.mkdir(parents=True, exist_ok=True)
    fit_runs = load(root, "fit")
    fit_pts = points(fit_runs)
    if args.fit:
        doc = fit(fit_pts)
        doc["norm_tau"] = fit_norm_tau(fit_pts)
        doc["signal_auroc_fit"] = signal_aurocs(fit_pts)
        doc["fit_runs"] = [{"name": r["name"], "t_test": r["t_test"], "t_train": r["t_train"]}
                           for r in fit_runs]
        (OUT / "constants.json").write_text(json.dumps(doc, indent=1))
        print(json.dumps(doc["constants"]))
        return 0
    fitted = json.loads((OUT / "constants.json").read_text())
    for k, v in fitted["constants"].items():
        have = fc.CONSTANTS[k]
        if not np.allclose(np.asarray(have, float), np.asarray(v, float), rtol=1e-6):
            raise SystemExit(f"grokscope.forecast.CONSTANTS[{k!r}] = {have} but the fit gave "
                             f"{v}: paste reports/forecast/constants.json's constants")
    held = load(root, "heldout")
    pts = points(held)
    # the evaluation reads the signals the way gs.forecast does: check on a few points
    for p in pts[:: max(1, len(pts) // 8)]:
        ds = gs.forecast(p["run"]["path"], upto=p["upto"], horizon=RUNS.CAP)
        q = model_predict(p)
        assert abs(float(ds.p_grok) - q["p"]) < 1e-9 and float(ds.t_test_pred) == q["t"], p
    tau = fitted["norm_tau"]
    methods = {"gs.forecast": model_predict, "baseline: test-accuracy extrapolation":
               acc_baseline, "baseline: weight-norm threshold": lambda p: norm_baseline(p, tau)}
    results: dict[str, dict] = {}
    all_preds: dict[str, list] = {}
    for name, fn in methods.items():
        preds = [fn(p) for p in pts]
        all_preds[name] = preds
        results[name] = {}
        for f in FRACTIONS:
            sel = [i for i, p in enumerate(pts) if p["fraction"] == f]
            s = summarize([pts[i] for i in sel], [preds[i] for i in sel])
            if name.startswith("baseline: weight"):
                calls = np.array([preds[i]["call"] for i in sel])
                y = np.array([pts[i]["run"]["groks"] for i in sel])
                s["frac_called"] = float(calls[y].mean()) if y.any() else math.nan
                lead = np.array([pts[i]["run"]["t_test"] - pts[i]["upto"] for i in sel])[y]
                s["median_lead"] = float(np.median(lead[calls[y]])) if calls[y].any() \
                    else math.nan
            results[name][f"{int(f * 100)}%"] = s
    figure(pts, all_preds["gs.forecast"], OUT / "pred_vs_true.png")
    doc = {
        "results": results,
        "signal_auroc_heldout": signal_aurocs(pts),
        "heldout_runs": [{"name": r["name"], "t_test": r["t_test"], "t_train": r["t_train"],
                          "last_step": r["last_step"]} for r in held],
        "n_heldout_runs": len(held), "n_fit_runs": len(fit_runs),
    }
    (OUT / "results.json").write_text(json.dumps(doc, indent=1, default=float))
    (OUT / "table.md").write_text(table(results) + "\n")
    print(table(results))
    print("signal AUROC (held-out):", doc["signal_auroc_heldout"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
