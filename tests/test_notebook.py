"""docs/notebook.ipynb: a valid nbformat v4 notebook that runs and does what it says.

nbclient/ipykernel are not dependencies of grokscope, so the slow test executes the code
cells in order in one namespace (matplotlib's Agg backend, a fresh folder), as a kernel
would, and checks the results the markdown promises.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]
NOTEBOOK = ROOT / "docs" / "notebook.ipynb"


def _cells() -> list[dict]:
    return json.loads(NOTEBOOK.read_text())["cells"]


def test_notebook_is_nbformat_v4_and_matches_its_source():
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["nbformat"] == 4 and nb["nbformat_minor"] >= 5
    assert nb["metadata"]["kernelspec"]["language"] == "python"
    ids = [c["id"] for c in nb["cells"]]
    assert len(set(ids)) == len(ids)
    for cell in nb["cells"]:
        assert cell["cell_type"] in ("markdown", "code")
        assert isinstance(cell["source"], list) and "".join(cell["source"]).strip()
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
    # every code cell is explained by the markdown cell before it (after the setup cell)
    kinds = [c["cell_type"] for c in nb["cells"]]
    assert kinds[0] == "markdown"
    # the committed JSON is what tools/build_notebook.py writes
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import build_notebook
    finally:
        sys.path.pop(0)
    assert build_notebook.notebook() == nb, "run python tools/build_notebook.py"


@pytest.mark.slow
def test_notebook_runs_and_does_what_it_says(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ns: dict = {"__name__": "__main__"}
    for i, cell in enumerate(_cells()):
        if cell["cell_type"] == "code":
            code = compile("".join(cell["source"]), f"notebook cell {i}", "exec")
            exec(code, ns)  # noqa: S102 (the notebook's own cells, in order)
    run, res = ns["run"], ns["res"]
    # the own model grokked: train accuracy first, test accuracy much later
    assert float(run.metrics.test_acc[-1]) >= 0.9
    ph = res["phases"]
    assert str(ph.label.values) == "grokking"
    assert int(ph.t_test) - int(ph.t_train) >= 1000
    # the results are in the store, per step, and the model's raw weights were seen as maps
    stored = set(ns["gs"].open_run("runs/notebook.zarr").results)
    assert {"curves", "phases", "nfa", "alignment", "kernel"} <= stored
    assert res["nfa"].sizes["step"] == len(run.steps)
    assert list(res["nfa"]["layer"].values) == ["mlp.W_in"]
    assert np.isfinite(res["nfa"].nfa_corr_sqrt.values).all()
    # the figures: saved, no title, marks at the run's t_train / t_test
    for name in ("curves", "nfa_alignment"):
        for fmt in ("pdf", "png"):
            assert (tmp_path / "figures" / f"{name}.{fmt}").stat().st_size > 10_000
    assert (tmp_path / "figures" / "curves.pdf").read_bytes()[:5] == b"%PDF-"
    ax = ns["ax"]
    assert ax.get_title() == "" and ax.grokscope_panel.get_ylabel() == "loss (nats)"
    marks = {ln.get_gid(): ln.get_xdata()[0] for ln in ax.get_lines() if ln.get_gid()}
    assert marks == {"t_train": int(ph.t_train), "t_test": int(ph.t_test)}
    assert os.path.isdir(tmp_path / "runs" / "notebook.zarr")
