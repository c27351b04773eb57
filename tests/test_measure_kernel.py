"""Known-answer tests of the empirical-NTK measure (docs/methods.md section 7)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from grokscope.anatomy import Anatomy
from grokscope.data import Data
from grokscope.errors import ConfigError
from grokscope.measures import get
from grokscope.measures.kernel import empirical_ntk, kernel
from grokscope.measures.registry import Checkpoint


def test_linear_model_ntk_is_gram_matrix():
    torch.manual_seed(0)
    x = torch.randn(10, 4, dtype=torch.float64)
    f = nn.Linear(4, 1, bias=False).double()
    assert torch.allclose(empirical_ntk(f, x), x @ x.T, atol=1e-12)
    g = nn.Linear(4, 3).double()  # output 1 of a biased layer: X X^T + 1, other rows' grads 0
    assert torch.allclose(empirical_ntk(g, x, output=1, chunk=3), x @ x.T + 1, atol=1e-12)


def test_two_layer_ntk_matches_hand_formula():
    torch.manual_seed(1)
    x = torch.randn(6, 3, dtype=torch.float64)
    net = nn.Sequential(nn.Linear(3, 5, bias=False), nn.Tanh(), nn.Linear(5, 2, bias=False)).double()
    w, a = net[0].weight, net[2].weight[0]
    h = torch.tanh(x @ w.T)  # (n, 5)
    dh = 1 - h**2
    # f = a . tanh(W x): grad_a = h, grad_W[j] = a_j tanh'(w_j.x) x
    theta = h @ h.T + ((dh * a) @ (dh * a).T) * (x @ x.T)
    assert torch.allclose(empirical_ntk(net, x, chunk=4), theta.detach(), atol=1e-10)


def _data(n: int = 80) -> Data:
    torch.manual_seed(2)
    x = torch.randn(n, 5)
    y = torch.randint(0, 3, (n,))
    return Data(x, y, x[:4], y[:4])


def test_kernel_change_zero_at_reference_and_cached():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    ckpt = Checkpoint(step=0, model=model, data=_data(), references={"first": copy.deepcopy(model)})
    ds = kernel(ckpt)
    assert float(ds["kernel_change"]) == pytest.approx(0.0, abs=1e-12)
    assert float(ds["kernel_distance"]) == pytest.approx(0.0, abs=1e-12)
    assert float(ds["kernel_norm_ratio"]) == pytest.approx(1.0, abs=1e-12)
    assert ds.attrs["n_points_used"] == 64 and "step" not in ds.dims
    assert any(k[0] == "kernel_theta0" for k in ckpt.state)

    moved = copy.deepcopy(model)
    with torch.no_grad():
        moved[0].weight.mul_(2.0)
    later = Checkpoint(step=10, model=moved, data=ckpt.data, references=ckpt.references, state=ckpt.state)
    ds2 = kernel(later)
    assert float(ds2["kernel_change"]) > 0.1


def test_scaling_last_layer_scales_kernel_of_linear_readout():
    # f = c * w.x: Theta = c^2 X X^T (grad wrt w) + (w.x)(w.x)^T (grad wrt c); w.x = x_0
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0]))
            self.c = nn.Parameter(torch.tensor(1.0))

        def forward(self, x):
            return (self.c * (x @ self.w))[:, None]

    data = Data(torch.randn(6, 5), torch.randn(6, 1), torch.randn(2, 5), torch.randn(2, 1))
    m0, m1 = Scaled(), Scaled()
    with torch.no_grad():
        m1.c.fill_(2.0)
    ds = kernel(Checkpoint(step=1, model=m1, data=data, references={"first": m0}))
    x = data.x_train.double()
    th0 = x @ x.T + torch.outer(x[:, 0], x[:, 0])
    th1 = 4 * x @ x.T + torch.outer(x[:, 0], x[:, 0])
    expect = float(torch.linalg.norm(th1 - th0) / torch.linalg.norm(th0))
    assert float(ds["kernel_change"]) == pytest.approx(expect, rel=1e-5)
    cos = float((th1 * th0).sum() / (torch.linalg.norm(th1) * torch.linalg.norm(th0)))
    assert float(ds["kernel_distance"]) == pytest.approx(1 - cos, rel=1e-5)
    assert float(ds["kernel_alignment"]) == pytest.approx(cos, rel=1e-6)
    ratio = float(torch.linalg.norm(th1) / torch.linalg.norm(th0))
    assert float(ds["kernel_norm_ratio"]) == pytest.approx(ratio, rel=1e-6)
    assert math.isnan(float(ds["margin"])) and float(ds["param_linf"]) == 2.0


def test_pure_kernel_growth_has_zero_distance_but_a_large_relative_change():
    """f = s (w . x) with s a buffer (not a parameter): Theta = s^2 X X^T. Going from s = 1 to
    s = 3 multiplies the kernel by 9 without changing its shape: the scale-free distance (the
    headline) is 0, the relative change is 8 (docs/methods.md section 7: the relative change is
    dominated by weight growth)."""

    class Buffered(nn.Module):
        def __init__(self, s: float) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
            self.register_buffer("s", torch.tensor(s, dtype=torch.float64))

        def forward(self, x):
            return (self.s * (x @ self.w))[:, None]

    x = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    data = Data(x, torch.randn(7, 1, dtype=torch.float64), x[:2], torch.randn(2, 1,
                                                                          dtype=torch.float64))
    ds = kernel(Checkpoint(step=1, model=Buffered(3.0), data=data,
                           references={"first": Buffered(1.0)}))
    assert float(ds["kernel_distance"]) == pytest.approx(0.0, abs=1e-12)
    assert float(ds["kernel_change"]) == pytest.approx(8.0, rel=1e-12)
    assert float(ds["kernel_norm_ratio"]) == pytest.approx(9.0, rel=1e-12)


def test_linf_margin_definition():
    m = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, -1.0]]))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    data = Data(x, torch.tensor([0, 0]), x, torch.tensor([0, 0]))
    # labels are all 0 (n_classes would be 1): the roles say both logits are classes
    ckpt = Checkpoint(step=0, model=m, data=data, references={"first": m}, anatomy=Anatomy())
    ds = kernel(ckpt, homogeneity=2)
    margin = ((2 - 0) + (0 - (-1))) / 2
    assert float(ds["margin"]) == pytest.approx(margin)
    assert float(ds["linf_margin"]) == pytest.approx(margin / 2.0**2)


def test_token_inputs_and_bad_output():
    emb = nn.Sequential(nn.Embedding(7, 4), nn.Flatten(), nn.Linear(12, 7)).eval()
    tokens = torch.randint(0, 7, (20, 3))
    data = Data(tokens, torch.randint(0, 7, (20,)), tokens[:2], torch.zeros(2, dtype=torch.long))
    ds = kernel(Checkpoint(step=0, model=emb, data=data, references={"first": emb}), n_points=8)
    assert ds.attrs["n_points_used"] == 8 and float(ds["kernel_norm"]) > 0
    with pytest.raises(ConfigError):
        kernel(Checkpoint(step=0, model=emb, data=data, references={"first": emb}), output=9)


def test_registration():
    spec = get("kernel")
    assert spec.kind == "step" and spec.references == ("first",)
    assert spec.defaults["n_points"] == 64 and spec.defaults["output"] == 0


# ------------------------------------------------------------------------ any model (the zoo)
@pytest.mark.parametrize("kind", ["seq_mlp", "named_mlp", "root_raw_mlp", "embed_mlp", "grokscope_transformer",
                                  "raw_transformer", "tl_layout_transformer"])
def test_kernel_on_every_zoo_kind(kind):
    from _zoo import build, data_for

    model, first = build(kind).double().eval(), build(kind, seed=1).double().eval()
    data = data_for(kind).to("cpu", torch.float64)
    ds = kernel(Checkpoint(step=0, model=model, data=data, references={"first": first}),
                n_points=12, output=3)
    for v in ds.data_vars:
        assert math.isfinite(float(ds[v])), v
    # two independent initialisations: the headline is 1 - cos of the two kernels, by hand
    xs = data.x_train[:12]
    th, th0 = empirical_ntk(model, xs, output=3), empirical_ntk(first, xs, output=3)
    cos = float((th * th0).sum() / (torch.linalg.norm(th) * torch.linalg.norm(th0)))
    assert float(ds["kernel_distance"]) == pytest.approx(1 - cos, rel=1e-9)
    assert float(ds["kernel_change"]) == pytest.approx(
        float(torch.linalg.norm(th - th0) / torch.linalg.norm(th0)), rel=1e-9)
    # the margin reads the output role's logits (a raw transformer's last position)
    with torch.no_grad():
        out = model(data.x_train[:12])
    logits = (out[:, -1] if out.ndim == 3 else out).double()
    y = data.y_train[:12]
    others = logits.clone()
    others[torch.arange(12), y] = -float("inf")
    margin = (logits[torch.arange(12), y] - others.max(1).values).mean()
    assert float(ds["margin"]) == pytest.approx(float(margin), rel=1e-10)


def _hand_ntk(model, x, output, position=-1):
    """Per-sample loop: the gradient of logit ``output`` at ``position`` w.r.t. every
    parameter, by plain autograd on the model's ``(n, T, C)`` output."""
    params = [p for p in model.parameters() if p.is_floating_point()]
    rows = []
    for i in range(x.shape[0]):
        f = model(x[i : i + 1])[0, position, output]
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(f, params)]))
    j = torch.stack(rows).double()
    return j @ j.T


@pytest.mark.parametrize("tl_layout", [False, True], ids=["nanda", "tl_layout"])
def test_raw_transformer_kernel_is_last_position_ntk(tl_layout):
    """The raw transformer returns (n, 3, p): the NTK is of the last position's logit, not of
    entry ``output`` of the flattened output (position 0's); and it equals the NTK of
    grokscope's Transformer holding the same weights (one function of the same parameter
    entries)."""
    from _zoo import build, data_for
    from _zoo_oracles import to_grokscope

    kind = "tl_layout_transformer" if tl_layout else "raw_transformer"
    raw, data = build(kind).double().eval(), data_for(kind)
    x = data.x_train[:6]
    ck = Checkpoint(step=0, model=raw, data=data, references={"first": raw})
    theta = empirical_ntk(ck.view, x, output=2, chunk=3)
    assert torch.allclose(theta, _hand_ntk(raw, x, 2), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(theta, _hand_ntk(raw, x, 2, position=0), rtol=1e-3)
    mine = to_grokscope(raw)
    assert torch.allclose(empirical_ntk(mine, x, output=2), theta, rtol=1e-10, atol=1e-12)
    ds = kernel(ck, n_points=6, output=2, chunk=3)
    assert float(ds["kernel_norm"]) == pytest.approx(float(torch.linalg.norm(theta)), rel=1e-12)
