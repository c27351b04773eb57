"""The framework-free parts of grokscope.integrations: metric names, missing packages."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import torch

import grokscope as gs
from grokscope.integrations import MissingFrameworkError, metric_name
from grokscope.integrations._core import RecordingSession, map_metrics


@pytest.mark.parametrize(("logged", "name"), [
    ("loss", "train_loss"), ("train_loss", "train_loss"), ("train/loss", "train_loss"),
    ("train_loss_step", "train_loss"), ("training-loss", "train_loss"), ("Train_Acc", "train_acc"),
    ("train/accuracy", "train_acc"), ("val_acc", "test_acc"), ("val/accuracy", "test_acc"),
    ("valid_loss", "test_loss"), ("eval_loss", "test_loss"), ("eval_accuracy", "test_acc"),
    ("test_acc_epoch", "test_acc"), ("acc/val", "test_acc"), ("loss_epoch", "train_loss"),
    ("lr-AdamW", None), ("grad_norm", None), ("epoch", None), ("val_f1", None),
    ("train_loss_ratio", None), ("val_loss_scaled", None), ("step", None),
])
def test_metric_name(logged, name):
    assert metric_name(logged) == name


def test_map_metrics_prefers_test_and_plain_names_and_takes_a_mapping():
    logged = {"val_acc": torch.tensor(0.5), "test_acc": 0.75, "train_loss_epoch": 3.0,
              "train_loss_step": 2.0, "val/top1": 0.9, "lr": 1e-3, "hist": torch.ones(3),
              "flag": True}
    assert map_metrics(logged) == {"test_acc": 0.75, "train_loss": 2.0}
    assert map_metrics(logged, {"test_acc": "val/top1", "lr": "lr", "gone": "missing"}) == {
        "test_acc": 0.9, "lr": 1e-3, "train_loss": 2.0}
    assert map_metrics(logged, {"lr": "lr"}, auto=False) == {"lr": 1e-3}


def test_session_arguments_are_checked(tmp_path):
    with pytest.raises(gs.GrokscopeError, match="grokscope.Data"):
        RecordingSession(tmp_path / "r.zarr", (torch.zeros(2), torch.zeros(2)))
    with pytest.raises(gs.GrokscopeError, match="'test_acc': 'val/accuracy'"):
        RecordingSession(tmp_path / "r.zarr", None, metrics={"test_acc": 3})
    with pytest.raises(gs.GrokscopeError, match="Schedule"):
        RecordingSession(tmp_path / "r.zarr", None, schedule=10)


@pytest.mark.slow  # ~2-6 s: the default suite keeps one loop per framework
def test_importing_grokscope_needs_no_framework():
    code = ("import sys, grokscope, grokscope.integrations as gi\n"
            "assert gi.metric_name('val_acc') == 'test_acc'\n"
            "bad = [m for m in ('lightning', 'pytorch_lightning', 'transformers', 'wandb', "
            "'tensorboard') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(("name", "missing", "extra"), [
    ("GrokscopeTrainerCallback", "transformers", "hf"),
    ("GrokscopeCallback", "lightning", "lightning"),
])
def test_a_missing_framework_names_the_extra(monkeypatch, name, missing, extra):
    for mod in [m for m in sys.modules if m == missing or m.startswith(missing + ".")
                or m in ("grokscope.integrations.hf", "grokscope.integrations.lightning")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, missing, None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "pytorch_lightning", None)
    gi = importlib.import_module("grokscope.integrations")
    monkeypatch.delitem(gi.__dict__, name, raising=False)
    with pytest.raises(MissingFrameworkError, match=rf"pip install 'grokscope\[{extra}\]'"):
        getattr(gi, name)


def test_missing_tensorboard_and_wandb_name_their_extras(monkeypatch, tmp_path):
    from grokscope.integrations import TensorBoardSink, WandbSink

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(MissingFrameworkError, match=r"grokscope\[wandb\]"):
        WandbSink()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(MissingFrameworkError, match=r"grokscope\[tensorboard\]"):
        TensorBoardSink(tmp_path / "tb")
