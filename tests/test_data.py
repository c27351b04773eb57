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
