import numpy as np
import pytest
import torch

from grokscope import Data
from grokscope.errors import DataError, GrokscopeError


def test_numpy_inputs_become_tensors():
    d = Data(np.zeros((4, 3)), np.arange(4), np.ones((2, 3)), np.array([0, 1]))
    assert isinstance(d.x_train, torch.Tensor) and d.is_classification
    assert d.n_classes == 4 and d.input_shape == (3,)


def test_regression_targets():
    d = Data(torch.zeros(5, 2), torch.zeros(5, 1), torch.zeros(3, 2), torch.zeros(3, 1))
    assert not d.is_classification and d.n_classes is None


@pytest.mark.parametrize(
    "args",
    [
        (np.zeros((4, 3)), np.arange(3), np.zeros((2, 3)), np.arange(2)),
        (np.zeros((4, 3)), np.arange(4), np.zeros((2, 5)), np.arange(2)),
        (np.zeros((0, 3)), np.arange(0), np.zeros((2, 3)), np.arange(2)),
    ],
)
def test_inconsistent_splits_raise(args):
    with pytest.raises(DataError):
        Data(*args)


def test_to_casts_only_floats():
    d = Data(torch.zeros(2, 2), torch.tensor([0, 1]), torch.zeros(1, 2), torch.tensor([1]),
             extras={"w": torch.ones(2)})
    d64 = d.to("cpu", torch.float64)
    assert d64.x_train.dtype == torch.float64 and d64.y_train.dtype == torch.int64
    assert d64.extras["w"].dtype == torch.float64


def test_errors_share_one_base():
    assert issubclass(DataError, GrokscopeError)
    with pytest.raises(DataError, match="split"):
        Data(torch.zeros(2, 2), torch.tensor([0, 1]), torch.zeros(1, 2), torch.tensor([1])).split("val")


def test_a_plain_split_is_accepted_where_data_is_asked_for(tmp_path):
    import torch
    from torch import nn

    import grokscope as gs
    from grokscope.data import as_data
    from grokscope.errors import ConfigError

    x, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    d = as_data((x[:4], y[:4], x[4:], y[4:]))
    assert isinstance(d, Data) and d.x_test.shape == (2, 3) and d.y_train.tolist() == [0, 1, 2, 0]
    d = as_data({"x_train": x[:4], "y_train": y[:4], "x_test": x[4:], "y_test": y[4:],
                 "task": {"name": "mine"}})
    assert d.task == {"name": "mine"} and d.y_test.tolist() == [1, 2]
    assert as_data(None) is None and as_data(d) is d
    with pytest.raises(ConfigError, match=r"\(x_train, y_train, x_test, y_test\) tuple.*"
                                          r"got tuple of length 2"):
        as_data((x, y))
    with pytest.raises(ConfigError, match="got str"):
        as_data("train.pt")
    # a researcher's loop passes its tensors straight to the Recorder
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3))
    with gs.Recorder(tmp_path / "r.zarr", model, [x[:4], y[:4], x[4:], y[4:]]) as rec:
        rec.record(0, metrics={"test_acc": 0.5})
    run = gs.open_run(tmp_path / "r.zarr")
    assert torch.equal(run.data.x_test, x[4:]) and torch.equal(run.data.y_train, y[:4])
