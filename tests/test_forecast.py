"""gs.forecast: known answers on stores whose metrics and weights follow designed trajectories."""

from __future__ import annotations

import importlib
import json
import math

import pytest
import torch
from torch import nn

import grokscope as gs
from grokscope.cli import main
from grokscope.errors import ConfigError
from grokscope.forecast import ForecastError

from ._store_helpers import tiny_data

#: the module (``gs.forecast`` / ``grokscope.forecast`` is the function)
fc = importlib.import_module("grokscope.forecast")

#: the designed run: test loss 2 exp(-RATE t), test accuracy 0.05 until T_JUMP then 0.95,
#: every parameter entry 1 + t / 100 (weight norm grows linearly), train accuracy 1 from 50
RATE = 0.002
T_JUMP = 800
STEPS = [0, 1, 2, 5, 10, 20, 50, *range(100, 1001, 50)]


class RawEinsum(nn.Module):
    """A researcher's model: raw parameters and einsum, custom names."""

    def __init__(self) -> None:
        super().__init__()
        self.W_in = nn.Parameter(torch.zeros(4, 8))
        self.W_out = nn.Parameter(torch.zeros(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nh,hc->nc", torch.relu(torch.einsum("nd,dh->nh", x, self.W_in)),
                            self.W_out)


def sequential() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def designed_metrics(t: int, *, misleading: bool = False) -> dict[str, float]:
    if misleading:  # after the cut: the loss rises and accuracy never passes the threshold
        return {"train_acc": 1.0, "test_acc": 0.5, "train_loss": 0.01, "test_loss": 50.0 + t}
    return {
        "train_acc": 1.0 if t >= 50 else 0.5,
        "test_acc": 0.95 if t >= T_JUMP else 0.05,
        "train_loss": 1.0 / (1 + t),
        "test_loss": 2.0 * math.exp(-RATE * t),
    }


def record(path, model: nn.Module, steps: list[int], metrics=designed_metrics,
           later: list[int] = ()) -> gs.Run:
    with gs.Recorder(path, model, tiny_data(), export_program=False) as rec:
        for t in [*steps, *later]:
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(1 + t / 100)
            rec.record(t, model, metrics(t) if t in steps else metrics(t, misleading=True))
    return gs.open_run(path)


@pytest.fixture(scope="module")
def designed(tmp_path_factory):
    return record(tmp_path_factory.mktemp("fc") / "run.zarr", sequential(), STEPS)


def test_loss_trend_crossing_is_the_designed_step(designed, monkeypatch):
    # log test loss falls at RATE per step from log 2: it reaches LOSS_CRIT * 2 at
    # ln(1 / LOSS_CRIT) / RATE whatever step the forecast is made at
    monkeypatch.setitem(fc.CONSTANTS, "LOSS_CRIT", math.exp(-2.0))  # crossing at step 1000
    monkeypatch.setitem(fc.CONSTANTS, "LOSS_GAIN", 1.0)
    for upto in (300, 500, 700):
        ds = gs.forecast(designed, upto=upto)
        assert ds.attrs["branch"] == "trend"
        assert int(ds.upto) == upto
        assert float(ds.t_test_pred) == pytest.approx(1000.0, rel=1e-6)
        assert ds.attrs["signal_loss_trend"] == pytest.approx(-RATE * upto, rel=1e-6)
        assert ds.attrs["signal_norm_ratio"] == pytest.approx(1 + upto / 100, rel=1e-6)
        assert ds.attrs["signal_t_train"] == 50.0
        assert ds.attrs["signal_test_acc"] == pytest.approx(0.05)
        assert math.isnan(float(ds.t_test_observed))
    monkeypatch.setitem(fc.CONSTANTS, "LOSS_GAIN", 0.5)  # remaining steps halved
    assert float(gs.forecast(designed, upto=500).t_test_pred) == pytest.approx(750.0)


def test_interval_and_probability_follow_the_constants(designed, monkeypatch):
    monkeypatch.setitem(fc.CONSTANTS, "LOSS_CRIT", math.exp(-2.0))
    monkeypatch.setitem(fc.CONSTANTS, "LOSS_GAIN", 1.0)
    monkeypatch.setitem(fc.CONSTANTS, "Q_TREND", (0.8, 1.5))
    monkeypatch.setitem(fc.CONSTANTS, "LOGIT_COEF", (-1.0, 0.0, 0.0, 0.0))
    monkeypatch.setitem(fc.CONSTANTS, "LOGIT_BIAS", 0.0)
    ds = gs.forecast(designed, upto=500, horizon=4000)
    assert float(ds.t_test_low) == pytest.approx(800.0)
    assert float(ds.t_test_high) == pytest.approx(1500.0)
    # z = -log(1000 / 4000) = log 4: p = 4 / 5
    assert float(ds.p_grok) == pytest.approx(0.8)
    assert ds.attrs["horizon"] == 4000
    # a shorter horizon than the predicted step makes grokking by then unlikely
    assert float(gs.forecast(designed, upto=500, horizon=250).p_grok) == pytest.approx(0.2)


def test_already_generalised_returns_the_observed_step(designed):
    ds = gs.forecast(designed)
    assert ds.attrs["branch"] == "observed"
    assert float(ds.p_grok) == 1.0
    assert float(ds.t_test_pred) == float(ds.t_test_low) == float(ds.t_test_high) == T_JUMP
    assert float(ds.t_test_observed) == T_JUMP
    # upto between stored steps uses the last stored step below it
    assert int(gs.forecast(designed, upto=799).upto) == 750


def test_upto_ignores_every_later_step(tmp_path, designed):
    cut = [s for s in STEPS if s <= 500]
    later = [550, 600, 700, 900, 1000]
    misled = record(tmp_path / "misled.zarr", sequential(), cut, later=later)
    a, b = gs.forecast(designed, upto=500), gs.forecast(misled, upto=500)
    for k in ("p_grok", "t_test_pred", "t_test_low", "t_test_high", "upto"):
        assert float(a[k]) == float(b[k]), k
    assert {k: v for k, v in a.attrs.items() if k.startswith("signal_")} == \
        {k: v for k, v in b.attrs.items() if k.startswith("signal_")}
    # while the whole misleading store says otherwise
    assert gs.forecast(misled).attrs["branch"] == "fallback"


def test_raw_parameter_model_gives_the_same_forecast(tmp_path, designed):
    raw = record(tmp_path / "raw.zarr", RawEinsum(), STEPS)
    a, b = gs.forecast(designed, upto=600), gs.forecast(raw, upto=600)
    assert float(a.t_test_pred) == pytest.approx(float(b.t_test_pred))
    assert float(a.p_grok) == pytest.approx(float(b.p_grok))
    # the norms differ (other shapes) but grow alike: ratio 1 + 600 / 100 in both
    assert b.attrs["signal_norm_ratio"] == pytest.approx(7.0)


def test_no_falling_loss_falls_back_to_a_multiple_of_upto(tmp_path, monkeypatch):
    def flat(t, misleading=False):
        return {"train_acc": 1.0, "test_acc": 0.1, "train_loss": 0.1, "test_loss": 3.0 + t / 1e3}

    run = record(tmp_path / "flat.zarr", sequential(), STEPS[:12], metrics=flat)
    monkeypatch.setitem(fc.CONSTANTS, "FALLBACK_RATIO", 3.0)
    monkeypatch.setitem(fc.CONSTANTS, "Q_FALLBACK", (0.5, 2.0))
    ds = gs.forecast(run, upto=300)
    assert ds.attrs["branch"] == "fallback"
    assert float(ds.t_test_pred) == 900.0
    assert (float(ds.t_test_low), float(ds.t_test_high)) == (450.0, 1800.0)
    assert math.isnan(ds.attrs["signal_t_loss_cross"])


def test_percent_accuracies_are_read_as_fractions(tmp_path):
    def pct(t, misleading=False):
        m = designed_metrics(t)
        return {**m, "test_acc": 100 * m["test_acc"], "train_acc": 100 * m["train_acc"]}

    run = record(tmp_path / "pct.zarr", sequential(), STEPS, metrics=pct)
    assert float(gs.forecast(run).t_test_pred) == T_JUMP


def test_errors_say_what_to_do(tmp_path, designed):
    def no_acc(t, misleading=False):
        return {"train_loss": 1.0, "test_loss": 1.0}

    run = record(tmp_path / "noacc.zarr", sequential(), STEPS[:5], metrics=no_acc)
    with pytest.raises(ForecastError, match="test accuracy metric.*test_acc"):
        gs.forecast(run)
    with pytest.raises(ConfigError, match="upto"):
        gs.forecast(designed, upto=-1)
    with pytest.raises(ConfigError, match="threshold"):
        gs.forecast(designed, threshold=1.5)
    with pytest.raises(ConfigError, match="horizon"):
        gs.forecast(designed, horizon=2.5)


def test_cli_prints_json_and_names_the_flag(designed, capsys):
    assert main(["forecast", str(designed.path), "--upto", "500", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    ds = gs.forecast(designed, upto=500)
    assert doc["t_test_pred"] == float(ds.t_test_pred)
    assert doc["p_grok"] == float(ds.p_grok)
    assert doc["branch"] == "trend"
    assert main(["forecast", str(designed.path)]) == 0
    assert "reached 0.9 at step 800" in capsys.readouterr().out
    assert main(["forecast", str(designed.path), "--upto", "-5"]) == 2
    assert "--upto" in capsys.readouterr().err


def test_fitted_constants_are_sane():
    c = fc.CONSTANTS
    assert 0 < c["LOSS_CRIT"] < 1 and c["LOSS_GAIN"] > 0 and c["FALLBACK_RATIO"] > 1
    for lo, hi in (c["Q_TREND"], c["Q_FALLBACK"]):
        assert 0 < lo < 1 < hi
    assert len(c["LOGIT_COEF"]) == len(fc.logit_features(
        dict.fromkeys(("loss_rel_peak", "loss_trend", "train_acc"), 0.0), 10.0, 100.0))
