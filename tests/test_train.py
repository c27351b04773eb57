"""The reference trainer: recording, resume exactness, options, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grokscope.errors import ConfigError, GrokscopeError
from grokscope.store.schedule import Schedule
from grokscope.train import train

TASK = {"p": 11, "train_frac": 0.5}
SCHED = Schedule(log_until=10, per_decade=4, every=10)
FAST = dict(task_kwargs=TASK, model_kwargs={"width": 32}, lr=1e-2, schedule=SCHED, num_threads=1,
            progress=False, device="cpu")


def _params(run, step):
    return {k: v.clone() for k, v in run.state_dict_at(step).items()}


def _same_params(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_records_due_steps_and_loss_decreases(tmp_path):
    run = train("modular", "mlp", tmp_path / "r", steps=45, **FAST)
    expected = sorted(set(SCHED.steps(45).tolist()) | {45})
    assert run.steps.tolist() == expected
    assert run.steps[0] == 0
    m = run.metrics
    for name in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
        assert np.isfinite(m[name].values).all(), name
    assert m["train_loss"].values[-1] < 0.8 * m["train_loss"].values[0]
    cfg = run.config
    assert cfg["lr"] == 1e-2 and cfg["weight_decay"] == 1.0 and cfg["optimizer"] == "adamw"
    assert cfg["seed"] == 0 and cfg["dtype"] == "float32" and cfg["device"] == "cpu"
    assert cfg["task"]["p"] == 11 and cfg["model"]["name"] == "mlp"
    assert cfg["model"]["kwargs"]["width"] == 32


@pytest.mark.parametrize("batch_size", [None, 16])
def test_resume_is_exact(tmp_path, batch_size):
    kw = dict(FAST, dtype="float64", batch_size=batch_size, seed=3)
    full = train("modular", "mlp", tmp_path / "full", steps=60, **kw)
    part = train("modular", "mlp", tmp_path / "part", steps=25, **kw)
    assert part.steps[-1] == 25
    part = train("modular", "mlp", tmp_path / "part", steps=60, **kw)
    assert part.steps.tolist() == sorted(set(full.steps.tolist()) | {25})
    for step in full.steps:
        assert _same_params(_params(full, int(step)), _params(part, int(step))), step
    for name in ("train_loss", "test_acc"):
        a = full.metrics[name].sel(step=full.steps).values
        b = part.metrics[name].sel(step=full.steps).values
        np.testing.assert_array_equal(a, b)
    # asking for fewer steps than recorded trains nothing
    again = train("modular", "mlp", tmp_path / "part", steps=30, **kw)
    assert again.steps[-1] == 60


def test_other_settings_on_existing_store_are_refused(tmp_path):
    train("modular", "mlp", tmp_path / "r", steps=5, **FAST)
    with pytest.raises(ConfigError, match="other settings.*lr"):
        train("modular", "mlp", tmp_path / "r", steps=10, **{**FAST, "lr": 3e-2})
    run = train("modular", "mlp", tmp_path / "r", steps=10, overwrite=True,
                **{**FAST, "lr": 3e-2})
    assert run.config["lr"] == 3e-2 and run.steps[-1] == 10


def test_minibatch_is_deterministic_and_seeded(tmp_path):
    kw = dict(FAST, batch_size=8)
    a = train("modular", "mlp", tmp_path / "a", steps=20, seed=1, **kw)
    b = train("modular", "mlp", tmp_path / "b", steps=20, seed=1, **kw)
    c = train("modular", "mlp", tmp_path / "c", steps=20, seed=2, **kw)
    assert _same_params(_params(a, 20), _params(b, 20))
    assert not _same_params(_params(a, 20), _params(c, 20))


def test_teacher_mse_regression(tmp_path):
    run = train("teacher", "mlp", tmp_path / "t", steps=30, lr=1e-2, weight_decay=0.0,
                task_kwargs={"d": 8, "n_train": 128, "n_test": 64},
                model_kwargs={"width": 16, "activation": "erf"}, schedule=SCHED,
                progress=False, device="cpu")
    assert run.config["loss"] == "mse"
    assert "train_acc" not in run.metrics
    loss = run.metrics["train_loss"].values
    assert loss[-1] < loss[0]


def test_mse_on_class_labels(tmp_path):
    run = train("modular", "mlp", tmp_path / "m", steps=20, loss="mse", **FAST)
    assert run.config["loss"] == "mse"
    assert np.isfinite(run.metrics["train_acc"].values).all()


def test_sgd_with_momentum(tmp_path):
    run = train("modular", "mlp", tmp_path / "s", steps=30, optimizer="sgd", momentum=0.9,
                **{**FAST, "lr": 0.5, "task_kwargs": TASK})
    assert run.config["optimizer"] == "sgd" and run.config["momentum"] == 0.9
    loss = run.metrics["train_loss"].values
    assert loss[-1] < loss[0]


def test_warmup_ramps_the_learning_rate(tmp_path):
    run = train("modular", "mlp", tmp_path / "w", steps=20, warmup=10, **FAST)
    lr = run.metrics["lr"].to_series()
    assert lr[0] == pytest.approx(1e-2 / 10)
    assert lr[6] == pytest.approx(1e-2 * 7 / 10)
    assert lr[10] == pytest.approx(1e-2) and lr[20] == pytest.approx(1e-2)


def test_jacobian_regulariser(tmp_path):
    pytest.importorskip("grokscope.regularizers")
    kw = dict(FAST, dtype="float64")
    reg = train("modular", "mlp", tmp_path / "j", steps=20, jacobian_reg=1e-2, **kw)
    plain = train("modular", "mlp", tmp_path / "p", steps=20, **kw)
    jac = reg.metrics["jac_reg"].values
    assert np.isfinite(jac).all() and (jac > 0).all()
    assert "jac_reg" not in plain.metrics
    assert not _same_params(_params(reg, 20), _params(plain, 20))
    # the regulariser's random projections are part of the exact resume state
    part = train("modular", "mlp", tmp_path / "jp", steps=7, jacobian_reg=1e-2, batch_size=8,
                 **kw)
    part = train("modular", "mlp", tmp_path / "jp", steps=20, jacobian_reg=1e-2, batch_size=8,
                 **kw)
    whole = train("modular", "mlp", tmp_path / "jw", steps=20, jacobian_reg=1e-2, batch_size=8,
                  **kw)
    assert _same_params(_params(part, 20), _params(whole, 20))


def test_norm_projection_keeps_the_norm(tmp_path):
    from grokscope.models import model_for
    from grokscope.tasks import make_task

    alpha = 2.0
    run = train("modular", "mlp", tmp_path / "n", steps=25, norm_project=alpha,
                **{**FAST, "dtype": "float64"})
    torch.manual_seed(0)
    init = model_for("mlp", make_task("modular", **TASK), width=32).double()
    target = alpha * torch.linalg.vector_norm(
        torch.cat([p.detach().flatten() for p in init.parameters()])).item()
    for step in run.steps:
        sd = run.state_dict_at(int(step))
        norm = torch.linalg.vector_norm(torch.cat([v.flatten() for v in sd.values()])).item()
        assert norm == pytest.approx(target, rel=1e-9), step
    assert run.config["norm_project"] == alpha


def test_float64_store(tmp_path):
    threads = torch.get_num_threads()
    run = train("modular", "mlp", tmp_path / "d", steps=3, dtype="float64",
                **{**FAST, "num_threads": 1 if threads != 1 else 2})
    assert torch.get_num_threads() == threads  # restored
    assert all(v.dtype == torch.float64 for v in run.state_dict_at(3).values())


def test_stop_when(tmp_path):
    run = train("modular", "mlp", tmp_path / "st", steps=500, eval_every=5,
                stop_when={"train_acc": 0.5, "patience": 5}, **FAST)
    acc = run.metrics["train_acc"].to_series()
    assert run.steps[-1] < 500
    assert acc.iloc[-1] >= 0.5


def test_stopped_run_continues_under_a_new_rule(tmp_path):
    rule = {"train_acc": 0.5, "patience": 0}
    first = train("modular", "mlp", tmp_path / "st", steps=500, eval_every=5, stop_when=rule,
                  **FAST)
    stopped = int(first.steps[-1])
    again = train("modular", "mlp", tmp_path / "st", steps=500, eval_every=5, stop_when=rule,
                  **FAST)
    assert int(again.steps[-1]) == stopped  # the rule still holds: nothing more to train
    more = train("modular", "mlp", tmp_path / "st", steps=stopped + 12, **FAST)
    assert int(more.steps[-1]) == stopped + 12


def test_model_and_task_forms(tmp_path):
    from grokscope.models import MLP, model_for
    from grokscope.tasks import make_task

    data = make_task("modular", **TASK)
    by_class = train(data, MLP, tmp_path / "c", steps=3, model_kwargs={"width": 32},
                     **{k: v for k, v in FAST.items() if k not in ("task_kwargs", "model_kwargs")})
    by_name = train("modular", "mlp", tmp_path / "n", steps=3, **FAST)
    assert _same_params(_params(by_class, 3), _params(by_name, 3))
    plain = {k: v for k, v in FAST.items() if k not in ("task_kwargs", "model_kwargs")}
    by_spec = train(by_name.config["task"], by_name.config["model"], tmp_path / "s", steps=3,
                    **plain)
    assert _same_params(_params(by_spec, 3), _params(by_name, 3))
    inst = model_for("mlp", data, width=8)
    run = train(data, inst, tmp_path / "i", steps=3,
                **{k: v for k, v in FAST.items() if k not in ("task_kwargs", "model_kwargs")})
    assert _same_params(_params(run, 3), {k: v.detach() for k, v in inst.state_dict().items()})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"optimizer": "lion"}, "unknown optimizer"),
        ({"loss": "hinge"}, "unknown loss"),
        ({"lr": -1.0}, "lr"),
        ({"steps": -1}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"dtype": "float16"}, "dtype"),
        ({"betas": (0.9, 1.5)}, "betas"),
        ({"stop_when": {"val_acc": 0.9}}, "stop_when"),
        ({"schedule": 10}, "schedule"),
        ({"model_kwargs": {"widht": 3}}, "widht"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        train("modular", "mlp", tmp_path / "bad", **{**FAST, "steps": 2, **kwargs})


def test_cross_entropy_on_regression_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="loss='ce'"):
        train("teacher", "mlp", tmp_path / "bad", steps=2, loss="ce", progress=False,
              task_kwargs={"d": 4, "n_train": 16, "n_test": 8})


def test_unknown_task_is_a_grokscope_error(tmp_path):
    with pytest.raises(GrokscopeError):
        train("nope", "mlp", tmp_path / "bad", steps=2, progress=False)


@pytest.mark.slow
def test_demo_groks(tmp_path):
    from grokscope.defaults import DEMO

    run = train(**{**DEMO, "progress": False}, out=tmp_path / "demo")
    m = run.metrics
    train_acc, test_acc = m["train_acc"].to_series(), m["test_acc"].to_series()
    t_train = int(train_acc[train_acc >= 0.9].index[0])
    t_test = int(test_acc[test_acc >= 0.9].index[0])
    assert test_acc.max() >= 0.9
    assert t_test - t_train >= 1000  # 'grokking' by docs/methods.md section 1


def test_factory_spec_needs_trust(tmp_path):
    """A module:qualname spec (e.g. read from a store) is imported only when trusted."""
    from grokscope.errors import UntrustedCodeError

    spec = {"factory": "torch.nn:Linear", "kwargs": {"in_features": 22, "out_features": 11}}
    with pytest.raises(UntrustedCodeError):
        train(task="modular", task_kwargs={"p": 11}, model=spec, out=str(tmp_path / "r"),
                 steps=2, progress=False)
