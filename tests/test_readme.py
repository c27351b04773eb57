"""The README's examples run as written and do what they say.

Blocks are marked in README.md with ``<!-- readme-test: NAME -->`` on the line before the
fence. The slow test runs them verbatim; the default test runs the same code with the
training shortened (the only substitution), so a broken example fails the default suite.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).parents[1] / "README.md"


def blocks() -> dict[str, str]:
    text = README.read_text()
    found = re.findall(r"<!-- readme-test: ([\w-]+) -->\n```\w*\n(.*?)```", text, flags=re.S)
    return dict(found)


def _grokscope() -> list[str]:
    exe = shutil.which("grokscope", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "grokscope.cli"]


def _run_python(code: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def _run_shell(script: str, cwd: Path, only: tuple[str, ...] | None = None) -> list[str]:
    outs = []
    for line in script.splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        argv = shlex.split(line)
        assert argv[0] == "grokscope"
        if only and argv[1] not in only:
            continue
        proc = subprocess.run(_grokscope() + argv[1:], cwd=cwd, capture_output=True, text=True,
                              timeout=1200, env={**os.environ, "PYTHONPATH": ""})
        assert proc.returncode == 0, (line, proc.stderr[-4000:])
        outs.append(proc.stdout)
    return outs


def test_readme_has_the_marked_examples():
    assert {"own-loop", "own-loop-analyse", "script-class", "reference-trainer",
            "reference-shell"} <= set(blocks())


def test_own_loop_example_shortened(tmp_path):
    b = blocks()
    code = b["own-loop"].replace("range(2000)", "range(40)") + "\n" + b["script-class"]
    assert "range(40)" in code
    out = _run_python(code, tmp_path)
    assert out.strip()  # the NFA correlation of layer 'fc' printed
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "runs").symlink_to(tmp_path / "runs")  # another folder, none of the code
    info, = _run_shell(b["own-loop-analyse"], other, only=("info",))
    assert "hidden:      0 (relu; input of '2')" in info
    assert "model from: exported" in info


@pytest.mark.slow
def test_own_loop_example_verbatim(tmp_path):
    """Runs the README's own-loop example exactly, then its shell commands from another
    process: the run groks and every applicable measure runs."""
    b = blocks()
    _run_python(b["own-loop"] + "\n" + b["script-class"], tmp_path)
    outs = _run_shell(b["own-loop-analyse"], tmp_path)
    assert "skipped: none" in outs[1]
    import grokscope as gs

    run = gs.open_run(tmp_path / "runs" / "mine.zarr")
    assert str(run.results["phases"].label.values) == "grokking"
    assert (tmp_path / "reports" / "mine" / "index.html").exists()


def test_reference_trainer_example_shortened(tmp_path):
    """The reference-trainer block with its training shortened (the only substitution)."""
    code = blocks()["reference-trainer"].replace("steps=2500", "steps=40")
    assert "steps=40" in code
    out = _run_python(code, tmp_path)
    label, t_test = out.split()
    assert label in ("memorisation", "confusion", "comprehension", "grokking", "semi-grokking",
                     "ungrokking")


@pytest.mark.slow
def test_reference_trainer_example_verbatim(tmp_path):
    """Verbatim: the run groks, as the README says (test accuracy 0.9 near step 1400)."""
    out = _run_python(blocks()["reference-trainer"], tmp_path)
    label, t_test = out.split()
    assert label == "grokking" and 800 <= float(t_test) <= 2400


@pytest.mark.slow
def test_reference_shell_example_verbatim(tmp_path):
    """Verbatim: the trained run groks and the sweep's phase diagram shows several phases."""
    _run_shell(blocks()["reference-shell"], tmp_path)
    import xarray as xr

    import grokscope as gs

    run = gs.open_run(tmp_path / "runs" / "add59")
    assert float(run.metrics["test_acc"].values[-1]) > 0.9
    ds = gs.phase_diagram(str(tmp_path / "sweeps" / "wd_frac"), "weight_decay", "train_frac")
    labels = set(np.asarray(ds["label"].values).ravel().tolist())
    assert len(labels) >= 3 and "grokking" in labels, labels
    assert (tmp_path / "sweeps" / "wd_frac" / "phase.png").exists()
    assert isinstance(ds, xr.Dataset)
