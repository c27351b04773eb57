"""Known-answer tests of the Fourier progress measures (docs/methods.md sections 6 and 9)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
from _zoo import RawTransformer
from torch import nn

from grokscope.data import Data
from grokscope.errors import ConfigError, MeasureNotApplicable
from grokscope.measures import get
from grokscope.measures.fourier import (
    fourier,
    fourier_basis,
    freq_norms,
    gini,
    logit_decomposition,
    neuron_frequencies,
)
from grokscope.measures.registry import Checkpoint

P = 23
KEYS = (3, 7)


class Quadratic(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * z


class TinyMLP(nn.Module):
    """Two-hot MLP with the agreed interface (``layers``, ``act``, ``hidden``)."""

    def __init__(self, in_dim: int, width: int, out_dim: int) -> None:
        super().__init__()
        self.embed = None
        self.layers = nn.ModuleList([nn.Linear(in_dim, width, bias=False), nn.Linear(width, out_dim, bias=False)])
        self.act = Quadratic()

    def hidden(self, x: torch.Tensor, layer: int = 0) -> torch.Tensor:
        return self.act(self.layers[0](x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[1](self.hidden(x))


def fourier_sparse_mlp(p: int = P, keys: tuple[int, ...] = KEYS, m: int = 3) -> TinyMLP:
    """Neurons ``(cos(w a + phi) + cos(w b + psi))^2`` over an ``m x m`` phase grid per key.

    With ``m >= 3`` the readout ``cos(w c + phi + psi)`` cancels every term except
    ``(m^2 / 2) cos(w (a + b - c))``, so the logits hold only key frequencies exactly.
    """
    width = len(keys) * m * m
    model = TinyMLP(2 * p, width, p)
    x = torch.arange(p, dtype=torch.float64)
    w_in = torch.zeros(width, 2 * p, dtype=torch.float64)
    w_out = torch.zeros(p, width, dtype=torch.float64)
    n = 0
    for k in keys:
        w = 2 * math.pi * k / p
        for i in range(m):
            for j in range(m):
                phi, psi = 2 * math.pi * i / m, 2 * math.pi * j / m
                w_in[n, :p] = torch.cos(w * x + phi)
                w_in[n, p:] = torch.cos(w * x + psi)
                w_out[:, n] = torch.cos(w * x + phi + psi)
                n += 1
    model.layers[0].weight.data = w_in.float()
    model.layers[1].weight.data = w_out.float()
    return model.eval()


def modular_data(p: int = P, op: str = "+", frac: float = 0.4, tokens: bool = False) -> Data:
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    pairs = torch.stack([a.reshape(-1), b.reshape(-1)], 1)
    y = (pairs[:, 0] + pairs[:, 1]) % p if op == "+" else (pairs[:, 0] * pairs[:, 1]) % p
    if tokens:
        x = torch.cat([pairs, torch.full((p * p, 1), p)], 1)
    else:
        x = torch.zeros(p * p, 2 * p)
        x[torch.arange(p * p), pairs[:, 0]] = 1
        x[torch.arange(p * p), p + pairs[:, 1]] = 1
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(0))
    n = int(frac * p * p)
    tr, te = perm[:n], perm[n:]
    task = {"name": "modular", "p": p, "op": op, "n_classes": p, "encoding": "tokens" if tokens else "onehot"}
    return Data(x[tr], y[tr], x[te], y[te], task=task)


def test_basis_is_orthonormal():
    b = fourier_basis(P)
    assert torch.allclose(b @ b.T, torch.eye(P, dtype=torch.float64), atol=1e-12)


def test_gini_known_values():
    assert gini([1, 1, 1, 1]) == pytest.approx(0.0)
    assert gini([0, 0, 0, 5]) == pytest.approx(0.75)
    assert math.isnan(gini([0, 0]))


def test_neuron_frequency_of_pure_cosine_neurons():
    a, b = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    acts = torch.stack(
        [torch.cos(2 * math.pi * k * (a + b).double() / P).reshape(-1) for k in (1, 4, 11)], 1
    )
    share = neuron_frequencies(acts, P)
    assert share.shape == ((P - 1) // 2, 3)
    for col, k in enumerate((1, 4, 11)):
        assert share[k - 1, col] == pytest.approx(1.0, abs=1e-10)


def test_known_answer_fourier_sparse_model():
    model, data = fourier_sparse_mlp(), modular_data()
    ds = fourier(Checkpoint(step=0, model=model, data=data))
    key = set(ds["freq"].values[ds["key_freqs"].values].tolist())
    assert key == set(KEYS)
    assert set(np.unique(ds["neuron_freq"].values).tolist()) == set(KEYS)
    # each neuron's own frequency holds 1 / (1 + 1/4) of its centred norm (harmonic 2k the rest)
    assert np.allclose(ds["neuron_freq_share"].values, 0.8, atol=1e-5)
    assert float(ds["freq_share"].sel(freq=3)) == pytest.approx(0.5)
    assert float(ds["key_logit_share"]) == pytest.approx(1.0, abs=1e-6)
    # logits are pure key frequencies: restricted == full, excluded == uniform logits
    assert float(ds["restricted_loss"]) == pytest.approx(float(ds["loss_all"]), rel=1e-5)
    assert float(ds["excluded_loss"]) == pytest.approx(math.log(P), rel=1e-5)
    # the readout is supported on the key frequencies only -> Gini of 11 values = 9/11 ideal
    assert float(ds["gini_readout"]) > 0.8
    assert float(ds["gini_embed"]) > 0.8
    assert float(ds["margin"]) > 0 and float(ds["margin_per_norm"]) > 0
    assert ds.sizes == {"neuron": 18, "freq": 11}


def test_key_share_of_mixed_logits():
    a, b = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    s, c = (a + b).reshape(-1, 1).double(), torch.arange(P).double()[None, :]
    key = torch.cos(2 * math.pi * 3 * (s - c) / P)
    other = 0.5 * torch.cos(2 * math.pi * 5 * a.reshape(-1, 1).double() / P) * torch.ones_like(c)
    logits = key + other + 2.0  # constant offset is not part of the centred norm
    restricted, excluded, share = logit_decomposition(logits, P, [3])
    expect = float((key**2).sum()) / float((key**2).sum() + (other**2).sum())
    assert share == pytest.approx(expect, rel=1e-10)
    assert torch.allclose(restricted, key + 2.0, atol=1e-10)
    assert torch.allclose(excluded, other + 2.0, atol=1e-10)


def test_freq_norms_of_single_frequency_embedding():
    x = torch.arange(P, dtype=torch.float64)
    emb = torch.stack([torch.cos(2 * math.pi * 4 * x / P), torch.sin(2 * math.pi * 4 * x / P)], 1)
    norms = freq_norms(emb, P)
    assert norms[3] == pytest.approx(math.sqrt(P), rel=1e-10)
    assert float(norms.sum() - norms[3]) == pytest.approx(0.0, abs=1e-10)


def test_non_addition_op_gives_nan_restricted_loss_with_reason():
    model, data = fourier_sparse_mlp(), modular_data(op="*")
    ds = fourier(Checkpoint(step=0, model=model, data=data))
    assert math.isnan(float(ds["restricted_loss"])) and math.isnan(float(ds["key_logit_share"]))
    assert "'*'" in ds.attrs["restricted_skipped"]
    assert set(ds["freq"].values[ds["key_freqs"].values].tolist()) == set(KEYS)


def test_n_key_picks_top_frequencies():
    model, data = fourier_sparse_mlp(), modular_data()
    ds = fourier(Checkpoint(step=0, model=model, data=data), n_key=1)
    assert int(ds["n_key_freqs"]) == 1 and int(ds["key_freqs"].sum()) == 1


class TinyTransformerLike(nn.Module):
    """Embed -> sum of token embeddings -> MLP(W_in, W_out) -> unembed, transformer names."""

    def __init__(self, p: int, d: int = 16, d_mlp: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(p + 1, d)
        block = nn.Module()
        block.mlp = nn.Module()
        block.mlp.W_in = nn.Linear(d, d_mlp)
        block.mlp.W_out = nn.Linear(d_mlp, d)
        self.blocks = nn.ModuleList([block])
        self.unembed = nn.Linear(d, p + 1, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens).cumsum(dim=1)  # (n, 3, d): each position sees its prefix
        mlp = self.blocks[0].mlp
        h = h + mlp.W_out(torch.relu(mlp.W_in(h)))
        return self.unembed(h[:, -1])


def test_transformer_path_uses_hook_and_token_grid():
    torch.manual_seed(0)
    model, data = TinyTransformerLike(P).eval(), modular_data(tokens=True)
    ds = fourier(Checkpoint(step=0, model=model, data=data), n_key=3)
    assert ds.sizes == {"neuron": 32, "freq": 11}
    assert "W_out" in ds.attrs["neuron_activation"]
    # the logits of the token grid (a, b, =), by hand
    a, b = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    x = torch.stack([a.reshape(-1), b.reshape(-1), torch.full((P * P,), P)], 1)
    with torch.no_grad():
        logits = model(x)[:, :P].double()
    keys = [int(k) for k in ds["freq"].values[ds["key_freqs"].values]]
    assert len(keys) == 3
    restricted, _, share = logit_decomposition(logits, P, keys)
    y = (a + b).reshape(-1) % P
    assert float(ds["key_logit_share"]) == pytest.approx(share, rel=1e-9)
    assert float(ds["restricted_loss"]) == pytest.approx(float(F.cross_entropy(restricted, y)),
                                                         rel=1e-9)


def test_applies_reasons():
    spec = get("fourier")
    model = fourier_sparse_mlp()
    view = Checkpoint(step=0, model=model, data=modular_data()).view
    assert spec.applies(view, modular_data()) is None
    other = Data(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), torch.randn(2, 3), torch.tensor([0, 1]),
                 task={"name": "parity"})
    assert "modular" in spec.applies(view, other)
    with pytest.raises(MeasureNotApplicable):
        fourier(Checkpoint(step=0, model=model, data=other))


def test_known_answer_with_library_mlp_and_task():
    from grokscope.models import build_model
    from grokscope.tasks import make_task

    hand = fourier_sparse_mlp()
    model = build_model("mlp", in_dim=2 * P, out_dim=P, width=18, activation="quadratic", bias=False)
    model.load_state_dict(hand.state_dict())
    data = make_task("modular", p=P, train_frac=0.3, seed=1, encoding="onehot")
    ds = fourier(Checkpoint(step=0, model=model.eval(), data=data))
    assert set(ds["freq"].values[ds["key_freqs"].values].tolist()) == set(KEYS)
    assert float(ds["key_logit_share"]) == pytest.approx(1.0, abs=1e-6)
    assert float(ds["excluded_loss"]) == pytest.approx(math.log(P), rel=1e-5)
    assert float(ds["margin"]) > 0


def test_missing_roles_are_named():
    spec = get("fourier")
    data = modular_data()
    linear = nn.Linear(2 * P, P)  # no hidden layer
    reason = spec.applies(Checkpoint(step=0, model=linear, data=data).view, data)
    assert "'hidden'" in reason and "anatomy={'hidden'" in reason
    ckpt = Checkpoint(step=0, model=fourier_sparse_mlp(), data=data)
    ckpt.view.anatomy.embedding = None  # e.g. a stored anatomy without the table
    reason = spec.applies(ckpt.view, data)
    assert "'embedding'" in reason and "anatomy={'embedding'" in reason
    with pytest.raises(MeasureNotApplicable, match="'embedding'"):
        fourier(ckpt)


def test_readout_norms_nan_without_out_map():
    ckpt = Checkpoint(step=0, model=fourier_sparse_mlp(), data=modular_data())
    ckpt.view.anatomy.hidden[0]["out"] = None  # neurons known, their readout not
    ds = fourier(ckpt)
    assert np.isnan(ds["readout_freq_norm"].values).all() and math.isnan(float(ds["gini_readout"]))
    assert "out map" in ds.attrs["readout_skipped"]
    assert set(ds["freq"].values[ds["key_freqs"].values].tolist()) == set(KEYS)


# ---------------------------------------------------------------- trajectories and key sets
def _library_pair(keys=KEYS, m: int = 3, seed: int = 0):
    """grokscope's MLP at random init and the same MLP with every neuron a pure frequency."""
    from grokscope.models import build_model

    hand = fourier_sparse_mlp(keys=keys, m=m)
    width = hand.layers[0].weight.shape[0]
    torch.manual_seed(seed)
    init = build_model("mlp", in_dim=2 * P, out_dim=P, width=width, activation="quadratic",
                       bias=False)
    built = build_model("mlp", in_dim=2 * P, out_dim=P, width=width, activation="quadratic",
                        bias=False)
    built.load_state_dict(hand.state_dict())
    return init.eval(), built.eval()


def test_hand_built_trajectory_through_analyze(tmp_path):
    """Done-means of issue 8: random init, then every neuron a pure frequency from {3, 7}: the
    key set is exactly {3, 7} and, by default, the init step's losses ablate that final set."""
    import grokscope as gs
    from grokscope.tasks import make_task

    data = make_task("modular", p=P, train_frac=0.4, seed=2, encoding="onehot")
    init, built = _library_pair(m=4)  # 32 neurons, 16 per key frequency
    with gs.Recorder(tmp_path / "run.zarr", init, data) as rec:
        rec.record(0, init)
        rec.record(1, built)
    res = gs.analyze(tmp_path / "run.zarr", ["fourier"], progress=False, device="cpu")
    ds = res["fourier"]
    after, before = ds.sel(step=1), ds.sel(step=0)
    keyset = lambda v: set(ds["freq"].values[np.asarray(v.values, bool)].tolist())  # noqa: E731
    assert keyset(after["key_freqs_step"]) == keyset(after["key_freqs"]) == set(KEYS)
    assert keyset(before["key_freqs"]) == set(KEYS)  # the final set, at every step
    assert keyset(before["key_freqs_step"]) == set()  # random init: no neuron has 25% in one
    assert int((before["neuron_freq"] > 0).sum()) == 0
    assert int(before["n_key_freqs_step"]) == 0 and int(before["n_key_freqs"]) == 2
    assert not bool(ds["all_frequencies_key"].any())
    assert ds.attrs["keys"] == "final" and ds.attrs["reference_last_step"] == 1
    # the init step's restricted/excluded loss: the final key set on the init logits
    x = torch.zeros(P * P, 2 * P)
    a, b = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    x[torch.arange(P * P), a.reshape(-1)] = 1
    x[torch.arange(P * P), P + b.reshape(-1)] = 1
    y = (a + b).reshape(-1) % P
    with torch.no_grad():
        logits = init(x).double()
    restricted, excluded, share = logit_decomposition(logits, P, list(KEYS))
    tr = data.x_train[:, :P].argmax(1) * P + data.x_train[:, P:].argmax(1)
    assert float(before["restricted_loss"]) == pytest.approx(
        float(F.cross_entropy(restricted, y)), rel=1e-10)
    assert float(before["excluded_loss"]) == pytest.approx(
        float(F.cross_entropy(excluded[tr], y[tr])), rel=1e-10)
    assert float(before["key_logit_share"]) == pytest.approx(share, rel=1e-10)
    # keys="step": before any key frequency appears there is nothing to ablate: NaN, never
    # the train loss; after, the same as the final set
    own = gs.analyze(tmp_path / "run.zarr", {"fourier": {"keys": "step"}}, progress=False,
                     device="cpu")["fourier"]
    assert math.isnan(float(own["excluded_loss"].sel(step=0)))
    assert math.isnan(float(own["restricted_loss"].sel(step=0)))
    assert float(own["excluded_loss"].sel(step=1)) == float(after["excluded_loss"])
    assert own.attrs["keys"] == "step" and "own" in own.attrs["key_source"]


def test_empty_key_set_gives_nan_losses_not_the_train_loss():
    """A key set with nothing in it ablates nothing: excluded loss would equal loss_train."""
    init, _ = _library_pair()
    data = modular_data()
    ds = fourier(Checkpoint(step=0, model=init, data=data), keys="step", min_share=0.99)
    assert int(ds["n_key_freqs"]) == 0 and int(ds["n_key_freqs_step"]) == 0
    assert math.isnan(float(ds["restricted_loss"])) and math.isnan(float(ds["excluded_loss"]))
    assert np.isfinite(float(ds["loss_train"])) and float(ds["key_logit_share"]) == 0.0
    assert "n_key_freqs = 0" in ds.attrs["excluded"]
    # the final step without key frequencies: NaN at every step of the trajectory
    ds = fourier(Checkpoint(step=0, model=init, data=data, references={"last": init}),
                 min_share=0.99)
    assert math.isnan(float(ds["excluded_loss"])) and "final" in ds.attrs["key_source"]


def test_all_frequencies_flag_when_every_frequency_is_key():
    """An MLP whose neurons cover all eleven frequencies: 'key' means every frequency, the
    restricted loss keeps the whole cos/sin(w(a+b)) subspace, and the flag says so."""
    model = fourier_sparse_mlp(keys=tuple(range(1, 12)))
    ds = fourier(Checkpoint(step=0, model=model, data=modular_data()))
    assert int(ds["n_key_freqs"]) == 11 and bool(ds["all_frequencies_key"])
    assert "whole cos/sin" in ds.attrs["all_frequencies_key_rule"]
    ten = fourier(Checkpoint(step=0, model=fourier_sparse_mlp(keys=tuple(range(1, 11))),
                             data=modular_data()))
    assert int(ten["n_key_freqs"]) == 10 and bool(ten["all_frequencies_key"])  # 10 >= 0.9 x 11
    nine = fourier(Checkpoint(step=0, model=fourier_sparse_mlp(keys=tuple(range(1, 10))),
                              data=modular_data()))
    assert int(nine["n_key_freqs"]) == 9 and not bool(nine["all_frequencies_key"])
    at_least = fourier(Checkpoint(step=0, model=fourier_sparse_mlp(keys=tuple(range(1, 10))),
                                  data=modular_data()), all_key_frac=9 / 11)
    assert bool(at_least["all_frequencies_key"])  # "at least": 9 of 11 with the fraction 9/11
    assert not bool(fourier(Checkpoint(step=0, model=fourier_sparse_mlp(),
                                       data=modular_data()))["all_frequencies_key"])


def test_min_rel_share_drops_stray_frequencies():
    """Two circuit frequencies with 9 neurons each and one neuron of frequency 5: 1/19 of the
    neurons passes 0.5/K = 0.045 but not 0.1 x the largest share (0.047 < 0.1 x 0.47 fails,
    0.053 >= 0.047 passes only the absolute floor)."""
    model = fourier_sparse_mlp()
    extra = fourier_sparse_mlp(keys=(5,), m=1)
    w_in = torch.cat([model.layers[0].weight.data, extra.layers[0].weight.data])
    w_out = torch.cat([model.layers[1].weight.data, extra.layers[1].weight.data], 1)
    both = TinyMLP(2 * P, 19, P)
    both.layers[0].weight.data, both.layers[1].weight.data = w_in, w_out
    data = modular_data()
    ds = fourier(Checkpoint(step=0, model=both.eval(), data=data), min_rel_share=0.2)
    assert float(ds["freq_share"].sel(freq=5)) == pytest.approx(1 / 19)
    assert set(ds["freq"].values[ds["key_freqs"].values].tolist()) == set(KEYS)
    loose = fourier(Checkpoint(step=0, model=both.eval(), data=data), min_rel_share=0.0)
    assert set(loose["freq"].values[loose["key_freqs"].values].tolist()) == {3, 5, 7}
    assert "0.2 x the largest" in ds.attrs["key_rule"]


def test_per_frequency_losses_of_a_pure_key_frequency_model():
    """Logits holding only frequencies 3 and 7: removing any other frequency changes nothing
    (excluded = train loss), keeping it alone leaves the per-class mean (restricted = loss of
    the mean logits), and the logit shares split between 3 and 7."""
    model, data = fourier_sparse_mlp(), modular_data()
    ds = fourier(Checkpoint(step=0, model=model, data=data))
    other = [k for k in range(1, 12) if k not in KEYS]
    np.testing.assert_allclose(ds["excluded_loss_freq"].sel(freq=other).values,
                               float(ds["loss_train"]), rtol=1e-7)  # float32 model
    np.testing.assert_allclose(ds["restricted_loss_freq"].sel(freq=other).values,
                               math.log(P), rtol=1e-6)  # the mean logits are constant
    np.testing.assert_allclose(ds["freq_logit_share"].sel(freq=other).values, 0.0, atol=1e-12)
    assert float(ds["freq_logit_share"].sel(freq=list(KEYS)).sum()) == pytest.approx(1.0)
    for k in KEYS:  # one key frequency alone: the other one's part is removed / kept
        assert float(ds["excluded_loss_freq"].sel(freq=k)) > float(ds["loss_train"]) + 0.1
        assert float(ds["restricted_loss_freq"].sel(freq=k)) < math.log(P) - 0.1


def test_embedding_key_frequencies():
    """Key frequencies read from the embedding: the hand-built MLP's first layer holds only
    cos of 3 and 7 in each half."""
    ds = fourier(Checkpoint(step=0, model=fourier_sparse_mlp(), data=modular_data()))
    assert set(ds["freq"].values[ds["embed_key_freqs"].values].tolist()) == set(KEYS)
    assert int(ds["n_embed_key_freqs"]) == 2
    from grokscope.measures.fourier import embedding_key_frequencies

    norms = np.ones(10)
    norms[[2, 5]] = np.sqrt(3.0)  # squared shares 3/14 each >= 2/10; the rest 1/14 < 0.2
    assert np.flatnonzero(embedding_key_frequencies(norms, 2.0)).tolist() == [2, 5]
    assert not embedding_key_frequencies(np.zeros(10), 2.0).any()
    exact = np.array([2.0, 2.0] + [1.0] * 8)  # squared shares 4/16 = 0.25 = 2.5 / 10: "at least"
    assert np.flatnonzero(embedding_key_frequencies(exact, 2.5)).tolist() == [0, 1]


def test_parameters_are_checked():
    model, data = fourier_sparse_mlp(), modular_data()
    for bad in ({"keys": "last"}, {"all_key_frac": 0.0}, {"embed_key_ratio": -1.0}):
        with pytest.raises(ConfigError):
            fourier(Checkpoint(step=0, model=model, data=data), **bad)


def test_plots_show_the_step_key_set_and_the_final_set_losses():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.colors import to_hex

    from grokscope.plot import plot_fourier, plot_fourier_losses

    init, built = _library_pair()
    data = modular_data()
    steps = [fourier(Checkpoint(step=s, model=m, data=data, references={"last": built}))
             for s, m in ((0, init), (1, built))]
    ds = xr.concat([d.expand_dims(step=[i]) for i, d in enumerate(steps)], dim="step",
                   combine_attrs="override")
    ax = plot_fourier(ds, step=0)  # init: no key frequency of its own, though the final has two
    assert len({to_hex(p.get_facecolor()) for p in ax.patches}) == 1
    ax = plot_fourier(ds, step=1)
    assert len({to_hex(p.get_facecolor()) for p in ax.patches}) == 2
    labels = [t.get_text() for t in plot_fourier_losses(ds).get_legend().get_texts()]
    assert any("final key freqs" in t for t in labels)
    every = fourier(Checkpoint(step=0, model=fourier_sparse_mlp(keys=tuple(range(1, 12))),
                               data=data)).expand_dims(step=[0])
    assert "every frequency" in plot_fourier_losses(every).get_title()


# ---------------------------------------------------------------- Nanda et al.'s own code
# Three checkpoints of the authors' Transformer at p = 23 (random init, memorised: train loss
# 9e-8 and test accuracy 0.14, final: test accuracy 0.985) with the outputs of their
# ``calculate_key_freqs``, ``calculate_excluded_loss``, ``calculate_trig_loss`` and helpers,
# computed outside grokscope (tests/fixtures/fourier/README.md). The weights load into the test
# zoo's ``RawTransformer`` (their architecture, written as in their notebook). Their losses are
# float32 (``cross_entropy_high_precision`` casts to float32, their basis is float32); ours
# float64: the two agree to 1e-6 (relative, and absolute for losses near 0).
FIXTURE = Path(__file__).parent / "fixtures" / "fourier" / "nanda_p23.npz"
TOL = {"rtol": 1e-6, "atol": 1e-6}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small einsums: one thread is ~100x faster than two on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fx():
    z = np.load(FIXTURE)
    return {k: z[k] for k in z.files}


def _authors_model(fx, name: str) -> RawTransformer:
    m = RawTransformer(int(fx["p"]))
    sd = m.state_dict()
    prefix = f"{name}/weights/"
    for k in list(sd):
        if k.endswith("attn.mask"):
            continue
        sd[k] = torch.as_tensor(fx[prefix + k])
    m.load_state_dict(sd)
    return m.eval()


def _authors_data(fx) -> Data:
    p = int(fx["p"])
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    x = torch.stack([a.reshape(-1), b.reshape(-1), torch.full((p * p,), p)], 1)
    y = (x[:, 0] + x[:, 1]) % p
    tr = torch.as_tensor(fx["is_train"])
    task = {"name": "modular", "p": p, "op": "+", "encoding": "tokens", "n_classes": p,
            "vocab": p + 1}
    return Data(x[tr], y[tr], x[~tr], y[~tr], task=task)


def _authors_ckpt(fx, name: str, final: bool = True) -> Checkpoint:
    refs = {"last": _authors_model(fx, "final")} if final else {}
    return Checkpoint(step=int(fx[f"{name}/step"]), model=_authors_model(fx, name), data=_authors_data(fx),
                      references=refs)


def _token_grid(p: int) -> torch.Tensor:
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    return torch.stack([a.reshape(-1), b.reshape(-1), torch.full((p * p,), p)], 1)


@pytest.mark.parametrize("name", ["init", "memorised", "final"])
def test_neuron_frequencies_equal_theirs(fx, name):
    """Their per-neuron frequency and fraction explained (``extract_freq_2d``: the (k,0),
    (0,k), (k,k) block) equal ours, where theirs is defined: their loop runs over
    ``range(1, p//2)`` and never considers k = (p-1)/2, and a dead neuron keeps -1."""
    p = int(fx["p"])
    ckpt = _authors_ckpt(fx, name)
    with torch.no_grad():
        acts = ckpt.view.hidden_activations(_token_grid(p), 0)[:, -1]
    share = neuron_frequencies(acts, p)  # (K, N)
    theirs_f, theirs_e = fx[f"{name}/neuron_freqs"], fx[f"{name}/neuron_frac_explained"]
    live = theirs_f > 0
    top2 = share[:-1].topk(2, dim=0).values  # the frequencies their loop visits
    tied = (top2[0] - top2[1]).numpy() < 1e-6  # e.g. a ReLU neuron active on one input only
    assert (tied & live).sum() == {"init": 2, "memorised": 0, "final": 0}[name]
    best, arg = share[:-1].max(dim=0)
    np.testing.assert_array_equal(arg.numpy()[live & ~tied] + 1, theirs_f[live & ~tied])
    np.testing.assert_allclose(best.numpy()[live], theirs_e[live], rtol=0, atol=1e-6)
    assert (share[:, ~live] == 0).all()  # their -1: a neuron constant over the table
    # the measure's own output: same top frequency wherever k = (p-1)/2 does not win
    ds = get("fourier").fn(ckpt)
    top_all = share.max(dim=0).values.numpy()
    same = live & (share.argmax(dim=0).numpy() < share.shape[0] - 1)
    np.testing.assert_allclose(ds["neuron_freq_share"].values[same], theirs_e[same], rtol=1e-5)
    np.testing.assert_allclose(ds["neuron_freq_share"].values, top_all, rtol=1e-12)


def test_key_set_equals_theirs_on_the_trained_model(fx):
    ds = get("fourier").fn(_authors_ckpt(fx, "final"))
    theirs = fx["final/key_freqs"].tolist()
    assert theirs == fx["final_key_freqs"].tolist() == [1, 9]
    assert ds["freq"].values[ds["key_freqs_step"].values].tolist() == theirs
    assert ds["freq"].values[ds["key_freqs"].values].tolist() == theirs
    assert not bool(ds["all_frequencies_key"])


def test_key_set_differs_from_theirs_at_init_by_design(fx):
    """At initialisation every frequency is some neuron's argmax, so ``np.unique`` returns all
    of them (and -1 for dead neurons). Ours counts only neurons with >= 25% of their norm in
    one frequency (18 of 64 here: at p = 23 uniform spread is 1/11 per frequency, so chance
    passes often) and frequencies with >= 0.5/K of the neurons and >= 0.1 of the largest share:
    three of eleven. Without a final checkpoint the step's own set is used, and attrs say so."""
    theirs = fx["init/key_freqs"].tolist()
    assert theirs == [-1, *range(1, 11)]
    ds = get("fourier").fn(_authors_ckpt(fx, "init", final=False))
    assert ds["freq"].values[ds["key_freqs_step"].values].tolist() == [1, 3, 9]
    assert int((ds["neuron_freq"].values > 0).sum()) == 18
    np.testing.assert_array_equal(ds["key_freqs"].values, ds["key_freqs_step"].values)
    assert "no final checkpoint" in ds.attrs["key_source"]


@pytest.mark.parametrize("name", ["init", "memorised", "final"])
def test_per_frequency_losses_equal_theirs(fx, name):
    """One frequency at a time, every frequency: their ``calculate_excluded_loss`` (train rows)
    and ``calculate_trig_loss([k])`` (all rows, mean added back)."""
    ds = get("fourier").fn(_authors_ckpt(fx, name))
    np.testing.assert_allclose(ds["excluded_loss_freq"].values,
                               fx[f"{name}/excluded_loss_per_freq"], **TOL)
    np.testing.assert_allclose(ds["restricted_loss_freq"].values,
                               fx[f"{name}/restricted_loss_per_freq"], **TOL)
    np.testing.assert_allclose(float(ds["loss_all"]), fx[f"{name}/loss_all"], **TOL)
    np.testing.assert_allclose(float(ds["loss_train"]), fx[f"{name}/loss_train"], **TOL)


@pytest.mark.parametrize("name", ["init", "memorised", "final"])
def test_trajectory_losses_use_the_final_key_set_as_theirs(fx, name):
    """Their notebook computes key frequencies once on the final model and ablates them at every
    checkpoint; so does the default ``keys='final'``. All key frequencies at once: restricted
    loss over all rows, excluded loss over the training rows."""
    ds = get("fourier").fn(_authors_ckpt(fx, name))
    assert ds["freq"].values[ds["key_freqs"].values].tolist() == [1, 9]
    assert ds.attrs["keys"] == "final" and "final" in ds.attrs["key_source"]
    np.testing.assert_allclose(float(ds["restricted_loss"]),
                               fx[f"{name}/restricted_loss_final_keys"], **TOL)
    np.testing.assert_allclose(float(ds["excluded_loss"]),
                               fx[f"{name}/excluded_loss_final_keys"], **TOL)


def test_rows_of_the_losses_matter(fx):
    """The fixture separates the right rows from the wrong ones by far more than the tolerance:
    restricted loss on train rows only, or excluded loss on the full table, fails the test
    above (the memorised checkpoint: 1.08 vs 1.29 and 18.9 vs 4.05 nats)."""
    for name in ("memorised", "final"):
        right_r = fx[f"{name}/restricted_loss_final_keys"]
        wrong_r = fx[f"{name}/restricted_loss_final_keys_train_rows"]
        right_e = fx[f"{name}/excluded_loss_final_keys"]
        wrong_e = fx[f"{name}/excluded_loss_final_keys_all_rows"]
        assert abs(wrong_e - right_e) > 1e3 * TOL["rtol"] * right_e
        if name == "memorised":
            assert abs(wrong_r - right_r) > 0.1
    # and the two ablations ours computes differ the same way
    ckpt = _authors_ckpt(fx, "memorised")
    ds = get("fourier").fn(ckpt)
    with torch.no_grad():
        logits = ckpt.view.forward(_token_grid(int(fx["p"]))).double()
    restricted, excluded, _ = logit_decomposition(logits, int(fx["p"]), [1, 9])
    y = (_token_grid(int(fx["p"]))[:, 0] + _token_grid(int(fx["p"]))[:, 1]) % int(fx["p"])
    tr = torch.as_tensor(fx["is_train"])
    ce = torch.nn.functional.cross_entropy
    assert float(ds["restricted_loss"]) == pytest.approx(float(ce(restricted, y)), rel=1e-12)
    assert float(ds["excluded_loss"]) == pytest.approx(float(ce(excluded[tr], y[tr])), rel=1e-12)
    assert float(ce(restricted[tr], y[tr])) == pytest.approx(
        float(fx["memorised/restricted_loss_final_keys_train_rows"]), rel=1e-5)
    assert float(ce(excluded, y)) == pytest.approx(
        float(fx["memorised/excluded_loss_final_keys_all_rows"]), rel=1e-5)


@pytest.mark.parametrize("name", ["init", "final"])
def test_embedding_fourier_norms_equal_theirs(fx, name):
    """Their ``fft1d(W_E[:, :-1], basis)`` gives per-basis-vector components; a frequency's
    norm combines its cos and sin rows."""
    ds = get("fourier").fn(_authors_ckpt(fx, name))
    coef = fx[f"{name}/embed_fourier"]  # (d_model, p)
    e = (coef**2).sum(axis=0)[1:]
    theirs = np.sqrt(e[0::2] + e[1::2])
    np.testing.assert_allclose(ds["embed_freq_norm"].values, theirs, **TOL)
    w_e = torch.as_tensor(fx[f"{name}/weights/embed.W_E"]).T[: int(fx["p"])]
    np.testing.assert_allclose(freq_norms(w_e, int(fx["p"])).numpy(), theirs, **TOL)


def test_final_key_set_is_computed_once_per_run(fx):
    """The engine shares ``ckpt.state`` across a run's steps: the final set is cached there
    and read back (a planted set is what the next step ablates)."""
    state: dict = {}
    last = _authors_model(fx, "final")
    mk = lambda name: Checkpoint(step=0, model=_authors_model(fx, name),  # noqa: E731
                                 data=_authors_data(fx), references={"last": last}, state=state)
    get("fourier").fn(mk("init"))
    (cache_key,) = state
    assert cache_key[0] == "fourier_final_keys" and cache_key[1] == id(last)
    np.testing.assert_array_equal(np.flatnonzero(state[cache_key][0]) + 1, [1, 9])
    planted = np.zeros(11, dtype=bool)
    planted[4] = True  # frequency 5
    state[cache_key] = (planted, True)
    ds = get("fourier").fn(mk("memorised"))
    assert ds["freq"].values[ds["key_freqs"].values].tolist() == [5]
    assert float(ds["excluded_loss"]) != pytest.approx(
        float(fx["memorised/excluded_loss_final_keys"]), rel=1e-3)
