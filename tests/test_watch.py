"""gs.watch / grokscope watch / Recorder(watch=...): follow a store while it is recorded.

The writers here are real: a thread of this process (fast tests) or a child process training
and recording (slow tests). The final results must equal a fresh analysis of the same store.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
import xarray as xr

import grokscope as gs
from grokscope import results_io
from grokscope.cli import main
from grokscope.errors import CorruptStoreError
from grokscope.store import Recorder, schema
from grokscope.watch import DEFAULT_MEASURES, WatchTimeoutError, start_watcher
from tests._watch_helpers import write

ROOT = Path(__file__).parents[1]


def _assert_equal_to_fresh(watched: dict[str, xr.Dataset], path: Path, tmp_path: Path,
                           measures: dict) -> None:
    """The watcher's results (returned and stored) equal a fresh analysis of the same store
    (its results written to a separate store: nothing is reused)."""
    fresh = dict(gs.analyze(str(path), measures, results=str(tmp_path / "fresh.zarr"),
                            progress=False, num_threads=1))
    assert set(watched) == set(fresh) == set(measures)
    stored = gs.open_run(str(path)).results
    for name in fresh:
        xr.testing.assert_identical(stored[name].load(), fresh[name])
        xr.testing.assert_identical(watched[name], fresh[name])


def _thread_writer(path: Path, **kw) -> threading.Thread:
    t = threading.Thread(target=write, args=(str(path),), kwargs={"builtin": True, **kw})
    t.start()
    return t


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs torch at one thread."""


# ------------------------------------------------------------------ the closed marker
def test_close_writes_the_closed_marker_and_reopening_drops_it(tmp_path):
    path = tmp_path / "run.zarr"
    data = gs.make_task("modular", p=5)
    model = gs.models.model_for("mlp", data, width=4)
    rec = Recorder(str(path), model, data)
    rec.record(0)
    assert gs.open_run(str(path)).closed is False  # being written
    rec.close()
    run = gs.open_run(str(path))
    assert run.closed is True and run.meta[schema.CLOSED_KEY] is True
    with Recorder(str(path), model, data) as rec:  # re-opened: open again
        assert gs.open_run(str(path)).closed is False
        rec.record(1)
    assert gs.open_run(str(path)).closed is True
    assert list(gs.open_run(str(path)).steps) == [0, 1]


def test_a_closed_marker_that_is_not_a_boolean_is_refused(tmp_path):
    meta = {"commit": {"count": 0, "last_step": None}, "params": {}, "metrics": [],
            "config": {}, schema.CLOSED_KEY: "yes"}
    with pytest.raises(CorruptStoreError, match="'closed' is 'yes'"):
        schema.check_meta(meta, "a store")
    meta[schema.CLOSED_KEY] = False
    assert schema.check_meta(meta, "a store") is meta


# ------------------------------------------------------------------ a concurrent writer
def test_watch_follows_a_writer_and_ends_equal_to_a_fresh_analysis(tmp_path):
    path = tmp_path / "run.zarr"
    writer = _thread_writer(path, steps=16, every=2, sleep=0.05)
    measures = {"curves": {}, "phases": {}}
    w = gs.watch(str(path), interval=0.05, timeout=60, progress=False, duty=1.0,
                 measures=measures)
    writer.join()
    assert w.reason == "closed", w.message
    assert "the writer closed the store" in w.message
    run = gs.open_run(str(path))
    assert w.n_steps == len(run.steps) == 8 and w.last_step == 14
    assert w.passes >= 2  # it saw the run grow, then the final pass
    _assert_equal_to_fresh(w.results, path, tmp_path, measures)
    page = (w.out / "index.html").read_text()
    assert w.out == tmp_path / "run.zarr-watch"
    assert re.search(r'<meta http-equiv="refresh" content="\d+">', page)
    assert "<th scope=\"row\">last step</th><td>14</td>" in page
    assert "data:image/png;base64," in page
    assert not [p for p in os.listdir(w.out) if p.endswith(".tmp")]  # written atomically
    rows = (w.out / "forecast.csv").read_text().splitlines()
    assert rows[0].startswith("step,n_steps,p_grok") and rows[-1].startswith("14,8,")
    # the forecast of the run so far (grokscope.forecast), on the page and in the history
    fc = gs.forecast(str(path))
    assert w.forecast is not None and float(w.forecast.p_grok) == float(fc.p_grok)
    assert rows[-1].split(",")[2] == repr(float(fc.p_grok))
    assert f"P(test acc reaches 0.9)</th><td>{float(fc.p_grok):.2f}" in page


def test_watch_waits_for_a_store_that_does_not_exist_yet(tmp_path):
    path = tmp_path / "later.zarr"
    writer = threading.Timer(0.5, write, args=(str(path),),
                             kwargs={"builtin": True, "steps": 6, "sleep": 0.0})
    writer.start()
    w = gs.watch(str(path), out=tmp_path / "live", interval=0.05, timeout=60, progress=False,
                 measures=["curves"])
    writer.join()
    assert w.reason == "closed" and w.last_step == 4 and w.out == tmp_path / "live"


def test_a_store_that_never_appears_times_out_with_a_message(tmp_path):
    with pytest.raises(WatchTimeoutError, match=r"does not exist after waiting 0.3 s"):
        gs.watch(str(tmp_path / "never.zarr"), interval=0.05, timeout=0.3, progress=False)


def _unclosed(path: Path, steps: int = 3) -> Recorder:
    """A store whose writer stopped without closing it (as after a kill)."""
    data = gs.make_task("modular", p=11, train_frac=0.5)
    rec = Recorder(str(path), gs.models.model_for("mlp", data, width=8), data)
    for step in range(steps):
        rec.record(step, metrics={"train_loss": 1.0 / (step + 1)})
    return rec


def test_a_writer_that_stops_without_closing_ends_the_watch_after_the_timeout(tmp_path):
    path = tmp_path / "run.zarr"
    rec = _unclosed(path)
    t0 = time.monotonic()
    w = gs.watch(str(path), interval=0.05, timeout=0.5, progress=False, measures=["curves"])
    assert w.reason == "timeout" and time.monotonic() - t0 >= 0.5
    assert "no new checkpoint for 0.5 s and the store was not closed" in w.message
    assert "killed" in w.message and "up to step 2" in w.message
    assert w.n_steps == 3  # what was committed is analysed
    assert "no new checkpoint" in (w.out / "index.html").read_text()
    rec.close()


def test_watch_waits_for_another_analysis_holding_a_result(tmp_path):
    path = tmp_path / "run.zarr"
    _unclosed(path).close()
    run = gs.open_run(str(path))
    loc = results_io.location_for(run, write=True)
    results_io.prepare_write(loc)
    out: dict = {}
    with results_io.writing(loc, ["curves"]):  # another analysis writes 'curves'
        t = threading.Thread(target=lambda: out.update(w=gs.watch(
            str(path), interval=0.05, timeout=30, progress=False, measures=["curves"])))
        t.start()
        t.join(1.0)
        assert t.is_alive()  # waiting, not crashed
    t.join(60)
    assert out["w"].reason == "closed" and set(out["w"].results) == {"curves"}


def test_stop_event_ends_the_watch_after_a_final_pass(tmp_path):
    path = tmp_path / "run.zarr"
    rec = _unclosed(path, steps=2)
    stop = threading.Event()
    stop.set()
    w = gs.watch(str(path), interval=0.05, progress=False, stop=stop, measures=["curves"])
    assert w.reason == "stopped" and w.n_steps == 2 and w.passes == 1
    rec.close()


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(gs.GrokscopeError, match="interval"):
        gs.watch(str(tmp_path / "x"), interval=0)
    with pytest.raises(gs.GrokscopeError, match="duty"):
        gs.watch(str(tmp_path / "x"), duty=1.5)
    with pytest.raises(gs.GrokscopeError, match="watch mode 'fork'"):
        start_watcher(tmp_path / "x", {"mode": "fork"})


# ------------------------------------------------------------------ Recorder(watch=...)
def test_recorder_watch_thread_analyses_while_recording(tmp_path):
    path = tmp_path / "run.zarr"
    write(str(path), builtin=True, steps=16, every=2, sleep=0.02,
          watch={"out": str(tmp_path / "live"), "interval": 0.05, "duty": 1.0,
                 "measures": ["curves", "phases"]})
    run = gs.open_run(str(path))
    assert run.closed and len(run.steps) == 8
    assert set(run.results) >= {"curves", "phases"}  # computed by the watcher, in the store
    assert list(run.results["curves"].step.values) == list(run.steps)
    assert "<td>14</td>" in (tmp_path / "live" / "index.html").read_text()
    assert torch.get_num_threads() == 1  # the watcher thread left torch's setting alone


# ------------------------------------------------------------------ the CLI
def test_cli_watch_exit_codes(tmp_path, capsys):
    path = tmp_path / "run.zarr"
    rec = _unclosed(path)
    code = main(["watch", str(path), "--timeout", "0.3", "--interval", "0.05", "-q",
                 "-m", "curves"])
    assert code == 3
    assert "the store was not closed" in capsys.readouterr().out
    rec.close()
    code = main(["watch", str(path), "-o", str(tmp_path / "live"), "-q", "-m", "curves"])
    out = capsys.readouterr().out
    assert code == 0 and "the writer closed the store" in out
    assert str(tmp_path / "live" / "index.html") in out
    assert set(gs.open_run(str(path)).results) == {"curves"}


# ------------------------------------------------------------------ child-process writers
def _child(path: Path, **kw) -> subprocess.Popen:
    args = ", ".join(f"{k}={v!r}" for k, v in kw.items())
    code = f"from tests._watch_helpers import write; write({str(path)!r}, {args})"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env)


@pytest.mark.slow
def test_watch_a_child_process_writer_with_an_exported_model(tmp_path):
    """nn.Sequential (no grokscope class: the watcher rebuilds it from the stored program)."""
    path = tmp_path / "run.zarr"
    proc = _child(path, steps=40, every=2, sleep=0.1)
    w = gs.watch(str(path), interval=0.1, timeout=120, progress=False)
    assert proc.wait(60) == 0
    assert w.reason == "closed" and w.n_steps == 20 and w.last_step == 38
    assert w.passes >= 2
    _assert_equal_to_fresh(w.results, path, tmp_path, DEFAULT_MEASURES)  # fourier included


@pytest.mark.slow
def test_watch_a_killed_child_writer(tmp_path):
    path = tmp_path / "run.zarr"
    proc = _child(path, steps=40, every=2, sleep=0.05, kill_after=6)
    for _ in range(1200):  # the child's start (imports, exporting the model) is not timed
        if (path / "zarr.json").exists():
            break
        time.sleep(0.1)
    w = gs.watch(str(path), interval=0.1, timeout=5, progress=False)
    assert proc.wait(60) == -9
    assert w.reason == "timeout" and w.n_steps == 6 and "not closed" in w.message


@pytest.mark.slow
def test_recorder_watch_process_mode(tmp_path):
    path = tmp_path / "run.zarr"
    write(str(path), builtin=True, steps=16, every=2, sleep=0.05,
          watch={"mode": "process", "out": str(tmp_path / "live"), "interval": 0.1})
    run = gs.open_run(str(path))
    assert list(run.results["curves"].step.values) == list(run.steps)
    assert "<td>14</td>" in (tmp_path / "live" / "index.html").read_text()


# ------------------------------------------------------------------ growing runs are extended
@pytest.mark.parametrize(("keys", "second_pass"), [("step", 2), ("final", 5)])
def test_fourier_keys_step_extends_a_growing_run_instead_of_recomputing(tmp_path, monkeypatch,
                                                                         keys, second_pass):
    """keys="step" uses no "last" reference, so new checkpoints cost one step each; the
    default keys="final" compares every step with the last one and recomputes them all."""
    import dataclasses

    from grokscope.measures import registry

    spec = registry.get("fourier")
    calls = []

    def counting(ckpt, **params):
        calls.append(ckpt.step)
        return spec.fn(ckpt, **params)

    monkeypatch.setitem(registry._REGISTRY, "fourier", dataclasses.replace(spec, fn=counting))
    path = tmp_path / "run.zarr"
    rec = _unclosed(path, steps=3)
    gs.analyze(str(path), {"fourier": {"keys": keys}}, progress=False, num_threads=1)
    assert calls == [0, 1, 2]
    for step in (3, 4):
        rec.record(step)
    calls.clear()
    res = gs.analyze(str(path), {"fourier": {"keys": keys}}, progress=False, num_threads=1)
    assert len(calls) == second_pass and calls[-2:] == [3, 4]
    assert list(res["fourier"].step.values) == [0, 1, 2, 3, 4]
    rec.close()


@pytest.mark.slow
def test_ctrl_c_stops_grokscope_watch_cleanly(tmp_path):
    import signal

    from grokscope.watch import CLI_COMMAND

    path = tmp_path / "run.zarr"
    rec = _unclosed(path)
    proc = subprocess.Popen([*CLI_COMMAND, "watch", str(path), "-m", "curves", "--interval",
                             "0.1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    for line in proc.stderr:  # wait for its first pass
        if line.startswith("watch: step 2"):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; results of the 3 checkpoints analysed are in the store" in out
    assert "Traceback" not in err
    rec.close()
    assert list(gs.open_run(str(path)).results["curves"].step.values) == [0, 1, 2]


def test_a_pass_takes_what_fits_in_its_budget_and_the_final_pass_catches_up(tmp_path):
    from grokscope.watch import _Watcher

    path = tmp_path / "run.zarr"
    rec = _unclosed(path, steps=2)
    (tmp_path / "live").mkdir()
    w = _Watcher(str(path), tmp_path / "live", ["curves"], threshold=0.9, model=None,
                 anatomy=None, trust_code=False, storage_options=None, num_threads=1,
                 progress=False, dpi=40, budget=1.0)
    assert w.analysis_pass(final=False) and w.analyzed == 2  # the first pass takes all
    for step in (2, 3, 4):
        rec.record(step)
    w.cost = 0.6  # seconds per checkpoint: one fits in the budget
    assert w.analysis_pass(final=False)
    assert (w.analyzed, w.committed, w.state.last_step) == (3, 5, 2)
    assert list(w.state.results["curves"].step.values) == [0, 1, 2]
    assert "(2 more committed, being caught up)" in (tmp_path / "live" / "index.html").read_text()
    assert w.analysis_pass(final=True)
    assert list(w.state.results["curves"].step.values) == [0, 1, 2, 3, 4]
    rec.close()


def test_a_failing_forecast_is_reported_and_the_watch_goes_on(tmp_path, monkeypatch):
    import sys as _sys

    def broken(*args, **kwargs):
        raise ValueError("chunks do not add up")

    monkeypatch.setattr(_sys.modules["grokscope.forecast"], "forecast", broken)
    path = tmp_path / "run.zarr"
    _unclosed(path, steps=2).close()
    with pytest.warns(RuntimeWarning, match="the forecast failed"):
        w = gs.watch(str(path), interval=0.05, progress=False, measures=["curves"])
    assert w.reason == "closed" and w.forecast is None
    assert "the forecast failed (ValueError: chunks do not add up)" in w.forecast_note
    assert "the forecast failed" in (w.out / "index.html").read_text()


def test_watching_an_analysed_run_leaves_its_fourier_result_alone(tmp_path):
    """The watcher's Fourier (keys='step') is stored as fourier_steps: a fourier result the
    user computed with the default keys is neither replaced nor warned about."""
    path = tmp_path / "run.zarr"
    write(str(path), steps=10, every=2, sleep=0.0, builtin=True)
    mine = gs.analyze(str(path), ["fourier"], progress=False, num_threads=1)["fourier"]
    assert mine.attrs["keys"] == "final"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # "replacing results/..." would raise
        w = gs.watch(str(path), interval=0.05, timeout=30, progress=False)
    assert w.reason == "closed"
    run = gs.open_run(str(path))
    assert {"fourier", "fourier_steps"} <= set(run.results)
    xr.testing.assert_identical(run.results["fourier"].load(), mine)
    assert run.results["fourier_steps"].attrs["keys"] == "step"
    assert list(run.results["fourier_steps"].step.values) == [0, 2, 4, 6, 8]
