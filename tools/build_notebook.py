"""Write docs/notebook.ipynb (nbformat v4) from the cells below: ``python tools/build_notebook.py``.

The notebook is kept here as Python so that it diffs and reviews like code; the JSON is
generated, without outputs (tests/test_notebook.py executes it in the slow suite).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

NOTEBOOK = Path(__file__).parents[1] / "docs" / "notebook.ipynb"

#: (cell type, source) in order
CELLS: list[tuple[str, str]] = [
    ("markdown", """\
# From your own model to a paper figure

This notebook takes a model written the way researchers write them — raw parameters and
`einsum`, no grokscope class — trains it with an ordinary PyTorch loop on modular addition,
records the trajectory with `gs.Recorder`, analyses it with `gs.analyze`, and draws figures in
a paper-ready style. It runs in about two minutes on a 2-core laptop CPU.

Every cell is short; run them in order."""),
    ("code", """\
import torch
from torch import nn
from matplotlib.figure import Figure

import grokscope as gs

torch.manual_seed(0)
torch.set_num_threads(1)  # small models: one thread is fastest on a shared CPU
data = gs.make_task("modular", p=59, train_frac=0.45)  # a + b mod 59, two-hot inputs
print(data.x_train.shape, data.x_test.shape)"""),
    ("markdown", """\
## The model: raw parameters and `einsum`

A one-hidden-layer ReLU block with raw weight parameters, inside a model. grokscope never asks
for attribute names: when the run is recorded it detects the *anatomy* — the block computes
`W_out relu(W_in x + b_in) + b_out`, so `mlp.W_in` / `mlp.W_out` are its linear maps and the
ReLU output its neurons — by checking each guess against a forward pass. The initialisation
is `nn.Linear`'s."""),
    ("code", """\
def uniform(*shape, fan_in):
    return nn.Parameter((torch.rand(*shape) * 2 - 1) / fan_in**0.5)


class MLPBlock(nn.Module):
    def __init__(self, d_in: int, width: int, d_out: int):
        super().__init__()
        self.W_in, self.b_in = uniform(width, d_in, fan_in=d_in), uniform(width, fan_in=d_in)
        self.W_out, self.b_out = uniform(d_out, width, fan_in=width), uniform(d_out, fan_in=width)

    def forward(self, x):
        h = torch.relu(torch.einsum("hi,bi->bh", self.W_in, x) + self.b_in)
        return torch.einsum("oh,bh->bo", self.W_out, h) + self.b_out


class Net(nn.Module):
    def __init__(self, p: int, width: int):
        super().__init__()
        self.mlp = MLPBlock(2 * p, width, p)

    def forward(self, x):
        return self.mlp(x)


model = Net(59, 256)
opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=1.0, betas=(0.9, 0.98))"""),
    ("markdown", """\
## Your training loop, recorded

`rec.due(step)` follows the default schedule (log-spaced early, then every 100 steps);
`rec.record` commits one checkpoint with whatever metrics you pass. Recording the accuracies
lets every figure mark `t_train` and `t_test` (the first steps where train and test accuracy
reach 0.9)."""),
    ("code", """\
def accuracy(x, y):
    with torch.no_grad():
        return (model(x).argmax(-1) == y).float().mean().item()


with gs.Recorder("runs/notebook.zarr", model, data, config={"lr": 5e-3, "wd": 1.0},
                 overwrite=True) as rec:
    for step in range(2000):
        loss = nn.functional.cross_entropy(model(data.x_train), data.y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rec.due(step):
            rec.record(step, model, {"train_loss": loss.item(),
                                     "train_acc": accuracy(data.x_train, data.y_train),
                                     "test_acc": accuracy(data.x_test, data.y_test)})

run = gs.open_run("runs/notebook.zarr")
print(len(run.steps), "checkpoints; final test accuracy",
      round(float(run.metrics.test_acc[-1]), 3))"""),
    ("markdown", """\
## Analyse the stored trajectory

`gs.analyze` rebuilds the model at each checkpoint (from the program stored with the run: no
code needed) and computes the measures; the results are xarray Datasets, also written into
the store (`run.results`). `phases` gives the milestones and the label."""),
    ("code", """\
res = gs.analyze(run, ["curves", "phases", "nfa", "alignment", "kernel"], progress=False)
ph = res["phases"]
print(ph.label.item(), "t_train =", int(ph.t_train), "t_test =", int(ph.t_test))
res["nfa"]"""),
    ("markdown", """\
## Figures in a paper style

Every `gs.plot.plot_*` function takes `ax=` and returns the Axes, so figures compose.
For a paper: no title (`title=""`: the caption goes under the figure), two panels instead of
a twin y axis (`panels=True`, or `ax=(top, bottom)`), and the `t_train` / `t_test` marks
taken from the run's metrics (`marks=run.metrics`). `save_figure` writes PDF and PNG."""),
    ("code", """\
ax = gs.plot.plot_curves(run, panels=True, title="")
gs.plot.save_figure(ax.figure, "figures", "curves", formats=("pdf", "png"))"""),
    ("markdown", """\
Several measures side by side, sharing the run's milestones: the neural feature ansatz
(Pearson correlation of `W_in^T W_in` with the AGOP, for the detected map `mlp.W_in`) and the centroid alignment with the
Jacobian norm in a panel below it."""),
    ("code", """\
fig = Figure(figsize=(10, 4.2), layout="constrained")
left, right = fig.subfigures(1, 2)
gs.plot.plot_nfa(res["nfa"], ax=left.subplots(), marks=run.metrics, title="")
gs.plot.plot_alignment(res["alignment"], ax=tuple(right.subplots(2, 1, sharex=True)),
                       marks=run.metrics, title="")
gs.plot.save_figure(fig, "figures", "nfa_alignment", formats=("pdf", "png"))"""),
    ("markdown", """\
## Next

- `gs.report(run, "reports/notebook")` writes every figure with data (PNG + PDF), a
  `summary.json` and a self-contained `index.html`.
- The same from a shell: `grokscope analyze runs/notebook.zarr` and
  `grokscope report runs/notebook.zarr -o reports/notebook`.
- `docs/figures.md` lists every plot function and its style options."""),
]


def notebook() -> dict:
    """The notebook as an nbformat v4 dict (no outputs)."""
    cells = []
    for i, (kind, source) in enumerate(CELLS):
        cell = {"cell_type": kind, "id": f"cell-{i}", "metadata": {},
                "source": source.splitlines(keepends=True)}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        cells.append(cell)
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def main() -> int:
    NOTEBOOK.write_text(json.dumps(notebook(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {NOTEBOOK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
