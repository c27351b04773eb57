"""The model anatomy: roles detected on researcher-style models, overrides, the view's ops."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from _zoo import KINDS, build, data_for
from torch import nn

import grokscope.anatomy as ga
from grokscope.errors import ConfigError, MeasureNotApplicable

EXPECTED = {
    # kind: (input module, output position, [(hidden name, in, out, activation, capture)],
    #        embedding (param, orientation), unembedding param, readout)
    "seq_mlp": (None, None, [("0", "0", "2", "relu", ("2", "input"))],
                ("0.weight", "columns"), "2.weight", "2"),
    "named_mlp": (None, None, [("fc_in", "fc_in", "fc_mid", "silu", ("fc_mid", "input")),
                               ("fc_mid", "fc_mid", "head", "silu", ("head", "input"))],
                  ("fc_in.weight", "columns"), "head.weight", "head"),
    # raw W_in/b_in/W_out at the model's root (no submodules): the root's own output is
    # W_out relu(W_in x + b_in); the hidden layer is named after its in map
    "root_raw_mlp": (None, None, [("W_in", "W_in", "W_out", "relu", None)],
                     ("W_in", "columns"), "W_out", "W_out"),
    "embed_mlp": ("tok", None, [("hidden_layer", "hidden_layer", "out", "gelu", ("out", "input"))],
                  ("tok.weight", "rows"), "out.weight", "out"),
    "grokscope_transformer": (
        "embed", None,
        [("blocks.0.mlp.W_in", "blocks.0.mlp.W_in", "blocks.0.mlp.W_out", "relu",
          ("blocks.0.mlp.W_out", "input"))],
        ("embed.weight", "rows"), "unembed.weight", "unembed"),
    "raw_transformer": (
        "embed", -1,
        [("blocks.0.mlp", "blocks.0.mlp.W_in", "blocks.0.mlp.W_out", "relu", None)],
        ("embed.W_E", "columns"), "unembed.W_U", "unembed.W_U"),
    "tl_layout_transformer": (
        "embed", -1,
        [("blocks.0.mlp", "blocks.0.mlp.W_in", "blocks.0.mlp.W_out", "relu", None)],
        ("embed.W_E", "rows"), "unembed.W_U", "unembed.W_U"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_detected_roles(kind):
    model, data = build(kind), data_for(kind)
    anat = ga.resolve(model, data)
    inp, pos, hidden, emb, unemb, readout = EXPECTED[kind]
    assert anat.input == {"module": inp}
    assert anat.output["position"] == pos
    got = [(h["name"], h["in"], h["out"], h["activation"],
            None if h["capture"] is None else (h["capture"]["module"], h["capture"]["at"]))
           for h in anat.hidden]
    assert got == hidden
    assert (anat.embedding["param"], anat.embedding["orientation"]) == emb
    assert anat.unembedding["param"] == unemb
    assert anat.readout == readout
    # JSON round trip (what a run's config stores)
    again = ga.Anatomy.from_dict(json.loads(json.dumps(anat.to_dict())))
    assert again.to_dict() == anat.to_dict()


def test_raw_transformer_orientations_and_dropped_attention():
    for kind, orient in (("raw_transformer", "out_in"), ("tl_layout_transformer", "in_out")):
        anat = ga.resolve(build(kind), data_for(kind))
        w_in = anat.linear_map("blocks.0.mlp.W_in")
        assert w_in["orientation"] == orient and w_in["module"] == "blocks.0.mlp"
        assert w_in["bias"] == "blocks.0.mlp.b_in"
        assert anat.linear_map("blocks.0.mlp.W_out")["module"] is None
        assert anat.linear_map("unembed.W_U")["orientation"] == "in_out"
        # attention's W_O multiplies an internal tensor: not claimed as a map of the input
        assert "blocks.0.attn.W_O" not in [lin["name"] for lin in anat.linear]
        assert any("blocks.0.attn.W_O" in n for n in anat.notes)


@pytest.mark.parametrize("kind", KINDS)
def test_view_ops_agree_with_the_model(kind):
    torch.manual_seed(1)
    model, data = build(kind), data_for(kind)
    view = ga.ModelView(model, ga.resolve(model, data))
    x = data.x_train[:7]
    out = model(x)
    want = out[:, -1] if out.ndim == 3 else out
    assert torch.equal(view.forward(x), want.reshape(7, -1))
    if view.anatomy.input["module"] is not None or torch.is_floating_point(x):
        e = view.embed(x)
        assert e.ndim == 2 and e.shape[0] == 7
        torch.testing.assert_close(view.forward_from_input(e, x), view.forward(x))
        # the input role really is where the logits are differentiated: perturb e
        e2 = e + 0.1 * torch.randn_like(e)
        assert not torch.allclose(view.forward_from_input(e2, x), view.forward(x))
    # hidden activations equal activation(W_in h + b) from the map's input, by hand
    h = view.hidden_layer(0)
    acts = view.hidden_activations(x, 0)
    lin = view.anatomy.linear_map(h["in"])
    hin = view.map_input(x, h["in"]) if lin["module"] is not None else None
    z = hin @ view.weight(h["in"]).T + (0 if view.bias(h["in"]) is None else view.bias(h["in"]))
    torch.testing.assert_close(acts, ga.activation_fn(h["activation"])(z))
    # neuron -> logit map: logits are affine in the last hidden layer's activations
    n2l = view.neuron_to_logit(-1)
    assert n2l.shape == (data.n_classes, view.hidden_activations(x, -1).shape[-1])
    if len(view.anatomy.hidden) > 1:  # a deep MLP: layer 0 has no linear path to the logits
        with pytest.raises(ConfigError, match="feeds another hidden layer"):
            view.neuron_to_logit(0)


def test_raw_transformer_hidden_by_hand():
    model = build("raw_transformer")
    data = data_for("raw_transformer")
    view = ga.ModelView(model, ga.resolve(model, data))
    x = data.x_train[:5]
    mlp = model.blocks[0].mlp
    resid = {}
    hd = mlp.register_forward_pre_hook(lambda m, a: resid.setdefault("h", a[0]))
    model(x)
    hd.remove()
    pre = torch.einsum("md,bpd->bpm", mlp.W_in, resid["h"]) + mlp.b_in
    torch.testing.assert_close(view.hidden_activations(x, 0), F.relu(pre))
    # embedding table rows are tokens: W_E columns
    torch.testing.assert_close(view.embedding_table(), model.embed.W_E.detach().T)
    torch.testing.assert_close(view.unembedding_table(), model.unembed.W_U.detach().T)


class HFStyle(nn.Module):
    """Hugging Face naming: nn.Linear c_fc/c_proj inside `mlp`, a GPT-2 style Conv1D (raw
    weight (in, out)) as the head, output wrapped in an object with .logits."""

    class Conv1D(nn.Module):
        def __init__(self, nf: int, nx: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)
            self.bias = nn.Parameter(torch.zeros(nf))

        def forward(self, x):
            return x @ self.weight + self.bias

    class Out:
        def __init__(self, logits):
            self.logits = logits

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.ModuleDict({"c_fc": nn.Linear(10, 24), "c_proj": nn.Linear(24, 16)})
        self.lm_head = HFStyle.Conv1D(5, 16)

    def forward(self, x):
        h = self.mlp["c_proj"](F.gelu(self.mlp["c_fc"](x), approximate="tanh"))
        return HFStyle.Out(self.lm_head(torch.tanh(h)))


def test_hugging_face_style_names_and_output_object():
    model = HFStyle()
    x = torch.randn(6, 10)
    anat = ga.detect(model, x)
    assert [(h["in"], h["out"], h["activation"]) for h in anat.hidden] == [
        ("mlp.c_fc", "mlp.c_proj", "gelu_tanh"), ("mlp.c_proj", "lm_head.weight", "tanh")]
    assert anat.readout == "lm_head.weight"
    assert anat.linear_map("lm_head.weight")["orientation"] == "in_out"
    assert anat.unembedding == {"param": "lm_head.weight", "orientation": "columns"}
    view = ga.ModelView(model, anat)
    torch.testing.assert_close(view.forward(x), model(x).logits)
    torch.testing.assert_close(view.weight("lm_head.weight"), model.lm_head.weight.detach().T)


def test_override_shorthand_and_checks():
    model, data = build("raw_transformer"), data_for("raw_transformer")
    anat = ga.resolve(model, data, override={
        "hidden": ["blocks.0.mlp"], "output": {"classes": [0, 5]},
        "linear": ["blocks.0.mlp.W_in", "unembed.W_U"], "embedding": "embed.W_E"})
    assert anat.hidden[0]["capture"] == {"module": "blocks.0.mlp", "at": "output"}
    assert anat.output == {"position": -1, "classes": [0, 5]}
    assert anat.linear_map("blocks.0.mlp.W_in")["orientation"] == "out_in"
    assert anat.embedding == {"param": "embed.W_E", "orientation": "columns"}
    assert any("given by the user" in n for n in anat.notes)
    view = ga.ModelView(model, anat)
    assert view.forward(data.x_train[:3]).shape == (3, 5)
    with pytest.raises(ConfigError, match="'input' names module 'nope'"):
        ga.resolve(model, data, override={"input": "nope"})
    with pytest.raises(ConfigError, match="unknown anatomy role"):
        ga.resolve(model, data, override={"inputs": "embed"})
    with pytest.raises(ConfigError, match="neither an nn.Linear module nor a 2-D weight"):
        ga.resolve(model, data, override={"linear": ["blocks.0.attn.W_Q"]})


def test_stored_anatomy_is_used_and_checked():
    model, data = build("seq_mlp"), data_for("seq_mlp")
    stored = ga.describe(model, data)
    stored["readout"] = "0"  # a stored (possibly edited) description wins over detection
    assert ga.resolve(model, data, stored=stored).readout == "0"
    stored["embedding"] = {"param": "9.weight", "orientation": "rows"}
    with pytest.raises(ConfigError, match="'embedding' names parameter '9.weight'"):
        ga.resolve(model, data, stored=stored)


def test_missing_role_names_the_anatomy_key():
    model = nn.Sequential(nn.Linear(4, 3))
    anat = ga.detect(model, torch.randn(3, 4))
    assert anat.hidden == []
    view = ga.ModelView(model, anat)
    with pytest.raises(MeasureNotApplicable, match=r"'hidden' role.*anatomy=\{'hidden'"):
        view.hidden_activations(torch.randn(2, 4))
    with pytest.raises(MeasureNotApplicable, match=r"'input' role.*tokens"):
        ga.ModelView(build("embed_mlp"), ga.Anatomy()).embed(torch.zeros(2, 3, dtype=torch.long))


def test_describe_never_raises():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    with pytest.warns(UserWarning, match="could not probe the model's anatomy"):
        assert ga.describe(Broken(), data_for("seq_mlp")) is None


def test_summary_lists_every_role():
    text = ga.resolve(build("raw_transformer"), data_for("raw_transformer")).summary()
    for word in ("input:", "output:", "hidden:", "linear:", "embedding:", "unembedding:",
                 "readout:", "computed from 'blocks.0.mlp.W_in'", "position -1"):
        assert word in text


class _HookedMLPBlock(nn.Module):
    """A raw MLP block with TransformerLens-style identity hook points (optionally skipped,
    as an exported program skips them)."""

    def __init__(self, call_hooks: bool = True) -> None:
        super().__init__()
        self.W_in = nn.Parameter(torch.randn(6, 16) * 0.5)
        self.b_in = nn.Parameter(torch.randn(16) * 0.1)
        self.W_out = nn.Parameter(torch.randn(16, 3) * 0.5)
        self.hook_pre, self.hook_post = nn.Identity(), nn.Identity()
        self.call_hooks = call_hooks

    def forward(self, x):
        pre = x @ self.W_in + self.b_in
        if self.call_hooks:
            pre = self.hook_pre(pre)
        post = torch.relu(pre)
        if self.call_hooks:
            post = self.hook_post(post)
        return post @ self.W_out


def test_hook_points_found_and_dropped_when_the_model_skips_them():
    from grokscope.data import Data

    x = torch.randn(12, 6)
    data = Data(x, torch.arange(12) % 3, x[:4], torch.arange(4) % 3)
    hooked = nn.Sequential(_HookedMLPBlock())
    anat = ga.resolve(hooked, data)
    assert anat.hidden[0]["capture"] == {"module": "0.hook_post", "at": "output"}
    assert anat.linear_map("0.W_in")["output"] == "0.hook_pre"
    plain = nn.Sequential(_HookedMLPBlock(call_hooks=False))
    plain.load_state_dict(hooked.state_dict())
    adapted = ga.resolve(plain, data, stored=anat.to_dict())
    assert adapted.hidden[0]["capture"] is None
    assert adapted.linear_map("0.W_in")["output"] is None
    assert any("not called by this model" in n for n in adapted.notes)
    want = ga.ModelView(hooked, anat).hidden_activations(x)
    torch.testing.assert_close(ga.ModelView(plain, adapted).hidden_activations(x), want)
    # the stored description itself is untouched
    assert anat.hidden[0]["capture"] is not None
