"""GrokAlign alignment measure: known answers on tiny models (docs/methods.md section 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from grokscope.anatomy import Anatomy, ModelView
from grokscope.data import Data
from grokscope.errors import ConfigError, DataError, MeasureNotApplicable
from grokscope.measures import Checkpoint, get
from grokscope.measures._jacobian import (
    as_view,
    centroid,
    evaluation_inputs,
    input_jacobian,
    input_view,
)
from grokscope.measures.alignment import alignment, alignment_per_point

D, C = 6, 4


def _data(n_train=20, n_test=15, d=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Data(
        torch.randn(n_train, d, generator=g, dtype=torch.float64),
        torch.randint(0, C, (n_train,), generator=g),
        torch.randn(n_test, d, generator=g, dtype=torch.float64),
        torch.randint(0, C, (n_test,), generator=g),
    )


def _iv(model, x):
    """The model on batch ``x`` as a map from its input role (anatomy detected on ``x``)."""
    return input_view(as_view(model, x), x)


def _relu_net(seed=0, bias=False):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(D, 16, bias=bias), nn.ReLU(), nn.Linear(16, 16, bias=bias), nn.ReLU(),
        nn.Linear(16, C, bias=bias),
    ).double()


class RadialModel(nn.Module):
    """``f_c(x) = w_c |x|^2 / 2``: every Jacobian row ``w_c x^T`` is parallel to ``x``."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.arange(1.0, C + 1, dtype=torch.float64))

    def forward(self, x):
        return 0.5 * (x**2).sum(1, keepdim=True) * self.w


class TokenModel(nn.Module):
    """Tokens -> embeddings -> bias-free linear readout, with the embed_inputs convention."""

    def __init__(self, vocab=7, n_tok=2, dim=3):
        super().__init__()
        torch.manual_seed(1)
        self.embed = nn.Embedding(vocab, dim).double()
        self.out = nn.Linear(n_tok * dim, C, bias=False).double()

    def embed_inputs(self, x):
        return self.embed(x).flatten(1)

    def forward_from_input(self, e):
        return self.out(e)

    def forward(self, x):
        return self.forward_from_input(self.embed_inputs(x))


def test_bias_free_linear_known_answers():
    torch.manual_seed(0)
    model = nn.Linear(D, C, bias=False).double()
    data = _data()
    w = model.weight.detach()
    x = data.x_test
    mu = centroid(_iv(model, x))
    np.testing.assert_allclose(mu.numpy(), np.tile(w.sum(0).numpy(), (x.shape[0], 1)), atol=1e-12)
    ds = alignment(Checkpoint(0, model, data), split="test")
    assert float(ds.jacobian_norm) == pytest.approx(float(w.norm()), rel=1e-12)
    assert int(ds.n_points) == x.shape[0]
    ca = (x @ w.sum(0)) / (x.norm(dim=1) * w.sum(0).norm())
    assert float(ds.centroid_alignment_mean) == pytest.approx(float(ca.mean()), rel=1e-10)
    assert float(ds.centroid_alignment_min) == pytest.approx(float(ca.min()), rel=1e-10)
    assert float(ds.centroid_alignment_max) == pytest.approx(float(ca.max()), rel=1e-10)
    assert "step" not in ds.dims


def test_bias_free_relu_is_positively_homogeneous():
    model = _relu_net()
    x = _data().x_test
    view = _iv(model, x)
    e = view.e
    jac = input_jacobian(view, e)
    with torch.no_grad():
        f = model(x)
    np.testing.assert_allclose(torch.einsum("ncd,nd->nc", jac, e).numpy(), f.numpy(), atol=1e-12)
    per = alignment_per_point(model, x, chunk=4)
    # <mu_x, x> = 1^T J_x x = sum_c f_c(x)
    np.testing.assert_allclose(per["centroid_inner"], f.sum(1).numpy(), atol=1e-12)
    # A(x) = |f(x)|^2 / (||J_x||_F^2 |x|^2)
    expect = (f**2).sum(1) / (jac.flatten(1).norm(dim=1) ** 2 * (x**2).sum(1))
    np.testing.assert_allclose(per["jacobian_alignment"], expect.numpy(), rtol=1e-10)


def test_centroid_is_sum_of_jacobian_rows_and_chunking_is_invisible():
    model = _relu_net(bias=True)
    x = _data().x_test
    view = _iv(model, x)
    e = view.e
    np.testing.assert_allclose(
        centroid(view, e).numpy(), input_jacobian(view, e).sum(1).numpy(), atol=1e-12
    )
    a = alignment_per_point(model, x, chunk=3)
    b = alignment_per_point(model, x, chunk=100)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-12, atol=1e-14)


def test_rows_parallel_to_x_give_alignment_and_rank_one_of_one():
    ds = alignment(Checkpoint(0, RadialModel(), _data()))
    assert float(ds.jacobian_alignment_mean) == pytest.approx(1.0, abs=1e-12)
    assert float(ds.rank_one_mean) == pytest.approx(1.0, abs=1e-12)
    # mu_x = (sum_c w_c) x: perfectly aligned centroid
    assert float(ds.centroid_alignment_min) == pytest.approx(1.0, abs=1e-12)


def test_rank_one_against_svd():
    model = _relu_net(seed=3, bias=True)
    x = _data().x_test
    per = alignment_per_point(model, x)
    s = torch.linalg.svdvals(input_jacobian(_iv(model, x))) ** 2
    np.testing.assert_allclose(per["rank_one"], (s[:, 0] / s.sum(1)).numpy(), rtol=1e-10)


def test_split_and_max_points():
    data = _data(n_train=20, n_test=15)
    assert evaluation_inputs(data, "all", None).shape[0] == 35
    assert torch.equal(evaluation_inputs(data, "train", 5), data.x_train[:5])
    ds = alignment(Checkpoint(0, _relu_net(), data), split="all", max_points=30)
    assert int(ds.n_points) == 30
    with pytest.raises(ConfigError, match="jacobian_points"):
        alignment(Checkpoint(0, _relu_net(), data), jacobian_points=0)
    with pytest.raises(ConfigError, match="split"):
        evaluation_inputs(data, "val", None)
    with pytest.raises(ConfigError, match="max_points"):
        evaluation_inputs(data, "test", 0)
    empty = Data(data.x_train, data.y_train, data.x_test[:0], data.y_test[:0])
    with pytest.raises(DataError, match="no samples"):
        evaluation_inputs(empty, "test", None)


def test_token_model_uses_embedded_input_and_applies():
    model = TokenModel()
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(0, 7, (12, 2), generator=g)
    labels = torch.arange(12) % C
    data = Data(toks, labels, toks, labels)
    spec = get("alignment")
    ckpt = Checkpoint(0, model, data)
    assert spec.applies(ckpt.view, data) is None
    ds = alignment(ckpt)
    assert float(ds.jacobian_norm) == pytest.approx(float(model.out.weight.detach().norm()), rel=1e-12)
    assert ds.attrs["input_convention"] == "output of module 'embed'"
    # a token run whose model has no input role does not apply, and says why (role and key)
    plain = ModelView(nn.Linear(2, C), Anatomy())
    reason = spec.applies(plain, data)
    assert "'input'" in reason and "anatomy={'input'" in reason and "tokens" in reason
    with pytest.raises(MeasureNotApplicable, match="tokens"):
        alignment_per_point(plain, toks)


def test_registered_defaults():
    spec = get("alignment")
    assert spec.kind == "step"
    assert spec.defaults == {"split": "train", "max_points": None, "jacobian_points": 256,
                             "pc1_points": 64, "chunk": 256}


def test_grokscope_models():
    models = pytest.importorskip("grokscope.models")
    torch.manual_seed(0)
    mlp = models.build_model("mlp", in_dim=D, out_dim=C, width=8, bias=False).double()
    x = _data().x_test
    per = alignment_per_point(mlp, x)
    with torch.no_grad():
        f = mlp(x)
    np.testing.assert_allclose(per["centroid_inner"], f.sum(1).numpy(), atol=1e-12)

    tf = models.build_model("transformer", vocab=6, n_ctx=3, out_dim=5, d_model=8, n_heads=2, d_mlp=16)
    toks = torch.randint(0, 6, (10, 3))
    labels = torch.arange(10) % 5
    data = Data(toks, labels, toks, labels)
    ds = alignment(Checkpoint(0, tf, data))
    assert np.isfinite(float(ds.jacobian_norm)) and float(ds.jacobian_norm) > 0
    # oracle: Jacobian of the logits w.r.t. the embedded tokens by a per-sample loop
    e = tf.embed_inputs(toks[:1]).detach()
    jac = torch.autograd.functional.jacobian(tf.forward_from_input, e)[0, :, 0]  # (C, d)
    per = alignment_per_point(tf, toks[:1])
    assert per["jacobian_norm"][0] == pytest.approx(float(jac.norm()), rel=1e-5)


# ------------------------------------------------------------------------ any model (the zoo)
ZOO_INPUT = {"seq_mlp": "raw float input", "named_mlp": "raw float input",
             "root_raw_mlp": "raw float input",
             "embed_mlp": "output of module 'tok'",
             "grokscope_transformer": "output of module 'embed'",
             "raw_transformer": "output of module 'embed'",
             "tl_layout_transformer": "output of module 'embed'"}


@pytest.mark.parametrize("kind", list(ZOO_INPUT))
def test_alignment_on_every_zoo_kind(kind):
    from _zoo import build, data_for

    data = data_for(kind)
    ck = Checkpoint(0, build(kind).double(), data)
    assert get("alignment").applies(ck.view, data) is None
    ds = alignment(ck, max_points=24)
    assert ds.attrs["input_convention"] == ZOO_INPUT[kind]
    for v in ds.data_vars:
        assert np.isfinite(float(ds[v])), v
    # a bias-free check that holds for any model: <mu_x, x> = 1^T J_x x, mu_x = J_x^T 1
    x = data.x_test[:5]
    view = input_view(ck.view, x)
    jac = input_jacobian(view)  # (n, C, d): C = the output role's logits, not positions x C
    assert jac.shape[1] == data.n_classes
    np.testing.assert_allclose(centroid(view).numpy(), jac.sum(1).numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("tl_layout", [False, True], ids=["nanda", "tl_layout"])
def test_raw_transformer_centroid_against_hand_written_forward(tl_layout):
    """Oracle (b): the centroid is the gradient of the summed last-position logits w.r.t. the
    token embeddings (``W_E`` columns), through a forward written here from the parameters."""
    from _zoo import build, data_for
    from _zoo_oracles import embed, logits_from_embedding

    kind = "tl_layout_transformer" if tl_layout else "raw_transformer"
    m, data = build(kind).double().eval(), data_for(kind)
    x = data.x_test[:20]
    with torch.enable_grad():
        e = embed(m, x).detach().requires_grad_(True)  # (n, T, d)
        hand = logits_from_embedding(m, e)
        (grad,) = torch.autograd.grad(hand.sum(), e)
    ck = Checkpoint(0, m, data)
    with torch.no_grad():
        np.testing.assert_allclose(ck.view.forward(x).numpy(), hand.detach().numpy(), rtol=1e-10,
                                   atol=1e-12)
    view = input_view(ck.view, x)
    np.testing.assert_allclose(view.e.numpy(), e.detach().flatten(1).numpy(), rtol=0, atol=0)
    mu = centroid(view)
    np.testing.assert_allclose(mu.numpy(), grad.flatten(1).numpy(), rtol=1e-10, atol=1e-12)
    per = alignment_per_point(ck.view, x, chunk=7)
    e_flat, g_flat = e.detach().flatten(1), grad.flatten(1)
    np.testing.assert_allclose(per["centroid_inner"], (e_flat * g_flat).sum(1).numpy(), rtol=1e-10)
    np.testing.assert_allclose(per["centroid_norm"], g_flat.norm(dim=1).numpy(), rtol=1e-10)


def test_raw_transformer_and_grokscope_transformer_alignment_agree():
    """Oracle (c): the same weights in grokscope's Transformer and the raw transformer (one
    function: checked) give the same GrokAlign quantities at every point."""
    from _zoo import build, data_for
    from _zoo_oracles import to_grokscope

    raw, data = build("raw_transformer").double().eval(), data_for("raw_transformer")
    mine = to_grokscope(raw)
    x = data.x_test[:30]
    a_view, b_view = Checkpoint(0, raw, data).view, Checkpoint(0, mine, data).view
    with torch.no_grad():
        np.testing.assert_allclose(a_view.forward(x).numpy(), b_view.forward(x).numpy(),
                                   rtol=1e-12, atol=1e-12)
    a = alignment_per_point(a_view, x)
    b = alignment_per_point(b_view, x)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-9, atol=1e-12, err_msg=k)


# ------------------------------------------------------------------ defaults and subsamples
def test_default_points_train_split_centroid_on_all_jacobians_on_a_subsample():
    """Training points by default (the authors evaluate training batches); the centroid on
    every one of them, the full-Jacobian quantities on the first jacobian_points, PC1 on the
    first pc1_points."""
    model, data = _relu_net(seed=4, bias=True), _data(n_train=50, n_test=15)
    ds = alignment(Checkpoint(0, model, data), jacobian_points=20, pc1_points=7, chunk=8)
    x = data.x_train
    per = alignment_per_point(model, x)
    assert (int(ds.n_points), int(ds.n_jacobian_points), int(ds.n_pc1_points)) == (50, 20, 7)
    ca = per["centroid_alignment"]
    for k, v in (("mean", ca.mean()), ("min", ca.min()), ("max", ca.max())):
        assert float(ds[f"centroid_alignment_{k}"]) == pytest.approx(float(v), rel=1e-12)
    assert float(ds.centroid_norm_mean) == pytest.approx(per["centroid_norm"].mean(), rel=1e-12)
    assert float(ds.jacobian_norm) == pytest.approx(per["jacobian_norm"][:20].mean(), rel=1e-12)
    assert float(ds.jacobian_norm) != pytest.approx(per["jacobian_norm"].mean(), rel=1e-6)
    assert float(ds.rank_one_mean) == pytest.approx(per["rank_one"][:20].mean(), rel=1e-12)
    assert float(ds.jacobian_alignment_mean) == pytest.approx(
        per["jacobian_alignment"][:20].mean(), rel=1e-12)
    assert float(ds.pc1) == pytest.approx(per["rank_one"][:7].mean(), rel=1e-12)
    # the test split gives other numbers: the default really is the training set
    test = alignment_per_point(model, data.x_test)["centroid_alignment"]
    assert float(ds.centroid_alignment_mean) != pytest.approx(float(test.mean()), rel=1e-3)
    assert ds.attrs["jacobian_alignment_random"] == pytest.approx(1 / D)
    assert ds.attrs["rank_one_min"] == pytest.approx(1 / C)
    # None = every point
    full = alignment(Checkpoint(0, model, data), jacobian_points=None, pc1_points=None)
    assert int(full.n_jacobian_points) == int(full.n_pc1_points) == 50
    assert float(full.pc1) == pytest.approx(float(full.rank_one_mean), rel=1e-12)


def test_centroid_path_builds_no_jacobian(monkeypatch):
    """The centroid quantities cost one backward per batch: the Jacobian routine is called on
    the jacobian_points subsample only."""
    from grokscope.measures import alignment as mod

    calls = []
    real = mod.input_jacobian

    def counting(view, e=None):
        calls.append(view.e.shape[0])
        return real(view, e)

    monkeypatch.setattr(mod, "input_jacobian", counting)
    data = _data(n_train=60)
    alignment(Checkpoint(0, _relu_net(), data), jacobian_points=10, pc1_points=4, chunk=16)
    assert sum(calls) == 10


# ------------------------------------------------------------------ the authors' own code
_FIX = Path(__file__).parent / "fixtures" / "alignment" / "authors_grokalign.npz"


def test_centroid_and_pc1_equal_the_grokalign_authors_code():
    """Known answers from GrokAlign's own Centroids and PC1 classes (fixture README): a
    bias-free ReLU MLP after 100 AdamW steps; centroid alignment on the training batch, PC1 on
    its first 64 points (``pc1(x[:64])`` in the authors' delayed_robustness.py)."""
    f = np.load(_FIX)
    ws = [torch.from_numpy(f[f"mlp_w{i}"]) for i in range(3)]
    model = nn.Sequential(nn.Linear(10, 24, bias=False), nn.ReLU(), nn.Linear(24, 24, bias=False),
                          nn.ReLU(), nn.Linear(24, 5, bias=False)).double()
    with torch.no_grad():
        for lin, w in zip(model[::2], ws):
            lin.weight.copy_(w)
    x, y = torch.from_numpy(f["mlp_x"]), torch.from_numpy(f["mlp_y"])
    data = Data(x, y, x[:5], y[:5])
    per = alignment_per_point(model, x)
    np.testing.assert_allclose(per["centroid_alignment"], f["mlp_alignments"], rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(per["centroid_inner"], f["mlp_inner"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(per["centroid_norm"], f["mlp_norms"], rtol=1e-9)
    np.testing.assert_allclose(per["rank_one"][:64], f["mlp_pc1_per_point"], rtol=1e-9)
    ds = alignment(Checkpoint(0, model, data))
    assert float(ds.pc1) == pytest.approx(float(f["mlp_pc1"]), rel=1e-9, abs=1e-12)
    assert float(ds.centroid_alignment_mean) == pytest.approx(float(f["mlp_alignments"].mean()),
                                                              rel=1e-9)


def test_transformer_centroid_is_taken_before_the_positional_embedding():
    """The authors' transformer_alignment.py: ``Centroids(lambda x: unembed(block(pos_embed(x)))
    [:, -1])`` on ``x = embed(tokens)``: the input is the token embedding *before* the positional
    embedding. The authors' weights in the zoo's raw transformer (the same architecture) give
    their per-point centroid alignments; adding the positional embedding to the input gives
    other numbers (also pinned, from the same code), which this test must not match."""
    from _zoo import RawTransformer, Unembed

    f = np.load(_FIX)
    p = 7
    m = RawTransformer(p, d_model=16, d_mlp=32, num_heads=4, n_ctx=3)
    m.unembed = Unembed(p + 1, 16)  # the authors' model reads all d_vocab = p + 1 logits
    m = m.double()
    state = {k.removeprefix("tf_param/").replace("block.", "blocks.0."): torch.from_numpy(v)
             for k, v in f.items() if k.startswith("tf_param/")}
    m.load_state_dict(state, strict=False)
    m = m.eval()
    for k, v in state.items():
        assert torch.equal(m.state_dict()[k], v), k
    toks = torch.from_numpy(f["tf_tokens"])
    labels = torch.arange(toks.shape[0]) % (p + 1)  # every one of the p + 1 logits is a class
    ck = Checkpoint(0, m, Data(toks, labels, toks, labels))
    assert ck.view.anatomy.input["module"] == "embed"
    per = alignment_per_point(ck.view, toks)
    np.testing.assert_allclose(per["centroid_alignment"], f["tf_alignments"], rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(per["centroid_inner"], f["tf_inner"], rtol=1e-9, atol=1e-12)
    gap = np.abs(f["tf_alignments"] - f["tf_alignments_if_pos_added"]).max()
    assert gap > 1e-2  # the mutation this test kills moves the numbers by this much
    ds = alignment(ck)
    assert float(ds.centroid_alignment_mean) == pytest.approx(float(f["tf_alignments"].mean()),
                                                              rel=1e-9)


def test_grokscope_transformer_centroid_excludes_a_large_positional_embedding():
    """grokscope's Transformer: the centroid alignment is <grad, e>/(|grad||e|) with e the token
    embedding rows (a table lookup), not e + pos_embed; pos_embed is made large so the two
    differ by far more than the tolerance."""
    models = pytest.importorskip("grokscope.models")
    torch.manual_seed(3)
    tf = models.build_model("transformer", vocab=6, n_ctx=3, out_dim=6, d_model=8, n_heads=2,
                            d_mlp=16).double()
    with torch.no_grad():
        tf.pos_embed.mul_(5.0)
    toks = torch.randint(0, 6, (12, 3), generator=torch.Generator().manual_seed(0))
    labels = torch.arange(12) % 6
    e = tf.embed.weight.detach()[toks].reshape(12, -1)  # rows of W_E: no positions
    with torch.enable_grad():
        ee = e.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(tf.forward_from_input(ee).sum(), ee)
    want = (grad * e).sum(1) / (grad.norm(dim=1) * e.norm(dim=1))
    pos = tf.pos_embed.detach().reshape(1, -1)
    wrong = (grad * (e + pos)).sum(1) / (grad.norm(dim=1) * (e + pos).norm(dim=1))
    assert float((want - wrong).abs().max()) > 0.05
    ds = alignment(Checkpoint(0, tf, Data(toks, labels, toks, labels)))
    per = alignment_per_point(tf, toks)
    np.testing.assert_allclose(per["centroid_alignment"], want.numpy(), rtol=1e-9, atol=1e-12)
    assert float(ds.centroid_alignment_mean) == pytest.approx(float(want.mean()), rel=1e-9)
