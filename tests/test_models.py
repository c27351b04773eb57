"""Tests of the reference models: shapes, options, specs, decomposition identities."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from grokscope.errors import ConfigError, UnknownNameError, UntrustedCodeError
from grokscope.models import (
    MLP,
    Transformer,
    build_from_spec,
    build_model,
    model_for,
    names,
    register_model,
    spec_of,
)
from grokscope.models.activations import activation_names
from grokscope.tasks import make_task


def small_transformer(**kw) -> nn.Module:
    base = dict(vocab=8, n_ctx=3, out_dim=7, d_model=16, n_heads=2, d_mlp=24)
    return build_model("transformer", **{**base, **kw})


def same_architecture(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)


def test_names() -> None:
    assert {"mlp", "transformer"} <= set(names())


@pytest.mark.parametrize("activation", activation_names())
def test_mlp_shapes_each_activation(activation: str) -> None:
    m = build_model("mlp", in_dim=5, out_dim=3, width=7, depth=2, activation=activation)
    x = torch.randn(4, 5)
    assert m(x).shape == (4, 3)
    assert m.hidden(x, 1).shape == (4, 7)
    assert [name for name, _ in m.named_modules() if name.startswith("layers.")] == [
        "layers.0",
        "layers.1",
        "layers.2",
    ]


def test_activation_formulas() -> None:
    x = torch.linspace(-2, 2, 9)
    quad = build_model("mlp", in_dim=1, out_dim=1, activation="quadratic").act
    erf = build_model("mlp", in_dim=1, out_dim=1, activation="erf").act
    assert torch.equal(quad(x), x**2) and torch.equal(erf(x), torch.erf(x))


@pytest.mark.parametrize("activation", ["relu", "gelu", "quadratic"])
def test_transformer_shapes(activation: str) -> None:
    m = small_transformer(activation=activation)
    tokens = torch.randint(0, 8, (5, 3))
    assert m(tokens).shape == (5, 7)
    assert m.embed_inputs(tokens).shape == (5, 3 * 16)
    logits, cache = m.run_with_cache(tokens)
    torch.testing.assert_close(logits, m(tokens))
    assert cache["blocks.0.mlp.post"].shape == (5, 3, 24)
    assert cache["blocks.0.attn.pattern"].shape == (5, 2, 3, 3)
    assert m.mlp_post(tokens).shape == (5, 3, 24)


def test_transformer_module_names() -> None:
    m = small_transformer()
    params = dict(m.named_parameters())
    for key in (
        "embed.weight",
        "pos_embed",
        "blocks.0.attn.W_Q.weight",
        "blocks.0.attn.W_K.weight",
        "blocks.0.attn.W_V.weight",
        "blocks.0.attn.W_O.weight",
        "blocks.0.mlp.W_in.weight",
        "blocks.0.mlp.W_in.bias",
        "blocks.0.mlp.W_out.weight",
        "blocks.0.mlp.W_out.bias",
        "unembed.weight",
    ):
        assert key in params, key
    assert not any("ln" in k for k in params)
    assert "unembed.bias" not in params and "blocks.0.attn.W_Q.bias" not in params
    ln = small_transformer(layernorm=True)
    assert {"blocks.0.ln1.weight", "blocks.0.ln2.weight", "ln_final.weight"} <= set(
        dict(ln.named_parameters())
    )


def test_transformer_is_causal() -> None:
    m = small_transformer(n_ctx=4)
    t = torch.randint(0, 8, (3, 4))
    _, cache = m.run_with_cache(t)
    pattern = cache["blocks.0.attn.pattern"]
    assert torch.all(pattern.triu(1) == 0)
    torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))
    # the residual stream at positions 0..2 does not depend on the token at position 3
    t2 = t.clone()
    t2[:, 3] = (t2[:, 3] + 1) % 8
    r1 = m._residual(m.embed_inputs(t))[:, :3]
    r2 = m._residual(m.embed_inputs(t2))[:, :3]
    torch.testing.assert_close(r1, r2)


def test_transformer_init_std() -> None:
    m = build_model("transformer", vocab=50, d_model=128)
    for name in ("embed.weight", "blocks.0.attn.W_Q.weight", "blocks.0.mlp.W_in.weight"):
        std = float(dict(m.named_parameters())[name].detach().std())
        assert abs(std - 128**-0.5) < 0.1 * 128**-0.5, name
    assert not m.blocks[0].mlp.W_in.bias.detach().any()


def test_mlp_bias_off() -> None:
    m = build_model("mlp", in_dim=5, out_dim=3, depth=3, bias=False)
    assert all("bias" not in name for name, _ in m.named_parameters())
    assert all(lin.bias is None for lin in m.layers)
    # bias-free ReLU net is positively homogeneous: f(2x) = 2 f(x)
    x = torch.randn(4, 5)
    torch.testing.assert_close(m(2 * x), 2 * m(x))


@pytest.mark.parametrize("name", ["mlp", "transformer"])
def test_init_scale_scales_norms(name: str) -> None:
    kw = {"in_dim": 6, "out_dim": 3} if name == "mlp" else {"vocab": 8, "d_model": 16}
    torch.manual_seed(0)
    a = build_model(name, **kw)
    torch.manual_seed(0)
    b = build_model(name, **kw, init_scale=8.0)
    for (ka, pa), (kb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert ka == kb
        torch.testing.assert_close(pb, 8.0 * pa)


def test_spec_roundtrip() -> None:
    for m in (
        build_model("mlp", in_dim=4, out_dim=2, width=9, depth=2, activation="tanh"),
        small_transformer(layernorm=True, n_layers=2),
        build_model("mlp", in_dim=None, out_dim=5, vocab=6, n_tokens=3, embed_dim=4),
    ):
        spec = spec_of(m)
        spec = json.loads(json.dumps(spec))  # stored as JSON
        m2 = build_from_spec(spec)
        assert type(m2) is type(m) and same_architecture(m, m2)
        assert spec_of(m2) == spec
        assert build_model(spec).grokscope_spec == spec


def test_numpy_sizes_give_json_spec() -> None:
    m = build_model("mlp", in_dim=np.int64(4), out_dim=np.int32(2), init_scale=np.float64(2.0))
    assert json.loads(json.dumps(spec_of(m))) == spec_of(m)
    assert m.layers[0].in_features == 4


def test_build_model_spec_kwargs_override() -> None:
    m = build_model({"name": "mlp", "kwargs": {"in_dim": 4, "out_dim": 2}}, width=3)
    assert m.layers[0].out_features == 3


def test_unknown_model_lists_names() -> None:
    with pytest.raises(UnknownNameError, match="transformer"):
        build_model("resnet9000")


def test_bad_kwargs() -> None:
    with pytest.raises(ConfigError, match="parameters"):
        build_model("mlp", in_dim=3, out_dim=2, widht=5)
    with pytest.raises(ConfigError, match="activation"):
        build_model("mlp", in_dim=3, out_dim=2, activation="swish9")
    with pytest.raises(ConfigError):
        build_model("transformer", vocab=5, d_model=10, n_heads=3)
    with pytest.raises(ConfigError):
        build_model("mlp", in_dim=10, out_dim=2, vocab=5, n_tokens=3, embed_dim=4)


def test_mlp_identities() -> None:
    torch.manual_seed(0)
    m = build_model("mlp", in_dim=6, out_dim=3, width=5, depth=3)
    x = torch.randn(7, 2, 3)  # flattened to 6 features
    out = m(x)
    torch.testing.assert_close(m.forward_from_input(m.embed_inputs(x)), out)
    for layer in range(3):
        torch.testing.assert_close(m.from_hidden(m.hidden(x, layer), layer), out)
    with pytest.raises(ConfigError):
        m.hidden(x, 3)


def test_mlp_tokens_identities() -> None:
    d = make_task("modular", p=7, encoding="tokens")
    m = model_for("mlp", d)
    assert m.embed is not None and m.embed.embedding_dim == 32
    out = m(d.x_train)
    assert out.shape == (len(d.x_train), 7)
    e = m.embed_inputs(d.x_train)
    assert e.shape == (len(d.x_train), 3 * 32) and e.dtype == torch.float32
    torch.testing.assert_close(m.forward_from_input(e), out)
    torch.testing.assert_close(m.from_hidden(m.hidden(d.x_train)), out)


def test_transformer_identities() -> None:
    torch.manual_seed(0)
    m = small_transformer(n_layers=2, layernorm=True)
    t = torch.randint(0, 8, (6, 3))
    e = m.embed_inputs(t)
    torch.testing.assert_close(e.view(6, 3, 16), m.embed.weight[t])  # before pos_embed
    torch.testing.assert_close(m.forward_from_input(e), m(t))


def test_float64() -> None:
    m = build_model("mlp", in_dim=4, out_dim=2, activation="erf").double()
    x = torch.randn(3, 4, dtype=torch.float64)
    assert m(x).dtype == torch.float64
    assert m(x.float()).dtype == torch.float64  # inputs cast to the model dtype
    torch.testing.assert_close(m.from_hidden(m.hidden(x)), m(x))
    t = small_transformer(layernorm=True).double()
    tokens = torch.randint(0, 8, (3, 3))
    assert t(tokens).dtype == torch.float64
    torch.testing.assert_close(t.forward_from_input(t.embed_inputs(tokens)), t(tokens))


@pytest.mark.parametrize(
    "task,kw",
    [
        ("modular", {"p": 7}),
        ("modular", {"p": 7, "encoding": "tokens"}),
        ("parity", {"n_bits": 6, "n_train": 10, "n_test": 5}),
        ("teacher", {"d": 5, "n_train": 10, "n_test": 5}),
        ("digits", {"train_size": 50}),
    ],
)
def test_model_for_mlp(task: str, kw: dict) -> None:
    d = make_task(task, **kw)
    m = model_for("mlp", d, width=8)
    out = m(d.x_train)
    expected = d.n_classes if d.is_classification else d.y_train.shape[1]
    assert out.shape == (len(d.x_train), expected)


def test_model_for_transformer() -> None:
    d = make_task("modular", p=7, encoding="tokens")
    m = model_for("transformer", d, d_model=16, d_mlp=32)
    assert (m.vocab, m.n_ctx, m.out_dim) == (8, 3, 7)
    assert m(d.x_test).shape == (len(d.x_test), 7)
    with pytest.raises(ConfigError, match="tokens"):
        model_for("transformer", make_task("modular", p=7))


def test_model_for_vocab_without_task_spec() -> None:
    from grokscope.data import Data

    x = torch.randint(0, 5, (10, 4))
    d = Data(x, torch.randn(10, 2), x, torch.randn(10, 2))
    m = model_for("transformer", d, d_model=8, n_heads=2, d_mlp=8)
    assert (m.vocab, m.n_ctx, m.out_dim) == (int(x.max()) + 1, 4, 2)


def test_untrusted_factory_refused() -> None:
    spec = spec_of(nn.Linear(3, 2))
    assert spec == {"factory": "torch.nn.modules.linear:Linear", "kwargs": None}
    with pytest.raises(UntrustedCodeError, match="trust_code=True"):
        build_from_spec({"factory": "torch.nn:Linear", "kwargs": {"in_features": 3}})


def test_trusted_factory() -> None:
    spec = {"factory": "torch.nn:Linear", "kwargs": {"in_features": 3, "out_features": 2}}
    m = build_from_spec(spec, trust_code=True)
    assert isinstance(m, nn.Linear) and m.weight.shape == (2, 3)
    assert spec_of(m) == spec
    with pytest.raises(ConfigError):
        build_from_spec({"factory": "no_such_module_xyz:Thing", "kwargs": {}}, trust_code=True)
    with pytest.raises(ConfigError):
        build_from_spec({"factory": "torch.nn:NoSuchLayer", "kwargs": {}}, trust_code=True)
    with pytest.raises(ConfigError):
        build_from_spec({"factory": "torch.nn:Linear", "kwargs": {"bogus": 1}}, trust_code=True)


def test_build_model_from_class() -> None:
    m = build_model(MLP, in_dim=3, out_dim=2)
    assert spec_of(m)["factory"] == "grokscope.models.mlp:MLP"
    m2 = build_from_spec(spec_of(m), trust_code=True)
    assert same_architecture(m, m2)


def test_register_model() -> None:
    class Tiny(nn.Module):
        def __init__(self, in_dim: int, out_dim: int, scale: float = 1.0) -> None:
            super().__init__()
            self.lin = nn.Linear(in_dim, out_dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x)

    register_model("tiny_test_model", Tiny)
    d = make_task("teacher", d=4, n_train=5, n_test=2)
    m = model_for("tiny_test_model", d)
    assert m.lin.weight.shape == (1, 4)
    assert spec_of(m) == {
        "name": "tiny_test_model",
        "kwargs": {"in_dim": 4, "out_dim": 1, "scale": 1.0},
    }
    with pytest.raises(ConfigError, match="already registered"):
        register_model("tiny_test_model", MLP)


def test_isinstance_exports() -> None:
    assert isinstance(small_transformer(), Transformer)
