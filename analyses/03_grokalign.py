"""GrokAlign: a Jacobian regulariser makes a network generalise sooner (Walker et al. 2025).

The paper trains a bias-free ReLU MLP (784-196-196-196-10, weights scaled x8 at init) on 1024
MNIST images with AdamW (lr 1e-3, weight decay 0.01) and cross-entropy, and finds that adding
the GrokAlign regulariser ``lambda * mean_x ||J_x||_F`` (lambda = 1e-3) reaches 85% test accuracy
7.6x sooner than weight decay alone; the *centroid alignment* ``CA(x) = <J_x^T 1, x> /
(|J_x^T 1| |x|)`` stays flat while the network memorises and rises when it generalises.

Our stand-in (CPU minutes, no download): scikit-learn's 8x8 digits (64 inputs, 512 training
images, the remaining 1285 for test), the same bias-free ReLU MLP shape (three hidden layers of
196, ``init_scale=8``), AdamW lr 1e-3, weight decay 0.01, cross-entropy, full batch; weight
decay alone vs weight decay + ``jacobian_reg`` for several lambdas (1e-4, 1e-3, 1e-2).

Digits is much easier than MNIST: 85% test accuracy comes with memorisation itself (every run
reaches it by step ~60, before the regulariser can matter), and the memorising plateau sits at
~88%. So steps to a threshold are reported for 0.85 (the paper's number) *and* for thresholds
above the plateau (0.90, 0.925, 0.95); the headline ratio is at 0.95 [ours]. A run that does not
reach a threshold within its step cap gives a lower bound on the ratio.

Everything goes through grokscope's public API: :func:`grokscope.train` (``jacobian_reg``),
:func:`grokscope.analyze` (``alignment`` with its defaults: the centroid on every training
point, as the authors evaluate training batches; the Jacobian norm and alignment on the first
256 of them; GrokAlign's PC1 on the first 64) and :func:`grokscope.plot.plot_alignment`.

Usage::

    python analyses/03_grokalign.py            # full version (CPU minutes)
    python analyses/03_grokalign.py --quick    # smoke version (< 60 s)
    python analyses/03_grokalign.py --figures-only  # redraw the figures from the stored runs
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

import grokscope as gs
from grokscope.plot import plot_alignment, save_figure
from grokscope.plot._style import legend, set_step_axis

#: Walker et al. (2025): 85% test accuracy reached 7.6x sooner with lambda = 1e-3 (CE)
PAPER = {"threshold": 0.85, "speedup_ce": 7.6, "speedup_mse": 1.7, "lambda_ce": 1e-3}
THRESHOLDS = (0.85, 0.90, 0.925, 0.95)
HEADLINE = 0.95
DPI = 120
COLORS = ("#000000", "#56B4E9", "#D55E00", "#009E73", "#CC79A7")


# ----------------------------------------------------------------------------- config
def lambdas(quick: bool) -> list[float]:
    """The regulariser strengths compared (0 = weight decay alone)."""
    return [0.0, 1e-3] if quick else [0.0, 1e-4, 1e-3, 1e-2]


def config(lam: float, quick: bool) -> dict[str, Any]:
    """The trainer arguments of one run."""
    return dict(
        task="digits",
        task_kwargs={"train_size": 256 if quick else 512, "seed": 0},
        model="mlp",
        model_kwargs={"bias": False, "depth": 3, "width": 32 if quick else 196,
                      "init_scale": 8.0},
        steps=80 if quick else 8000,
        lr=1e-3,
        weight_decay=0.01,
        optimizer="adamw",
        loss="ce",
        jacobian_reg=lam,
        seed=0,
        schedule={"log_until": 1000, "per_decade": 5 if quick else 10, "every": 100},
        eval_every=50,
        stop_when={"test_acc": HEADLINE, "patience": 500},
        num_threads=1,
        progress=False,
    )


# ----------------------------------------------------------------------------- helpers
def first_step(steps: np.ndarray, values: np.ndarray, thr: float) -> int | None:
    """First recorded step with ``values >= thr`` (None if never)."""
    hit = np.flatnonzero(np.isfinite(values) & (values >= thr))
    return int(steps[hit[0]]) if hit.size else None


def _num(x: Any) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


def run_one(lam: float, quick: bool, runs: Path) -> dict[str, Any]:
    """Train one run, analyse its alignment, summarise it."""
    cfg = config(lam, quick)
    t0 = time.perf_counter()
    run = gs.train(out=str(runs / f"lambda_{lam:g}"), overwrite=True, **cfg)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = gs.analyze(run, {"alignment": {}}, steps="log:12" if quick else "log:45",
                     progress=False, device="cpu")
    analyze_s = time.perf_counter() - t0
    return collect(lam, run, res["alignment"], cfg, train_s, analyze_s)


def collect(lam: float, run: Any, al: Any, cfg: dict[str, Any], train_s: float | None,
            analyze_s: float | None) -> dict[str, Any]:
    """The summary of one run from its metrics and its alignment result."""
    m = run.metrics
    steps = run.steps.astype(np.int64)
    te, tr = m["test_acc"].values, m["train_acc"].values
    reach = {f"{t:g}": first_step(steps, te, t) for t in THRESHOLDS}
    t_fit = first_step(steps, tr, 0.99)
    a_steps = al.step.values.astype(np.int64)
    ca = al["centroid_alignment_mean"].values

    def ca_at(step: int | None) -> float | None:
        if step is None:
            return None
        return float(ca[int(np.argmin(np.abs(a_steps - step)))])

    t_gen = reach["0.9"]
    # the memorising plateau: training set fitted, test accuracy not yet past 0.9
    plateau = (a_steps >= (t_fit if t_fit is not None else np.inf)) & (
        a_steps < (t_gen if t_gen is not None else np.inf))
    summary = {
        "lambda": lam,
        "last_step": int(steps[-1]),
        "steps_cap": cfg["steps"],
        "t_fit_train_0.99": t_fit,
        "steps_to_test_acc": reach,
        "final_test_acc": float(te[-1]),
        "max_test_acc": float(np.nanmax(te)),
        "ca_init": float(ca[0]),
        "ca_at_fit": ca_at(t_fit),
        "ca_plateau_range": ([float(ca[plateau].min()), float(ca[plateau].max())]
                             if plateau.any() else None),
        "ca_plateau_median": float(np.median(ca[plateau])) if plateau.any() else None,
        "ca_plateau_iqr": (float(np.subtract(*np.percentile(ca[plateau], [75, 25])))
                           if plateau.any() else None),
        "ca_at_0.9": ca_at(t_gen),
        "ca_at_headline": ca_at(reach[f"{HEADLINE:g}"]),
        "ca_final": float(ca[-1]),
        "jacobian_norm_init": float(al["jacobian_norm"].values[0]),
        "jacobian_norm_final": float(al["jacobian_norm"].values[-1]),
        "jacobian_alignment_init": _num(al["jacobian_alignment_mean"].values[0]),
        "jacobian_alignment_final": _num(al["jacobian_alignment_mean"].values[-1]),
        "jacobian_alignment_random": float(al.attrs["jacobian_alignment_random"]),
        "rank_one_init": _num(al["rank_one_mean"].values[0]),
        "rank_one_final": _num(al["rank_one_mean"].values[-1]),
        "pc1_init": _num(al["pc1"].values[0]),
        "pc1_final": _num(al["pc1"].values[-1]),
        "n_points": int(al["n_points"].values[-1]),
        "train_wall_s": None if train_s is None else round(train_s, 1),
        "analyze_wall_s": None if analyze_s is None else round(analyze_s, 1),
    }
    return {"summary": summary, "run": run, "alignment": al, "config": cfg}


def speedups(summaries: dict[float, dict]) -> dict[str, dict[str, str]]:
    """Per threshold and lambda, ``steps(wd only) / steps(lambda)`` as text (``>x`` bounds)."""
    base = summaries[0.0]
    out: dict[str, dict[str, str]] = {}
    for t in THRESHOLDS:
        key = f"{t:g}"
        b = base["steps_to_test_acc"][key]
        out[key] = {}
        for lam, s in summaries.items():
            if lam == 0.0:
                continue
            r = s["steps_to_test_acc"][key]
            if r is None:
                out[key][f"{lam:g}"] = "not reached" if b is not None else "neither reached"
            elif b is None:
                out[key][f"{lam:g}"] = f">{base['last_step'] / max(r, 1):.1f}x"
            else:
                out[key][f"{lam:g}"] = f"{b / max(r, 1):.1f}x"
    return out


# ----------------------------------------------------------------------------- figures
def _save(fig: Figure, out: Path, name: str) -> list[str]:
    return save_figure(fig, out, name, dpi=DPI)


def figure_accuracy(results: dict[float, dict], out: Path) -> None:
    """Test (solid) and train (dotted) accuracy of every run, thresholds and crossings marked."""
    fig = Figure(figsize=(10.0, 4.8), layout="constrained")
    ax = fig.subplots()
    for i, (lam, r) in enumerate(results.items()):
        m, steps = r["run"].metrics, r["run"].steps
        c = COLORS[i % len(COLORS)]
        name = "weight decay only" if lam == 0 else f"+ jacobian_reg λ={lam:g}"
        ax.plot(steps, m["test_acc"].values, color=c, label=f"{name}: test")
        ax.plot(steps, m["train_acc"].values, color=c, linestyle=":", linewidth=1.0)
        hit = r["summary"]["steps_to_test_acc"][f"{HEADLINE:g}"]
        if hit is not None:
            ax.plot([hit], [HEADLINE], marker="o", color=c, markersize=7, markeredgecolor="white",
                    clip_on=False)
    for t in THRESHOLDS:
        ax.axhline(t, color="#888888", linewidth=0.7, linestyle="--" if t == HEADLINE else ":")
    ax.set_ylim(0.0, 1.03)
    set_step_axis(ax, np.concatenate([r["run"].steps for r in results.values()]))
    ax.set_ylabel("accuracy (test solid, train dotted)")
    ax.set_title(f"Digits, bias-free ReLU MLP x8 init: test accuracy (dots: first step ≥ {HEADLINE})")
    ax.grid(alpha=0.3)
    legend(ax)
    _save(fig, out, "accuracy")


def figure_alignment(results: dict[float, dict], out: Path) -> None:
    """plot_alignment (two panels) of wd-only and lambda=1e-3; CA of every run overlaid."""
    show = [lam for lam in (0.0, PAPER["lambda_ce"]) if lam in results]
    fig = Figure(figsize=(6.4 * (len(show) + 1), 6.6), layout="constrained")
    subs = fig.subfigures(1, len(show) + 1)
    for sub, lam in zip(subs, show, strict=False):
        r = results[lam]
        name = "weight decay only" if lam == 0 else f"weight decay + λ={lam:g}"
        plot_alignment(r["alignment"], ax=tuple(sub.subplots(2, 1, sharex=True)),
                       marks=r["run"].metrics, title=f"Centroid alignment: {name}")
    ax = subs[-1].subplots()
    for i, (lam, r) in enumerate(results.items()):
        al = r["alignment"]
        name = "wd only" if lam == 0 else f"λ={lam:g}"
        ax.plot(al.step.values, al["centroid_alignment_mean"].values, marker=".",
                color=COLORS[i % len(COLORS)], label=name)
    set_step_axis(ax, results[show[0]]["alignment"].step.values)
    ax.axhline(0, color="#888888", linewidth=0.6)
    ax.set_ylabel(r"mean centroid alignment $\cos(J_x^\top \mathbf{1}, x)$")
    ax.set_title("Centroid alignment, all runs (every training point)")
    ax.grid(alpha=0.3)
    legend(ax)
    _save(fig, out, "alignment")


def figures_only(runs: Path, out: Path, quick: bool) -> None:
    """Redraw the figures from the stored runs and their alignment results (no training)."""
    results = {}
    for lam in lambdas(quick):
        run = gs.open_run(str(runs / f"lambda_{lam:g}"))
        results[lam] = collect(lam, run, run.results["alignment"], config(lam, quick), None,
                               None)
    figure_accuracy(results, out)
    figure_alignment(results, out)


# ----------------------------------------------------------------------------- README
def _f(v: Any, nd: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    if isinstance(v, list):
        return "[" + ", ".join(_f(x, nd) for x in v) + "]"
    return str(v)


def _ca_sentence(lam: float, s: dict[str, Any]) -> str:
    """What the centroid alignment did on the plateau and at generalisation, from the data."""
    name = "weight decay only" if lam == 0 else f"λ = {lam:g}"
    if s["ca_plateau_median"] is None:
        return f"{name}: no memorising plateau recorded."
    flat = s["ca_plateau_iqr"] < 0.05
    end = s["ca_at_0.9"] if s["ca_at_0.9"] is not None else s["ca_final"]
    d = end - s["ca_plateau_median"]
    move = "rises" if d > 0.05 else ("falls" if d < -0.05 else "stays put")
    return (f"{name}: {'flat' if flat else 'not flat'} on the plateau (median "
            f"{s['ca_plateau_median']:.2f}, IQR {s['ca_plateau_iqr']:.2f}), then {move} to "
            f"{end:.2f} when test accuracy passes 0.9 ({s['ca_final']:.2f} at the end).")


def verdict(summaries: dict[float, dict], ratio: dict[str, dict[str, str]]) -> str:
    base = summaries[0.0]
    lam = PAPER["lambda_ce"]
    if lam not in summaries:
        return "Quick smoke run: no verdict."
    s = summaries[lam]
    head = f"{HEADLINE:g}"
    b, r = base["steps_to_test_acc"][head], s["steps_to_test_acc"][head]
    faster = r is not None and (b is None or b > 1.5 * r)
    speed = (f"**Speed-up: reproduced in kind.** With λ = 1e-3 the network reaches {HEADLINE} test "
             f"accuracy at step {r}; weight decay alone "
             + (f"at step {b}" if b is not None else f"not within {base['last_step']} steps")
             + f" ({ratio[head][f'{lam:g}']}). The paper's 85% threshold is meaningless on "
             "digits (reached during memorisation by every run, ratio ~1x), so the number is not "
             "comparable to the paper's 7.6x; it is a smaller, easier data set.") if faster else (
        f"**Speed-up: not reproduced** at {HEADLINE} (λ = 1e-3: step {r}; weight decay only: "
        f"step {b}).")
    sentences = {lam_: _ca_sentence(lam_, r_) for lam_, r_ in summaries.items()}
    n_rise = sum(" rises to " in t for t in sentences.values())
    n_flat = sum(": flat on" in t for t in sentences.values())
    head_ca = (f"**Centroid alignment: flat while memorising in {n_flat} of {len(sentences)} runs; "
               + ("it rises at generalisation in "
                  f"{n_rise} of them.**" if n_rise else "it does not rise at generalisation in "
                  "any run (not reproduced)**; it changes abruptly there instead."))
    ca = head_ca + " " + " ".join(sentences.values())
    if base["jacobian_norm_final"] > 2 * base["jacobian_norm_init"]:
        ca += (f" Without the regulariser the late rise of test accuracy comes with the Jacobian "
               f"norm growing {base['jacobian_norm_final'] / base['jacobian_norm_init']:.0f}x and "
               f"its PC1 (GrokAlign's explained variance of the Jacobian's first principal "
               f"component) going {base['pc1_init']:.2f} → {base['pc1_final']:.2f} "
               "(a sudden jump after the training loss has reached ~1e-9, reminiscent of Adam's "
               "slingshot).")
    falls = [r_["jacobian_norm_init"] / r_["jacobian_norm_final"]
             for lam_, r_ in summaries.items() if lam_ > 0]
    if falls:
        ca += (f" With the regulariser the Jacobian norm falls {min(falls):.0f}-{max(falls):.0f}x "
               "by the end.")
    ca += (" Note that for a bias-free ReLU net `<J_xᵀ1, x> = Σ_c f_c(x)` (positive homogeneity) "
           "and cross-entropy does not constrain the sum of the logits, so the *sign* of the "
           "centroid alignment is not fixed by the loss.")
    return speed + "\n\n" + ca


def write_readme(out: Path, results: dict[float, dict], quick: bool, wall_s: float) -> None:
    summaries = {lam: r["summary"] for lam, r in results.items()}
    ratio = speedups(summaries)
    lam_cols = [lam for lam in summaries if lam != 0.0]
    head = "| threshold | wd only | " + " | ".join(f"λ={lam:g} (steps, speed-up)" for lam in lam_cols) + " |"
    sep = "|---" * (2 + len(lam_cols)) + "|"
    rows = []
    for t in THRESHOLDS:
        k = f"{t:g}"
        cells = [f"{summaries[lam]['steps_to_test_acc'][k] if summaries[lam]['steps_to_test_acc'][k] is not None else '—'} ({ratio[k][f'{lam:g}']})"
                 for lam in lam_cols]
        base = summaries[0.0]["steps_to_test_acc"][k]
        rows.append(f"| {k} | {base if base is not None else '— (cap ' + str(summaries[0.0]['last_step']) + ')'} | "
                    + " | ".join(cells) + " |")
    arow = "\n".join(
        f"| {lam:g} | {s['last_step']} | {s['t_fit_train_0.99']} | {_f(s['final_test_acc'])} | "
        f"{_f(s['ca_init'], 3)} | {_f(s['ca_plateau_range'], 3)} / {_f(s['ca_plateau_median'], 3)} | "
        f"{_f(s['ca_at_0.9'], 3)} | "
        f"{_f(s['ca_final'], 3)} | {_f(s['jacobian_norm_init'], 1)} → {_f(s['jacobian_norm_final'], 1)} | "
        f"{_f(s['pc1_init'], 2)} → {_f(s['pc1_final'], 2)} | "
        f"{_f(s['jacobian_alignment_init'], 3)} → {_f(s['jacobian_alignment_final'], 3)} | "
        f"{s['train_wall_s']} + {s['analyze_wall_s']} |"
        for lam, s in summaries.items()
    )
    cfg = dict(next(iter(results.values()))["config"])
    cfg.pop("jacobian_reg")
    n_train = next(iter(summaries.values()))["n_points"]
    jrand = next(iter(summaries.values()))["jacobian_alignment_random"]
    text = f"""# GrokAlign: Jacobian regularisation speeds up generalisation (Walker et al. 2025)

{'**QUICK SMOKE VERSION** (tiny sizes; the numbers below mean nothing).' if quick else ''}

Paper: 1024 MNIST images, 784-196-196-196-10 bias-free ReLU MLP, init x8, AdamW lr 1e-3,
wd 0.01; with cross-entropy the regulariser (λ = 1e-3) reaches **85% test accuracy 7.6x
sooner** than weight decay alone; centroid alignment stays flat while memorising and rises at
generalisation.

Ours: sklearn digits (8x8, 64 inputs, 512 train / 1285 test), 64-196-196-196-10 bias-free ReLU
MLP, init x8, same optimiser and loss; λ in {{{', '.join(f'{lam:g}' for lam in lam_cols)}}} (the paper's 1e-3
and a decade either side). Each run stops 500 steps after test accuracy first reaches
{HEADLINE} (evaluated every 50 steps), else at {cfg['steps']} steps.

## Steps to a test-accuracy threshold

First *recorded* step at or above the threshold (recorded every 100 steps after step 1000,
log-spaced before), and the speed-up `steps(wd only) / steps(λ)`; `>x` is a lower bound where
weight decay alone never got there within its cap.

{head}
{sep}
{chr(10).join(rows)}

Paper (MNIST, 85%): 7.6x with λ = 1e-3.

## Verdict

{verdict(summaries, ratio)}

## Centroid alignment (`alignment` measure, defaults)

The centroid alignment (CA) is the mean over every training point ({n_train} of them, as the
authors evaluate training batches); `‖J_x‖_F` and the Jacobian alignment `|J_x x|² / (‖J_x‖_F²
|x|²)` [ours] use the first 256, PC1 the first 64 (the authors' `pc1(x[:64])`: per point the
explained variance of the first principal component of `J_x`, `σ₁² / Σσᵢ²`, averaged; 1 when
every logit moves along one input direction, at least 1/10 here). The Jacobian alignment of a
Jacobian that ignores the direction of `x` is 1/64 = {jrand:.3f} in expectation.

| λ | last step | train acc ≥ 0.99 at | final test acc | CA init | CA on the memorising plateau (train acc ≥ 0.99, test < 0.9): min, max / median | CA at test ≥ 0.9 | CA final | mean ‖J_x‖_F init → final | PC1 init → final | Jacobian alignment init → final | wall s (train + analyse) |
|---|---|---|---|---|---|---|---|---|---|---|---|
{arow}

## Figures

* `accuracy.png` / `.pdf` — test (solid) and train (dotted) accuracy of every run; thresholds
  dashed/dotted; a dot where each run first reaches {HEADLINE}.
* `alignment.png` / `.pdf` — `grokscope.plot.plot_alignment` (mean centroid alignment with its
  min–max band over inputs; the mean Jacobian norm on a log axis in the panel below) for weight
  decay only and for λ = 1e-3, `t_train` / `t_test` (accuracy 0.9) dotted; and the mean
  centroid alignment of every run overlaid.

## Configuration

```json
{json.dumps(cfg, indent=1, default=str)}
```

`jacobian_reg` = λ per run. The regulariser is grokscope's `jacobian_norm_penalty` (one random
unit projection per sample, docs/methods.md section 3). Per-run numbers: `summary.json`.

Wall time of the whole script: {wall_s:.0f} s on the shared 2-core CPU machine.
Reproduce: `python analyses/03_grokalign.py` (`--quick` for the smoke version).
"""
    (out / "README.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(
        {"runs": {f"{lam:g}": s for lam, s in summaries.items()}, "speedup": ratio}, indent=1))


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the study; returns ``{"runs": {lambda: summary}, "speedup": ...}``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke version (< 60 s)")
    ap.add_argument("--out", default="reports/grokalign", help="figures and README")
    ap.add_argument("--runs", default="runs/grokalign", help="run stores (git-ignored)")
    ap.add_argument("--figures-only", action="store_true",
                    help="redraw the figures from the stored runs (no training; README unchanged)")
    args = ap.parse_args(argv)
    out, runs = Path(args.out), Path(args.runs)
    if args.figures_only:
        figures_only(runs, out, args.quick)
        return {"figures": ["accuracy", "alignment"]}
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = {lam: run_one(lam, args.quick, runs) for lam in lambdas(args.quick)}
    figure_accuracy(results, out)
    figure_alignment(results, out)
    write_readme(out, results, args.quick, time.perf_counter() - t0)
    summaries = {lam: r["summary"] for lam, r in results.items()}
    report = {"runs": summaries, "speedup": speedups(summaries)}
    print(json.dumps(report, indent=1, default=str))
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
