"""Known answers of the representation quality index (METHODS.md section 8)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from grokscope.data import Data
from grokscope.errors import ConfigError
from grokscope.measures import get
from grokscope.measures.registry import Checkpoint
from grokscope.measures.rqi import n_quadruples, rqi_from_embedding


class Embedder(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.embed = nn.Embedding(*weight.shape)
        with torch.no_grad():
            self.embed.weight.copy_(weight)
        self.out = nn.Linear(weight.shape[1], 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(x).sum(1))


def _data(p: int) -> Data:
    x = torch.tensor([[0, 1, p], [1, 2, p]])
    y = torch.tensor([1, 3 % p])
    return Data(x, y, x, y, task={"name": "modular", "p": p, "encoding": "tokens", "vocab": p + 1})


def _brute(E: np.ndarray, threshold: float) -> tuple[int, int]:
    E = E / np.where(E.std(0) > 0, E.std(0), 1)
    p = len(E)
    count = total = 0
    for i, j, m in itertools.combinations_with_replacement(range(p), 3):
        n = j + m - i
        if not (i < j <= m < n < p):
            continue
        total += 1
        count += float(np.sum((E[i] + E[n] - E[j] - E[m]) ** 2)) < threshold
    return count, total


@pytest.mark.parametrize("p", [3, 4, 7, 10])
def test_n_quadruples_matches_enumeration(p):
    assert n_quadruples(p) == _brute(np.random.default_rng(0).normal(size=(p, 2)), 0.01)[1]


def test_linear_embedding_gives_one():
    k = torch.arange(13, dtype=torch.float64)[:, None]
    a, b = torch.randn(1, 6, dtype=torch.float64), torch.randn(1, 6, dtype=torch.float64)
    value, count, total = rqi_from_embedding(a + k * b)
    assert value == 1.0 and count == total == n_quadruples(13)


def test_random_embedding_near_zero():
    value, _, _ = rqi_from_embedding(torch.randn(31, 32, generator=torch.Generator().manual_seed(0)))
    assert value < 0.01


@pytest.mark.parametrize("dim", [1, 3])
def test_matches_brute_force(dim):
    rng = np.random.default_rng(dim)
    # a noisy linear embedding: some quadruples pass the threshold, some do not
    E = np.arange(11)[:, None] * rng.normal(size=(1, dim)) + 0.2 * rng.normal(size=(11, dim))
    value, count, total = rqi_from_embedding(E, threshold=0.05)
    bc, bt = _brute(E, 0.05)
    assert (count, total) == (bc, bt)
    assert 0 < value < 1


def test_measure_excludes_equals_token():
    p = 11
    lin = torch.arange(p, dtype=torch.float32)[:, None] * torch.randn(1, 8)
    weight = torch.cat([lin, 50 * torch.randn(1, 8)])  # the "=" row would break linearity
    ds = get("rqi").fn(Checkpoint(step=0, model=Embedder(weight).eval(), data=_data(p)))
    assert float(ds.rqi) == 1.0
    assert int(ds.n_tokens) == p and int(ds.n_quadruples) == n_quadruples(p)
    assert "per dimension" in ds.attrs["normalization"]


def test_applies_and_errors():
    spec = get("rqi")
    view = Checkpoint(step=0, model=Embedder(torch.randn(5, 2)), data=_data(4)).view
    assert spec.applies(view, _data(4)) is None
    lin_data = Data(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), torch.randn(2, 2),
                    torch.tensor([0, 1]))
    reason = spec.applies(Checkpoint(step=0, model=nn.Linear(2, 2), data=lin_data).view, lin_data)
    assert isinstance(reason, str) and "\n" not in reason
    assert "'embedding'" in reason and "anatomy=" in reason
    with pytest.raises(ConfigError):
        rqi_from_embedding(torch.randn(2, 4))
    with pytest.raises(ConfigError, match="p=9"):  # more operand tokens than table rows
        get("rqi").fn(Checkpoint(step=0, model=Embedder(torch.randn(5, 2)), data=_data(9),
                                 anatomy=view.anatomy))


def test_with_registered_transformer():
    models = pytest.importorskip("grokscope.models")
    if not hasattr(models, "build_model"):
        pytest.skip("grokscope.models.build_model not written yet")
    model = models.build_model("transformer", vocab=12, out_dim=11, d_model=16, d_mlp=32)
    ds = get("rqi").fn(Checkpoint(step=0, model=model.eval(), data=_data(11)))
    assert int(ds.n_tokens) == 11
    assert 0.0 <= float(ds.rqi) <= 1.0
