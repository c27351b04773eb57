"""The neural feature ansatz on modular arithmetic (Mallinar et al.; Beaglehole et al. 2024).

Reproduces, at CPU size, the claim that in a network that groks modular arithmetic the
neural feature matrix ``NFM = W1^T W1`` of the first layer matches the square root of the
average gradient outer product ``AGOP`` of its input (Pearson correlation 0.955 for addition,
0.929 for division in the paper), and that both matrices become *block-circulant*: the first
layer sees ``[one-hot(a), one-hot(b)]``, so the NFM is ``2p x 2p`` with four ``p x p`` blocks,
and each block of a grokked net is a function of ``(i - j) mod p`` once its rows and columns are
put in the group's order.

The paper's network: one hidden layer, quadratic activation, width 1024, no bias, AdamW lr 1e-3,
weight decay 1.0, MSE on one-hot targets, p = 61, 50% of the pairs for training. Ours is the
same with width 256 (CPU minutes), trained for a fixed number of steps.

Block order used to show the circulant structure [ours]:

* addition: ``a`` in its natural order, ``b`` reversed (``b_j = -j mod p``). The a-b block
  of a grokked net is a function of ``a + b`` (a Hankel matrix in the natural order), so reversing
  ``b`` makes every block circulant;
* division ``a / b``: both halves ordered by the discrete logarithm, ``a_i = g^i`` for a primitive
  root ``g`` (``a = 0`` and the unused ``b = 0`` are left out of the picture and the score).

*Circulant score* [ours]: in that order, the share of each block's variance explained by a
function of ``(j - i) mod m`` (R^2 of the class means; the main diagonal of the a-a and b-b
blocks left out, since any random init makes ``W^T W`` diagonal-dominant), averaged over the
three distinct blocks. 0 for unstructured matrices, 1 for exactly block-circulant ones.

Everything goes through grokscope's public API: :func:`grokscope.train`,
:func:`grokscope.analyze` (``nfa`` with ``store_matrices=True``, ``phases``) and
:func:`grokscope.plot.plot_nfa`.

Usage::

    python analyses/06_nfa.py            # full version (CPU minutes)
    python analyses/06_nfa.py --quick    # smoke version (< 60 s)
    python analyses/06_nfa.py --figures-only  # redraw the figures from the stored runs
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
import torch
from matplotlib.figure import Figure

import grokscope as gs
from grokscope.measures.nfa import matrix_power_psd
from grokscope.plot import milestone_marks, plot_nfa, save_figure
from grokscope.plot._style import draw_marks, legend, set_step_axis

#: Mallinar et al. (2024), width-1024 quadratic net, p = 61, 50% train (docs/methods.md section 5)
PAPER = {"+": 0.955, "/": 0.929}
OP_NAMES = {"+": "addition", "/": "division"}
DPI = 120


# ----------------------------------------------------------------------------- config
def config(op: str, quick: bool) -> dict[str, Any]:
    """The trainer arguments of one run."""
    return dict(
        task="modular",
        task_kwargs={"p": 23 if quick else 61, "op": op, "train_frac": 0.5, "seed": 0,
                     "encoding": "onehot"},
        model="mlp",
        model_kwargs={"width": 64 if quick else 256, "depth": 1, "activation": "quadratic",
                      "bias": False},
        steps=60 if quick else 3000,
        lr=1e-3,
        weight_decay=1.0,
        optimizer="adamw",
        loss="mse",
        seed=0,
        schedule={"log_until": 1000, "per_decade": 5 if quick else 10, "every": 250},
        num_threads=1,
        progress=False,
    )


# ----------------------------------------------------------------------------- structure
def primitive_root(p: int) -> int:
    """The smallest generator of the multiplicative group mod a prime ``p``."""
    if p == 2:
        return 1
    phi = p - 1
    factors = {q for q in range(2, phi + 1) if phi % q == 0 and all(q % r for r in range(2, q))}
    for g in range(2, p):
        if all(pow(g, phi // q, p) != 1 for q in factors):
            return g
    raise ValueError(f"no primitive root mod {p}: is p prime?")


def block_order(op: str, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``a`` half and of the ``b`` half (into ``0..p-1``) in circulant order."""
    if op == "/":
        g = primitive_root(p)
        logs = np.array([pow(g, i, p) for i in range(p - 1)])
        return logs, logs
    return np.arange(p), (-np.arange(p)) % p


def reorder(mat: np.ndarray, op: str, p: int) -> np.ndarray:
    """The ``2p x 2p`` matrix with both halves in circulant order (see :func:`block_order`)."""
    ia, ib = block_order(op, p)
    idx = np.concatenate([ia, p + ib])
    return mat[np.ix_(idx, idx)]


def circulant_r2(block: np.ndarray, skip_diagonal: bool) -> float:
    """Share of a square block's variance explained by a function of ``(j - i) mod m``."""
    m = block.shape[0]
    i, j = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    k = (j - i) % m
    keep = k != 0 if skip_diagonal else np.ones_like(k, bool)
    v, kk = block[keep], k[keep]
    sums = np.bincount(kk, weights=v, minlength=m)
    counts = np.bincount(kk, minlength=m)
    fit = (sums / np.maximum(counts, 1))[kk]
    tot = float(((v - v.mean()) ** 2).sum())
    return float("nan") if tot == 0 else 1.0 - float(((v - fit) ** 2).sum()) / tot


def circulant_score(mat: np.ndarray, op: str, p: int) -> float:
    """Mean circulant R^2 of the a-a, b-b and a-b blocks of a ``2p x 2p`` matrix."""
    r = reorder(mat, op, p)
    m = r.shape[0] // 2
    blocks = [(r[:m, :m], True), (r[m:, m:], True), (r[:m, m:], False)]
    return float(np.mean([circulant_r2(b, d) for b, d in blocks]))


def offdiag_pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two matrices' off-diagonal entries."""
    mask = ~np.eye(a.shape[0], dtype=bool)
    x, y = a[mask] - a[mask].mean(), b[mask] - b[mask].mean()
    return float(x @ y / max(np.linalg.norm(x) * np.linalg.norm(y), 1e-300))


def sqrt_psd(g: np.ndarray) -> np.ndarray:
    return matrix_power_psd(torch.from_numpy(np.asarray(g, dtype=np.float64)), 0.5).numpy()


# ----------------------------------------------------------------------------- one run
def _num(x: Any) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


def _at(series: Any, step: Any) -> float | None:
    """The value of a per-step series at a stored step (None where the step is undefined)."""
    t = _num(step.values)
    if t is None:
        return None
    return _num(series.sel(step=int(t)).values)


def run_one(op: str, quick: bool, runs: Path) -> dict[str, Any]:
    """Train, analyse, and return the per-step series and the summary of one operation."""
    cfg = config(op, quick)
    t0 = time.perf_counter()
    run = gs.train(out=str(runs / OP_NAMES[op]), overwrite=True, **cfg)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = gs.analyze(run, {"nfa": {"store_matrices": True}, "phases": {}}, progress=False,
                     device="cpu")
    analyze_s = time.perf_counter() - t0
    return collect(op, run, res, cfg, train_s, analyze_s)


def collect(op: str, run: Any, res: Any, cfg: dict[str, Any], train_s: float | None,
            analyze_s: float | None) -> dict[str, Any]:
    """The per-step series and the summary of one operation from its run and results."""
    p = cfg["task_kwargs"]["p"]
    nfa, ph = res["nfa"].isel(layer=0), res["phases"]
    steps = nfa.step.values.astype(np.int64)
    nfm, agop = nfa["nfm"].values, nfa["agop"].values
    circ_nfm = np.array([circulant_score(m, op, p) for m in nfm])
    circ_agop = np.array([circulant_score(sqrt_psd(g), op, p) for g in agop])
    off = np.array([offdiag_pearson(m, sqrt_psd(g)) for m, g in zip(nfm, agop, strict=True)])
    m = run.metrics
    summary = {
        "op": op,
        "p": p,
        "last_step": int(steps[-1]),
        "t_train": _num(ph["t_train"].values),
        "t_test": _num(ph["t_test"].values),
        "label": str(ph["label"].values),
        "final_train_acc": float(m["train_acc"].values[-1]),
        "final_test_acc": float(m["test_acc"].values[-1]),
        "nfa_corr_sqrt_init": float(nfa["nfa_corr_sqrt"].values[0]),
        "nfa_corr_sqrt_min": float(np.nanmin(nfa["nfa_corr_sqrt"].values)),
        "nfa_corr_sqrt_final": float(nfa["nfa_corr_sqrt"].values[-1]),
        "nfa_corr_final": float(nfa["nfa_corr"].values[-1]),
        "cnfa_final": _num(nfa["cnfa"].values[-1]),
        "nfa_corr_centred_final": _num(nfa["nfa_corr_centred"].values[-1]),
        "nfa_cos_sqrt_init": float(nfa["nfa_cos_sqrt"].values[0]),
        "nfa_cos_sqrt_final": float(nfa["nfa_cos_sqrt"].values[-1]),
        "nfa_init_removed_sqrt_second": _num(nfa["nfa_init_removed_sqrt"].values[1]),
        "nfa_init_removed_sqrt_final": _num(nfa["nfa_init_removed_sqrt"].values[-1]),
        "nfa_cos_init_removed_final": _num(nfa["nfa_cos_init_removed"].values[-1]),
        "second_step": int(steps[1]),
        "nfa_init_removed_sqrt_at_t_train": _at(nfa["nfa_init_removed_sqrt"], ph["t_train"]),
        "nfa_init_removed_sqrt_at_t_test": _at(nfa["nfa_init_removed_sqrt"], ph["t_test"]),
        "offdiag_corr_init": float(off[0]),
        "offdiag_corr_final": float(off[-1]),
        "circulant_nfm_init": float(circ_nfm[0]),
        "circulant_nfm_final": float(circ_nfm[-1]),
        "circulant_agop_sqrt_final": float(circ_agop[-1]),
        "paper_nfa_corr_sqrt": PAPER[op],
        "train_wall_s": None if train_s is None else round(train_s, 1),
        "analyze_wall_s": None if analyze_s is None else round(analyze_s, 1),
    }
    series = {"steps": steps, "circ_nfm": circ_nfm, "circ_agop": circ_agop, "offdiag": off,
              "test_acc": m["test_acc"].sel(step=steps).values,
              "train_acc": m["train_acc"].sel(step=steps).values}
    return {"summary": summary, "series": series, "nfa": nfa, "nfa_ds": res["nfa"],
            "config": cfg}


def exact_milestones(op: str, upto: int, runs: Path, quick: bool = False) -> dict[str, Any]:
    """Retrain one operation recording every step up to ``upto``: the exact crossings.

    The report's ``t_train``/``t_test`` are first *recorded* steps (log-spaced records); this
    resolves them to the step, and says which data the run had (its op, its training-set size).

    Returns
    -------
    dict
        ``op`` and ``n_train`` as stored in the run, ``t_train``/``t_test`` (first step with
        train / test accuracy >= 0.9, None if not reached by ``upto``) and ``labels_match_op``
        (every training label equals ``a op b mod p`` decoded from the two-hot inputs).
    """
    cfg = config(op, quick)
    cfg.update(steps=upto, schedule={"log_until": 1, "per_decade": 1, "every": 1})
    run = gs.train(out=str(runs / f"{OP_NAMES[op]}_every_step"), overwrite=True, **cfg)
    steps = run.metrics.step.values
    crossings = {}
    for key, name in (("t_train", "train_acc"), ("t_test", "test_acc")):
        hit = np.flatnonzero(run.metrics[name].values >= 0.9)
        crossings[key] = int(steps[hit[0]]) if hit.size else None
    p = int(run.config["task"]["p"])
    x, y = np.asarray(run.data.x_train), np.asarray(run.data.y_train)
    a, b = x[:, :p].argmax(1), x[:, p:].argmax(1)
    want = (a + b) % p if op == "+" else (a * np.array([pow(int(v), p - 2, p) for v in b])) % p
    return {"op": run.config["task"]["op"], "n_train": int(y.size), **crossings,
            "labels_match_op": bool(np.array_equal(want, y))}


# ----------------------------------------------------------------------------- figures
def _save(fig: Figure, out: Path, name: str, dpi: int = DPI) -> list[str]:
    return save_figure(fig, out, name, dpi=dpi)


def figure_corr(results: dict[str, dict], out: Path) -> list[str]:
    """NFA correlation (grokscope's plot) and circulant score / accuracy vs step, per op."""
    fig = Figure(figsize=(7.4 * len(results), 8.4), layout="constrained")
    axes = fig.subplots(2, len(results), squeeze=False, sharex="col")
    for col, (op, r) in enumerate(results.items()):
        s = r["summary"]
        marks = {k: s[k] for k in ("t_train", "t_test")}
        ax = plot_nfa(r["nfa_ds"], ax=axes[0, col], agop_alignment=True, marks=marks,
                      title=f"{OP_NAMES[op]} mod {s['p']}: " + r"$\mathrm{corr}(W_1^\top W_1,"
                      r"\ \mathrm{AGOP}^{s})$")
        st = r["series"]["steps"]
        ax.plot(st, r["series"]["offdiag"], color="#009E73", linestyle="-.", linewidth=1.0,
                label="off-diagonal entries only ($s=1/2$)")
        ax.axhline(PAPER[op], color="#CC79A7", linewidth=0.9, label=f"paper final ({PAPER[op]})")
        ax.get_legend().remove()
        legend(ax)
        ax.tick_params(labelbottom=False)
        ax.set_xlabel("")
        ax2 = axes[1, col]
        set_step_axis(ax2, st)
        ax2.plot(st, r["series"]["circ_nfm"], marker=".", color="#0072B2", label="NFM circulant score")
        ax2.plot(st, r["series"]["circ_agop"], marker=".", color="#D55E00", linestyle="--",
                 label=r"$\mathrm{AGOP}^{1/2}$ circulant score")
        ax2.plot(st, r["series"]["test_acc"], color="#555555", linewidth=1.0, alpha=0.7,
                 label="test accuracy")
        ax2.plot(st, r["series"]["train_acc"], color="#999999", linewidth=1.0, alpha=0.7,
                 linestyle="-.", label="train accuracy")
        draw_marks(ax2, milestone_marks(marks), label=False)
        ax2.set_ylim(-0.05, 1.05)
        ax2.set_ylabel(r"$R^2$ of circulant fit / accuracy")
        ax2.set_title(r"Block-circulant structure of NFM and $\mathrm{AGOP}^{1/2}$")
        ax2.grid(alpha=0.3)
        legend(ax2)
    return _save(fig, out, "nfa_corr")


def _show(ax: Any, mat: np.ndarray, title: str, p_half: int, order: str) -> None:
    off = mat[~np.eye(mat.shape[0], dtype=bool)]
    lim = float(np.percentile(np.abs(off), 99)) or 1.0
    im = ax.imshow(mat, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    ax.axhline(p_half - 0.5, color="k", linewidth=0.6)
    ax.axvline(p_half - 0.5, color="k", linewidth=0.6)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"input (a | b); {order}", fontsize=8)
    ax.set_ylabel("input (a | b)")
    ax.figure.colorbar(im, ax=ax, shrink=0.75, label="entry (clipped, 99th pct)")


def figure_matrices(results: dict[str, dict], out: Path) -> list[str]:
    """Init NFM, final NFM and final AGOP^1/2 in circulant order, one row per op."""
    fig = Figure(figsize=(12.5, 3.9 * len(results)), layout="constrained")
    axes = fig.subplots(len(results), 3, squeeze=False)
    for row, (op, r) in enumerate(results.items()):
        nfa, p = r["nfa"], r["summary"]["p"]
        order = "a natural, b reversed" if op == "+" else "a, b by discrete log, 0 left out"
        first = reorder(nfa["nfm"].values[0], op, p)
        last = reorder(nfa["nfm"].values[-1], op, p)
        ag = reorder(sqrt_psd(nfa["agop"].values[-1]), op, p)
        half = first.shape[0] // 2
        s0, s1 = int(nfa.step.values[0]), int(nfa.step.values[-1])
        _show(axes[row, 0], first, f"{OP_NAMES[op]}: NFM at step {s0}", half, order)
        _show(axes[row, 1], last, f"{OP_NAMES[op]}: NFM at step {s1}", half, order)
        _show(axes[row, 2], ag, f"{OP_NAMES[op]}: " + r"$\mathrm{AGOP}^{1/2}$" + f" at step {s1}",
              half, order)
    return _save(fig, out, "nfm", dpi=90)  # keeps the PNG under 500 kB


# ----------------------------------------------------------------------------- README
def _f(v: Any, nd: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def verdict(summaries: dict[str, dict]) -> str:
    """One honest line per operation.

    Reproduced = the net groks, its final Pearson(NFM, AGOP^1/2) is at least the paper's
    minus 0.05, and the NFM's circulant score ends >= 0.5 having risen by >= 0.3 from init.
    """
    lines = []
    for op, s in summaries.items():
        grokked = s["final_test_acc"] >= 0.9
        close = s["nfa_corr_sqrt_final"] >= PAPER[op] - 0.05
        circ = (s["circulant_nfm_final"] >= 0.5
                and s["circulant_nfm_final"] > s["circulant_nfm_init"] + 0.3)
        word = "reproduced" if grokked and close and circ else ("partly" if grokked else "not")
        lines.append(
            f"* **{OP_NAMES[op]}: {word}.** Final test accuracy {s['final_test_acc']:.3f}; final "
            f"Pearson(NFM, AGOP^1/2) {s['nfa_corr_sqrt_final']:.3f} vs the paper's {PAPER[op]}; "
            f"NFM circulant score {s['circulant_nfm_init']:.2f} → {s['circulant_nfm_final']:.2f} "
            f"({'block-circulant' if circ else 'not block-circulant'}). The correlation itself "
            f"starts at {s['nfa_corr_sqrt_init']:.3f} at initialisation (minimum over training "
            f"{s['nfa_corr_sqrt_min']:.3f}), so it does not rise from low to high."
        )
    return "\n".join(lines)


def write_readme(out: Path, results: dict[str, dict], quick: bool, wall_s: float) -> None:
    summaries = {op: r["summary"] for op, r in results.items()}
    cfg = next(iter(results.values()))["config"]
    rows = "\n".join(
        f"| {OP_NAMES[op]} | {PAPER[op]} | {_f(s['nfa_corr_sqrt_final'])} | "
        f"{_f(s['nfa_corr_sqrt_init'])} | {_f(s['nfa_corr_final'])} | {_f(s['offdiag_corr_init'])} → "
        f"{_f(s['offdiag_corr_final'])} | {_f(s['cnfa_final'])} | {_f(s['circulant_nfm_init'], 2)} → "
        f"{_f(s['circulant_nfm_final'], 2)} | {_f(s['circulant_agop_sqrt_final'], 2)} | "
        f"{_f(s['t_train'], 0)} / {_f(s['t_test'], 0)} | {_f(s['final_test_acc'])} |"
        for op, s in summaries.items()
    )
    variant_rows = "\n".join(
        f"| {OP_NAMES[op]} | {_f(s['nfa_cos_sqrt_init'])} → {_f(s['nfa_cos_sqrt_final'])} | "
        f"{_f(s['nfa_init_removed_sqrt_second'])} (step {s['second_step']}) → "
        f"{_f(s['nfa_init_removed_sqrt_final'])} | {_f(s['nfa_cos_init_removed_final'])} | "
        f"{_f(s['nfa_corr_centred_final'])} |"
        for op, s in summaries.items()
    )
    init_removed_sentence = " ".join(
        f"{OP_NAMES[op]}: {_f(s['nfa_init_removed_sqrt_second'])} at step {s['second_step']}, "
        f"{_f(s['nfa_init_removed_sqrt_at_t_train'])} at t_train, "
        f"{_f(s['nfa_init_removed_sqrt_at_t_test'])} at t_test, "
        f"{_f(s['nfa_init_removed_sqrt_final'])} at the end."
        for op, s in summaries.items()
    ) + (" Unlike the plain correlation, it does rise over training, and most of the rise "
         "comes before t_test (while the network memorises), not at grokking."
         if all((s["nfa_init_removed_sqrt_at_t_test"] or 0) - (s["nfa_init_removed_sqrt_second"] or 0)
                > 0.5 * ((s["nfa_init_removed_sqrt_final"] or 0)
                         - (s["nfa_init_removed_sqrt_second"] or 0)) > 0
                for s in summaries.values()) else "")
    text = f"""# Neural feature ansatz on modular arithmetic (Mallinar et al.; Beaglehole et al. 2024)

{'**QUICK SMOKE VERSION** (tiny sizes; the numbers below mean nothing).' if quick else ''}

Claim: in a one-hidden-layer quadratic network that groks modular arithmetic, the first layer's
neural feature matrix `NFM = W1ᵀW1` matches `AGOP^1/2` (Pearson 0.955 for addition, 0.929 for
division, p = 61) and both become block-circulant.

## Result

| op | paper corr(NFM, AGOP^1/2) | ours, final | ours, at init | ours s=1 final | off-diagonal corr init → final | C-NFA final | NFM circulant score init → final | AGOP^1/2 circulant score final | first recorded step with train / test acc >= 0.9 | final test acc |
|---|---|---|---|---|---|---|---|---|---|---|
{rows}

The NFA authors' variants (`nfa` measure; docs/methods.md section 5):

| op | cosine(NFM, AGOP^1/2) init → final | Pearson((W1−W0)ᵀ(W1−W0), AGOP^1/2) first recorded step after init → final | cosine((W1−W0)ᵀ(W1−W0), AGOP) final (Radhakrishnan et al.'s default) | Pearson(NFM, centred AGOP^1/2) final |
|---|---|---|---|---|
{variant_rows}

{verdict(summaries)}

What the numbers say:

* The uncentred NFA correlation is **high from the first step**, because at a standard random
  initialisation `AGOP = W1ᵀ K W1` with a near-diagonal `K`, so `AGOP ≈ c · W1ᵀW1` already
  (this is why Beaglehole et al. introduced the centred C-NFA). The `s = 1/2` correlation moves
  by only a few hundredths over training; the off-diagonal-only correlation [ours: the
  diagonal left out; Mallinar et al.'s `train_net.py` logs a similar `nfa_no_diag_corr` that
  sets the diagonal to 0 instead] dips just
  after `t_test`, while the network reorganises, and recovers as weight decay removes the random
  part of `W1`. We do not see a rise from low to high.
* What does change at grokking is the *structure* of both matrices: the circulant score
  [ours, module docstring] is ~0 at init and through memorisation, starts rising at `t_test`
  and keeps rising afterwards, for the NFM and for `AGOP^1/2` alike (`nfm.png`); it is still
  rising at the last step, so a longer run would end more circulant. `AGOP^1/2` becomes
  circulant sooner than the NFM.
* The init-removed variant (the NFM of what training added, `(W1−W0)ᵀ(W1−W0)`, against
  `AGOP^1/2`; Radhakrishnan et al. remove the initialisation the same way) cannot borrow the
  random initialisation's diagonal: it is the stricter test of the ansatz. It is undefined at
  step 0 (`W1 = W0`). {init_removed_sentence}
* The paper's final correlations are lower than ours; we cannot tell from the paper whether that
  is the width (1024 vs 256), the training length or the initialisation scale.
* `t_train`/`t_test` are the first *recorded* steps past 0.9 (log-spaced records: ..., 63, 79,
  100, ..., 200, 251), which is why both operations show the same values. The two runs are
  different runs (their own `op` in the task spec, 1860 vs 1830 training pairs, every label
  decodes to its operation); recorded at every step to step 400 (`python analyses/06_nfa.py
  --exact-milestones`) they cross at train 65 / test 214 (addition) and 67 / 212 (division):
  different steps inside the same record intervals (63, 79] and (200, 251]. With a gap of
  ~150 steps both runs are labelled **comprehension**, not grokking, by docs/methods.md
  section 1 (`label` in `summary.json`): test accuracy reaches 0.9 about 150 steps after
  train accuracy does.

## Figures

* `nfa_corr.png` / `.pdf` — top: `grokscope.plot.plot_nfa` (Pearson with `AGOP^1/2` solid,
  with `AGOP` dashed, cosine of the AGOP with the final one dotted), the off-diagonal-only
  correlation, the paper's final value, `t_train` / `t_test` dotted (blue / vermillion). Bottom: the
  circulant score of the NFM and of `AGOP^1/2`, with train/test accuracy.
* `nfm.png` / `.pdf` — NFM at init, NFM and `AGOP^1/2` at the last step, rows and columns in
  circulant order (addition: `a` natural, `b` reversed; division: both by discrete log).
  Colour limits are clipped at the 99th percentile of the off-diagonal magnitudes so the
  diagonal does not wash out the blocks.

## Configuration

Paper: width 1024, quadratic activation, no bias, AdamW lr 1e-3, wd 1.0, MSE on one-hot
targets, p = 61, 50% train. Ours (only the width is smaller, and training is a fixed step
budget):

```json
{json.dumps(cfg, indent=1, default=str)}
```

(`op` is `+` and `/`; division uses `b` in 1..p-1.) Measures: `gs.analyze(run, {{"nfa":
{{"store_matrices": True}}, "phases": {{}}}})` at every recorded step; the AGOP averages over
the training split, the first layer is `layers.0` (closed-form AGOP). `t_train`/`t_test` are
the first recorded steps with accuracy >= 0.9 (`phases`).

Per-op numbers (JSON): see `summary.json`. Wall time of the whole script: {wall_s:.0f} s on the
shared 2-core CPU machine (per run: {', '.join(f"{OP_NAMES[op]} train {s['train_wall_s']} s + analyse {s['analyze_wall_s']} s" for op, s in summaries.items())}).

Reproduce: `python analyses/06_nfa.py` (`--quick` for the smoke version).
"""
    (out / "README.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(summaries, indent=1))


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the study; returns ``{op: summary}``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke version (< 60 s)")
    ap.add_argument("--out", default="reports/nfa", help="figures and README")
    ap.add_argument("--runs", default="runs/nfa", help="run stores (git-ignored)")
    ap.add_argument("--ops", default="+,/", help="comma-separated operations (+ and/or /)")
    ap.add_argument("--figures-only", action="store_true",
                    help="redraw the figures from the stored runs (no training; README unchanged)")
    ap.add_argument("--exact-milestones", type=int, nargs="?", const=400, default=None,
                    metavar="UPTO",
                    help="retrain each operation recording every step up to UPTO (default 400) "
                    "and print the exact first steps with accuracy >= 0.9 (no figures)")
    args = ap.parse_args(argv)
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    ops = [o for o in args.ops.split(",") if o]
    bad = [o for o in ops if o not in PAPER]
    if bad:
        ap.error(f"--ops: unknown operation(s) {bad}; use + and/or /")
    if args.exact_milestones:
        found = {op: exact_milestones(op, args.exact_milestones, runs) for op in ops}
        print(json.dumps(found, indent=1))
        return found
    if args.figures_only:
        results = {}
        for op in ops:
            run = gs.open_run(str(runs / OP_NAMES[op]))
            res = {name: run.results[name] for name in ("nfa", "phases")}
            results[op] = collect(op, run, res, config(op, args.quick), None, None)
        figure_corr(results, out)
        figure_matrices(results, out)
        return {op: r["summary"] for op, r in results.items()}
    t0 = time.perf_counter()
    results = {op: run_one(op, args.quick, runs) for op in ops}
    figure_corr(results, out)
    figure_matrices(results, out)
    write_readme(out, results, args.quick, time.perf_counter() - t0)
    summaries = {op: r["summary"] for op, r in results.items()}
    print(json.dumps(summaries, indent=1))
    return summaries


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
