"""gs.forecast: known answers on stores whose metrics and weights follow designed trajectories."""

from __future__ import annotations

import importlib
import json
import math

import numpy as np
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
    monkeypatch.setitem(fc.CONSTANTS, "TREND_MIN", 0.5)  # the trend is RATE * upto >= 0.6
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


def test_a_weak_trend_is_not_extrapolated(designed, monkeypatch):
    # at upto=300 the log loss fell by RATE * 300 = 0.6 over the steps seen: a trend only when
    # TREND_MIN allows it
    monkeypatch.setitem(fc.CONSTANTS, "EARLY_COEF", (math.log(2.0), 0.0))
    monkeypatch.setitem(fc.CONSTANTS, "TREND_MIN", 0.59)
    assert gs.forecast(designed, upto=300).attrs["branch"] == "trend"
    monkeypatch.setitem(fc.CONSTANTS, "TREND_MIN", 0.61)
    ds = gs.forecast(designed, upto=300)
    assert ds.attrs["branch"] == "early"
    assert float(ds.t_test_pred) == pytest.approx(600.0)


def test_interval_and_probability_follow_the_constants(designed, monkeypatch):
    monkeypatch.setitem(fc.CONSTANTS, "TREND_MIN", 0.5)
    monkeypatch.setitem(fc.CONSTANTS, "LOSS_CRIT", math.exp(-2.0))
    monkeypatch.setitem(fc.CONSTANTS, "LOSS_GAIN", 1.0)
    monkeypatch.setitem(fc.CONSTANTS, "Q_TREND", (0.8, 1.5))
    # P(generalises) = sigmoid(log 3) = 3/4 whatever the signals
    monkeypatch.setitem(fc.CONSTANTS, "PG_INPUTS", ("test_acc",))
    monkeypatch.setitem(fc.CONSTANTS, "PG_COEF", (0.0,))
    monkeypatch.setitem(fc.CONSTANTS, "PG_BIAS", math.log(3.0))
    ds = gs.forecast(designed, upto=500, horizon=1500)
    assert float(ds.t_test_pred) == pytest.approx(1000.0)
    assert float(ds.t_test_low) == pytest.approx(800.0)
    assert float(ds.t_test_high) == pytest.approx(1500.0)
    assert float(ds.p_generalises) == pytest.approx(0.75)
    # the horizon at the interval's top: 90% of the crossings come before it
    assert float(ds.p_by_horizon) == pytest.approx(0.9)
    assert float(ds.p_grok) == pytest.approx(0.75 * 0.9)
    assert ds.attrs["horizon"] == 1500
    # at its bottom: 10%; at the geometric middle of the interval: one half
    assert float(gs.forecast(designed, upto=500, horizon=800).p_by_horizon) == pytest.approx(0.1)
    mid = gs.forecast(designed, upto=500, horizon=round(1000 * math.sqrt(0.8 * 1.5)))
    assert float(mid.p_by_horizon) == pytest.approx(0.5, abs=1e-3)
    # the signals enter through PG_COEF: test accuracy 0.05 at step 500
    monkeypatch.setitem(fc.CONSTANTS, "PG_COEF", (20.0,))
    monkeypatch.setitem(fc.CONSTANTS, "PG_BIAS", 0.0)
    assert float(gs.forecast(designed, upto=500).p_generalises) == pytest.approx(
        1 / (1 + math.exp(-1.0)))


def test_v1_and_v2_probabilities_keep_their_one_logistic():
    sig = dict.fromkeys(("loss_rel_peak", "loss_trend", "train_acc", "test_acc"), 0.0)
    c = {**fc.CONSTANTS_V1, "LOGIT_COEF": (-1.0, 0.0, 0.0, 0.0, 0.0), "LOGIT_BIAS": 0.0}
    # z = -log(1000 / 4000) = log 4: p = 4 / 5, and the two v3 parts do not exist
    p, g, h = fc.p_grok(sig, 1000.0, "trend", 4000.0, c)
    assert p == pytest.approx(0.8) and math.isnan(g) and math.isnan(h)
    assert fc.p_grok(sig, 1000.0, "trend", 250.0, c)[0] == pytest.approx(0.2)
    v2 = fc.p_grok({**sig, "gini_embed_rel": math.nan}, 1000.0, "early", 4000.0, fc.CONSTANTS_V2)
    assert 0 < v2[0] < 1 and math.isnan(v2[1])


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
    sa = {k: v for k, v in a.attrs.items() if k.startswith("signal_")}
    sb = {k: v for k, v in b.attrs.items() if k.startswith("signal_")}
    assert sa.keys() == sb.keys()
    for k in sa:  # NaN (no embedding signal on this task) equals NaN here
        assert sa[k] == sb[k] or (math.isnan(sa[k]) and math.isnan(sb[k])), k
    # while the whole misleading store says otherwise
    assert gs.forecast(misled).attrs["branch"] == "early"


def test_raw_parameter_model_gives_the_same_forecast(tmp_path, designed, monkeypatch):
    monkeypatch.setitem(fc.CONSTANTS, "TREND_MIN", 0.5)
    raw = record(tmp_path / "raw.zarr", RawEinsum(), STEPS)
    a, b = gs.forecast(designed, upto=600), gs.forecast(raw, upto=600)
    assert float(a.t_test_pred) == pytest.approx(float(b.t_test_pred))
    assert float(a.p_grok) == pytest.approx(float(b.p_grok))
    # the norms differ (other shapes) but grow alike: ratio 1 + 600 / 100 in both
    assert b.attrs["signal_norm_ratio"] == pytest.approx(7.0)


def test_no_falling_loss_uses_the_early_branch_and_its_own_interval(tmp_path, monkeypatch):
    def flat(t, misleading=False):
        return {"train_acc": 1.0, "test_acc": 0.1, "train_loss": 0.1, "test_loss": 3.0 + t / 1e3}

    run = record(tmp_path / "flat.zarr", sequential(), STEPS[:12], metrics=flat)
    # upto * exp(a + b * test_acc) = 300 * exp(10 ln 3 * 0.1) = 900
    monkeypatch.setitem(fc.CONSTANTS, "EARLY_COEF", (0.0, 10 * math.log(3.0)))
    monkeypatch.setitem(fc.CONSTANTS, "Q_EARLY", (0.5, 2.0))
    monkeypatch.setitem(fc.CONSTANTS, "Q_TREND", (0.9, 1.1))  # not this branch's
    ds = gs.forecast(run, upto=300)
    assert ds.attrs["branch"] == "early"
    assert float(ds.t_test_pred) == pytest.approx(900.0)
    assert float(ds.t_test_low) == pytest.approx(450.0)
    assert float(ds.t_test_high) == pytest.approx(1800.0)
    assert math.isnan(ds.attrs["signal_t_loss_cross"])
    # the early guess is never before upto, whatever the coefficients say
    monkeypatch.setitem(fc.CONSTANTS, "EARLY_COEF", (-5.0, 0.0))
    ds = gs.forecast(run, upto=300)
    assert float(ds.t_test_pred) == 300.0 and float(ds.t_test_low) == 300.0


def test_per_branch_intervals_equal_the_formula():
    c = {**fc.CONSTANTS, "Q_TREND": (0.8, 1.5), "Q_EARLY": (0.25, 4.0)}
    assert fc.interval(1000.0, 100, "trend", c) == pytest.approx((800.0, 1500.0))
    assert fc.interval(1000.0, 100, "early", c) == pytest.approx((250.0, 4000.0))
    # never below upto: the truth is not before the step the forecast is made at
    assert fc.interval(1000.0, 900, "early", c) == pytest.approx((900.0, 4000.0))
    v1 = fc.CONSTANTS_V1
    lo, hi = v1["Q_FALLBACK"]
    assert fc.interval(1000.0, 1, "fallback", v1) == pytest.approx((1000 * lo, 1000 * hi))


def test_v1_constants_keep_v1s_fallback():
    sig = {"upto": 200.0, "t_loss_cross": math.nan, "test_acc": 0.3}
    t, branch = fc.predict_time(sig, fc.CONSTANTS_V1)
    assert branch == "fallback" and t == pytest.approx(200 * fc.CONSTANTS_V1["FALLBACK_RATIO"])
    a, b = fc.CONSTANTS["EARLY_COEF"]
    t, branch = fc.predict_time(sig)
    assert branch == "early" and t == pytest.approx(200 * max(1.0, math.exp(a + b * 0.3)))
    sig = {**sig, "t_loss_cross": 500.0}
    for c in (fc.CONSTANTS, fc.CONSTANTS_V1):
        assert fc.predict_time(sig, c) == (pytest.approx(200 + c["LOSS_GAIN"] * 300), "trend")


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
    def nan_acc(t, misleading=False):
        return {**designed_metrics(t), "test_acc": math.nan}

    run = record(tmp_path / "nanacc.zarr", sequential(), STEPS[:5], metrics=nan_acc)
    with pytest.raises(ForecastError, match="'test_acc' is NaN at every stored step"):
        gs.forecast(run)
    with pytest.raises(ConfigError, match="upto"):
        gs.forecast(designed, upto=-1)
    with pytest.raises(ConfigError, match="threshold"):
        gs.forecast(designed, threshold=1.5)
    with pytest.raises(ConfigError, match="horizon"):
        gs.forecast(designed, horizon=2.5)


def test_cli_prints_json_and_names_the_flag(designed, capsys, monkeypatch):
    monkeypatch.setitem(fc.CONSTANTS, "TREND_MIN", 0.5)
    assert main(["forecast", str(designed.path), "--upto", "500", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    ds = gs.forecast(designed, upto=500)
    assert doc["t_test_pred"] == float(ds.t_test_pred)
    assert doc["p_grok"] == float(ds.p_grok)
    assert doc["p_grok"] == pytest.approx(doc["p_generalises"] * doc["p_by_horizon"])
    assert doc["branch"] == "trend"
    assert doc["t_test_observed"] is None  # NaN is written as null (strict JSON)
    assert main(["forecast", str(designed.path), "--upto", "500"]) == 0
    text = capsys.readouterr().out
    assert (f"p_grok = {float(ds.p_grok):.2f}" in text
            and f"= P(generalises) {float(ds.p_generalises):.2f} x P(by then) "
                f"{float(ds.p_by_horizon):.2f}" in text)
    assert main(["forecast", str(designed.path)]) == 0
    assert "reached 0.9 at step 800" in capsys.readouterr().out
    assert main(["forecast", str(designed.path), "--upto", "-5"]) == 2
    assert "--upto" in capsys.readouterr().err


def test_fitted_constants_are_sane_and_are_the_fit():
    from pathlib import Path

    c = fc.CONSTANTS
    assert c["VERSION"] == 3 and fc.CONSTANTS_V2["VERSION"] == 2
    for k in (c, fc.CONSTANTS_V2):
        assert 0 < k["LOSS_CRIT"] < 1 and k["LOSS_GAIN"] > 0
        assert k["EARLY_COEF"][1] < 0  # higher test accuracy: sooner
        for lo, hi in (k["Q_TREND"], k["Q_EARLY"]):
            assert 0 < lo < 1 < hi
    assert fc.CONSTANTS_V1["FALLBACK_RATIO"] > 1
    # P(generalises) rises with test accuracy and with a falling test loss
    coef = dict(zip(c["PG_INPUTS"], c["PG_COEF"]))
    assert set(coef) == {"test_acc", "acc_trend", "loss_rel_peak", "loss_trend"}
    assert coef["test_acc"] > 0 and coef["loss_trend"] < 0
    sig = dict.fromkeys(("loss_rel_peak", "loss_trend", "train_acc", "test_acc",
                         "gini_embed_rel"), 0.0)
    assert len(fc.CONSTANTS_V2["LOGIT_COEF"]) == len(
        fc.logit_features(sig, 10.0, 100.0, fc.CONSTANTS_V2)) == 7
    assert len(fc.CONSTANTS_V1["LOGIT_COEF"]) == len(
        fc.logit_features(sig, 10.0, 100.0, fc.CONSTANTS_V1)) == 5
    reports = Path(__file__).resolve().parents[1] / "reports" / "forecast"
    for name, have in (("constants_v3.json", c), ("constants_v2.json", fc.CONSTANTS_V2)):
        fitted = json.loads((reports / name).read_text())["constants"]
        assert set(fitted) == set(have), name
        for k, v in fitted.items():
            if k == "PG_INPUTS":
                assert tuple(have[k]) == tuple(v)
                continue
            np.testing.assert_allclose(np.asarray(have[k], float), np.asarray(v, float),
                                       rtol=1e-5, atol=1e-6, err_msg=f"{name}: {k}")


def test_imported_foreign_checkpoints_with_their_metric_names(tmp_path, monkeypatch):
    # someone else's loop: one torch file per checkpoint, metrics named val_acc / val_loss
    model = sequential()
    ck = tmp_path / "ck"
    ck.mkdir()
    for t in STEPS:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(1 + t / 100)
        m = designed_metrics(t)
        torch.save({"step": t, "model": model.state_dict(), "val_acc": m["test_acc"],
                    "train_acc": m["train_acc"], "val_loss": m["test_loss"],
                    "train_loss": m["train_loss"]}, ck / f"ckpt_{t}.pt")
    run = gs.import_checkpoints(ck, tmp_path / "imp.zarr", model=sequential(),
                                data=tiny_data(), progress=False)
    monkeypatch.setitem(fc.CONSTANTS, "LOSS_CRIT", math.exp(-2.0))
    monkeypatch.setitem(fc.CONSTANTS, "LOSS_GAIN", 1.0)
    monkeypatch.setitem(fc.CONSTANTS, "TREND_MIN", 0.5)
    ds = gs.forecast(tmp_path / "imp.zarr", upto=500)
    assert ds.attrs["test_metric"] == "val_acc"
    assert float(ds.t_test_pred) == pytest.approx(1000.0, rel=1e-6)
    assert float(gs.forecast(run).t_test_pred) == T_JUMP


def test_upto_before_the_first_stored_step_is_an_error(tmp_path):
    run = record(tmp_path / "late.zarr", sequential(), [10, 20, 50])
    with pytest.raises(ForecastError, match=r"steps <= upto=5 \(first stored step 10\).*--upto"):
        gs.forecast(run, upto=5)
    assert int(gs.forecast(run, upto=10).upto) == 10


@pytest.mark.slow  # trains a run (~5 s idle, a minute on a loaded 2-core box)
def test_trained_run_forecast_brackets_the_truth(tmp_path):
    run = gs.train(
        "parity", "mlp", tmp_path / "parity.zarr",
        task_kwargs={"n_bits": 20, "k": 3, "n_train": 600, "n_test": 500},
        model_kwargs={"width": 128}, lr=1e-2, weight_decay=1.0, steps=600,
        schedule={"log_until": 100, "per_decade": 10, "every": 20},
        stop_when={"test_acc": 0.9, "patience": 100}, progress=False, num_threads=1,
    )
    truth = float(gs.forecast(run).t_test_observed)
    assert 100 < truth < 500
    # p_grok at the horizon the logistic model was fitted with (the FIT runs' 4000-step cap);
    # the recorded budget (600) is the default and gives a lower p_grok (docs/forecast.md)
    early = gs.forecast(run, upto=100, horizon=4000)
    assert early.attrs["branch"] == "trend"
    assert float(early.p_grok) > 0.5
    assert float(early.t_test_low) <= truth <= float(early.t_test_high)
    budget = gs.forecast(run, upto=100)
    assert budget.attrs["horizon"] == 600
    assert float(budget.p_grok) < float(early.p_grok)


def _eval_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "analyses" / "08_forecast_eval.py"
    spec = importlib.util.spec_from_file_location("forecast_eval", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_evaluation_scores_have_known_values():
    ev = _eval_module()
    y = np.array([True, True, False, False])
    assert ev.auroc(y, np.array([0.9, 0.8, 0.1, 0.85])) == 0.75
    assert ev.auroc(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert math.isnan(ev.auroc(np.array([True, True]), np.array([0.1, 0.2])))

    def pt(groks, t_test, upto):
        return {"run": {"groks": groks, "t_test": t_test if groks else math.nan},
                "upto": upto}

    pts = [pt(True, 100, 50), pt(True, 200, 100), pt(True, 400, 200), pt(False, 0, 100)]
    preds = [{"p": 0.9, "t": 110, "lo": 90, "hi": 130, "branch": "trend"},
             {"p": 0.8, "t": 300, "lo": 250, "hi": 350, "branch": "trend"},
             {"p": 0.3, "t": 400, "lo": 300, "hi": 500, "branch": "fallback"},
             {"p": 0.2, "t": 500, "lo": 400, "hi": 600, "branch": "fallback"}]
    s = ev.summarize(pts, preds)
    assert s["auroc"] == 1.0
    assert s["median_rel_err"] == pytest.approx(0.1)  # errors 0.1, 0.5, 0.0
    assert s["coverage80"] == pytest.approx(2 / 3)
    assert s["frac_called"] == pytest.approx(2 / 3)
    assert s["median_lead"] == 75.0  # leads 50 and 100 of the two flagged runs
    assert s["by_branch"]["trend"]["n"] == 2 and s["by_branch"]["fallback"]["n"] == 1


# ------------------------------------------------------------------ the embedding's Fourier signal
P = 7  # modulus of the designed modular runs; frequencies 1..3


def fourier_table(freqs: tuple[int, ...]) -> torch.Tensor:
    """A two-hot embedding ``(2P, P)``: in each operand half, column ``j`` is
    ``cos(2 pi f_j a / P)``, so the per-frequency norms are equal on ``freqs`` and 0 elsewhere
    (Gini 1/3 for two of the three frequencies, 2/3 for one)."""
    a = torch.arange(P, dtype=torch.float64)
    half = torch.zeros(P, P, dtype=torch.float64)
    for j, f in enumerate(freqs):
        half[:, j] = torch.cos(2 * math.pi * f * a / P)
    return torch.cat([half, half]).float()


class RawTwoHot(nn.Module):
    """A researcher's modular MLP: raw embedding ``E`` (two-hot rows) and einsum."""

    def __init__(self) -> None:
        super().__init__()
        self.E = nn.Parameter(torch.zeros(2 * P, P))
        self.U = nn.Parameter(torch.zeros(P, P))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nh,hc->nc", torch.relu(torch.einsum("nd,dh->nh", x, self.E)),
                            self.U)


def modular_run(path, model: nn.Module, set_table) -> gs.Run:
    """Embedding sparse in 2 frequencies before step 200 and in 1 from step 200 on."""
    from grokscope.tasks import make_task

    data = make_task("modular", p=P, train_frac=0.5)
    with gs.Recorder(path, model, data, export_program=False) as rec:
        for t in STEPS[:12]:  # steps 0..300
            with torch.no_grad():
                set_table(model, fourier_table((1, 2) if t < 200 else (1,)))
            rec.record(t, model, designed_metrics(t))
    return gs.open_run(path)


@pytest.fixture(scope="module")
def modular_seq(tmp_path_factory):
    model = nn.Sequential(nn.Linear(2 * P, P, bias=False), nn.ReLU(), nn.Linear(P, P))
    return modular_run(tmp_path_factory.mktemp("fcmod") / "seq.zarr", model,
                       lambda m, t: m[0].weight.copy_(t.T))


def test_gini_embed_is_the_designed_sparsity(modular_seq):
    assert fc.embedding_gini(fourier_table((1, 2)).numpy(), P) == pytest.approx(1 / 3)
    assert fc.embedding_gini(fourier_table((1,)).numpy(), P) == pytest.approx(2 / 3)
    late, early = gs.forecast(modular_seq, upto=300), gs.forecast(modular_seq, upto=150)
    assert late.attrs["signal_gini_embed"] == pytest.approx(2 / 3)
    assert late.attrs["signal_gini_embed_rel"] == pytest.approx(math.log(2))
    assert early.attrs["signal_gini_embed"] == pytest.approx(1 / 3)
    assert early.attrs["signal_gini_embed_rel"] == pytest.approx(0.0, abs=1e-9)
    assert "'0.weight' (p = 7)" in late.attrs["gini_embed_source"]


def test_gini_embed_enters_v2s_p_grok(modular_seq, designed, monkeypatch):
    # v3's P(generalises) does not read it (it lowered the cross-validated AUROC); v2's did
    assert "gini_embed_rel" not in fc.CONSTANTS["PG_INPUTS"]
    monkeypatch.setattr(fc, "CONSTANTS", {**fc.CONSTANTS_V2, "LOGIT_BIAS": 0.0,
                                          "LOGIT_COEF": (0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.5)})
    # z = log 2 + 0.5 (the signal exists): p = 1 / (1 + exp(-z))
    z = math.log(2) + 0.5
    assert float(gs.forecast(modular_seq, upto=300).p_grok) == pytest.approx(
        1 / (1 + math.exp(-z)))
    # a task without a modulus: the signal is absent (0, 0) and says why
    ds = gs.forecast(designed, upto=300)
    assert math.isnan(ds.attrs["signal_gini_embed"])
    assert "not a modular-arithmetic task" in ds.attrs["gini_embed_source"]
    assert float(ds.p_grok) == pytest.approx(0.5)


def test_gini_embed_of_a_raw_parameter_model_and_an_anatomy_key(tmp_path, modular_seq):
    def fill(m, t):
        m.E.copy_(t)

    raw = modular_run(tmp_path / "raw.zarr", RawTwoHot(), fill)
    want = gs.forecast(modular_seq, upto=300).attrs["signal_gini_embed_rel"]
    # the caller names the table (no orientation: the axis of length 2p is the token axis)
    ds = gs.forecast(raw.path, upto=300, anatomy={"embedding": "E"})
    assert ds.attrs["signal_gini_embed_rel"] == pytest.approx(want)
    assert "'E'" in ds.attrs["gini_embed_source"]
    # a table with no token axis: NaN and the reason, not an error
    bad = gs.forecast(modular_seq.path, upto=300, anatomy={"embedding": "2.bias"})
    assert math.isnan(bad.attrs["signal_gini_embed"])
    assert "no axis of p = 7" in bad.attrs["gini_embed_source"]


def test_horizon_defaults_to_the_recorded_step_budget(tmp_path, designed):
    assert designed.config.get("steps") is None  # a Recorder-only store: 10 x upto
    assert gs.forecast(designed, upto=300).attrs["horizon"] == 3000
    run = gs.train("parity", "mlp", tmp_path / "budget.zarr",
                   task_kwargs={"n_bits": 6, "k": 2, "n_train": 32, "n_test": 16},
                   model_kwargs={"width": 8}, steps=30, progress=False, num_threads=1)
    assert run.config["steps"] == 30
    assert gs.forecast(run, upto=10).attrs["horizon"] == 30
