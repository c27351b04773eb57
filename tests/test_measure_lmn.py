"""Known answers of the linear mapping number (METHODS.md section 4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from grokscope.anatomy import Anatomy, ModelView
from grokscope.data import Data
from grokscope.errors import ConfigError, MeasureNotApplicable
from grokscope.measures import get
from grokscope.measures.lmn import linearity_matrix, lmn_from_matrix
from grokscope.measures.registry import Checkpoint


class TinyMLP(nn.Module):
    """An nn.Linear stack (lmn sees it through its detected anatomy; hidden/from_hidden are
    used only by the tests' independent computations)."""

    def __init__(self, d_in: int = 6, width: int = 16, out: int = 4, depth: int = 2, act=None):
        super().__init__()
        dims = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            [nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])] + [nn.Linear(width, out)]
        )
        self.act = act if act is not None else nn.ReLU()
        self.embed = None

    def hidden(self, x: torch.Tensor, layer: int = 0) -> torch.Tensor:
        h = x
        for lin in self.layers[: layer + 1]:
            h = self.act(lin(h))
        return h

    def from_hidden(self, h: torch.Tensor, layer: int = 0) -> torch.Tensor:
        for lin in self.layers[layer + 1 : -1]:
            h = self.act(lin(h))
        return self.layers[-1](h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_hidden(self.hidden(x, 0), 0)


def _data(n: int = 60, d: int = 6, seed: int = 0) -> Data:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    return Data(x, y, x[:10], y[:10])


def _ckpt(model: nn.Module, data: Data) -> Checkpoint:
    return Checkpoint(step=0, model=model.eval(), data=data)


def test_affine_g_gives_one():
    torch.manual_seed(0)
    lin = nn.Linear(8, 5)
    h = torch.randn(40, 8)
    L = linearity_matrix(lin, h)
    assert L.shape == (40, 40)
    assert np.allclose(L, 1.0, atol=1e-9)
    assert abs(lmn_from_matrix(L) - 1.0) < 1e-6


def test_affine_g_float64_exact():
    torch.manual_seed(1)
    W = torch.randn(3, 7, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    h = torch.randn(25, 7, dtype=torch.float64)
    L = linearity_matrix(lambda z: z @ W.T + b, h)
    assert abs(lmn_from_matrix(L) - 1.0) < 1e-9


def test_constant_output_counts_as_linear():
    h = torch.randn(10, 3)
    L = linearity_matrix(lambda z: torch.stack([z[:, 0] * 0 + 2.5, z.sum(1)], 1), h)
    assert np.allclose(L, 1.0)


@pytest.mark.parametrize("c", [1, 2, 3, 5])
def test_block_diagonal_matrix(c):
    L = np.kron(np.eye(c), np.ones((4, 4)))
    assert lmn_from_matrix(L) == pytest.approx(c, abs=1e-9)


def test_identity_matrix_gives_n():
    assert lmn_from_matrix(np.eye(7)) == pytest.approx(7.0)


def test_bad_matrix_raises():
    with pytest.raises(ConfigError):
        lmn_from_matrix(np.ones((2, 3)))
    with pytest.raises(ConfigError):
        lmn_from_matrix(np.full((2, 2), np.nan))


def test_batched_matches_per_pair_loop():
    torch.manual_seed(2)
    # float64: the comparison tests the algorithm, not float32 rounding of the points
    net = nn.Sequential(nn.Linear(5, 12), nn.SiLU(), nn.Linear(12, 3)).double()
    h = torch.randn(9, 5, dtype=torch.float64)
    L = linearity_matrix(net, h, chunk=5)
    t = torch.linspace(0, 1, 21, dtype=torch.float64)
    with torch.no_grad():
        for i in range(9):
            for j in range(i + 1, 9):
                y = net(h[i] + t[:, None] * (h[j] - h[i])).double().numpy()
                r2 = [np.corrcoef(t.double().numpy(), y[:, k])[0, 1] ** 2 for k in range(3)]
                assert L[i, j] == pytest.approx(np.mean(r2), abs=1e-10)
                assert L[j, i] == L[i, j]


def test_relu_net_with_kinks_exceeds_one():
    torch.manual_seed(3)
    model = TinyMLP(depth=2)
    ds = get("lmn").fn(_ckpt(model, _data()), n_samples=30, cut="pre")
    assert float(ds.lmn) > 1.05
    assert float(ds.lmn) == pytest.approx(8.397378833035, rel=1e-5)
    post = get("lmn").fn(_ckpt(model, _data()), n_samples=30, cut="post")
    assert float(post.lmn) == pytest.approx(6.031983478942, rel=1e-5)
    # the default (auto): a hidden layer follows the first one, so its post-activation
    auto = get("lmn").fn(_ckpt(model, _data()), n_samples=30)
    assert float(auto.lmn) == float(post.lmn)
    assert auto.attrs["subnetwork"].startswith("cut='auto' -> post-activation")
    assert float(ds.lmn) == pytest.approx(2 ** float(ds.lmn_entropy))
    assert int(ds.n_samples) == 30 and ds.sample_index.dims == ("sample",)
    assert "step" not in ds.dims


def test_depth_one_mlp_readout_is_affine():
    torch.manual_seed(4)
    model = TinyMLP(depth=1)
    ds = get("lmn").fn(_ckpt(model, _data()), n_samples=20, cut="post")
    assert float(ds.lmn) == pytest.approx(1.0, abs=1e-6)
    assert "affine by construction" in ds.attrs["note"]
    # the default (auto: the input role, since no hidden layer follows) sees the ReLU
    pre = get("lmn").fn(_ckpt(model, _data()), n_samples=20)
    assert float(pre.lmn) == pytest.approx(5.518396984219, rel=1e-5)
    assert pre.attrs["note"] == ""


def test_deterministic_under_seed():
    torch.manual_seed(5)
    model, data = TinyMLP(depth=2), _data()
    fn = get("lmn").fn
    a = fn(_ckpt(model, data), n_samples=15, seed=3)
    b = fn(_ckpt(model, data), n_samples=15, seed=3)
    c = fn(_ckpt(model, data), n_samples=15, seed=4)
    assert np.array_equal(a.sample_index, b.sample_index)
    assert float(a.lmn) == float(b.lmn)
    assert not np.array_equal(a.sample_index, c.sample_index)


def test_fewer_samples_than_requested():
    ds = get("lmn").fn(_ckpt(TinyMLP(), _data(n=12)), n_samples=100)
    assert int(ds.n_samples) == 12


def test_hook_path_matches_hidden_path():
    torch.manual_seed(6)
    model, data = TinyMLP(depth=2), _data()
    fn = get("lmn").fn
    # Hooking the ReLU after layers.0 is not possible (shared act module), so hook layers.1
    # and compare with an equivalent g built by hand.
    a = fn(_ckpt(model, data), n_samples=12, module="layers.1")
    x = data.x_train[a.sample_index.values]
    with torch.no_grad():
        h = model.layers[1](model.hidden(x, 0))
    L = linearity_matrix(lambda z: model.layers[2](model.act(z)), h)
    assert float(a.lmn) == pytest.approx(lmn_from_matrix(L), rel=1e-9)


def test_hook_path_bad_module():
    with pytest.raises(ConfigError, match="no module"):
        get("lmn").fn(_ckpt(TinyMLP(), _data()), n_samples=5, module="nope")


def _view(model: nn.Module, data: Data) -> ModelView:
    return _ckpt(model, data).view


def test_applies():
    spec = get("lmn")
    assert spec.applies(_view(TinyMLP(), _data()), _data()) is None
    reason = spec.applies(_view(nn.Sequential(nn.Linear(6, 4)), _data()), _data())
    assert isinstance(reason, str) and "'hidden'" in reason and "anatomy=" in reason


def _models():
    models = pytest.importorskip("grokscope.models")
    if not hasattr(models, "build_model"):
        pytest.skip("grokscope.models.build_model not written yet")
    return models


def test_with_registered_mlp():
    models = _models()
    torch.manual_seed(7)
    deep = models.build_model("mlp", in_dim=6, out_dim=4, width=16, depth=2)
    ds = get("lmn").fn(_ckpt(deep, _data()), n_samples=20, cut="post")
    assert float(ds.lmn) == pytest.approx(4.039469705227, rel=1e-5) and ds.attrs["note"] == ""
    pre = get("lmn").fn(_ckpt(deep, _data()), n_samples=20, cut="pre")
    assert float(pre.lmn) == pytest.approx(5.812994206433, rel=1e-5) and pre.attrs["note"] == ""
    shallow = models.build_model("mlp", in_dim=6, out_dim=4, width=16, depth=1)
    ds1 = get("lmn").fn(_ckpt(shallow, _data()), n_samples=20, cut="post")
    assert float(ds1.lmn) == pytest.approx(1.0, abs=1e-6)
    assert "by construction" in ds1.attrs["note"]
    pre1 = get("lmn").fn(_ckpt(shallow, _data()), n_samples=20)
    assert float(pre1.lmn) == pytest.approx(5.172649637823, rel=1e-5)
    ds_in = get("lmn").fn(_ckpt(shallow, _data()), n_samples=20, layer=-1)
    assert float(ds_in.lmn) == pytest.approx(5.172649637907, rel=1e-5)
    assert "input role" in ds_in.attrs["subnetwork"]
    # the first map is affine: interpolating its input (layer=-1) or its output (cut="pre")
    # is the same g
    assert float(pre1.lmn) == pytest.approx(float(ds_in.lmn), rel=1e-6)


def test_with_registered_transformer():
    models = _models()
    torch.manual_seed(8)
    p = 7
    model = models.build_model("transformer", vocab=p + 1, out_dim=p, d_model=16, d_mlp=32)
    a = torch.randint(0, p, (30, 2))
    x = torch.cat([a, torch.full((30, 1), p)], 1)
    y = (a.sum(1) % p).long()
    data = Data(x, y, x, y, task={"name": "modular", "p": p, "encoding": "tokens"})
    assert get("lmn").applies(_view(model, data), data) is None
    ds = get("lmn").fn(_ckpt(model, data), n_samples=12, cut="pre")
    assert "blocks.0.mlp.W_in" in ds.attrs["subnetwork"]
    assert float(ds.lmn) == pytest.approx(2.371386911316, rel=1e-5)
    ds_in = get("lmn").fn(_ckpt(model, data), n_samples=12, layer=-1)
    assert float(ds_in.lmn) == pytest.approx(1.979412902038, rel=1e-5)
    # the default (auto): after the only hidden layer the rest is affine -> the input role
    auto = get("lmn").fn(_ckpt(model, data), n_samples=12)
    assert float(auto.lmn) == float(ds_in.lmn)
    assert "no hidden layer follows it" in auto.attrs["subnetwork"]
    # after the post-activation a one-block transformer is affine: the result says so
    post = get("lmn").fn(_ckpt(model, data), n_samples=12, cut="post")
    assert float(post.lmn) == pytest.approx(1.0, abs=1e-5)
    assert "every segment is linear" in post.attrs["note"]


def test_layer_minus_one_without_input_split():
    torch.manual_seed(9)
    net = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 4))
    ds = get("lmn").fn(_ckpt(net, _data()), n_samples=10, layer=-1)
    x = _data().x_train[ds.sample_index.values]
    assert float(ds.lmn) == pytest.approx(lmn_from_matrix(linearity_matrix(net, x)), rel=1e-9)
    with pytest.raises(ConfigError):
        get("lmn").fn(_ckpt(net, _data()), n_samples=10, layer=-2)


def test_push_through_first_linear_matches_plain_path():
    torch.manual_seed(10)
    model, data = TinyMLP(depth=3, act=nn.SiLU()), _data()
    ds = get("lmn").fn(_ckpt(model, data), n_samples=25, cut="post")
    assert "mapped through layers.1" in ds.attrs["subnetwork"]
    x = data.x_train[ds.sample_index.values]
    with torch.no_grad():
        plain = linearity_matrix(lambda z: model.from_hidden(z, 0), model.hidden(x, 0))
    assert float(ds.lmn) == pytest.approx(lmn_from_matrix(plain), rel=1e-4)


def test_direct_chain_falls_back_when_it_disagrees_with_the_model():
    """An anatomy whose activation is wrong (tanh for a ReLU net): the chain computed from the
    anatomy would disagree with the model, so the hooks are used and LMN is the model's."""
    torch.manual_seed(11)
    model, data = TinyMLP(depth=2), _data()
    good = _ckpt(model, data)
    ds = get("lmn").fn(good, n_samples=15, cut="pre")
    assert "directly from the anatomy" in ds.attrs["subnetwork"]
    doc = good.view.anatomy.to_dict()
    for h in doc["hidden"]:
        h["activation"] = "tanh"
    bad = Checkpoint(step=0, model=model, data=data, anatomy=Anatomy.from_dict(doc))
    for cut in ("pre", "post"):
        ref = get("lmn").fn(_ckpt(model, data), n_samples=15, cut=cut)
        got = get("lmn").fn(bad, n_samples=15, cut=cut)
        assert "directly" not in got.attrs["subnetwork"]
        assert "forward hook" in got.attrs["subnetwork"]
        assert float(got.lmn) == pytest.approx(float(ref.lmn), rel=1e-4)
    x = data.x_train[ds.sample_index.values]
    with torch.no_grad():
        z = model.layers[0](x)
    plain = linearity_matrix(lambda v: model.from_hidden(model.act(v), 0), z)
    assert float(ds.lmn) == pytest.approx(lmn_from_matrix(plain), rel=1e-4)


def test_bad_cut_and_post_without_capture():
    with pytest.raises(ConfigError, match="cut"):
        get("lmn").fn(_ckpt(TinyMLP(), _data()), n_samples=5, cut="middle")
    model, data = TinyMLP(depth=1), _data()
    doc = _view(model, data).anatomy.to_dict()
    doc["hidden"][0]["capture"] = None
    ck = Checkpoint(step=0, model=model, data=data, anatomy=Anatomy.from_dict(doc))
    with pytest.raises(MeasureNotApplicable, match="'hidden'"):
        get("lmn").fn(ck, n_samples=5, cut="post")
    # the pre-activation needs no capture
    assert float(get("lmn").fn(ck, n_samples=8).lmn) > 1.0


def test_offset_dwarfing_change_is_still_linear_in_float64():
    """A one-pass variance would lose every digit here (review finding): r^2 must stay ~1."""
    torch.manual_seed(0)
    W = torch.randn(5, 3, dtype=torch.float64)
    h = torch.randn(6, 5, dtype=torch.float64)
    L = linearity_matrix(lambda z: 1000 + 1e-9 * (z @ W), h, 21)
    assert L.min() > 0.9999
