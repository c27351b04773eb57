"""Thread calibration (``num_threads="auto"``), ``--threads``, and the analysis' progress bar
and per-measure timings."""

from __future__ import annotations

import json
import sys
import time

import pytest
import torch

import grokscope as gs
from grokscope import _threads
from grokscope._threads import (
    auto_threads,
    calibrate,
    candidates,
    check_threads,
    choose,
    torch_threads,
)
from grokscope.cli import build_parser, main
from grokscope.errors import ConfigError
from grokscope.train import train

from .conftest import record_tiny_run
from .test_train import FAST


# ----------------------------------------------------------------------------- calibration
def test_check_threads():
    assert check_threads("auto") == "auto" and check_threads(None) is None
    assert check_threads(3) == 3 and check_threads("4") == 4
    for bad in (0, -1, "many", 1.5, True):
        with pytest.raises(ConfigError, match="'auto', None or an integer"):
            check_threads(bad)


def test_candidates_are_powers_of_two_up_to_the_limit(monkeypatch):
    monkeypatch.setattr(_threads, "available_cpus", lambda: 12)
    with torch_threads(1):
        assert candidates() == [1, 2, 4, 8, 12]
        assert candidates(1) == [1]
    with torch_threads(6):  # torch's current setting is always tried
        assert candidates() == [1, 2, 4, 6, 8, 12]
        assert candidates(4) == [1, 2, 4]


def test_choose_prefers_fewer_threads_within_the_margin():
    assert choose({1: 1.00, 2: 0.95, 4: 0.60}) == 4
    assert choose({1: 1.00, 2: 0.95, 4: 0.92}) == 1  # 8% faster is not enough
    assert choose({1: 1.00, 2: 0.85, 4: 0.84}) == 2
    assert choose({1: 8.0, 2: 1.0}, margin=0.0) == 2


def _sleepy(per_thread: float, fixed: float = 0.0):
    calls = []

    def work():
        n = torch.get_num_threads()
        calls.append(n)
        time.sleep(fixed + per_thread * n)

    return work, calls


def test_calibrate_finds_the_fast_count_and_restores_the_setting():
    before = torch.get_num_threads()
    slow_with_more, _ = _sleepy(0.002)  # time grows with threads: 1 wins
    cal = calibrate(slow_with_more, max_threads=4, budget_s=0.2)
    assert cal.threads == 1 and set(cal.seconds) >= {1, 2, 4}
    assert cal.seconds[1] < cal.seconds[4]

    def fast_with_more():
        time.sleep(0.008 / torch.get_num_threads())

    cal = calibrate(fast_with_more, max_threads=4, budget_s=0.2)
    assert cal.threads == 4
    assert torch.get_num_threads() == before


def test_calibration_is_cached_per_key():
    work, calls = _sleepy(0.001)
    key = ("test_calibration_is_cached_per_key", object())
    first = calibrate(work, key=key, max_threads=2, budget_s=0.05)
    n = len(calls)
    second = calibrate(work, key=key, max_threads=2, budget_s=0.05)
    assert len(calls) == n and second.cached and not first.cached
    assert second.threads == first.threads
    calibrate(work, key=key, max_threads=2, budget_s=0.05)
    calibrate(work, key=(key, "other"), max_threads=2, budget_s=0.05)
    assert len(calls) > n


def test_auto_threads_leaves_the_model_and_rng_as_they_were():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.5),
                                torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 3))
    model.train()
    x = torch.randn(32, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    n, cal = auto_threads("auto", model, x, key_extra=("test_auto_threads",))
    assert cal is not None and n == cal.threads and n in candidates()
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_auto_threads_passes_explicit_settings_and_leaves_gpus_alone():
    model, x = torch.nn.Linear(4, 2), torch.zeros(3, 4)
    assert auto_threads(3, model, x) == (3, None)
    assert auto_threads(None, model, x) == (None, None)
    assert auto_threads("auto", model, x, device="cuda") == (None, None)


# ----------------------------------------------------------------------------- training
def test_train_records_the_thread_count(tmp_path, monkeypatch):
    run = train("modular", "mlp", tmp_path / "one", steps=5, **FAST)
    assert run.config["num_threads"] == 1
    calls = []
    real = _threads.auto_threads

    def spy(threads, *a, **kw):
        calls.append(threads)
        return real(threads, *a, **kw)

    monkeypatch.setattr(sys.modules["grokscope.train"], "auto_threads", spy)
    monkeypatch.setattr(_threads, "calibrate",
                        lambda work, **kw: _threads.Calibration(1, {1: 1.0, 2: 2.0}))
    run = train("modular", "mlp", tmp_path / "auto", steps=5, **{**FAST, "num_threads": "auto"})
    assert calls == ["auto"] and run.config["num_threads"] == 1
    # a continuation under "auto" keeps the recorded count (exact continuation), not a new one
    run = train("modular", "mlp", tmp_path / "one", steps=10, **{**FAST, "num_threads": "auto"})
    assert calls[-1] == 1 and run.steps[-1] == 10
    with pytest.raises(ConfigError, match="num_threads"):
        train("modular", "mlp", tmp_path / "bad", steps=5, **{**FAST, "num_threads": 0})


def test_cli_threads_option(tmp_path, capsys):
    parser = build_parser()
    assert parser.parse_args(["train", "-o", "x", "--threads", "auto"]).threads == "auto"
    assert parser.parse_args(["train", "-o", "x", "--threads", "2"]).threads == 2
    assert parser.parse_args(["train", "-o", "x"]).threads is None  # train's own default: auto
    assert parser.parse_args(["analyze", "r"]).threads == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "-o", "x", "--threads", "0"])
    assert "--threads" in capsys.readouterr().err
    out = tmp_path / "r.zarr"
    rc = main(["train", "--task-kwargs", json.dumps({"p": 11, "train_frac": 0.5}),
               "--model-kwargs", json.dumps({"width": 16}), "-o", str(out), "--steps", "5",
               "--threads", "1", "-q"])
    assert rc == 0 and gs.open_run(out).config["num_threads"] == 1


# ----------------------------------------------------------------------------- analysis
class _FakeBar:
    """Records the descriptions a tqdm bar is given (and refreshed with)."""

    instances: list[_FakeBar] = []

    def __init__(self, iterable=None, desc=None, **kwargs):
        self.iterable, self.descriptions = list(iterable or []), [desc]
        self.kwargs = kwargs
        _FakeBar.instances.append(self)

    def __iter__(self):
        return iter(self.iterable)

    def set_description(self, desc=None, refresh=True):
        self.descriptions.append((desc, refresh))

    def set_postfix_str(self, *a, **kw):
        pass

    def close(self):
        pass


def test_analysis_timings_and_progress_bar_name_each_measure(tmp_path, monkeypatch, capsys):
    run = record_tiny_run(tmp_path / "r.zarr")
    _FakeBar.instances.clear()
    monkeypatch.setattr("tqdm.auto.tqdm", _FakeBar)
    measures = ["curves", "kernel", "nfa", "phases"]
    res = gs.analyze(run, measures, progress=True, num_threads=1)
    assert set(res.timings) == set(res) == set(measures)
    assert all(isinstance(s, float) and s > 0 for s in res.timings.values())
    assert res.threads == 1
    (bar,) = _FakeBar.instances
    named = [d for d, refresh in bar.descriptions[1:] if refresh]
    step_measures = [m for m in measures if m != "phases"]  # phases: over the trajectory
    assert named[:len(step_measures)] == step_measures  # in order, at the first step
    assert named.count("nfa") == len(run.steps) and set(named) == set(step_measures)
    err = capsys.readouterr().err
    lines = [line.split() for line in err.splitlines() if line.startswith("  ")]
    assert {words[0] for words in lines} == set(measures)  # one line per measure, in seconds
    assert all(words[2] == "s" for words in lines)
    # nothing left to compute: every measure is there with 0 s
    res = gs.analyze(run, measures, progress=False, num_threads=1)
    assert res.timings == dict.fromkeys(measures, 0.0)


def test_analysis_auto_threads(tmp_path, monkeypatch):
    run = record_tiny_run(tmp_path / "r.zarr")
    seen = []

    def fake_calibrate(work, **kw):
        work()  # the workload runs on the stored model and data
        seen.append(kw["key"])
        return _threads.Calibration(1, {1: 1.0, 2: 3.0})

    monkeypatch.setattr(_threads, "calibrate", fake_calibrate)
    before = torch.get_num_threads()
    res = gs.analyze(run, ["curves"], progress=False)
    assert res.threads == 1 and len(seen) == 1
    assert torch.get_num_threads() == before
    res = gs.analyze(run, ["curves"], progress=False, num_threads=None, recompute=True)
    assert res.threads is None and len(seen) == 1
