"""Recorder(watch={"close_wait": ...}): how long ``close()`` waits for the watcher thread's
final pass, and that the final results are never lost (a pass left running finishes before
the interpreter exits)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import xarray as xr

import grokscope as gs
from grokscope.errors import ConfigError
from grokscope.store import Recorder
from tests._watch_helpers import make_model

ROOT = Path(__file__).parents[1]
watch_mod = importlib.import_module("grokscope.watch")  # gs.watch is the function
MEASURES = {"curves": {}, "phases": {}}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs torch at one thread."""


def _assert_equal_to_fresh(watched: dict, path: Path, tmp_path: Path, **kw) -> None:
    """The watcher's results (returned and stored) equal a fresh analysis of the same store,
    written to a separate results store (nothing reused)."""
    fresh = dict(gs.analyze(str(path), MEASURES, results=str(tmp_path / "fresh.zarr"),
                            progress=False, num_threads=1, **kw))
    assert set(watched) == set(fresh) == set(MEASURES)
    stored = gs.open_run(str(path), **kw).results
    for name in fresh:
        xr.testing.assert_identical(stored[name].load(), fresh[name])
        xr.testing.assert_identical(watched[name], fresh[name])


@pytest.fixture
def gate(monkeypatch):
    """Holds the watcher's final pass until ``gate.set()`` (so the test knows it is still
    running when ``close`` returns)."""
    event = threading.Event()
    real = watch_mod._Watcher.analysis_pass

    def held(self, *, final):
        if final:
            assert event.wait(30), "the test never released the final pass"
        return real(self, final=final)

    monkeypatch.setattr(watch_mod._Watcher, "analysis_pass", held)
    yield event
    event.set()


def _record(path: Path, tmp_path: Path, close_wait, steps: int = 6) -> tuple[Recorder, float]:
    """Record ``steps`` checkpoints of a raw nn.Sequential with a watcher thread; the seconds
    ``close`` took."""
    torch.manual_seed(0)
    data = gs.make_task("modular", p=11, train_frac=0.5)
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1.0)
    rec = Recorder(str(path), model, data, export_program=False, watch={
        "out": str(tmp_path / "live"), "interval": 0.02, "duty": 0.05, "dpi": 30, "measures": MEASURES,
        "close_wait": close_wait, "model": make_model})  # no stored program: rebuilt from it
    for step in range(steps):
        loss = torch.nn.functional.cross_entropy(model(data.x_train), data.y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.record(step, metrics={"train_loss": loss.item()})
    t0 = time.perf_counter()
    rec.close()
    return rec, time.perf_counter() - t0


@pytest.mark.parametrize("close_wait", [False, 0.3])
def test_close_returns_while_the_final_pass_runs_and_join_collects_it(tmp_path, gate,
                                                                       close_wait):
    path = tmp_path / "run.zarr"
    rec, took = _record(path, tmp_path, close_wait)
    assert took < 5  # the gated final pass would hold a waiting close for 30 s
    if close_wait:
        assert took >= close_wait  # a bounded wait waits that long for a pass still running
    assert rec.watcher is not None and rec.watcher.error is None
    assert not rec.watcher.done
    assert rec.watcher.join(timeout=0.05) is None  # still held
    gate.set()
    w = rec.watcher.join()
    assert rec.watcher.done and w is not None and w.reason in ("closed", "stopped")
    assert w.n_steps == 6 and w.last_step == 5
    _assert_equal_to_fresh(w.results, path, tmp_path, model=make_model)


def test_close_waits_for_the_final_pass_by_default(tmp_path, monkeypatch):
    real = watch_mod._Watcher.analysis_pass

    def slow_final(self, *, final):
        if final:
            time.sleep(0.5)
        return real(self, final=final)

    monkeypatch.setattr(watch_mod._Watcher, "analysis_pass", slow_final)
    rec, took = _record(path := tmp_path / "run.zarr", tmp_path, True)
    assert took >= 0.5 and rec.watcher.done  # it waited for the final pass
    assert list(gs.open_run(str(path)).results["curves"].step.values) == list(range(6))


@pytest.mark.parametrize("bad", [-1, float("nan"), "soon", None])
def test_a_bad_close_wait_is_refused(tmp_path, bad):
    with pytest.raises(ConfigError, match="close_wait must be True, False or a number"):
        watch_mod.start_watcher(tmp_path / "x.zarr", {"close_wait": bad})
    with pytest.raises(ConfigError, match="a watcher process takes only"):
        watch_mod.start_watcher(tmp_path / "x.zarr", {"mode": "process", "close_wait": False})


@pytest.mark.slow
def test_a_final_pass_left_running_finishes_before_the_interpreter_exits(tmp_path):
    """A script that ends right after ``close(close_wait=False)``: the shutdown hook finishes
    the final pass while zarr's and dask's thread pools still accept work (an ``atexit``
    hook comes after they shut down: measured, the result of the final pass was lost)."""
    path = tmp_path / "run.zarr"
    code = ("from tests._watch_helpers import write; import time; t = time.perf_counter(); "
            f"write({str(path)!r}, steps=30, every=2, sleep=0.0, builtin=True, watch="
            f"{{'out': {str(tmp_path / 'live')!r}, 'measures': {MEASURES!r}, "
            "'close_wait': False, 'interval': 0.05}); print('closed', time.perf_counter() - t)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "closed" in out.stdout and "failed" not in out.stderr
    run = gs.open_run(str(path))
    assert run.closed and len(run.steps) == 15
    stored = {name: run.results[name] for name in MEASURES}
    _assert_equal_to_fresh(stored, path, tmp_path)


# ------------------------------------------------------------------ redraw
def test_redraw_keeps_the_figure_between_renders_and_the_final_pass_draws(tmp_path,
                                                                           monkeypatch):
    """A pass within ``redraw`` seconds of the last render updates the numbers only; the final
    pass (and the last page after a timeout) shows the last results."""
    renders = []
    real = watch_mod._figure_png

    def counted(run, results, threshold, dpi):
        renders.append(int(results["curves"].step.values[-1]))
        return real(run, results, threshold, dpi)

    monkeypatch.setattr(watch_mod, "_figure_png", counted)
    torch.manual_seed(0)
    data = gs.make_task("modular", p=11, train_frac=0.5)
    rec = Recorder(str(tmp_path / "run.zarr"), make_model(), data, export_program=False)
    rec.record(0, metrics={"train_loss": 1.0})
    (tmp_path / "live").mkdir()
    w = watch_mod._Watcher(str(tmp_path / "run.zarr"), tmp_path / "live", ["curves"],
                           threshold=0.9, model=make_model, anatomy=None, trust_code=False,
                           storage_options=None, num_threads=1, progress=False, dpi=30,
                           redraw=3600.0)
    assert w.analysis_pass(final=False) and renders == [0]  # the first pass draws
    rec.record(1, metrics={"train_loss": 0.5})
    assert w.analysis_pass(final=False) and renders == [0]  # within redraw: numbers only
    page = (tmp_path / "live" / "index.html").read_text()
    assert "<th scope=\"row\">last step</th><td>1</td>" in page
    w.finish("timeout", "stopped: no new checkpoint")  # the last page shows step 1's figure
    assert renders == [0, 1]
    rec.record(2, metrics={"train_loss": 0.25})
    assert w.analysis_pass(final=True) and renders == [0, 1, 2]  # the final pass draws
    w.redraw = 0.0
    rec.record(3, metrics={"train_loss": 0.2})
    assert w.analysis_pass(final=False) and renders == [0, 1, 2, 3]  # 0: every pass
    rec.close()
    with pytest.raises(ConfigError, match="redraw must be a number of seconds >= 0"):
        gs.watch(str(tmp_path / "run.zarr"), redraw=-1.0)


def test_a_watcher_thread_runs_within_the_gil_share_that_keeps_a_writer_within_10_percent(
        tmp_path, monkeypatch):
    """A thread holding the GIL a share d of the time slows a GIL-bound writer by at most d:
    the thread's default duty must leave the writer >= 0.91x; the user's options win."""
    seen = []

    def fake_watch(path, **options):
        seen.append(options)

    monkeypatch.setattr(watch_mod, "watch", fake_watch)
    for spec, duty, redraw in ((True, watch_mod.THREAD_DUTY, watch_mod.THREAD_REDRAW),
                               ({"duty": 0.5, "redraw": 0.0}, 0.5, 0.0)):
        handle = watch_mod.start_watcher(tmp_path / "x.zarr", spec)
        assert handle.join(timeout=30) is None and handle.done  # fake_watch returned None
        assert (seen[-1]["duty"], seen[-1]["redraw"]) == (duty, redraw)
        assert seen[-1]["num_threads"] is None and seen[-1]["progress"] is False
    assert 1 - watch_mod.THREAD_DUTY >= 0.91
    assert watch_mod.THREAD_REDRAW > 0
