"""TransformerLens models and files (the optional extra ``grokscope[tl]``).

Fast tests (no TransformerLens needed): the grokking demo's single file with its config saved
as a dict imports with the file's own split; a constant non-finite buffer is not a non-finite
weight. Slow tests (``pytest -m slow``, TransformerLens installed): a real tiny
``HookedTransformer`` trained for a few hundred full-batch steps as in TransformerLens's
grokking demo, recorded with ``gs.Recorder`` and saved as the demo saves it; then roles,
every measure through ``gs.analyze(model=...)``, accuracies against ``model(tokens)[:, -1]``,
the demo file import, and the TransformerLens 4 bridge around a locally built model.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import grokscope as gs
from grokscope.errors import ConfigError, UnsafeCheckpointError
from grokscope.store._tl import buffer_key_map, demo_table
from grokscope.store.importers import import_checkpoints

P = 11
MEASURES = ["alignment", "curves", "fourier", "kernel", "lmn", "mixture", "nfa", "phases", "rqi"]


def demo_dataset(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The demo's table, built as the notebook builds it: row ``a * p + b`` is ``(a, b, p)``."""
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    dataset = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    return dataset, (dataset[:, 0] + dataset[:, 1]) % p


def demo_split(p: int, frac: float = 0.3, seed: int = 598) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    indices = torch.randperm(p * p)
    cutoff = int(p * p * frac)
    return indices[:cutoff], indices[cutoff:]


def tl_config_dict(p: int) -> dict:
    """What ``HookedTransformerConfig(...).to_dict()`` holds for the demo's model (abridged)."""
    return {"n_layers": 1, "n_heads": 4, "d_model": 16, "d_head": 4, "d_mlp": 32,
            "act_fn": "relu", "normalization_type": None, "d_vocab": p + 1,
            "d_vocab_out": p, "n_ctx": 3, "seed": 999, "device": "cpu"}


# ---------------------------------------------------------------------------- fast, no TL
class _Tokens(nn.Module):
    """Any model of (a, b, =) tokens: the importer only matches keys and shapes."""

    def __init__(self, p: int):
        super().__init__()
        self.embed = nn.Embedding(p + 1, 8)
        self.unembed = nn.Linear(24, p)

    def forward(self, x):
        return self.unembed(self.embed(x).flatten(1))


def _fake_demo_file(path, p, config, *, epochs=(9, 19, 29), n_epochs=30):
    model = _Tokens(p)
    tr, te = demo_split(p)
    sds = []
    for i in range(len(epochs)):
        with torch.no_grad():
            for prm in model.parameters():
                prm.add_(0.01 * (i + 1))
        sds.append(copy.deepcopy(model.state_dict()))
    torch.save({
        "model": sds[-1], "config": config, "checkpoints": sds,
        "checkpoint_epochs": list(epochs),
        "train_losses": [float(e) for e in range(n_epochs)],
        "test_losses": [10.0 + e for e in range(n_epochs)],
        "train_indices": tr, "test_indices": te,
    }, path)
    return model, sds, tr, te


def test_demo_file_with_dict_config_uses_its_split(tmp_path):
    p = 7
    model, sds, tr, te = _fake_demo_file(tmp_path / "grokking_demo.pth", p, tl_config_dict(p))
    run = import_checkpoints(tmp_path / "grokking_demo.pth", tmp_path / "run.zarr",
                             model=_Tokens(p), data=None, progress=False)
    d = run.data
    assert len(d.x_train) == len(tr) == int(p * p * 0.3) and len(d.x_test) == len(te)
    dataset, labels = demo_dataset(p)
    assert torch.equal(torch.as_tensor(np.asarray(d.x_train)), dataset[tr])
    assert torch.equal(torch.as_tensor(np.asarray(d.x_test)), dataset[te])
    assert torch.equal(torch.as_tensor(np.asarray(d.y_train)), labels[tr])
    assert torch.equal(torch.as_tensor(np.asarray(d.y_test)), labels[te])
    # the first rows by hand: index k is (k // p, k % p, p)
    k = int(tr[0])
    assert d.x_train[0].tolist() == [k // p, k % p, p] and int(d.y_train[0]) == (k // p + k % p) % p
    task = d.task
    assert {k: task[k] for k in ("name", "p", "op", "encoding")} == {
        "name": "modular", "p": p, "op": "+", "encoding": "tokens"}
    assert "TransformerLens grokking demo" in run.config["import"]["split_table"]
    assert list(run.steps) == [9, 19, 29]
    np.testing.assert_array_equal(run.metrics["train_loss"].values, [9.0, 19.0, 29.0])
    # an explicit data= still wins over the file's split
    other = gs.make_task("modular", p=p, train_frac=0.5, seed=1, encoding="tokens")
    run2 = import_checkpoints(tmp_path / "grokking_demo.pth", tmp_path / "run2.zarr",
                              model=_Tokens(p), data=other, progress=False)
    assert len(run2.data.x_train) == len(other.x_train)


def test_demo_table_only_for_a_three_token_tl_config(tmp_path):
    p = 7
    cfg = tl_config_dict(p) | {"n_ctx": 5}  # not the (a, b, =) model: the table is unknown
    _fake_demo_file(tmp_path / "f.pth", p, cfg)
    with pytest.raises(ConfigError, match="full_data"):
        import_checkpoints(tmp_path / "f.pth", tmp_path / "r.zarr", model=_Tokens(p), data=None,
                           progress=False)
    split = {"train_indices": torch.arange(3), "test_indices": torch.arange(3, 49)}
    assert demo_table(split, {"config": tl_config_dict(7)}) is not None
    assert demo_table(split, {"config": tl_config_dict(7) | {"d_vocab_out": 3}}) is None
    assert demo_table(split, {"config": {"d_model": 8}}) is None  # not a TL config
    big = {"train_indices": torch.arange(3), "test_indices": torch.tensor([49])}
    assert demo_table(big, {"config": tl_config_dict(7)}) is None  # index beyond p * p


def test_tl_mask_buffer_of_another_shape_keeps_the_models():
    class HookedLike(nn.Module):  # stands for a HookedTransformer of TransformerLens >= 3.6
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(2))
            self.register_buffer("mask", torch.empty((0, 0), dtype=torch.bool))

    HookedLike.__module__ = "transformer_lens.HookedTransformer"
    net = HookedLike()
    old = {"w": torch.zeros(2), "mask": torch.tril(torch.ones(3, 3)).bool()}  # TL 2.x file
    fixed = buffer_key_map(net, None)(old)
    assert fixed["mask"].shape == (0, 0) and torch.equal(fixed["w"], old["w"])
    plain = nn.Linear(2, 2)
    assert buffer_key_map(plain, None) is None  # other models: untouched


def test_constant_nonfinite_buffer_is_not_a_nonfinite_weight(tmp_path):
    class WithIgnore(nn.Module):  # TransformerLens attention keeps IGNORE = -inf as a buffer
        def __init__(self, p):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(2 * p, 16), nn.ReLU(), nn.Linear(16, p))
            self.register_buffer("IGNORE", torch.tensor(-torch.inf))

        def forward(self, x):
            return self.net(x)

    data = gs.make_task("modular", p=5, train_frac=0.5, seed=0)
    net = WithIgnore(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the recorder's count includes buffers
        with gs.Recorder(tmp_path / "r.zarr", net, data) as rec:
            rec.record(0, net)
    res = gs.analyze(tmp_path / "r.zarr", ["curves"], model=WithIgnore(5), progress=False)
    ds = res["curves"]
    assert not bool(ds.nonfinite_weights.any())
    with torch.no_grad():
        acc = (net(data.x_test).argmax(-1) == data.y_test).double().mean().item()
    assert ds.test_acc.sel(step=0).item() == pytest.approx(acc)


# ---------------------------------------------------------------------------- slow, real TL
def _hooked_transformer():
    tl = pytest.importorskip("transformer_lens")
    try:
        return tl.HookedTransformer, tl.HookedTransformerConfig
    except ImportError as exc:  # TransformerLens 4 removed it
        pytest.skip(f"no HookedTransformer in this TransformerLens: {exc}")


def _tiny_ht(seed=999):
    HookedTransformer, HookedTransformerConfig = _hooked_transformer()
    cfg = HookedTransformerConfig(
        n_layers=1, d_model=32, d_head=8, n_heads=4, d_mlp=64, d_vocab=P + 1, d_vocab_out=P,
        n_ctx=3, act_fn="relu", normalization_type=None, seed=seed, device="cpu")
    return HookedTransformer(cfg)


def _acc(model, x, y):
    with torch.no_grad():
        return (model(x)[:, -1].argmax(-1) == y).double().mean().item()


@pytest.fixture(scope="module")
def tl_run(tmp_path_factory):
    """The demo's protocol, scaled down: full-batch AdamW on the demo split, recorded with
    gs.Recorder and saved as the demo's single file."""
    root = tmp_path_factory.mktemp("tl")
    torch.set_num_threads(1)
    model = _tiny_ht()
    for name, prm in model.named_parameters():  # as the demo: biases frozen
        if "b_" in name:
            prm.requires_grad = False
    dataset, labels = demo_dataset(P)
    tr, te = demo_split(P, frac=0.5)
    x_tr, y_tr, x_te, y_te = dataset[tr], labels[tr], dataset[te], labels[te]
    data = gs.Data(x_tr, y_tr, x_te, y_te,
                   task={"name": "modular", "p": P, "op": "+", "encoding": "tokens"})
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1.0, betas=(0.9, 0.98))
    checkpoints, epochs, train_losses, test_losses = [], [], [], []
    with gs.Recorder(root / "run.zarr", model, data) as rec:
        for epoch in range(300):
            loss = nn.functional.cross_entropy(model(x_tr)[:, -1], y_tr)
            loss.backward()
            train_losses.append(loss.item())
            opt.step()
            opt.zero_grad()
            with torch.no_grad():
                test_losses.append(nn.functional.cross_entropy(model(x_te)[:, -1], y_te).item())
            if rec.due(epoch):
                rec.record(epoch, model, {"train_loss": loss.item()})
            if (epoch + 1) % 50 == 0:
                epochs.append(epoch)
                checkpoints.append(copy.deepcopy(model.state_dict()))
    torch.save({"model": model.state_dict(), "config": model.cfg, "checkpoints": checkpoints,
                "checkpoint_epochs": epochs, "test_losses": test_losses,
                "train_losses": train_losses, "train_indices": tr, "test_indices": te},
               root / "grokking_demo.pth")
    return {"root": root, "data": data, "tr": tr, "te": te, "epochs": epochs,
            "checkpoints": checkpoints, "final_train_acc": _acc(model, x_tr, y_tr)}


EXPECTED_ROLES = {
    "input": {"module": "embed"},
    "output": {"position": -1, "classes": None},
    "hidden": [{"name": "blocks.0.mlp", "in": "blocks.0.mlp.W_in", "out": "blocks.0.mlp.W_out",
                "activation": "relu",
                "capture": {"module": "blocks.0.mlp.hook_post", "at": "output"}}],
    "embedding": {"param": "embed.W_E", "orientation": "rows"},
    "unembedding": {"param": "unembed.W_U", "orientation": "columns"},
    "readout": "unembed.W_U",
}


@pytest.mark.slow
def test_hooked_transformer_roles():
    from grokscope.anatomy import resolve

    data = gs.make_task("modular", p=P, train_frac=0.5, seed=0, encoding="tokens")
    doc = resolve(_tiny_ht(), data).to_dict()
    assert {k: doc[k] for k in EXPECTED_ROLES} == EXPECTED_ROLES
    linear = {m["name"]: m for m in doc["linear"]}
    assert linear["blocks.0.mlp.W_in"] == {
        "name": "blocks.0.mlp.W_in", "weight": "blocks.0.mlp.W_in", "bias": "blocks.0.mlp.b_in",
        "module": "blocks.0.mlp", "orientation": "in_out", "output": "blocks.0.mlp.hook_pre"}
    assert linear["unembed.W_U"]["orientation"] == "in_out"
    assert linear["blocks.0.mlp.W_out"]["orientation"] == "in_out"


@pytest.mark.slow
def test_every_measure_on_a_recorded_hooked_transformer(tl_run):
    run = gs.open_run(tl_run["root"] / "run.zarr")
    assert tl_run["final_train_acc"] == 1.0  # it memorised: the run is worth analysing
    steps = [int(s) for s in run.steps[[0, len(run.steps) // 2, -1]]]
    res = gs.analyze(run, MEASURES, model=_tiny_ht(seed=1), steps=steps, progress=False,
                     num_threads=1)
    assert sorted(res) == MEASURES and not res.skipped
    finite = {"curves": ["train_acc", "test_acc", "train_loss", "test_loss"],
              "alignment": ["jacobian_alignment_mean", "rank_one_mean"],
              "lmn": ["lmn"], "nfa": ["nfa_corr"], "kernel": ["kernel_alignment"],
              "fourier": ["restricted_loss", "excluded_loss", "gini_embed"],
              "rqi": ["rqi"], "mixture": ["k", "bic_gap"]}
    for name, names in finite.items():
        ds = res[name]
        assert not bool(ds.nonfinite_weights.any()), name
        for v in names:
            assert np.isfinite(ds[v].values).all(), (name, v, ds[v].values)
    # accuracies equal model(tokens)[:, -1] computed by hand on the stored weights
    ht = _tiny_ht(seed=2)
    d = tl_run["data"]
    for step in steps:
        ht.load_state_dict(run.state_dict_at(step))
        assert res["curves"].test_acc.sel(step=step).item() == pytest.approx(
            _acc(ht, d.x_test, d.y_test), abs=1e-12)
        assert res["curves"].train_acc.sel(step=step).item() == pytest.approx(
            _acc(ht, d.x_train, d.y_train), abs=1e-12)
    assert res["curves"].train_acc.sel(step=steps[-1]).item() == 1.0


@pytest.mark.slow
def test_every_measure_from_the_stored_program_alone(tl_run, tmp_path):
    """No model passed: the exported program (which never calls TransformerLens's identity
    hook points) analyses with every measure; the hidden layer is then computed from W_in."""
    import shutil

    path = tmp_path / "copy.zarr"
    shutil.copytree(tl_run["root"] / "run.zarr", path)
    run = gs.open_run(path)
    steps = [int(s) for s in run.steps[[0, -1]]]
    res = gs.analyze(run, MEASURES, steps=steps, progress=False, num_threads=1, recompute=True)
    assert run.model_source == "exported"
    assert sorted(res) == MEASURES and not res.skipped
    ref = gs.analyze(gs.open_run(path), ["fourier"], model=_tiny_ht(seed=3), steps=steps,
                     progress=False, recompute=True)["fourier"]
    np.testing.assert_array_equal(res["fourier"].neuron_freq.sel(step=steps).values,
                                  ref.neuron_freq.sel(step=steps).values)


@pytest.mark.slow
def test_demo_file_import_uses_its_split(tl_run, tmp_path):
    path = tl_run["root"] / "grokking_demo.pth"
    with pytest.raises(UnsafeCheckpointError, match="trust_pickle"):  # config is an object
        import_checkpoints(path, tmp_path / "no.zarr", model=_tiny_ht(), data=None,
                           progress=False)
    run = import_checkpoints(path, tmp_path / "demo.zarr", model=_tiny_ht(), data=None,
                             trust_pickle=True, progress=False)
    tr, te = tl_run["tr"], tl_run["te"]
    d = run.data
    assert len(d.x_train) == len(tr) and len(d.x_test) == len(te)
    dataset, labels = demo_dataset(P)
    assert torch.equal(torch.as_tensor(np.asarray(d.x_train[:5])), dataset[tr[:5]])
    assert torch.equal(torch.as_tensor(np.asarray(d.x_test[:5])), dataset[te[:5]])
    assert torch.equal(torch.as_tensor(np.asarray(d.y_test)), labels[te])
    assert d.task["name"] == "modular" and d.task["p"] == P and d.task["encoding"] == "tokens"
    assert list(run.steps) == tl_run["epochs"]
    assert run.config["import"]["source_config"]["config"]["d_vocab"] == P + 1
    res = gs.analyze(run, ["curves", "fourier"], model=_tiny_ht(seed=3),
                     steps=[tl_run["epochs"][0], tl_run["epochs"][-1]], progress=False)
    ht = _tiny_ht(seed=4)
    for epoch, sd in zip(tl_run["epochs"], tl_run["checkpoints"]):
        if epoch not in res["curves"].step.values:
            continue
        ht.load_state_dict(sd)
        assert res["curves"].test_acc.sel(step=epoch).item() == pytest.approx(
            _acc(ht, dataset[te], labels[te]), abs=1e-12)
    assert np.isfinite(res["fourier"].restricted_loss.values).all()


@pytest.mark.slow
def test_demo_file_of_older_transformer_lens_imports(tl_run, tmp_path):
    """TransformerLens <= 3.5 saved an (n_ctx, n_ctx) attention mask; 3.6+ keeps (0, 0)."""
    obj = torch.load(tl_run["root"] / "grokking_demo.pth", weights_only=False)
    mask_key = "blocks.0.attn.mask"
    causal = torch.tril(torch.ones(3, 3)).bool()
    for sd in (obj["model"], *obj["checkpoints"]):
        sd[mask_key] = causal
    obj["config"] = obj["config"].to_dict()  # a dict config: no pickle needed
    torch.save(obj, tmp_path / "old.pth")
    run = import_checkpoints(tmp_path / "old.pth", tmp_path / "old.zarr", model=_tiny_ht(),
                             data=None, progress=False)
    assert list(run.steps) == tl_run["epochs"]
    last = run.state_dict_at(tl_run["epochs"][-1])
    assert tuple(np.asarray(last[mask_key]).shape) == tuple(_tiny_ht().state_dict()[mask_key].shape)
    w = torch.as_tensor(np.asarray(last["blocks.0.mlp.W_in"]))
    assert torch.equal(w, tl_run["checkpoints"][-1]["blocks.0.mlp.W_in"])


def _bridge(p=P):
    pytest.importorskip("transformer_lens")
    try:
        from transformer_lens import TransformerBridgeConfig
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as exc:
        pytest.skip(f"no TransformerBridge in this TransformerLens: {exc}")
    if not hasattr(TransformerBridge, "boot_native"):
        pytest.skip("this TransformerBridge cannot build a local model (no boot_native)")
    cfg = TransformerBridgeConfig(
        n_layers=1, d_model=32, d_head=8, n_heads=4, d_mlp=64, d_vocab=p + 1, d_vocab_out=p,
        n_ctx=3, act_fn="relu", normalization_type=None, seed=0, device="cpu")
    return TransformerBridge.boot_native(cfg)  # built locally: nothing is downloaded


def _record_bridge(path, target, bridge, data, steps=60):
    torch.manual_seed(0)
    opt = torch.optim.AdamW(bridge.parameters(), lr=3e-3, weight_decay=1.0)
    with gs.Recorder(path, target, data) as rec:
        for step in range(steps):
            loss = nn.functional.cross_entropy(bridge(data.x_train)[:, -1], data.y_train)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 20 == 0 or step == steps - 1:
                rec.record(step, target, {"train_loss": loss.item()})
    return gs.open_run(path)


@pytest.mark.slow
def test_bridge_native_model_every_measure(tmp_path):
    """TransformerLens 4's bridge around a locally built model: its native module analyses."""
    bridge = _bridge()
    data = gs.make_task("modular", p=P, train_frac=0.5, seed=0, encoding="tokens")
    native = bridge.original_model
    run = _record_bridge(tmp_path / "b.zarr", native, bridge, data)
    fresh = _bridge().original_model
    res = gs.analyze(run, MEASURES, model=fresh, steps=[0, int(run.steps[-1])], progress=False,
                     num_threads=1)
    assert sorted(res) == MEASURES and not res.skipped
    for name in ("lmn", "nfa", "fourier", "kernel", "rqi", "alignment"):
        assert not bool(res[name].nonfinite_weights.any()), name
    step = int(run.steps[-1])
    fresh.load_state_dict(run.state_dict_at(step))
    with torch.no_grad():
        acc = (fresh(data.x_test)[:, -1].argmax(-1) == data.y_test).double().mean().item()
    assert res["curves"].test_acc.sel(step=step).item() == pytest.approx(acc, abs=1e-12)


@pytest.mark.slow
def test_bridge_itself(tmp_path):
    """TransformerBridge.named_parameters() delegates to the wrapped model (other names than
    its module paths): the anatomy reads parameters by module path, so the bridge itself
    analyses."""
    bridge = _bridge()
    data = gs.make_task("modular", p=P, train_frac=0.5, seed=0, encoding="tokens")
    run = _record_bridge(tmp_path / "b.zarr", bridge, bridge, data, steps=21)
    res = gs.analyze(run, ["curves", "nfa"], model=_bridge(), progress=False)
    assert np.isfinite(res["nfa"].nfa_corr.values).all()
