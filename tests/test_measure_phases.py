"""Phase labels on synthetic curves and change points (docs/methods.md section 1)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import xarray as xr
from _store_helpers import TinyNet, tiny_data

import grokscope as gs
from grokscope.errors import ConfigError, MeasureNotApplicable
from grokscope.measures import get
from grokscope.measures.phases import changepoint, phase_summary, phases


def schedule(last: int = 20000) -> np.ndarray:
    """Log-spaced early, linear later (non-uniform), as recorders save."""
    early = np.unique(np.round(np.logspace(0, 3, 40)).astype(int))
    return np.concatenate([[0], early, np.arange(1100, last + 1, 100)])


def sigmoid(s: np.ndarray, t0: float, width: float, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    return lo + (hi - lo) / (1 + np.exp(-(s - t0) / width))


S = schedule()
CHANCE = 1 / 97


def label(train, test, steps=S, **kw) -> str:
    return str(phase_summary(steps, train, test, **kw)["label"].values)


def test_grokking():
    ds = phase_summary(S, sigmoid(S, 200, 20), sigmoid(S, 9000, 150, CHANCE))
    assert str(ds["label"].values) == "grokking"
    # the first *stored* step at or after the crossing 200 + 20 ln 9 (no interpolation)
    assert float(ds["t_train"]) == S[S >= 200 + 20 * math.log(9)][0]
    assert 9200 <= float(ds["t_test"]) <= 9400
    assert float(ds["gap"]) == pytest.approx(float(ds["t_test"]) - float(ds["t_train"]))
    assert ds.attrs["threshold"] == 0.9 and "step" not in ds.dims


def test_comprehension():
    assert label(sigmoid(S, 200, 20), sigmoid(S, 500, 30, CHANCE)) == "comprehension"


def test_memorisation():
    assert label(sigmoid(S, 200, 20), np.full(S.size, 0.05)) == "memorisation"


def test_confusion():
    assert label(np.full(S.size, 0.3), np.full(S.size, 0.02)) == "confusion"


def test_semi_grokking():
    test = sigmoid(S, 8000, 200, 0.05, 0.6)
    ds = phase_summary(S, sigmoid(S, 200, 20), test)
    assert str(ds["label"].values) == "semi-grokking"
    assert math.isnan(float(ds["t_test"]))
    # a rise smaller than semi_rise stays memorisation
    assert label(sigmoid(S, 200, 20), sigmoid(S, 8000, 200, 0.05, 0.2)) == "memorisation"


def test_ungrokking():
    test = sigmoid(S, 3000, 100, CHANCE) - sigmoid(S, 15000, 200, 0, 0.7)
    assert label(sigmoid(S, 200, 20), test) == "ungrokking"
    # a small dip at the end (within the margin) is still grokking
    test2 = sigmoid(S, 3000, 100, CHANCE) - sigmoid(S, 15000, 200, 0, 0.05)
    assert label(sigmoid(S, 200, 20), test2) == "grokking"


def test_threshold_099_and_gap_parameter():
    tr, te = sigmoid(S, 200, 20), sigmoid(S, 1500, 50, CHANCE, 0.95)
    assert label(tr, te, threshold=0.99) == "semi-grokking"
    assert label(tr, te, threshold=0.9, comprehension_gap=2000) == "comprehension"
    assert label(tr, te, threshold=0.9, comprehension_gap=500) == "grokking"


def test_unsorted_nonuniform_steps_and_nans():
    steps = np.array([5000, 0, 10, 100, 1000, 3000, 20000])
    train = np.array([1.0, 0.0, 0.5, 0.95, 1.0, 1.0, 1.0])
    test = np.array([0.95, 0.0, np.nan, 0.1, 0.1, 0.5, 0.97])
    ds = phase_summary(steps, train, test)
    assert float(ds["t_train"]) == 100 and float(ds["t_test"]) == 5000
    assert float(ds["final_test_acc"]) == pytest.approx(0.97)
    assert str(ds["label"].values) == "grokking"


def test_bad_inputs():
    with pytest.raises(ConfigError):
        phase_summary([0, 1], [0.1], [0.1, 0.2])
    with pytest.raises(ConfigError):
        phase_summary([0, 0], [0.1, 0.2], [0.1, 0.2])


def test_changepoint_of_sigmoid_on_nonuniform_steps():
    cp, rate = changepoint(S, sigmoid(S, 7000, 100), scale="log")
    assert abs(cp - 7000) <= 100 and rate > 0
    cp_lin, _ = changepoint(S, 3.0 - 2.0 * sigmoid(S, 7000, 100), scale="linear")
    assert abs(cp_lin - 7000) <= 100
    assert math.isnan(changepoint(S, np.ones(S.size))[0])


def test_a_flat_noisy_curve_has_no_changepoint():
    """A test accuracy wobbling between 0 and 0.003 (a run that never generalises): its noise,
    normalised by its own tiny range, used to give a change point at an early step."""
    rng = np.random.default_rng(1)
    flat = 0.0015 + 0.0015 * rng.uniform(-1, 1, S.size)
    cp, rate = changepoint(S, flat)
    assert math.isnan(cp) and rate == 0.0
    # a loss near 5 nats moving by 0.2 (4%) is flat too; moving by 0.3 (6%) is not
    assert math.isnan(changepoint(S, 5.0 - 0.2 * sigmoid(S, 7000, 100))[0])
    assert abs(changepoint(S, 5.0 - 0.3 * sigmoid(S, 7000, 100))[0] - 7000) <= 100
    # the threshold is a parameter: 0 restores the old rule
    assert not math.isnan(changepoint(S, flat, min_range=0.0)[0])


def test_changepoint_log_scale_ignores_dense_early_noise():
    rng = np.random.default_rng(0)
    v = sigmoid(S, 12000, 300) + np.where(S < 1000, 0.03 * rng.standard_normal(S.size), 0.0)
    cp, _ = changepoint(S, v)
    assert abs(cp - 12000) <= 300


def _curves_ds(steps, **vars_) -> xr.Dataset:
    return xr.Dataset({k: (("step",), v) for k, v in vars_.items()}, coords={"step": steps})


def test_registered_wrapper_on_fake_run():
    tr, te = sigmoid(S, 200, 20), sigmoid(S, 9000, 150, CHANCE)
    curves_ds = _curves_ds(S, train_acc=tr, test_acc=te, param_norm=50 - 20 * sigmoid(S, 9500, 300))
    curves_ds["param_norm_tensor"] = (("step", "tensor"), np.ones((S.size, 2)))
    other = _curves_ds(S, lmn=10 - 5 * sigmoid(S, 8000, 200))
    run = SimpleNamespace(
        results={"curves": curves_ds, "lmn": other}, metrics=_curves_ds(S, train_loss=1 - tr)
    )
    ds = phases(run, S)
    assert str(ds["label"].values) == "grokking"
    assert ds.attrs["accuracy_source"] == "results/curves"
    names = list(ds["curve"].values)
    assert "curves/param_norm_tensor" not in names
    assert {"curves/test_acc", "lmn/lmn", "metrics/train_loss"} <= set(names)
    assert abs(float(ds["changepoint"].sel(curve="lmn/lmn")) - 8000) <= 200
    assert abs(float(ds["changepoint"].sel(curve="curves/param_norm")) - 9500) <= 300
    # restricted to the first steps, the run has not grokked yet
    early = phases(run, S[S <= 3000])
    assert str(early["label"].values) == "memorisation"


def test_wrapper_falls_back_to_metrics_and_errors_without_curves():
    tr, te = sigmoid(S, 200, 20), sigmoid(S, 400, 20)
    run = SimpleNamespace(results={}, metrics=_curves_ds(S, train_acc=tr, test_acc=te))
    ds = phases(run, S)
    assert ds.attrs["accuracy_source"] == "metrics" and str(ds["label"].values) == "comprehension"
    with pytest.raises(MeasureNotApplicable):
        phases(SimpleNamespace(results={}, metrics=xr.Dataset()), S)


def test_registration():
    spec = get("phases")
    assert spec.kind == "trajectory" and spec.after == ("curves",)
    assert spec.defaults["threshold"] == 0.9 and spec.defaults["comprehension_gap"] == 1000


# ------------------------------------------------------------------ foreign / imported runs
def test_foreign_metric_names_label_like_grokscope_names():
    tr, te = sigmoid(S, 200, 20), sigmoid(S, 9000, 150, CHANCE)
    want = phases(SimpleNamespace(results={}, metrics=_curves_ds(S, train_acc=tr, test_acc=te)), S)
    for trn, ten in (("train_accuracy", "test_accuracy"), ("train_acc", "val_acc"),
                     ("train_accuracy", "val_accuracy")):
        run = SimpleNamespace(results={}, metrics=_curves_ds(S, **{trn: tr, ten: te}))
        ds = phases(run, S)
        assert str(ds["label"].values) == "grokking"
        assert ds.attrs["accuracy_source"] == "metrics"
        assert (ds.attrs["train_acc_variable"], ds.attrs["test_acc_variable"]) == (trn, ten)
        for k in ("t_train", "t_test", "gap", "final_test_acc"):
            assert float(ds[k]) == float(want[k])


def test_percent_accuracies_are_rescaled():
    tr, te = sigmoid(S, 200, 20), sigmoid(S, 9000, 150, CHANCE)
    run = SimpleNamespace(results={}, metrics=_curves_ds(S, train_accuracy=100 * tr,
                                                         val_accuracy=100 * te))
    ds = phases(run, S)
    assert str(ds["label"].values) == "grokking" and ds.attrs["accuracy_scale"] == 0.01
    assert 9200 <= float(ds["t_test"]) <= 9400
    assert float(ds["final_test_acc"]) == pytest.approx(te[-1])


def test_all_nan_curves_fall_back_to_metrics():
    tr, te = sigmoid(S, 200, 20), sigmoid(S, 400, 20)
    nan = np.full(S.size, np.nan)
    run = SimpleNamespace(results={"curves": _curves_ds(S, train_acc=nan, test_acc=nan)},
                          metrics=_curves_ds(S, train_acc=tr, val_acc=te))
    ds = phases(run, S)
    assert ds.attrs["accuracy_source"] == "metrics" and str(ds["label"].values) == "comprehension"


@pytest.mark.parametrize("names", [("train_loss", "test_loss"), ("train_loss", "val_loss"),
                                   ("train_losses", "test_losses")])
def test_losses_only_is_not_labelled(names):
    loss_tr = 5 - 4.9 * sigmoid(S, 200, 20)
    loss_te = 5 - 4.9 * sigmoid(S, 9000, 150)
    run = SimpleNamespace(results={}, metrics=_curves_ds(S, **dict(zip(names, (loss_tr, loss_te)))))
    ds = phases(run, S)
    assert str(ds["label"].values) == "unavailable"
    assert ds.attrs["accuracy_source"] == "none"
    why = ds.attrs["accuracy_unavailable"]
    assert "accuracy is unavailable" in why and names[0] in why and names[1] in why
    assert all(math.isnan(float(ds[k])) for k in ("t_train", "t_test", "gap", "final_test_acc"))
    # the loss curves still get their change points
    assert abs(float(ds["changepoint"].sel(curve=f"metrics/{names[1]}")) - 9000) <= 150


def test_labelled_run_says_accuracy_is_available():
    tr, te = sigmoid(S, 200, 20), sigmoid(S, 9000, 150, CHANCE)
    ds = phases(SimpleNamespace(results={}, metrics=_curves_ds(S, train_acc=tr, test_acc=te)), S)
    assert ds.attrs["accuracy_unavailable"] == "" and ds.attrs["accuracy_scale"] == 1.0


def _record(path, metrics_at):
    """A stored run whose trainer logged only ``metrics_at(step)`` (no curves result)."""
    torch.manual_seed(0)
    model, data = TinyNet(), tiny_data()
    with gs.Recorder(path, model, data) as rec:
        for step in (0, 10, 100, 1000, 3000, 6000):
            with torch.no_grad():
                for prm in model.parameters():
                    prm.mul_(0.9)
            rec.record(step, model, metrics_at(step))
    return gs.open_run(path)


def test_stored_run_with_foreign_metrics_only(tmp_path):
    steps = np.array([0, 10, 100, 1000, 3000, 6000])
    tr = dict(zip(steps.tolist(), [10.0, 60.0, 100.0, 100.0, 100.0, 100.0]))
    te = dict(zip(steps.tolist(), [10.0, 10.0, 12.0, 15.0, 95.0, 99.0]))
    run = _record(tmp_path / "foreign.zarr",
                  lambda s: {"train_accuracy": tr[s], "val_accuracy": te[s], "val_loss": 1.0 / (1 + s)})
    assert "curves" not in (run.results or {})
    ds = phases(run, run.steps)
    assert ds.attrs["accuracy_source"] == "metrics" and ds.attrs["accuracy_scale"] == 0.01
    assert float(ds["t_train"]) == 100 and float(ds["t_test"]) == 3000
    assert str(ds["label"].values) == "grokking"


def test_stored_run_with_losses_only(tmp_path):
    run = _record(tmp_path / "losses.zarr",
                  lambda s: {"train_loss": 1.0 / (1 + s), "val_loss": 2.0 / (1 + 0.01 * s)})
    ds = phases(run, run.steps)
    assert str(ds["label"].values) == "unavailable"
    assert "accuracy is unavailable" in ds.attrs["accuracy_unavailable"]
    assert "metrics/val_loss" in list(ds["curve"].values)


def test_phases_applies_to_classification_only():
    from types import SimpleNamespace

    from grokscope.measures.phases import _applies

    assert "regression task" in _applies(None, SimpleNamespace(is_classification=False))
    assert _applies(None, SimpleNamespace(is_classification=True)) is None
    assert _applies(None, None) is None  # no split stored: the labels come from the metrics


def test_change_points_leave_out_identifiers():
    """The mixture's null_component is a slot number (0, then -1 once no component is null):
    its jump is a renaming, and it used to be the biggest dot of the demo's change-point
    figure. Counts such as k stay curves."""
    from grokscope.measures.phases import collect_curves

    steps = np.array([0, 10, 100, 1000, 2000])
    mixture = xr.Dataset({"null_component": ("step", np.array([0, 0, 0, -1, -1])),
                          "k": ("step", np.array([1, 1, 2, 3, 3])),
                          "droplet_fraction": ("step", [0.0, 0.0, 0.3, 1.0, 1.0])},
                         coords={"step": steps})
    other = xr.Dataset({"null_component": ("step", np.arange(5.0))}, coords={"step": steps})
    found = collect_curves({"mixture": mixture, "mine": other})
    assert sorted(found) == ["mine/null_component", "mixture/droplet_fraction", "mixture/k"]
