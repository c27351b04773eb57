"""Forecast v3: fit on FIT + HELDOUT + HELDOUT2, judge v3, v2 and v1 on the untouched HELDOUT3.

The runs come from ``analyses/07_forecast_runs.py``: FIT and HELDOUT in ``--runs`` (default
/tmp/gs/forecast_runs), HELDOUT2 in ``--runs2`` (/tmp/gs/forecast_runs2), HELDOUT3 in ``--runs3``
(/tmp/gs/forecast_runs3). By the time v3 was designed every run of the first three sets had
been looked at, so together they are v3's fit pool (157 runs); HELDOUT3 (66 runs, seeds 30-33,
cells in no other list) was defined and trained before v3 was designed, and is used only here,
once v3's constants are frozen in ``grokscope/forecast.py``.

What v3 changes (``docs/forecast.md``):

* ``p_grok = P(generalises) * P(t_test <= horizon)``. The first factor is a logistic model of
  four curve signals, ``test_acc``, ``acc_trend``, ``loss_rel_peak`` and ``loss_trend`` (chosen
  by leave-one-configuration-out cross-validation over the pool among the candidate sets in
  :data:`CANDIDATES`; the Fourier sparsity that v2 added, the weight norm and the step itself
  lowered the cross-validated AUROC). The second is the log-normal chance, from the branch's
  80% interval, that the predicted crossing falls before ``horizon``, so a short horizon lowers
  ``p_grok`` by exactly that (v1 and v2 had ``log(t_pred / horizon)`` inside one logistic fitted
  at one 4,000-step horizon).
* The time branches keep v2's form; ``EARLY_COEF`` and the intervals are refitted on the pool.

``--fit``: fits on the pool's dense points (15, 25, ..., 85% of ``t_test``), cross-validates
(leave one configuration out, both/all seeds together) v2's form and v3's, and the candidate
input sets, and writes ``reports/forecast/constants_v3.json``; paste its constants into
``grokscope/forecast.py``.

Without ``--fit``: checks the module's constants are the fitted ones, then evaluates v3
(``gs.forecast``), v2, v1 and the two baselines on HELDOUT3 at 25/50/75% of ``t_test``, also
``p_grok`` at shorter horizons (label: ``t_test <= horizon``), and writes
``reports/forecast/table_v3.md``, ``results_v3.json``, ``pred_vs_true_v3.png`` and the v3 block
of ``reports/forecast/README.md``.

Decision rule, fixed before HELDOUT3 was looked at (:data:`DECISION`).

Usage::

    python analyses/12_forecast_v3.py --fit   # fit on the pool
    python analyses/12_forecast_v3.py         # judge v1, v2 and v3 on HELDOUT3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

import grokscope as gs

HERE = Path(__file__).resolve().parent
DECISION = ("v3 stays the default if, on HELDOUT3 at 50% of t_test, it meets at least as many of "
            "the three targets (AUROC >= 0.9, median rel. err <= 25%, 80% coverage in "
            "[70%, 90%]) as the better of v1 and v2 (a tie goes to v3, whose p_grok follows the "
            "horizon); otherwise the better of v1 and v2 becomes the default")
POOL = (("fit", "runs"), ("heldout", "runs"), ("heldout2", "runs2"))
#: candidate inputs of P(generalises), compared by leave-one-configuration-out CV on the pool
CANDIDATES: dict[str, tuple[str, ...]] = {
    "accuracy: test_acc, acc_trend": ("test_acc", "acc_trend"),
    "v3: accuracy + test loss (loss_rel_peak, loss_trend)":
        ("test_acc", "acc_trend", "loss_rel_peak", "loss_trend"),
    "v3 + train_acc": ("test_acc", "acc_trend", "loss_rel_peak", "loss_trend", "train_acc"),
    "v3 + gini_embed_rel (Fourier sparsity)":
        ("test_acc", "acc_trend", "loss_rel_peak", "loss_trend", "gini_embed_rel"),
    "v3 + norm_trend": ("test_acc", "acc_trend", "loss_rel_peak", "loss_trend", "norm_trend"),
    "v3 + norm_ratio": ("test_acc", "acc_trend", "loss_rel_peak", "loss_trend", "norm_ratio"),
    "v3 + train_loss_roughness": ("test_acc", "acc_trend", "loss_rel_peak", "loss_trend",
                                  "train_loss_roughness"),
}
SHORT_HORIZONS = (1000, 2000)


def _load_module(name: str, file: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, HERE / file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


V2 = _load_module("forecast_v2", "10_forecast_v2.py")
EV, fc, RUNS, OUT = V2.EV, V2.fc, V2.RUNS, V2.OUT
VERSIONS = {"gs.forecast v3": "v3", "gs.forecast v2": "v2", "gs.forecast v1": "v1"}
_SIGNALS: dict[tuple, dict] = {}
_uncached_signals = V2.signals


def _cached_signals(p: dict, constants: dict) -> dict:
    """:func:`V2.signals`, memoised: a point's signals depend only on its run, its step and
    the two trend constants (the cross-validation asks for them thousands of times)."""
    key = (p["run"]["name"], p["upto"], constants["LOSS_CRIT"], constants["TREND_MIN"])
    if key not in _SIGNALS:
        _SIGNALS[key] = _uncached_signals(p, constants)
    return _SIGNALS[key]


V2.signals = _cached_signals  # V2.fit_time / V2.predict look it up at call time


def constants_of(version: str) -> dict:
    return {"v3": fc.CONSTANTS, "v2": fc.CONSTANTS_V2, "v1": fc.CONSTANTS_V1}[version]


def load_pool(args: argparse.Namespace) -> list[dict]:
    """The FIT, HELDOUT and HELDOUT2 runs (``--cache``: a pickle of them, made on first use)."""
    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.exists():
        with cache.open("rb") as f:
            pool = pickle.load(f)
    else:
        pool = {which: EV.load(Path(getattr(args, root)), which) for which, root in POOL}
        if cache is not None:
            with cache.open("wb") as f:
                pickle.dump(pool, f)
    return [r for which, _ in POOL for r in pool[which]]


# ------------------------------------------------------------------ fit
def _pg_matrix(pts: list[dict], c: dict, inputs: tuple[str, ...]) -> np.ndarray:
    sig = [V2.signals(p, c) for p in pts]
    x = np.array([[s.get(k, math.nan) for k in inputs] for s in sig], dtype=np.float64)
    return np.nan_to_num(np.clip(x, -20, 20), nan=0.0)


def fit_pg(pts: list[dict], c: dict, inputs: tuple[str, ...] | None = None) -> dict:
    """``PG_COEF`` / ``PG_BIAS`` (on the raw signals): a logistic regression (C = 1) on the
    standardised inputs, of 'groks within the step cap', over every point ``pts``."""
    from sklearn.linear_model import LogisticRegression

    inputs = tuple(c["PG_INPUTS"] if inputs is None else inputs)
    x = _pg_matrix(pts, c, inputs)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    y = np.array([p["run"]["groks"] for p in pts])
    lr = LogisticRegression(C=1.0, max_iter=5000).fit((x - mean) / scale, y)
    coef = lr.coef_[0] / scale
    bias = float(lr.intercept_[0] - np.dot(coef, mean))
    return {**c, "PG_INPUTS": inputs, "PG_COEF": tuple(round(float(v), 6) for v in coef),
            "PG_BIAS": round(bias, 6)}


def fit_v3(pts: list[dict], inputs: tuple[str, ...] | None = None) -> dict:
    c = {"VERSION": 3,
         **{k: fc.CONSTANTS_V1[k] for k in ("LOSS_CRIT", "LOSS_GAIN", "TREND_MIN")},
         "EARLY_COEF": (0.0, 0.0), "Q_TREND": (1.0, 1.0), "Q_EARLY": (1.0, 1.0),
         "PG_INPUTS": tuple(fc.CONSTANTS["PG_INPUTS"] if inputs is None else inputs),
         "PG_COEF": (0.0,) * 4, "PG_BIAS": 0.0}
    c = V2.fit_time([p for p in pts if p["run"]["groks"]], c)
    c = {k: (tuple(round(x, 6) for x in v) if isinstance(v, tuple) and k != "PG_INPUTS" else v)
         for k, v in c.items()}
    return fit_pg(pts, c)


def cross_validate(pts: list[dict], half: list[dict]) -> dict:
    """Leave one configuration out: v2's form and v3 refitted on the other configurations'
    dense points, scored on the held-out configuration's dense points and its 50% points;
    and each candidate input set of P(generalises), scored by AUROC at 50%."""
    groups = sorted({V2.group_of(p) for p in pts})
    models = {"v2 form, refitted per fold": V2.fit_all, "v3, refitted per fold": fit_v3}
    models.update({f"P(generalises) on {k}": (lambda ps, ins=ins: fit_v3(ps, ins))
                   for k, ins in CANDIDATES.items()})
    scored: dict[str, dict[str, list]] = {m: {"dense": [], "50%": []} for m in models}
    for g in groups:
        train = [p for p in pts if V2.group_of(p) != g]
        test = {"dense": [p for p in pts if V2.group_of(p) == g],
                "50%": [p for p in half if V2.group_of(p) == g]}
        for name, fit in models.items():
            c = fit(train)
            for where, ps in test.items():
                scored[name][where] += [(p, V2.predict(p, c)) for p in ps]
    out = {}
    for name, by in scored.items():
        out[name] = {}
        for where, pairs in by.items():
            s = V2.summarize([a for a, _ in pairs], [b for _, b in pairs])
            out[name][where] = {k: s[k] for k in ("auroc", "median_rel_err", "coverage80",
                                                  "n_points", "n_grok")}
    return out


# ------------------------------------------------------------------ evaluate
def horizon_rows(pts: list[dict]) -> dict:
    """AUROC of each version's ``p_grok(horizon=H)`` for 'reaches the threshold by H'."""
    out = {}
    for h in SHORT_HORIZONS:
        sel = [p for p in pts if p["fraction"] == 0.5 and p["upto"] < h]
        y = np.array([p["run"]["groks"] and p["run"]["t_test"] <= h for p in sel])
        out[str(h)] = {"n_points": len(sel), "n_positive": int(y.sum())}
        for name, v in VERSIONS.items():
            scores = np.array([V2.predict(p, constants_of(v), horizon=h)["p"] for p in sel])
            out[str(h)][name] = EV.auroc(y, scores)
    return out


def horizon_table(rows: dict) -> str:
    head = "| horizon | points (reach by it / not) | " + " | ".join(
        f"AUROC {n}" for n in VERSIONS) + " |"
    lines = [head, "|" + "---|" * (2 + len(VERSIONS))]
    for h, r in rows.items():
        lines.append(f"| {h} | {r['n_points']} ({r['n_positive']} / "
                     f"{r['n_points'] - r['n_positive']}) | "
                     + " | ".join(f"{r[n]:.2f}" for n in VERSIONS) + " |")
    return "\n".join(lines)


def cv_table(cv: dict) -> str:
    lines = ["| model (refitted per fold) | AUROC at 50% | AUROC dense | median rel. err at 50% "
             "| 80% coverage at 50% |", "|---|---|---|---|---|"]
    for name, r in cv.items():
        a, d = r["50%"], r["dense"]
        lines.append(f"| {name} | {a['auroc']:.3f} | {d['auroc']:.3f} | "
                     f"{100 * a['median_rel_err']:.0f}% | {100 * a['coverage80']:.0f}% |")
    return "\n".join(lines)


def branch_rows(results: dict) -> str:
    rows = ["| version | at | branch | points | median rel. err t_test | 80% coverage |",
            "|---|---|---|---|---|---|"]
    for name in VERSIONS:
        for f, s in results[name].items():
            for b, x in s["by_branch"].items():
                rows.append(f"| {name} | {f} | {b} | {x['n']} | "
                            f"{100 * x['median_rel_err']:.0f}% | {100 * x['coverage80']:.0f}% |")
    return "\n".join(rows)


def readme_block(results: dict, doc: dict, fitted: dict) -> str:
    s = {v: results[name]["50%"] for name, v in VERSIONS.items()}
    w = doc["warning"]
    warn = "; ".join(
        f"{v} {w[v]['median_lead_steps']:.0f} steps ({100 * w[v]['median_lead_fraction']:.0f}% "
        f"of `t_test`), {100 * w[v]['never_runs_ever_alarmed']:.0f}% / "
        f"{100 * w[v]['never_runs_alarmed_at_last_step']:.0f}%" for v in ("v3", "v2", "v1"))
    targets = "\n\n".join(f"{v}:\n\n{EV.targets_text(s[v])}" for v in ("v3", "v2", "v1"))
    return f"""<!-- forecast-v3: generated by analyses/12_forecast_v3.py -->
## Forecast v3 on a third, untouched held-out set (HELDOUT3)

v3 was fitted on the {fitted['n_pool_runs']} runs of FIT, HELDOUT and HELDOUT2 (all of them seen
by then) at dense forecast points ({fitted['n_fit_points']} points at 15-85% of `t_test`), and
frozen before the {doc['n_runs']} HELDOUT3 runs ({doc['n_grok']} grokking,
{doc['n_runs'] - doc['n_grok']} never within the {RUNS.CAP}-step cap; seeds 30-33, cells in no
other list, among them a multiplication table, p = 47 and two new transformers) were
evaluated. HELDOUT3 was defined and trained before v3 was designed. What changed from v2:
`p_grok = P(generalises) * P(t_test <= horizon)`, with `P(generalises)` a logistic model of
`test_acc`, `acc_trend`, `loss_rel_peak` and `loss_trend` only, and the time constants refitted
on the pool.

Decision rule (fixed before HELDOUT3 was evaluated): {DECISION}.
**Outcome: at 50%, v3 meets {V2.meets(s['v3'])} of 3 targets, v2 {V2.meets(s['v2'])}, v1
{V2.meets(s['v1'])}: {doc['default']} is the default.**

Table (every row on **HELDOUT3**):

{EV.table(results)}

By branch (grokking runs):

{branch_rows(results)}

`p_grok` at a shorter horizon H (forecast at 50% of `t_test`, points with `upto < H`; a
positive is a run reaching the threshold by H):

{horizon_table(doc['horizons'])}

Earliest sustained warning (median over grokking runs; share of never-generalising runs with
`p_grok >= 0.5` at some stored step / at their last step): {warn}.

Targets at 50% on HELDOUT3.

{targets}

On the pool (leave one configuration out, all its seeds together; {fitted['n_fit_points']}
dense points, {fitted['n_half_points']} points at 50%):

{cv_table(fitted['cv'])}

![v3, v2 and v1: predicted vs true t_test on HELDOUT3](pred_vs_true_v3.png)
<!-- /forecast-v3 -->
"""


def write_readme_block(block: str) -> None:
    path = OUT / "README.md"
    text = path.read_text()
    start, end = "<!-- forecast-v3:", "<!-- /forecast-v3 -->"
    if start in text:
        i, j = text.index(start), text.index(end) + len(end)
        text = text[:i] + block.rstrip("\n") + text[j:]
    elif "<!-- forecast-v2:" in text:  # the newest version first
        i = text.index("<!-- forecast-v2:")
        text = text[:i] + block + "\n" + text[i:]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def evaluate(args: argparse.Namespace) -> int:
    fitted = json.loads((OUT / "constants_v3.json").read_text())
    for k, v in fitted["constants"].items():
        have = fc.CONSTANTS[k]
        same = (have == v or tuple(have) == tuple(v)) if k == "PG_INPUTS" else np.allclose(
            np.asarray(have, float), np.asarray(v, float), rtol=1e-5, atol=1e-6)
        if not same:
            raise SystemExit(f"grokscope.forecast.CONSTANTS[{k!r}] = {have} but the fit gave {v}:"
                             " paste reports/forecast/constants_v3.json's constants")
    held = EV.load(Path(args.runs3), "heldout3")
    if len(held) < len(RUNS.runs("heldout3")):
        raise SystemExit(f"only {len(held)} of {len(RUNS.runs('heldout3'))} HELDOUT3 runs are "
                         "finished: train them first (analyses/07_forecast_runs.py)")
    pts = EV.points(held)
    for p in pts[:: max(1, len(pts) // 8)]:  # the evaluation reads what gs.forecast reads
        ds = gs.forecast(p["run"]["path"], upto=p["upto"], horizon=RUNS.CAP)
        q = V2.predict(p, fc.CONSTANTS)
        assert abs(float(ds.p_grok) - q["p"]) < 1e-9 and float(ds.t_test_pred) == q["t"], p
    v1_fit = json.loads((OUT / "constants.json").read_text())
    tau, side = v1_fit["norm_tau"], v1_fit["norm_side"]
    for p in pts:
        p["sig"] = V2.signals(p, fc.CONSTANTS_V1)  # the baselines read v1's signals
    methods = {name: (lambda p, v=v: V2.predict(p, constants_of(v)))
               for name, v in VERSIONS.items()}
    methods["baseline: test-accuracy extrapolation"] = EV.acc_baseline
    methods["baseline: weight-norm threshold"] = lambda p: EV.norm_baseline(p, tau, side)
    results, all_preds = EV.score_methods(pts, methods, V2.summarize)
    met = {v: V2.meets(results[name]["50%"]) for name, v in VERSIONS.items()}
    best_old = max(met["v2"], met["v1"])
    default = "v3" if met["v3"] >= best_old else ("v2" if met["v2"] >= met["v1"] else "v1")
    doc = {
        "decision": DECISION, "targets_met_50": met, "default": default, "results": results,
        "horizons": horizon_rows(pts),
        "warning": {v: V2.warning(held, constants_of(v)) for v in ("v3", "v2", "v1")},
        "n_runs": len(held), "n_grok": sum(r["groks"] for r in held),
        "runs": [{"name": r["name"], "t_test": r["t_test"], "t_train": r["t_train"],
                  "last_step": r["last_step"]} for r in held],
    }
    (OUT / "results_v3.json").write_text(json.dumps(doc, indent=1, default=float))
    (OUT / "table_v3.md").write_text(
        "All rows on HELDOUT3 (seeds 30-33).\n\n" + EV.table(results) + "\n\n"
        + branch_rows(results) + "\n\n" + horizon_table(doc["horizons"]) + "\n")
    V2.figure(pts, {v: all_preds[name] for name, v in VERSIONS.items()},
              OUT / "pred_vs_true_v3.png", set_name="HELDOUT3")
    write_readme_block(readme_block(results, doc, fitted))
    print(json.dumps({"targets_met_50": met, "default": default,
                      **{n: results[n]["50%"] for n in results}}, default=float, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="/tmp/gs/forecast_runs")
    ap.add_argument("--runs2", default="/tmp/gs/forecast_runs2")
    ap.add_argument("--runs3", default="/tmp/gs/forecast_runs3")
    ap.add_argument("--cache", default=None, help="pickle of the pool's runs (made if absent)")
    ap.add_argument("--fit", action="store_true", help="fit v3 on FIT + HELDOUT + HELDOUT2")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if not args.fit:
        return evaluate(args)
    runs = load_pool(args)
    pts = V2.dense_points(runs)
    saved = EV.FRACTIONS
    EV.FRACTIONS = (0.5,)
    try:
        half = EV.points(runs)
    finally:
        EV.FRACTIONS = saved
    c = fit_v3(pts)
    doc = {"constants": c, "n_pool_runs": len(runs), "n_fit_points": len(pts),
           "n_fit_grok_points": sum(p["run"]["groks"] for p in pts),
           "n_half_points": len(half), "fractions": V2.DENSE, "decision": DECISION,
           "cv": cross_validate(pts, half)}
    (OUT / "constants_v3.json").write_text(json.dumps(doc, indent=1, default=float))
    print(json.dumps(doc, default=float, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
