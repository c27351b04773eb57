"""Known answers of the linear mapping number (docs/methods.md section 4)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from grokscope.anatomy import Anatomy, ModelView
from grokscope.data import Data
from grokscope.errors import ConfigError, MeasureNotApplicable
from grokscope.measures import get
from grokscope.measures.lmn import (
    generalising_window,
    linearity_matrix,
    lmn_from_matrix,
    lmn_test_loss_fit,
)
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


# --------------------------------------------------------------------------- variance weighting
def _r2_by_hand(y: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output r^2 (np.corrcoef) and variance along one segment, ``y`` of shape (T, K)."""
    r2 = np.array([np.corrcoef(t, y[:, k])[0, 1] ** 2 for k in range(y.shape[1])])
    return r2, y.var(axis=0)


def test_variance_weighting_against_a_hand_computation():
    """g(z) = [100 z_0 + z_1, 0.01 (z_0^2 + sin 3 z_1)]: a dominant linear output and a
    negligible non-linear one. Uniform: the mean of the two r^2; variance: weighted by each
    output's variance along the segment (docs/methods.md section 4's option)."""
    torch.manual_seed(12)
    h = torch.randn(8, 2, dtype=torch.float64)

    def g(z):
        return torch.stack([100 * z[:, 0] + z[:, 1], 0.01 * (z[:, 0] ** 2 + torch.sin(3 * z[:, 1]))], 1)

    uni = linearity_matrix(g, h)
    var = linearity_matrix(g, h, weighting="variance")
    t = np.linspace(0, 1, 21)
    for i in range(8):
        for j in range(i + 1, 8):
            with torch.no_grad():
                y = g(h[i] + torch.from_numpy(t)[:, None] * (h[j] - h[i])).numpy()
            r2, v = _r2_by_hand(y, t)
            assert uni[i, j] == pytest.approx(r2.mean(), abs=1e-10)
            assert var[i, j] == pytest.approx((v * r2).sum() / v.sum(), abs=1e-10)
    # the negligible output no longer drags L down: every weighted entry is ~1
    assert var.min() > 0.999 and uni.min() < 0.9
    assert lmn_from_matrix(var) < lmn_from_matrix(uni)


def test_variance_weighting_constant_outputs():
    h = torch.randn(6, 3, dtype=torch.float64)
    # one constant output and one linear: the constant one has weight 0
    L = linearity_matrix(lambda z: torch.stack([z[:, 0] * 0 + 2.5, z.sum(1) ** 2], 1), h,
                         weighting="variance")
    expect = linearity_matrix(lambda z: (z.sum(1) ** 2)[:, None], h)
    np.testing.assert_allclose(L, expect, atol=1e-12)
    # every output constant along every segment: 1 (nothing non-linear to see)
    L0 = linearity_matrix(lambda z: torch.zeros(z.shape[0], 3, dtype=z.dtype), h,
                          weighting="variance")
    np.testing.assert_array_equal(L0, np.ones((6, 6)))
    with pytest.raises(ConfigError, match="weighting"):
        linearity_matrix(lambda z: z, h, weighting="mean")


def test_measure_records_the_weighting():
    torch.manual_seed(13)
    model, data = TinyMLP(depth=2, act=nn.SiLU()), _data()
    fn = get("lmn").fn
    uni = fn(_ckpt(model, data), n_samples=15)
    var = fn(_ckpt(model, data), n_samples=15, weighting="variance")
    assert uni.attrs["weighting"] == "uniform" and var.attrs["weighting"] == "variance"
    assert get("lmn").defaults["weighting"] == "uniform"
    x = data.x_train[var.sample_index.values]
    with torch.no_grad():
        h = model.hidden(x, 0)
    L = linearity_matrix(lambda z: model.from_hidden(z, 0), h, weighting="variance")
    assert float(var.lmn) == pytest.approx(lmn_from_matrix(L), rel=1e-4)
    assert float(var.lmn) != pytest.approx(float(uni.lmn), rel=1e-3)


# --------------------------------------------------------------------------- the default model
def test_default_lmn_on_the_demo_model_is_not_constant():
    """grokscope's default demo model (one-hidden-layer ReLU MLP, width 256, two-hot a+b mod 59):
    the default cut ('auto') takes the input role, so LMN differs between two checkpoints (random
    init, and after 20 full-batch gradient steps); the old default (the post-activation) gives exactly 1 at
    both, a constant by construction."""
    import grokscope as gs
    from grokscope.defaults import DEMO
    from grokscope.tasks import make_task

    data = make_task(DEMO["task"], **DEMO["task_kwargs"])
    torch.manual_seed(0)
    init = gs.build_model("mlp", in_dim=data.x_train.shape[1], out_dim=data.n_classes,
                          **DEMO["model_kwargs"])
    trained = copy.deepcopy(init)
    for _ in range(20):  # plain full-batch gradient steps
        loss = nn.functional.cross_entropy(trained(data.x_train), data.y_train)
        grads = torch.autograd.grad(loss, list(trained.parameters()))
        with torch.no_grad():
            for p_, g_ in zip(trained.parameters(), grads):
                p_.sub_(5.0 * g_)
    fn = get("lmn").fn
    a = fn(_ckpt(init, data), n_samples=40)
    b = fn(_ckpt(trained, data), n_samples=40)
    assert "input role" in a.attrs["subnetwork"] and a.attrs["note"] == ""
    assert float(a.lmn) == pytest.approx(3.871722988999, rel=1e-6)
    assert abs(float(a.lmn) - float(b.lmn)) > 0.3, (float(a.lmn), float(b.lmn))
    for ck in (_ckpt(init, data), _ckpt(trained, data)):
        assert float(fn(ck, n_samples=40, cut="post").lmn) == pytest.approx(1.0, abs=1e-5)


# --------------------------------------------------------------------------- LMN vs test loss
def _lmn_series(steps, values):
    return xr.Dataset({"lmn": ("step", np.asarray(values, dtype=float))}, coords={"step": steps})


def test_lmn_test_loss_fit_known_line():
    steps = np.array([0, 10, 20, 40, 80, 160])
    loss = np.array([3.0, 2.5, 2.0, 1.0, 0.5, 0.25])
    metrics = xr.Dataset({"test_loss": ("step", loss)}, coords={"step": steps})
    out = lmn_test_loss_fit(_lmn_series(steps, 2 * loss + 1), metrics, start=10, end=80)
    assert out["n_points"] == 4 and (out["start"], out["end"]) == (10, 80)
    assert out["slope"] == pytest.approx(2.0, abs=1e-12)
    assert out["intercept"] == pytest.approx(1.0, abs=1e-12)
    assert out["pearson_r"] == pytest.approx(1.0, abs=1e-12)
    assert out["lmn_start"] == 6.0 and out["test_loss_end"] == 0.5
    # steps in common only; a DataArray works as well
    out2 = lmn_test_loss_fit(_lmn_series(steps[1:], 2 * loss[1:] + 1)["lmn"],
                             metrics["test_loss"])
    assert out2["n_points"] == 5
    with pytest.raises(ConfigError, match="no step in common"):
        lmn_test_loss_fit(_lmn_series(np.array([1, 2]), [1.0, 2.0]), metrics)


def test_lmn_test_loss_fit_matches_the_lmn_analysis():
    """The fit analyses/04_lmn.py reports (now through the library) equals numpy's line, r and
    scipy's rho over the generalising window, computed here by hand."""
    import importlib.util
    from pathlib import Path

    from scipy.stats import spearmanr

    path = Path(__file__).resolve().parents[1] / "analyses" / "04_lmn.py"
    spec = importlib.util.spec_from_file_location("analysis_04_lmn_fit", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(0)
    steps = np.arange(0, 3000, 50)
    loss = np.concatenate([np.linspace(0.5, 4.0, 20), np.linspace(4.0, 0.05, 40)])
    acc = np.clip(1 - loss / 4, 0, 1)
    metrics = xr.Dataset({"test_loss": ("step", loss), "test_acc": ("step", acc)},
                         coords={"step": steps})
    lmn_v = 3 + 1.5 * loss + rng.normal(0, 0.3, loss.size)
    lmn_ds = _lmn_series(steps, lmn_v)
    start, end = generalising_window(metrics, 100.0)
    # by hand: the peak of the test loss after t_train, to the first step with acc >= 0.99
    assert start == 950.0
    assert not (acc >= 0.99).any() and end == float(steps[-1])  # never 0.99: the last step
    assert (start, end) == mod.generalising_window(metrics, 100.0)
    mine = mod.fit(lmn_ds, metrics, start, end)
    sel = (steps >= start) & (steps <= end)
    slope, icpt = np.polyfit(loss[sel], lmn_v[sel], 1)
    assert mine["slope"] == pytest.approx(slope, rel=1e-12)
    assert mine["intercept"] == pytest.approx(icpt, rel=1e-12)
    assert mine["pearson_r"] == pytest.approx(np.corrcoef(loss[sel], lmn_v[sel])[0, 1], rel=1e-12)
    assert mine["spearman_rho"] == pytest.approx(spearmanr(loss[sel], lmn_v[sel]).statistic,
                                                 rel=1e-12)
    assert mine["n_points"] == int(sel.sum())
    assert 0.9 < mine["pearson_r"] < 1.0
