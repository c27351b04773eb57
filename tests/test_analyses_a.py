"""Smoke tests of the reproduction scripts 01 (modular addition), 02 (phase diagram) and
04 (LMN): each runs end to end with ``--quick`` into a temporary folder."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 500_000


def _load(name: str) -> ModuleType:
    path = ROOT / "analyses" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"analysis_{name}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _check_report(out: Path, figures: list[str]) -> str:
    readme = (out / "README.md").read_text()
    assert "Verdict" in readme and "wall time" in readme
    for name in figures:
        f = out / name
        assert f.is_file(), f"missing {name}"
        assert 0 < f.stat().st_size < MAX_BYTES, f"{name} is {f.stat().st_size} bytes"
    return readme


@pytest.mark.slow
def test_modular_addition_quick(tmp_path: Path) -> None:
    mod = _load("01_modular_addition")
    out = tmp_path / "report"
    summaries = mod.main(["--quick", "--out", str(out), "--runs", str(tmp_path / "runs")])
    assert set(summaries) == {"MLP, wd 1.0", "MLP, wd 0.0"}
    for s in summaries.values():
        assert s["label"] in ("comprehension", "grokking", "memorisation", "confusion",
                              "semi-grokking", "ungrokking")
        assert s["t_train"] is None or s["t_train"] >= 0
        assert s["last_step"] > 0
    # wd 0.0 gets at least the step budget of the wd 1.0 run
    assert summaries["MLP, wd 0.0"]["last_step"] >= summaries["MLP, wd 1.0"]["last_step"]
    readme = _check_report(out, ["curves_wd.png", "fourier_mlp.png", "curves_wd.pdf"])
    assert "quick" in readme
    data = json.loads((out / "summary.json").read_text())
    assert data["quick"] is True and data["paper"]["key_freqs"] == [14, 35, 41, 42, 52]


@pytest.mark.slow
def test_phase_diagram_quick(tmp_path: Path) -> None:
    mod = _load("02_phase_diagram")
    out = tmp_path / "report"
    ds = mod.main(["--quick", "--out", str(out), "--runs", str(tmp_path / "runs")])
    assert dict(ds.sizes) == {"weight_decay": 2, "train_frac": 2, "seed": 1}
    assert (ds["label"] != "missing").all()
    readme = _check_report(out, ["phase_diagram.png", "curves_grid.png", "phase_diagram.nc"])
    assert "coarse" in readme
    cells = json.loads((out / "phase_diagram.json").read_text())["cells"]
    assert len(cells) == 4


@pytest.mark.slow
def test_lmn_quick(tmp_path: Path) -> None:
    mod = _load("04_lmn")
    out = tmp_path / "report"
    summary = mod.main(["--quick", "--out", str(out), "--runs", str(tmp_path / "runs")])
    lmn0 = summary["lmn_by_step"]["hidden layer 0 -> logits"]
    assert lmn0 and all(v >= 1.0 - 1e-9 for v in lmn0.values())
    assert summary["window"][0] <= summary["window"][1]
    assert summary["lmn_params"]["hidden layer 0 -> logits"]["layer"] == 0
    _check_report(out, ["lmn_vs_step.png", "lmn_vs_test_loss.png"])


def test_generalising_window_and_fit() -> None:
    """The LMN script's window and fit helpers on a synthetic trajectory (fast)."""
    import numpy as np
    import xarray as xr

    mod = _load("04_lmn")
    steps = np.arange(0, 1000, 50)
    loss = np.concatenate([np.linspace(1, 5, 5), np.linspace(5, 0.01, 10), np.full(5, 0.01)])
    acc = np.where(np.arange(20) >= 14, 1.0, 0.0)
    metrics = xr.Dataset({"test_loss": ("step", loss), "test_acc": ("step", acc)},
                         coords={"step": steps})
    start, end = mod.generalising_window(metrics, t_train=100.0)
    assert start == 200.0 and end == 700.0
    lmn = xr.Dataset({"lmn": ("step", 2.0 + 3.0 * loss)}, coords={"step": steps})
    f = mod.fit(lmn, metrics, start, end)
    assert f["n_points"] == 11
    assert f["pearson_r"] == pytest.approx(1.0)
    assert f["slope"] == pytest.approx(3.0)
    assert f["lmn_end"] < f["lmn_start"]
