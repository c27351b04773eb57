"""Neural feature ansatz (NFM vs AGOP): known answers and oracles (docs/methods.md section 5)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import jacrev, vmap

from grokscope.data import Data
from grokscope.errors import ConfigError, MeasureNotApplicable
from grokscope.measures import Checkpoint, get
from grokscope.measures.nfa import (
    agop,
    default_layers,
    layer_agops,
    matrix_power_psd,
    nfa,
    pearson,
)

D, H, C = 5, 12, 3


class Quadratic(nn.Module):
    def forward(self, z):
        return z**2


class TinyMLP(nn.Module):
    """grokscope's MLP convention: ``layers`` (hidden..., readout) and an elementwise ``act``."""

    def __init__(self, act, depth=1, bias=True, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        sizes = [D] + [H] * depth + [C]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(sizes, sizes[1:]))
        self.act = act
        self.double()

    def forward(self, x):
        for lin in self.layers[:-1]:
            x = self.act(lin(x))
        return self.layers[-1](x)


def _x(n=40, d=D, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _data(n=40, seed=0):
    x = _x(n, seed=seed)
    y = torch.arange(n) % C  # every class present: the output role keeps all C logits
    return Data(x, y, _x(10, seed=seed + 1), y[:10])


def _oracle(rest, h):
    """AGOP by hand: mean over samples of J^T J with J = jacrev of ``rest`` at each ``h``."""
    with torch.no_grad():  # torch.func still differentiates; no graph to the parameters
        jac = vmap(jacrev(lambda v: rest(v[None])[0]))(h)  # (n, C, in)
    g = torch.einsum("nci,ncj->ij", jac, jac) / h.shape[0]
    jbar = jac.mean(0)
    return g, g - jbar.T @ jbar


def _close(a, b, rtol=1e-5):
    a, b = a.detach(), b.detach()
    scale = float(b.abs().max())
    assert float((a - b).abs().max()) <= rtol * scale, float((a - b).abs().max()) / scale


def test_one_layer_linear_agop_is_nfm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, C, bias=False)).double()
    x = _x()
    g = agop(model, x, "0")
    w = model[0].weight.detach()
    _close(g, w.T @ w, rtol=1e-12)
    assert pearson(w.T @ w, g) == pytest.approx(1.0, abs=1e-12)
    # the readout is left out by default: a one-Linear model has no default layer
    with pytest.raises(MeasureNotApplicable, match="readout"):
        default_layers(model, x)


@pytest.mark.parametrize("act", [nn.ReLU(), Quadratic(), nn.SiLU()], ids=["relu", "quadratic", "silu"])
def test_closed_form_matches_vmap_jacrev(act):
    model = TinyMLP(act)
    x = _x()
    res = layer_agops(model, x, method="closed_form", chunk=7)["layers.0"]
    assert res.method == "closed_form"
    g, gc = _oracle(model, x)
    _close(res.agop, g)
    _close(res.agop_centred, gc)
    gen = layer_agops(model, x, method="general", chunk=16)["layers.0"]
    assert gen.method == "general"
    _close(gen.agop, g)
    _close(gen.agop_centred, gc)


def test_sequential_closed_form_is_detected():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, C)).double()
    res = layer_agops(model, _x())
    assert list(res) == ["0"] and res["0"].method == "closed_form"
    _close(res["0"].agop, _oracle(model, _x())[0])


def test_general_path_two_hidden_layers():
    model = TinyMLP(nn.SiLU(), depth=2)
    x = _x()
    res = layer_agops(model, x, chunk=16)
    assert list(res) == ["layers.0", "layers.1"]
    assert res["layers.0"].method == "general" and res["layers.1"].method == "closed_form"
    with pytest.raises(ConfigError, match="closed form does not apply"):
        layer_agops(model, x, method="closed_form")
    _close(res["layers.0"].agop, _oracle(model, x)[0])
    h1 = model.act(model.layers[0](x)).detach()

    def rest(h):
        return model.layers[2](model.act(model.layers[1](h)))

    g1, gc1 = _oracle(rest, h1)
    gen = layer_agops(model, x, method="general", layers=["layers.1"])["layers.1"]
    for r in (res["layers.1"], gen):
        _close(r.agop, g1)
        _close(r.agop_centred, gc1)


def test_centred_differs_when_mean_jacobian_nonzero():
    model = TinyMLP(nn.ReLU(), seed=2)
    x = _x().abs()  # positive inputs: a clearly non-zero mean Jacobian
    r = layer_agops(model, x)["layers.0"]
    g, gc = _oracle(model, x)
    _close(r.agop_centred, gc)
    assert float((r.agop - r.agop_centred).abs().max()) > 1e-3 * float(r.agop.abs().max())
    nfm = r.weight.T @ r.weight
    assert pearson(nfm, matrix_power_psd(r.agop, 0.5)) != pytest.approx(
        pearson(nfm, matrix_power_psd(r.agop_centred, 0.5)), abs=1e-6
    )


def test_matrix_power_and_pearson():
    a = torch.randn(6, 6, dtype=torch.float64)
    g = a @ a.T
    root = matrix_power_psd(g, 0.5)
    _close(root @ root, g, rtol=1e-10)
    neg = torch.diag(torch.tensor([4.0, -1.0], dtype=torch.float64))
    _close(matrix_power_psd(neg, 0.5), torch.diag(torch.tensor([2.0, 0.0], dtype=torch.float64)))
    assert pearson(g, 3 * g + 2) == pytest.approx(1.0, abs=1e-12)
    assert np.isnan(pearson(torch.zeros(3, 3), g[:3, :3]))


class TinyTransformer(nn.Module):
    """Tokens -> embeddings + positions -> causal prefix mean -> per-position MLP -> last logits."""

    def __init__(self, vocab=7, t=3, dm=6, dmlp=10, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, dm)
        self.pos = nn.Parameter(torch.randn(t, dm))
        self.W_in = nn.Linear(dm, dmlp)
        self.W_out = nn.Linear(dmlp, dm)
        self.unembed = nn.Linear(dm, C, bias=False)
        self.dm = dm
        self.double()

    def embed_inputs(self, tokens):
        return self.embed(tokens).flatten(1)

    def resid_mid(self, e):
        r = e.view(e.shape[0], -1, self.dm) + self.pos
        counts = torch.arange(1, r.shape[1] + 1, dtype=r.dtype)[:, None]
        return r + r.cumsum(1) / counts

    def forward_from_input(self, e):
        r = self.resid_mid(e)
        r = r + self.W_out(torch.tanh(self.W_in(r)))
        return self.unembed(r[:, -1])

    def forward(self, tokens):
        return self.forward_from_input(self.embed_inputs(tokens))


def test_general_path_transformer_w_in_last_position():
    model = TinyTransformer()
    toks = torch.randint(0, 7, (30, 3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        r = model.resid_mid(model.embed_inputs(toks))[:, -1]  # W_in's input, last position
    res = layer_agops(model, toks, layers=["W_in"], chunk=8)["W_in"]
    assert res.method == "general"

    def through_w_in(h, resid):  # the logits as a function of W_in's input only
        return model.unembed(resid + model.W_out(torch.tanh(model.W_in(h))))

    jac = vmap(jacrev(through_w_in))(r, r)  # (n, C, dm)
    g = torch.einsum("nci,ncj->ij", jac, jac) / len(r)
    _close(res.agop, g)
    # earlier positions do not reach the last-position logits through the MLP
    allpos = layer_agops(model, toks, layers=["W_in"], position="all")["W_in"]
    _close(allpos.agop, g)
    assert default_layers(model, toks) == ["W_in", "W_out"]


def _ckpt(model, data, first=None, last=None):
    refs = {"first": first if first is not None else model, "last": last if last is not None else model}
    return Checkpoint(3, model, data, references=refs)


def test_measure_outputs_and_cnfa_at_init():
    model = TinyMLP(nn.ReLU(), depth=2)
    data = _data()
    ds = nfa(_ckpt(model, data))  # W = W0: C-NFA undefined
    assert list(ds.layer.values) == ["layers.0", "layers.1"]
    assert np.all(np.isnan(ds.cnfa.values))
    # layer 0 (general path) against the vmap(jacrev) AGOP
    g, gc = _oracle(model, data.x_train)
    w = model.layers[0].weight.detach()
    nfm = w.T @ w
    expect = {"nfa_corr_sqrt": pearson(nfm, matrix_power_psd(g, 0.5)),
              "nfa_corr": pearson(nfm, g),
              "nfa_corr_centred": pearson(nfm, matrix_power_psd(gc, 0.5))}
    for v, e in expect.items():
        assert float(ds[v][0]) == pytest.approx(e, abs=1e-9), v
    assert int(ds.n_points) == 40 and ds.in_dim.values.tolist() == [D, H]
    assert ds.attrs["method_per_layer"] == ["general", "closed_form"]
    assert "step" not in ds.dims


def test_measure_cnfa_and_alignment_against_direct_computation():
    model = TinyMLP(nn.ReLU(), depth=1, seed=0)
    first = TinyMLP(nn.ReLU(), depth=1, seed=1)
    last = copy.deepcopy(model)
    with torch.no_grad():
        for p in last.parameters():
            p.add_(0.3 * torch.randn_like(p))
    data = _data()
    ck = _ckpt(model, data, first, last)
    ds = nfa(ck, store_matrices=True)
    x = data.x_train
    g, _ = _oracle(model, x)
    w = model.layers[0].weight.detach()
    d = w - first.layers[0].weight.detach()
    z = model.layers[0](x).detach()
    w2 = model.layers[1].weight.detach()
    m = (z > 0).double()
    kmat = (w2.T @ w2) * (m.T @ m / len(x))
    assert float(ds.cnfa[0]) == pytest.approx(pearson(d.T @ kmat @ d, d.T @ d), rel=1e-9)
    g_last, _ = _oracle(last, x)
    cos = float((g * g_last).sum() / (g.norm() * g_last.norm()))
    assert float(ds.agop_alignment[0]) == pytest.approx(cos, rel=1e-9)
    assert float(ds.nfa_corr[0]) == pytest.approx(pearson(w.T @ w, g), rel=1e-9)
    np.testing.assert_allclose(ds.agop.values[0], g.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ds.nfm.values[0], (w.T @ w).numpy(), rtol=1e-12)
    assert ds.agop.dims == ("layer", "in_i", "in_j")
    # the final AGOP is cached for the next steps of the same run
    assert len(ck.state) == 1
    ds2 = nfa(ck)
    assert float(ds2.agop_alignment[0]) == pytest.approx(cos, rel=1e-9)


def test_general_path_cnfa_matches_closed_form():
    model = TinyMLP(Quadratic(), seed=0)
    first = TinyMLP(Quadratic(), seed=5)
    data = _data()
    a = nfa(_ckpt(model, data, first), method="closed_form")
    b = nfa(_ckpt(model, data, first), method="general")
    for v in ("nfa_corr_sqrt", "nfa_corr", "nfa_corr_centred", "cnfa", "agop_alignment"):
        np.testing.assert_allclose(a[v].values, b[v].values, rtol=1e-8, atol=1e-10)


def test_bad_parameters():
    model = TinyMLP(nn.ReLU(), depth=2)
    data = _data()
    with pytest.raises(ConfigError, match="not linear maps"):
        nfa(_ckpt(model, data), layers=["nope"])
    with pytest.raises(ConfigError, match="method"):
        nfa(_ckpt(model, data), method="fast")
    with pytest.raises(ConfigError, match="position"):
        nfa(_ckpt(model, data), position="first")
    with pytest.raises(ConfigError, match="one input size"):
        nfa(_ckpt(model, data), store_matrices=True)
    with pytest.raises(ConfigError, match="same architecture"):
        layer_agops(model, data.x_train, reference=TinyMLP(nn.ReLU(), depth=1))


def test_registration():
    spec = get("nfa")
    assert spec.kind == "step" and spec.references == ("first", "last")
    assert spec.defaults["split"] == "train" and spec.defaults["max_points"] is None
    one = nn.Sequential(nn.Linear(D, C)).double()
    reason = spec.applies(Checkpoint(0, one, _data()).view, _data())
    assert "readout" in reason and "'linear'" in reason and "anatomy=" in reason


def test_grokscope_models():
    models = pytest.importorskip("grokscope.models")
    torch.manual_seed(0)
    x = _x()
    for act in ("relu", "quadratic", "silu"):
        mlp = models.build_model("mlp", in_dim=D, out_dim=C, width=H, activation=act).double()
        res = layer_agops(mlp, x)
        assert list(res) == ["layers.0"] and res["layers.0"].method == "closed_form"
        _close(res["layers.0"].agop, _oracle(mlp, x)[0])
    deep = models.build_model("mlp", in_dim=D, out_dim=C, width=H, depth=2).double()
    res = layer_agops(deep, x)
    assert [r.method for r in res.values()] == ["general", "closed_form"]
    _close(res["layers.0"].agop, _oracle(deep, x)[0])

    tf = models.build_model(
        "transformer", vocab=6, n_ctx=3, out_dim=5, d_model=8, n_heads=2, d_mlp=16
    ).double()
    toks = torch.randint(0, 6, (20, 3), generator=torch.Generator().manual_seed(0))
    names = default_layers(tf, toks)
    assert "unembed" not in names and "blocks.0.mlp.W_in" in names
    res = layer_agops(tf, toks, chunk=7)
    w_in = tf.blocks[0].mlp
    captured = {}
    hook = w_in.W_in.register_forward_hook(lambda m, a, o: captured.update(h=a[0].detach()))
    with torch.no_grad():
        tf(toks)
    hook.remove()
    h_all = captured["h"]  # (n, T, d_model): W_in's input (no LayerNorm: the residual)

    def through_w_in(h, hs):  # last-position logits as a function of W_in's last-position input
        resid = hs[-1]
        return tf.unembed(resid + w_in.W_out(w_in.act(w_in.W_in(h))))

    jac = vmap(jacrev(through_w_in))(h_all[:, -1], h_all)
    g = torch.einsum("nci,ncj->ij", jac, jac) / len(toks)
    _close(res["blocks.0.mlp.W_in"].agop, g)
    for r in res.values():
        assert torch.isfinite(r.agop).all()


def test_class_loop_fallback_gives_the_same_agop(monkeypatch):
    model = TinyMLP(nn.SiLU(), depth=2)
    x = _x()
    expect = layer_agops(model, x, method="general")
    real_grad = torch.autograd.grad

    def no_batching(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("no batching rule (simulated)")
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_batching)
    got = layer_agops(model, x, method="general")
    for k in expect:
        _close(got[k].agop, expect[k].agop, rtol=1e-12)
        _close(got[k].agop_centred, expect[k].agop_centred, rtol=1e-12)


class SharedLayer(nn.Module):
    """``out(act(L(act(L(act(first(x)))))))``: ``L`` is called twice (shared weights)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Linear(D, H)
        self.L = nn.Linear(H, H)
        self.out = nn.Linear(H, C)
        self.double()

    def forward(self, x):
        h = torch.tanh(self.first(x))
        return self.out(torch.tanh(self.L(torch.tanh(self.L(h)))))


def test_shared_module_is_left_out_by_default_and_refused_explicitly():
    from grokscope.measures._jacobian import JacobianError

    model = SharedLayer()
    x = _x()
    assert default_layers(model, x) == ["first"]
    _close(layer_agops(model, x)["first"].agop, _oracle(model, x)[0])
    with pytest.raises(JacobianError, match="called 2 times"):
        layer_agops(model, x, layers=["L"])


def test_uneven_sample_and_class_chunks():
    from grokscope.measures import _jacobian

    model = TinyMLP(nn.SiLU(), depth=2)
    x = _x(23)
    expect = _oracle(model, x)
    # a tiny gradient budget: the class blocks differ between the full and the last sample chunk
    view = _jacobian.as_view(model, x)
    blocks = list(
        _jacobian.preactivation_jacobians(view, x, {"layers.0": ("layers.0", "output")}, chunk=10,
                                          max_elements=100)
    )
    assert len({(b[1].start, b[1].stop) for b in blocks}) > 2
    full = torch.zeros(C, len(x), H, dtype=torch.float64)
    for samples, classes, grads in blocks:
        full[classes, samples] = grads["layers.0"].detach()
    jac = torch.einsum("cnh,hi->nci", full, model.layers[0].weight.detach())
    g = torch.einsum("nci,ncj->ij", jac, jac) / len(x)
    _close(g, expect[0])
    r = layer_agops(model, x, method="general", chunk=10)["layers.0"]
    _close(r.agop, expect[0])
    _close(r.agop_centred, expect[1])


# ------------------------------------------------------------------------ any model (the zoo)
def _zoo_ckpt(kind, dtype=torch.float64):
    from _zoo import build, data_for

    model, first, last = (build(kind, seed=s).to(dtype).eval() for s in (0, 1, 2))
    return Checkpoint(0, model, data_for(kind), references={"first": first, "last": last})


ZOO_LAYERS = {  # the default layers: hidden in-maps and nn.Linear-like maps, not the readout
    "seq_mlp": ["0"],
    "named_mlp": ["fc_in", "fc_mid"],
    "root_raw_mlp": ["W_in"],
    "embed_mlp": ["hidden_layer"],
    "grokscope_transformer": ["blocks.0.attn.W_V", "blocks.0.attn.W_Q", "blocks.0.attn.W_K",
                              "blocks.0.attn.W_O", "blocks.0.mlp.W_in", "blocks.0.mlp.W_out"],
    "raw_transformer": ["blocks.0.mlp.W_in"],
    "tl_layout_transformer": ["blocks.0.mlp.W_in"],
}


@pytest.mark.parametrize("kind", list(ZOO_LAYERS))
def test_nfa_on_every_zoo_kind(kind):
    ck = _zoo_ckpt(kind, torch.float32)
    assert get("nfa").applies(ck.view, ck.data) is None
    ds = nfa(ck, max_points=40)
    assert list(ds.layer.values) == ZOO_LAYERS[kind]
    constant_jacobian = ["blocks.0.mlp.W_out"]  # then G_c = 0: nfa_corr_centred undefined
    for v in ("nfa_corr_sqrt", "nfa_corr", "nfa_corr_centred", "agop_alignment"):
        vals = ds[v].sel(layer=[k for k in ZOO_LAYERS[kind] if v != "nfa_corr_centred"
                                or k not in constant_jacobian]).values
        assert np.isfinite(vals).all(), v
    raw = kind in ("raw_transformer", "tl_layout_transformer")
    # a raw W_in has no hook point for z: input-space AGOP; its bias gives K for C-NFA
    assert ds.attrs["space_per_layer"] == ["input" if raw else "output"] * len(ZOO_LAYERS[kind])
    assert np.isfinite(ds.cnfa.values).all() and ds.attrs["cnfa_skipped"] == ""
    closed = {"seq_mlp": ["closed_form"], "named_mlp": ["general", "closed_form"],
              "root_raw_mlp": ["closed_form"], "embed_mlp": ["closed_form"]}
    assert ds.attrs["method_per_layer"] == closed.get(kind, ["general"] * len(ZOO_LAYERS[kind]))
    if kind == "root_raw_mlp":  # the closed form read from root-level raw weights = hooks
        general = nfa(ck, max_points=40, method="general")
        assert general.attrs["method_per_layer"] == ["general"]
        for v in ("nfa_corr", "nfa_corr_centred", "agop_alignment"):
            np.testing.assert_allclose(ds[v].values, general[v].values, rtol=1e-4)


def test_grokscope_default_layers_unchanged():
    """The layers grokscope's own models got before the anatomy (call order of nn.Linear,
    readout and shared modules left out)."""
    models = pytest.importorskip("grokscope.models")
    deep = models.build_model("mlp", in_dim=D, out_dim=C, width=H, depth=3).double()
    assert default_layers(deep, _x()) == ["layers.0", "layers.1", "layers.2"]
    tf = models.build_model("transformer", vocab=6, n_ctx=3, out_dim=5, d_model=8, n_heads=2,
                            d_mlp=16, n_layers=2, layernorm=True)
    toks = torch.randint(0, 6, (8, 3), generator=torch.Generator().manual_seed(0))
    per_block = ["attn.W_V", "attn.W_Q", "attn.W_K", "attn.W_O", "mlp.W_in", "mlp.W_out"]
    assert default_layers(tf, toks) == [f"blocks.{i}.{k}" for i in (0, 1) for k in per_block]


@pytest.mark.parametrize("kind", ["raw_transformer", "tl_layout_transformer"])
def test_raw_w_in_agop_equals_brute_force_jacrev(kind):
    """Oracle (a): the AGOP of a raw ``W_in`` (no hook point for z) against ``vmap(jacrev)`` of
    the logits as a function of the MLP's last-position input, written from the parameters."""
    from _zoo_oracles import mlp, raw_params

    ck = _zoo_ckpt(kind)
    m = ck.model
    x = ck.data.x_train[:48]
    (h,) = ck.view.capture(x, [("blocks.0.mlp", "input")])  # (n, T, d): the residual stream
    w_u = raw_params(m)["W_U"].detach()

    def through_mlp(v):  # h_last -> last-position logits; the residual around the MLP is constant
        return mlp(m, v) @ w_u

    with torch.no_grad():
        jac = vmap(jacrev(through_mlp))(h[:, -1].detach())  # (n, C, d)
    g = torch.einsum("nci,ncj->ij", jac, jac) / len(x)
    jbar = jac.mean(0)
    res = layer_agops(ck.view, x, layers=["blocks.0.mlp.W_in"], chunk=20)["blocks.0.mlp.W_in"]
    assert (res.method, res.space) == ("general", "input")
    _close(res.agop, g, rtol=1e-6)
    _close(res.agop_centred, g - jbar.T @ jbar, rtol=1e-6)
    w = raw_params(m)["W_in"].detach()  # (d_mlp, d): NFM = W^T W whatever the orientation
    _close(res.weight, w, rtol=1e-12)
    ds = nfa(ck, max_points=48, store_matrices=True)
    np.testing.assert_allclose(ds.nfm.values[0], (w.T @ w).numpy(), rtol=1e-12)
    assert float(ds.nfa_corr[0]) == pytest.approx(pearson(w.T @ w, g), rel=1e-6)
    # only the last position reaches the logits through a one-layer MLP
    _close(layer_agops(ck.view, x, layers=["blocks.0.mlp.W_in"], position="all")
           ["blocks.0.mlp.W_in"].agop, g, rtol=1e-6)


def test_raw_transformer_and_grokscope_transformer_agree():
    """Oracle (c): the same weights in grokscope's Transformer (nn.Linear W_in: output-space
    path) and in the raw transformer (raw W_in: input-space path) give the same NFA."""
    from _zoo_oracles import to_grokscope

    ck = _zoo_ckpt("raw_transformer")
    x = ck.data.x_train
    mine = {k: to_grokscope(ck.reference(k)) for k in ("first", "last")}
    gk = Checkpoint(0, to_grokscope(ck.model), ck.data, references=mine)
    # the two forwards are one function (-inf vs -1e10 masks both give exactly 0 weight)
    with torch.no_grad():
        _close(gk.view.forward(x), ck.view.forward(x), rtol=1e-12)
    a = nfa(ck, layers=["blocks.0.mlp.W_in"])
    b = nfa(gk, layers=["blocks.0.mlp.W_in"])
    assert b.attrs["space_per_layer"] == ["output"] and a.attrs["space_per_layer"] == ["input"]
    # C-NFA: K read at nn.Linear's output vs K from the raw W_in's per-sample bias gradients
    for v in ("nfa_corr_sqrt", "nfa_corr", "nfa_corr_centred", "cnfa", "agop_alignment"):
        np.testing.assert_allclose(a[v].values, b[v].values, rtol=1e-9, err_msg=v)
    assert np.isfinite(a.cnfa.values).all()


class BiasTwice(nn.Module):
    """A raw MLP block whose bias also enters outside ``z``: its gradient is not ``J_z``."""

    def __init__(self, d, m):
        super().__init__()
        torch.manual_seed(0)
        self.W_in = nn.Parameter(torch.randn(m, d, dtype=torch.float64) / d**0.5)
        self.b_in = nn.Parameter(torch.randn(m, dtype=torch.float64))
        self.W_out = nn.Parameter(torch.randn(C, m, dtype=torch.float64) / m**0.5)
        self.twice = True

    def forward(self, h):
        out = torch.relu(h @ self.W_in.T + self.b_in) @ self.W_out.T
        return out + 0.5 * self.b_in[..., :C] if self.twice else out


class Wrapped(nn.Module):
    def __init__(self, twice=True):
        super().__init__()
        self.mlp = BiasTwice(D, H)
        self.mlp.twice = twice

    def forward(self, x):
        return self.mlp(x)


@pytest.mark.parametrize("case", ["bias_twice", "no_bias", "ok"])
def test_cnfa_from_bias_gradients_is_checked(case):
    """C-NFA of a raw weight comes from per-sample bias gradients only when they are J_z;
    otherwise NaN, and the attrs say why. The AGOP itself never depends on the bias."""
    from grokscope.anatomy import resolve

    model, first = Wrapped(case == "bias_twice"), Wrapped(case == "bias_twice")
    with torch.no_grad():
        first.mlp.W_in.add_(torch.randn(H, D, dtype=torch.float64,
                                        generator=torch.Generator().manual_seed(1)))
    data = _data()
    lin = {"name": "mlp.W_in", "weight": "mlp.W_in", "module": "mlp", "orientation": "out_in",
           "bias": None if case == "no_bias" else "mlp.b_in"}
    anat = resolve(model, data, override={"linear": [lin], "hidden": [], "readout": None})
    ck = Checkpoint(3, model, data, references={"first": first, "last": model}, anatomy=anat)
    ds = nfa(ck, layers=["mlp.W_in"])
    x = data.x_train
    z = x @ model.mlp.W_in.detach().T + model.mlp.b_in.detach()
    jz = model.mlp.W_out.detach()[None] * (z > 0).double()[:, None, :]  # (n, C, m)
    jh = jz @ model.mlp.W_in.detach()
    _close(layer_agops(ck.view, x, layers="mlp.W_in")["mlp.W_in"].agop,
           torch.einsum("nci,ncj->ij", jh, jh) / len(x), rtol=1e-9)
    if case == "ok":
        k = torch.einsum("nci,ncj->ij", jz, jz) / len(x)
        d = model.mlp.W_in.detach() - first.mlp.W_in.detach()
        assert float(ds.cnfa[0]) == pytest.approx(pearson(d.T @ k @ d, d.T @ d), rel=1e-9)
        assert ds.attrs["cnfa_skipped"] == ""
    else:
        assert np.isnan(float(ds.cnfa[0]))
        why = "do not reproduce" if case == "bias_twice" else "no bias"
        assert ds.attrs["cnfa_skipped"].startswith("mlp.W_in: ") and why in ds.attrs["cnfa_skipped"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_centred_correlation_is_nan_where_the_jacobian_is_constant(dtype):
    """A one-layer transformer's W_out feeds the linear unembedding only: J_z = W_U at every
    input, G_c = 0, and the centred correlation is undefined (rounding noise of a few eps
    must not be reported: it differed by 12% between CPU and GPU)."""
    ck = _zoo_ckpt("grokscope_transformer", dtype)
    x = ck.data.x_train[:64]
    r = layer_agops(ck.view, x, layers=["blocks.0.mlp.W_out", "blocks.0.mlp.W_in"])
    eps = torch.finfo(dtype).eps
    noise = float(r["blocks.0.mlp.W_out"].agop_centred.norm() / r["blocks.0.mlp.W_out"].agop.norm())
    assert noise < 64 * eps  # only rounding: well below the 256 eps cut
    assert float(r["blocks.0.mlp.W_in"].agop_centred.norm()
                 / r["blocks.0.mlp.W_in"].agop.norm()) > 1e-3
    ds = nfa(ck, max_points=64, layers=["blocks.0.mlp.W_out", "blocks.0.mlp.W_in"])
    assert np.isnan(float(ds.nfa_corr_centred[0])) and np.isfinite(float(ds.nfa_corr_centred[1]))
    assert np.isfinite(ds.nfa_corr_sqrt.values).all()
    assert "256 eps" in ds.attrs["centred_undefined"]


# ------------------------------------------------------------------------ the authors' own code
_FIX = Path(__file__).parent / "fixtures" / "nfa" / "authors_nfa.npz"
_VARIANTS = ("nfa_corr_sqrt", "nfa_corr", "nfa_corr_centred", "nfa_cos_sqrt", "nfa_cos",
             "nfa_init_removed_sqrt", "nfa_init_removed", "nfa_cos_init_removed")


def _mlp_with(ws, act, bias=False):
    """grokscope's MLP (bias-free) holding the weights ``ws`` (``(out, in)`` each)."""
    from grokscope.models import build_model

    m = build_model("mlp", in_dim=ws[0].shape[1], out_dim=ws[-1].shape[0], width=ws[0].shape[0],
                    depth=len(ws) - 1, activation=act, bias=bias).double()
    with torch.no_grad():
        for lin, w in zip(m.layers, ws):
            lin.weight.copy_(torch.from_numpy(w))
    return m.eval()


@pytest.mark.parametrize("method", ["closed_form", "general"])
def test_quadratic_fcn_equals_the_nfa_authors_code(method):
    """Known answers from the authors' own functions (fixture README): Mallinar, Beaglehole
    et al.'s rfm-grokking (calc_full_agop; np.real(scipy.linalg.sqrtm(AGOP)); np.corrcoef with
    W1^T W1) and Radhakrishnan et al.'s verify_deep_NFA (egop with and without centring;
    correlate = uncentred cosine; M = (W-W0)^T (W-W0)) on a quadratic one-hidden-layer FCN
    trained 200 AdamW steps on one-hot a+b mod 7. Same maths: equal to 1e-8 (eigh vs sqrtm)."""
    f = np.load(_FIX)
    model = _mlp_with([f["A_w1"], f["A_w2"]], "quadratic")
    first = _mlp_with([f["A_w1_0"], f["A_w2_0"]], "quadratic")
    x = torch.from_numpy(f["A_x"])
    y = torch.arange(len(x)) % 7
    ck = Checkpoint(5, model, Data(x, y, x[:3], y[:3]), references={"first": first, "last": model})
    ds = nfa(ck, method=method, store_matrices=True)
    assert ds.attrs["method_per_layer"] == [method]
    np.testing.assert_allclose(ds.agop.values[0], f["A_agop"], rtol=1e-10, atol=1e-13)
    r = layer_agops(ck.view, x, method=method)["layers.0"]
    np.testing.assert_allclose(r.agop_centred.numpy(), f["A_egop_centred"], rtol=1e-9, atol=1e-13)
    for v in _VARIANTS:
        assert float(ds[v][0]) == pytest.approx(float(f["A_" + v]), abs=1e-8), v
    # the variants are different numbers: a test confusing two of them fails
    vals = sorted(float(f["A_" + v]) for v in _VARIANTS)
    assert min(np.diff(vals)) > 1e-6  # 100x the tolerance


def test_two_hidden_layer_relu_mlp_equals_the_nfa_authors_code():
    """Beaglehole et al.'s centered_NFA (get_Ks: K from per-sample pre-activation gradients;
    mat_cov = Pearson; main.py's nfa = mat_cov(W^T K W, W^T W) and cnfa = mat_cov((W-W0)^T K
    (W-W0), (W-W0)^T (W-W0))) and Radhakrishnan et al.'s egop on each layer's sub-network, on
    their own MLP class (2 ReLU hidden layers of 16, bias-free) after 200 AdamW steps. Layer 0
    goes through grokscope's general path, layer 1 through the closed form."""
    f = np.load(_FIX)
    model = _mlp_with([f["B_w0"], f["B_w1"], f["B_w2"]], "relu")
    first = _mlp_with([f["B_w0_0"], f["B_w1_0"], f["B_w2"]], "relu")
    x = torch.from_numpy(f["B_x"])
    y = torch.arange(len(x)) % 7
    ck = Checkpoint(5, model, Data(x, y, x[:3], y[:3]), references={"first": first, "last": model})
    ds = nfa(ck)
    assert ds.attrs["method_per_layer"] == ["general", "closed_form"]
    res = layer_agops(ck.view, x)
    for i, name in enumerate(("layers.0", "layers.1")):
        np.testing.assert_allclose(res[name].agop.numpy(), f[f"B{i}_egop"], rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(res[name].agop_centred.numpy(), f[f"B{i}_egop_centred"],
                                   rtol=1e-9, atol=1e-13)
        assert float(ds.nfa_corr[i]) == pytest.approx(float(f[f"B{i}_nfa_K"]), abs=1e-8)
        assert float(ds.cnfa[i]) == pytest.approx(float(f[f"B{i}_cnfa"]), abs=1e-8)
        for v in _VARIANTS:
            assert float(ds[v][i]) == pytest.approx(float(f[f"B{i}_{v}"]), abs=1e-8), (name, v)


def test_init_removed_variants_are_nan_at_init():
    model = TinyMLP(nn.ReLU(), depth=1)
    ds = nfa(_ckpt(model, _data()))  # first = the model itself: W = W0
    for v in ("cnfa", "nfa_init_removed_sqrt", "nfa_init_removed", "nfa_cos_init_removed"):
        assert np.isnan(float(ds[v][0])), v
    for v in ("nfa_cos_sqrt", "nfa_cos", "nfa_corr_sqrt"):
        assert np.isfinite(float(ds[v][0])), v
