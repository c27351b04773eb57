"""A grokking phase diagram over weight decay x training fraction (Liu et al. 2022, EFT).

Liu et al. ("Towards understanding grokking: an effective theory of representation
learning") train a grid of models on modular addition and label each run by when train and
test accuracy pass a threshold: **comprehension** (both, close together), **grokking**
(test long after train), **memorisation** (train only) and **confusion** (neither). Their
diagrams show the four regions as contiguous areas of hyperparameter space: without weight
decay the network memorises, too much weight decay stops it from fitting at all
(confusion), and in between more data moves it from grokking to comprehension.

This script reproduces a coarse CPU version of that diagram over weight decay x training
fraction with :func:`grokscope.sweep`, :func:`grokscope.phase_diagram` and
:func:`grokscope.plot.plot_phase_diagram`: a two-hot ReLU MLP on ``a + b mod 31``, full-batch
AdamW lr 5e-3, one seed per cell, every run stopped 50 steps after test accuracy reaches
0.99 or at the step budget.

Usage::

    python analyses/02_phase_diagram.py            # 4 x 3 grid (CPU minutes)
    python analyses/02_phase_diagram.py --quick    # 2 x 2 grid, tiny runs (< 60 s)
    python analyses/02_phase_diagram.py --figures-only  # redraw the figures from the sweep
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

import grokscope as gs
from grokscope.plot import plot_curves, plot_phase_diagram, save_figure

DPI = 120

#: What Liu et al. (2022) report qualitatively for modular addition (their Figs. 6-7, lr x wd
#: and data x wd planes): the four phases occupy contiguous regions.
PAPER_ORDER = {
    "no weight decay": "memorisation (small data) / slow comprehension",
    "moderate weight decay, little data": "grokking",
    "moderate weight decay, more data": "comprehension",
    "very large weight decay": "confusion",
}


def sweep_config(quick: bool) -> dict[str, Any]:
    """The grid and the fixed arguments of :func:`grokscope.sweep`."""
    if quick:
        grid = {"weight_decay": [0.0, 1.0], "train_frac": [0.5, 0.8]}
        fixed = dict(p=13, width=32, steps=200)
    else:
        grid = {"weight_decay": [0.0, 1.0, 3.0, 10.0], "train_frac": [0.4, 0.6, 0.8]}
        fixed = dict(p=31, width=128, steps=2500)
    fixed.update(
        lr=5e-3,
        betas=(0.9, 0.98),
        optimizer="adamw",
        encoding="onehot",
        op="+",
        activation="relu",
        depth=1,
        eval_every=50,
        stop_when={"test_acc": 0.99, "patience": 50},
        schedule={"log_until": 100, "per_decade": 10, "every": 50},
        num_threads=1,
    )
    return {"grid": grid, "fixed": fixed, "seeds": [0]}


def _cells(ds: Any) -> list[dict[str, Any]]:
    x, y = ds.attrs["x"], ds.attrs["y"]
    out = []
    for xv in ds[x].values:
        for yv in ds[y].values:
            c = ds.sel({x: xv, y: yv}).isel(seed=0)

            def num(v: Any) -> float | None:
                f = float(v)
                return None if not math.isfinite(f) else f

            out.append({
                x: float(xv), y: float(yv), "label": str(c["label"].values),
                "t_train": num(c["t_train"].values), "t_test": num(c["t_test"].values),
                "gap": num(c["gap"].values),
                "final_train_acc": num(c["final_train_acc"].values),
                "final_test_acc": num(c["final_test_acc"].values),
                "last_step": num(c["last_step"].values),
            })
    return out


def _save(fig: Figure, out: Path, name: str) -> list[str]:
    return save_figure(fig, out, name, dpi=DPI)


def figures(ds: Any, out: Path) -> list[str]:
    fig = Figure(figsize=(13, 4.8), layout="constrained")
    a1, a2 = fig.subplots(1, 2)
    plot_phase_diagram(ds, ax=a1, title="Phase of each run (mod-p addition, two-hot MLP)")
    plot_phase_diagram(ds, ax=a2, var="final_test_acc_mean", cmap="viridis",
                       title="Final test accuracy")
    names = _save(fig, out, "phase_diagram")
    # every run's accuracy curves, laid out like the diagram (train_frac up, wd right)
    x, y = ds.attrs["x"], ds.attrs["y"]
    nx, ny = ds.sizes[x], ds.sizes[y]
    fig = Figure(figsize=(3.3 * nx, 2.6 * ny), layout="constrained")
    axes = np.asarray(fig.subplots(ny, nx, squeeze=False, sharey=True))
    for i in range(nx):
        for j in range(ny):
            ax = axes[ny - 1 - j, i]
            cell = ds.isel({x: i, y: j, "seed": 0})
            path = str(cell["path"].values)
            title = (f"{x}={float(ds[x][i]):g}, {y}={float(ds[y][j]):g}\n"
                     f"{cell['label'].values}")
            if not path:
                ax.set_title(title + " (no run)", fontsize=8)
                continue
            plot_curves(gs.open_run(path), ax=ax, loss=False, title=title)
            ax.title.set_fontsize(8)
            ax.xaxis.label.set_fontsize(7)
            ax.tick_params(labelsize=7)
            if ax.get_legend() is not None:  # one legend for the figure, below
                ax.get_legend().remove()
            if i > 0:
                ax.set_ylabel("")
            for t in ax.texts:
                t.set_fontsize(6)
    from matplotlib.lines import Line2D

    from grokscope.plot._style import TEST_COLOR, TRAIN_COLOR

    handles = [Line2D([], [], color=TRAIN_COLOR, marker=".", label="train accuracy"),
               Line2D([], [], color=TEST_COLOR, marker=".", label="test accuracy"),
               Line2D([], [], color=TRAIN_COLOR, linestyle=":", label="t_train"),
               Line2D([], [], color=TEST_COLOR, linestyle=":", label="t_test"),
               Line2D([], [], color="#555555", linestyle="--", label="threshold 0.9")]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False,
               fontsize=9)
    fig.suptitle("Train / test accuracy of every run (shaded: from t_train to t_test, or to "
                 "the end when test accuracy never reaches 0.9)")
    names += _save(fig, out, "curves_grid")
    return names


def _table(cells: list[dict], x: str, y: str) -> str:
    rows = [f"| {x} | {y} | label | t_train | t_test | final train / test acc | steps run |",
            "|---|---|---|---|---|---|---|"]

    def f(v: Any) -> str:
        return "-" if v is None else f"{int(v):,}"

    for c in cells:
        rows.append(
            f"| {c[x]:g} | {c[y]:g} | **{c['label']}** | {f(c['t_train'])} | {f(c['t_test'])} | "
            f"{c['final_train_acc']:.3f} / {c['final_test_acc']:.3f} | {f(c['last_step'])} |"
        )
    return "\n".join(rows)


def _checks(cells: list[dict], x: str, y: str) -> dict[str, bool]:
    by = {(c[x], c[y]): c["label"] for c in cells}
    xs = sorted({c[x] for c in cells})
    labels = set(by.values())
    no_wd = [lab for (xv, _), lab in by.items() if xv == 0.0]
    top = [lab for (xv, _), lab in by.items() if xv == xs[-1]]
    return {
        "all four phases (comprehension, grokking, memorisation, confusion) appear":
            {"comprehension", "grokking", "memorisation", "confusion"} <= labels,
        "no weight decay never groks (memorisation or comprehension only)":
            bool(no_wd) and "grokking" not in no_wd,
        "the largest weight decay is confusion": bool(top) and set(top) == {"confusion"},
        "grokking sits at less data than comprehension for the same weight decay": any(
            by.get((xv, ya)) == "grokking" and by.get((xv, yb)) == "comprehension"
            for xv in xs for ya in {c[y] for c in cells} for yb in {c[y] for c in cells}
            if ya < yb
        ),
    }


def _semi_note(cells: list[dict]) -> str:
    semi = [c for c in cells if c["label"] == "semi-grokking"]
    if not semi:
        return ""
    where = ", ".join(f"wd {c['weight_decay']:g} / frac {c['train_frac']:g} "
                      f"(final test acc {c['final_test_acc']:.2f})" for c in semi)
    return (
        "\n**Semi-grokking cells** (" + where + "): test accuracy rose well after the "
        "training set was fit but ended below 0.9 within the step budget (see "
        "`curves_grid.png`: still rising, or a plateau). Liu et al.'s diagram has no such "
        "region; a longer budget would tell grokking cut short from genuine semi-grokking "
        "(Varma et al.). Stronger weight decay slows both the fit and the rise of test "
        "accuracy here, on the way to confusion at wd 10.\n"
    )


def write_readme(out: Path, ds: Any, cells: list[dict], cfg: dict, figs: list[str],
                 wall_s: float, quick: bool) -> None:
    x, y = ds.attrs["x"], ds.attrs["y"]
    checks = _checks(cells, x, y)
    n_ok = sum(checks.values())
    word = ("reproduced" if n_ok == len(checks) else "partly reproduced" if n_ok
            else "not reproduced")
    check_txt = "\n".join(f"- [{'x' if ok else ' '}] {t}" for t, ok in checks.items())
    paper = "\n".join(f"| {k} | {v} |" for k, v in PAPER_ORDER.items())
    quick_note = ("\n> **This is the `--quick` smoke version** (2 x 2 tiny grid): its numbers "
                  "are not the study's.\n" if quick else "")
    text = f"""# Phase diagram: weight decay x training fraction
{quick_note}
Reproduces, coarsely and on CPU, the phase diagram of Liu et al. (2022, "Towards
understanding grokking: an effective theory of representation learning"; docs/methods.md s.1, s.8)
with `gs.sweep` + `gs.phase_diagram` + `grokscope.plot.plot_phase_diagram`
(script: `analyses/02_phase_diagram.py`).

**Verdict: {word}** -- at the resolution of a {ds.sizes[x]} x {ds.sizes[y]} grid with one
seed per cell. **The grid is coarse**: each cell is a single run, the boundaries between
phases are only known to lie between neighbouring grid values, and a cell near a boundary
could flip with another seed or a longer step budget (runs that have not generalised by
step {ds.attrs['step_budget']:,} are labelled memorisation even if they would grok later).

{check_txt}

## Paper (qualitative) vs ours

| region (Liu et al. 2022) | phase they report |
|---|---|
{paper}

Ours (labels from docs/methods.md s.1: threshold {ds.attrs['threshold']:g}, comprehension if
t_test - t_train < {ds.attrs['comprehension_gap']:g} steps; t_* are the first *recorded*
step, resolution 50 steps after step 100):

{_table(cells, x, y)}

## Figures

{chr(10).join(f'- `{f}`' for f in figs if f.endswith('.png'))}
(PDF versions alongside). `phase_diagram.png`: phase label per cell (left) and final test
accuracy (right, the value written in each cell), every cell the same size (the swept values
label the axes). `curves_grid.png`: the train/test accuracy curves of every run, laid out like
the diagram (weight decay to the right, training fraction up), the grokking gap shaded.
{_semi_note(cells)}

## Configuration

`gs.sweep("modular", "mlp", grid=..., seeds=[0], out="runs/phase_diagram", **fixed)` with

```json
{json.dumps(cfg, indent=1)}
```

Each run: two-hot ReLU MLP (one hidden layer), full-batch AdamW, stopped 50 steps after test
accuracy first reaches 0.99 (`stop_when`), else at the step budget. Liu et al. used a
representation + decoder model and swept decoder learning rate and weight decay; we sweep
the trainer's weight decay and the task's training fraction of one small MLP.

Total wall time: **{wall_s:.0f} s** on the shared 2-core CPU machine (one torch thread per
run, runs in series). Numbers: `phase_diagram.json`; the diagram's dataset:
`phase_diagram.nc`.
"""
    (out / "README.md").write_text(text)


def main(argv: list[str] | None = None) -> Any:
    """Run the sweep, build and draw the diagram; returns the phase-diagram dataset."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke version (< 60 s)")
    ap.add_argument("--out", default="reports/phase_diagram", help="figures and README")
    ap.add_argument("--runs", default="runs/phase_diagram", help="sweep folder (git-ignored)")
    ap.add_argument("--fresh", action="store_true",
                    help="delete the sweep folder first (else finished runs are reused)")
    ap.add_argument("--figures-only", action="store_true",
                    help="redraw the figures from the finished sweep (no training; README unchanged)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    cfg = sweep_config(args.quick)
    runs = Path(args.runs) / ("quick" if args.quick else "full")
    if args.figures_only:  # the finished sweep's runs, no training
        return figures(gs.phase_diagram(str(runs), x="weight_decay", y="train_frac"), out)
    if args.fresh and runs.exists():
        shutil.rmtree(runs)
    gs.sweep("modular", "mlp", grid=cfg["grid"], seeds=cfg["seeds"], out=str(runs),
             progress=False, **cfg["fixed"])
    ds = gs.phase_diagram(str(runs), x="weight_decay", y="train_frac")
    cells = _cells(ds)
    figs = figures(ds, out)
    from grokscope.sweep import save_phase_diagram

    nc = out / "phase_diagram.nc"
    save_phase_diagram(ds.drop_vars("path"), nc)
    wall = time.perf_counter() - t0
    (out / "phase_diagram.json").write_text(json.dumps(
        {"cells": cells, "config": cfg, "wall_s": round(wall, 1), "quick": args.quick,
         "step_budget": int(ds.attrs["step_budget"])}, indent=1))
    write_readme(out, ds, cells, cfg, figs, wall, args.quick)
    print(f"wrote {out} in {wall:.0f} s")
    labels = ds["label"].isel(seed=0).transpose("train_frac", "weight_decay")
    print("rows train_frac", ds["train_frac"].values, "cols wd", ds["weight_decay"].values)
    print(np.asarray(labels.values))
    return ds


if __name__ == "__main__":
    main(sys.argv[1:])
