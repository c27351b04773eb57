"""curves and lmn on every zoo model, seen only through its anatomy.

Each measure is compared with an independent computation written here from the model's own
forward pass and hooks written here: accuracies by hand (last position, the first ``p``
logits), LMN by a per-pair loop that interpolates at a module's input with a forward
pre-hook, r^2 from ``np.corrcoef`` and the entropy from ``np.linalg.eigvalsh``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _zoo import KINDS, build, data_for

from grokscope.anatomy import Anatomy
from grokscope.errors import MeasureNotApplicable
from grokscope.measures.curves import curves, forward_chunked
from grokscope.measures.lmn import lmn
from grokscope.measures.registry import Checkpoint

P = 11


def _ckpt(model, data, anatomy=None) -> Checkpoint:
    return Checkpoint(step=0, model=model.eval(), data=data, references={"first": model},
                      anatomy=anatomy)


def _hand_logits(model, x) -> torch.Tensor:
    """The task's logits from the model's own forward: last position, first p outputs."""
    with torch.no_grad():
        out = model(x)
    if out.ndim == 3:
        out = out[:, -1]
    return out[:, :P]


@pytest.fixture(scope="module")
def trained_raw():
    """The Nanda-style raw transformer after 100 full-batch AdamW steps (80% split): train
    accuracy 1, test accuracy 0.8, so a wrongly read output cannot match by chance."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, data = build("raw_transformer"), data_for("raw_transformer", frac=0.8)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1.0)
        for _ in range(100):
            out = model(data.x_train)[:, -1, :P]
            loss = F.cross_entropy(out, data.y_train)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), data


def _check_curves(model, data):
    ds = curves(_ckpt(model, data))
    for split in ("train", "test"):
        x, y = data.split(split)
        lg = _hand_logits(model, x).double()
        acc = float((lg.argmax(1) == y).double().mean())
        assert float(ds[f"{split}_acc"]) == acc
        assert float(ds[f"{split}_loss"]) == pytest.approx(float(F.cross_entropy(lg, y)), rel=1e-6)
    return ds


@pytest.mark.parametrize("kind", KINDS)
def test_curves_accuracy_is_the_models_own(kind):
    _check_curves(build(kind), data_for(kind))


def test_curves_on_trained_raw_transformer(trained_raw):
    model, data = trained_raw
    ds = _check_curves(model, data)
    assert float(ds["train_acc"]) == 1.0
    assert 0.5 < float(ds["test_acc"]) < 1.0
    # the old reading (every output flattened, arg-max over 3 * p) is far off: the test above
    # would catch it
    with torch.no_grad():
        flat = model(data.x_test).reshape(data.x_test.shape[0], -1)
    assert float((flat.argmax(1) == data.y_test).double().mean()) < 0.2
    # forward_chunked: a view reads the output role; a bare module keeps the old flattening
    view = _ckpt(model, data).view
    assert forward_chunked(view, data.x_test, 7).shape == (data.x_test.shape[0], P)
    assert torch.equal(forward_chunked(model, data.x_test, 7), flat)


# --------------------------------------------------------------------------- LMN
#: where each kind's first hidden layer's pre-activation map takes its input h, and the module
#: whose output is the input role (None: the raw float input), written from the model code
PRE_INPUT = {"seq_mlp": "0", "named_mlp": "fc_in", "root_raw_mlp": "", "embed_mlp": "hidden_layer",
             "grokscope_transformer": "blocks.0.mlp.W_in", "raw_transformer": "blocks.0.mlp",
             "tl_layout_transformer": "blocks.0.mlp"}
INPUT_OUT = {"seq_mlp": None, "named_mlp": None, "root_raw_mlp": None, "embed_mlp": "tok",
             "grokscope_transformer": "embed", "raw_transformer": "embed",
             "tl_layout_transformer": "embed"}


def _independent_lmn(model, xs, path: str | None, at: str, n_points: int = 21) -> float:
    """LMN with g = the model after replacing ``path``'s input/output (None: the raw input) by
    interpolated points, one pair at a time, the rest of the model fed sample i."""
    mod = None if path is None else model.get_submodule(path)
    grabbed = {}
    if mod is None:
        h = xs.to(torch.float64).reshape(xs.shape[0], -1)
        shape = xs.shape[1:]
    else:
        if at == "input":
            hd = mod.register_forward_pre_hook(lambda _m, args: grabbed.setdefault("h", args[0]))
        else:
            hd = mod.register_forward_hook(lambda _m, _a, out: grabbed.setdefault("h", out))
        with torch.no_grad():
            model(xs)
        hd.remove()
        shape = grabbed["h"].shape[1:]
        h = grabbed["h"].reshape(xs.shape[0], -1)
    n = h.shape[0]
    t = torch.linspace(0, 1, n_points, dtype=torch.float64)
    L = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            pts = (h[i] + t[:, None] * (h[j] - h[i])).reshape(n_points, *shape)
            if mod is None:
                with torch.no_grad():
                    out = model(pts)
            else:
                if at == "input":
                    hd = mod.register_forward_pre_hook(lambda _m, _args, p=pts: (p,))
                else:
                    hd = mod.register_forward_hook(lambda _m, _a, _o, p=pts: p)
                with torch.no_grad():
                    out = model(xs[i : i + 1].expand(n_points, *xs.shape[1:]))
                hd.remove()
            y = (out[:, -1] if out.ndim == 3 else out)[:, :P].double().numpy()
            r2 = []
            for k in range(y.shape[1]):
                if np.ptp(y[:, k]) <= 1e-12 * max(1.0, np.abs(y[:, k]).max()):
                    r2.append(1.0)
                else:
                    r2.append(np.corrcoef(t.numpy(), y[:, k])[0, 1] ** 2)
            L[i, j] = L[j, i] = np.mean(r2)
    lam = np.abs(np.linalg.eigvalsh(L))
    p = lam / lam.sum()
    p = p[p > 0]
    return float(2.0 ** -(p * np.log2(p)).sum())


@pytest.mark.parametrize("kind", KINDS)
def test_lmn_pre_and_input_run_on_every_kind(kind):
    model, data = build(kind), data_for(kind)
    ck = _ckpt(model, data)
    pre = lmn(ck, n_samples=10, cut="pre")
    inp = lmn(ck, n_samples=10, layer=-1)
    for ds in (pre, inp):
        assert math.isfinite(float(ds.lmn)) and 1.0 < float(ds.lmn) < 10.0
    assert "pre-activation" in pre.attrs["subnetwork"]
    assert "input role" in inp.attrs["subnetwork"]
    # how g is evaluated: MLPs from the anatomy's maps, transformers through hooks
    direct = "directly from the anatomy" in pre.attrs["subnetwork"]
    assert direct == (kind in ("seq_mlp", "named_mlp", "root_raw_mlp", "embed_mlp"))


@pytest.mark.parametrize("kind", KINDS)
def test_lmn_equals_an_independent_computation_float64(kind):
    model, data = build(kind).double().eval(), data_for(kind)
    ck = _ckpt(model, data)
    pre = lmn(ck, n_samples=7, cut="pre")
    xs = data.x_train[pre.sample_index.values]
    if torch.is_floating_point(xs):
        xs = xs.double()
    want = _independent_lmn(model, xs, PRE_INPUT[kind], "input")
    assert float(pre.lmn) == pytest.approx(want, rel=1e-9, abs=0)
    inp = lmn(ck, n_samples=7, layer=-1)
    want_in = _independent_lmn(model, xs, INPUT_OUT[kind], "output")
    assert float(inp.lmn) == pytest.approx(want_in, rel=1e-9, abs=0)


def test_grokscope_transformer_input_route_equals_output_route_float64():
    """Interpolating at the input of blocks.0.mlp.W_in (an anatomy whose W_in has no hookable
    output forces it) gives the LMN of interpolating at its output, to 1e-9."""
    kind = "grokscope_transformer"
    model, data = build(kind).double().eval(), data_for(kind)
    out_route = lmn(_ckpt(model, data), n_samples=12, module="blocks.0.mlp.W_in")
    default = lmn(_ckpt(model, data), n_samples=12, cut="pre")
    doc = _ckpt(model, data).view.anatomy.to_dict()
    for lin in doc["linear"]:
        if lin["name"] == "blocks.0.mlp.W_in":
            lin["output"] = None
    in_route = lmn(_ckpt(model, data, Anatomy.from_dict(doc)), n_samples=12, cut="pre")
    assert "interpolated at the input h of 'blocks.0.mlp.W_in'" in in_route.attrs["subnetwork"]
    assert float(in_route.lmn) == pytest.approx(float(out_route.lmn), rel=1e-9, abs=0)
    assert float(default.lmn) == pytest.approx(float(out_route.lmn), rel=1e-12, abs=0)
    assert float(in_route.lmn) > 1.05  # not trivially 1


def test_raw_transformer_pre_matches_hand_pre_hook_trained(trained_raw):
    """On the trained raw transformer (float64), LMN at the MLP's pre-activation equals the
    hand computation with a forward pre-hook on blocks.0.mlp."""
    trained, data = trained_raw
    model = build("raw_transformer")
    model.load_state_dict(trained.state_dict())
    model = model.double().eval()
    ds = lmn(_ckpt(model, data), n_samples=10, cut="pre")
    xs = data.x_train[ds.sample_index.values]
    assert float(ds.lmn) == pytest.approx(_independent_lmn(model, xs, "blocks.0.mlp", "input"),
                                          rel=1e-9, abs=0)


def test_post_cut_on_zoo():
    # raw transformer: the post-activation is computed inside blocks.0.mlp, no module to replace
    with pytest.raises(MeasureNotApplicable, match="'hidden'"):
        lmn(_ckpt(build("raw_transformer"), data_for("raw_transformer")), n_samples=6, cut="post")
    # one-hidden-layer MLPs: the readout after the post-activation is affine by construction
    for kind in ("seq_mlp", "embed_mlp"):
        ds = lmn(_ckpt(build(kind), data_for(kind)), n_samples=10, cut="post")
        assert float(ds.lmn) == pytest.approx(1.0, abs=1e-6)
        assert "affine by construction" in ds.attrs["note"]
    # two SiLU layers: the post-activation of the first is not affine to the logits
    ds = lmn(_ckpt(build("named_mlp"), data_for("named_mlp")), n_samples=10, cut="post")
    assert float(ds.lmn) > 1.1 and ds.attrs["note"] == ""
