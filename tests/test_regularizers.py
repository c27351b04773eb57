"""GrokAlign's training-time Jacobian regulariser (docs/methods.md section 3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grokscope.errors import ConfigError
from grokscope.measures._jacobian import as_view, input_jacobian, input_view
from grokscope.regularizers import jacobian_norm_penalty


def _mlp(out=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, out)).double()


def _x(n=8, seed=0):
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _exact(model, x):
    return input_jacobian(input_view(as_view(model, x), x)).flatten(1).norm(dim=1).mean()


def test_single_output_is_exact():
    model = _mlp(out=1)
    x = _x()
    # C = 1: v = +-1, so |J^T v| = ||J||_F exactly
    assert float(jacobian_norm_penalty(model, x).detach()) == pytest.approx(float(_exact(model, x)), rel=1e-12)


def test_linear_model_estimate_converges():
    torch.manual_seed(0)
    model = nn.Linear(6, 5, bias=False).double()
    g = torch.Generator().manual_seed(0)
    est = jacobian_norm_penalty(model, _x(4), n_proj=1500, generator=g).detach()
    assert float(est) == pytest.approx(float(model.weight.detach().norm()), rel=0.05)


def test_squared_estimate_is_unbiased():
    model = _mlp()
    x = _x(1)
    g = torch.Generator().manual_seed(1)
    sq = torch.stack([jacobian_norm_penalty(model, x, generator=g).detach() ** 2 for _ in range(600)])
    assert float(sq.mean()) == pytest.approx(float(_exact(model, x)) ** 2, rel=0.1)


def test_differentiable_and_reproducible():
    model = _mlp()
    x = _x()
    a = jacobian_norm_penalty(model, x, n_proj=2, generator=torch.Generator().manual_seed(3))
    b = jacobian_norm_penalty(model, x, n_proj=2, generator=torch.Generator().manual_seed(3))
    assert a.ndim == 0 and a.item() == b.item()
    a.backward()
    # every parameter the Jacobian depends on gets a gradient (the readout bias does not)
    for p in (model[0].weight, model[0].bias, model[2].weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    # gradient agrees with finite differences along a random direction (C = 1: exact penalty)
    single = _mlp(out=1)
    w = single[0].weight
    direction = torch.randn_like(w)
    loss = jacobian_norm_penalty(single, x)
    (grad,) = torch.autograd.grad(loss, w)
    eps = 1e-6
    with torch.no_grad():
        w.add_(eps * direction)
        up = jacobian_norm_penalty(single, x)
        w.sub_(2 * eps * direction)
        down = jacobian_norm_penalty(single, x)
        w.add_(eps * direction)
    assert float((up - down) / (2 * eps)) == pytest.approx(float((grad * direction).sum()), rel=1e-5)


def test_token_model_and_bad_arguments():
    models = pytest.importorskip("grokscope.models")
    torch.manual_seed(0)
    tf = models.build_model("transformer", vocab=6, n_ctx=3, out_dim=5, d_model=8, n_heads=2, d_mlp=16)
    toks = torch.randint(0, 6, (10, 3))
    loss = jacobian_norm_penalty(tf, toks)
    loss.backward()
    assert torch.isfinite(loss) and tf.embed.weight.grad is not None
    with pytest.raises(ConfigError, match="n_proj"):
        jacobian_norm_penalty(tf, toks, n_proj=0)
