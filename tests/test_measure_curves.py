"""Known-answer tests of the recomputed training curves (docs/methods.md section 1)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from grokscope.data import Data
from grokscope.errors import ConfigError, ModelMismatchError
from grokscope.measures import get
from grokscope.measures.curves import curves, loss_and_accuracy, margins
from grokscope.measures.registry import Checkpoint


def linear_model(w: list[list[float]], b: list[float]) -> nn.Linear:
    m = nn.Linear(len(w[0]), len(w))
    m.weight.data = torch.tensor(w)
    m.bias.data = torch.tensor(b)
    return m.eval()


def hand_ce(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def test_classification_curves_match_hand_values():
    w, b = [[1.0, -1.0], [0.5, 2.0], [0.0, 0.0]], [0.1, -0.2, 0.3]
    model = linear_model(w, b)
    x_tr = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 2.0]])
    y_tr = torch.tensor([0, 1, 1, 2])
    x_te = torch.tensor([[2.0, -1.0], [0.0, 0.0]])
    y_te = torch.tensor([0, 1])
    data = Data(x_tr, y_tr, x_te, y_te)
    ref = linear_model([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [0.0, 0.0, 0.0])
    ds = curves(Checkpoint(step=5, model=model, data=data, references={"first": ref}), chunk=3)

    W, B = np.array(w), np.array(b)
    for split, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        lg = x.numpy() @ W.T + B
        assert float(ds[f"{split}_loss"]) == pytest.approx(hand_ce(lg, y.numpy()), rel=1e-6)
        assert float(ds[f"{split}_acc"]) == pytest.approx((lg.argmax(1) == y.numpy()).mean())
    theta = np.concatenate([W.ravel(), B])
    theta0 = np.array([0, 0, 1, 0, 0, 1, 0, 0, 0], dtype=float)
    assert float(ds["param_norm"]) == pytest.approx(np.linalg.norm(theta), rel=1e-6)
    assert float(ds["linf_norm"]) == pytest.approx(2.0)
    assert float(ds["rel_distance_init"]) == pytest.approx(
        np.linalg.norm(theta - theta0) / np.linalg.norm(theta0), rel=1e-6
    )
    assert list(ds["tensor"].values) == ["weight", "bias"]
    assert ds["param_norm_tensor"].sel(tensor="weight") == pytest.approx(np.linalg.norm(W), rel=1e-6)
    assert "step" not in ds.dims


def test_regression_uses_mse_and_nan_accuracy():
    model = linear_model([[2.0, 0.0]], [0.0])
    x = torch.tensor([[1.0, 5.0], [3.0, 1.0]])
    y = torch.tensor([[1.0], [4.0]])
    data = Data(x, y, x[:1], y[:1], task={"name": "teacher", "loss": "mse"})
    ds = curves(Checkpoint(step=0, model=model, data=data, references={"first": model}))
    assert float(ds["train_loss"]) == pytest.approx(((2 - 1) ** 2 + (6 - 4) ** 2) / 2)
    assert math.isnan(float(ds["train_acc"]))
    assert float(ds["rel_distance_init"]) == 0.0


def test_mse_on_class_labels_uses_one_hot_targets():
    logits = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1])
    loss, acc = loss_and_accuracy(logits, y, loss="mse")
    assert loss == pytest.approx((0 + 0 + 0 + 1) / 4)
    assert acc == pytest.approx(0.5)  # argmax of a tie is class 0


def test_margins():
    lg = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    assert margins(lg, torch.tensor([0, 2])).tolist() == [1.0, -4.0]
    with pytest.raises(ConfigError, match=r"at least 2 classes, got logits \(3, 1\)"):
        margins(torch.zeros(3, 1), torch.zeros(3))


def test_empty_test_split_gives_nan():
    model = linear_model([[1.0], [0.0]], [0.0, 0.0])
    data = Data(torch.ones(3, 1), torch.zeros(3, dtype=torch.long), torch.ones(0, 1),
                torch.zeros(0, dtype=torch.long))
    ds = curves(Checkpoint(step=0, model=model, data=data, references={"first": model}))
    assert math.isnan(float(ds["test_loss"])) and float(ds["train_acc"]) == 1.0


def test_reference_with_other_architecture_is_an_error():
    model = linear_model([[1.0], [0.0]], [0.0, 0.0])
    data = Data(torch.ones(3, 1), torch.zeros(3, dtype=torch.long), torch.ones(1, 1),
                torch.zeros(1, dtype=torch.long))
    with pytest.raises(ModelMismatchError):
        curves(Checkpoint(step=0, model=model, data=data, references={"first": nn.Linear(2, 2)}))


def test_registered_with_first_reference():
    spec = get("curves")
    assert spec.kind == "step" and spec.references == ("first",) and spec.defaults == {"chunk": 4096}


def test_chunking_does_not_change_results():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 4)).eval()
    x, y = torch.randn(50, 5), torch.randint(0, 4, (50,))
    data = Data(x, y, x[:10], y[:10])
    ref = copy.deepcopy(model)
    a = curves(Checkpoint(step=0, model=model, data=data, references={"first": ref}), chunk=7)
    b = curves(Checkpoint(step=0, model=model, data=data, references={"first": ref}), chunk=4096)
    for v in ("train_loss", "test_loss", "train_acc"):
        assert float(a[v]) == pytest.approx(float(b[v]), rel=1e-6)
