"""The fourier measure against Nanda et al.'s own functions (tests/fixtures/fourier/README.md).

Three checkpoints of the authors' Transformer at p = 23 (random init, memorised: train loss
9e-8 and test accuracy 0.14, final: test accuracy 0.985) with the outputs of their
``calculate_key_freqs``, ``calculate_excluded_loss``, ``calculate_trig_loss`` and helpers,
computed outside grokscope. The weights load into the test zoo's ``RawTransformer`` (their
architecture, written as in their notebook). Their losses are float32 (their
``cross_entropy_high_precision`` casts to float32, their basis is float32); ours float64: the
two agree to 1e-6 (relative, and absolute for losses near 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _zoo import RawTransformer

from grokscope.data import Data
from grokscope.measures import get
from grokscope.measures.fourier import freq_norms, logit_decomposition, neuron_frequencies
from grokscope.measures.registry import Checkpoint

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


def _model(fx, name: str) -> RawTransformer:
    m = RawTransformer(int(fx["p"]))
    sd = m.state_dict()
    prefix = f"{name}/weights/"
    for k in list(sd):
        if k.endswith("attn.mask"):
            continue
        sd[k] = torch.as_tensor(fx[prefix + k])
    m.load_state_dict(sd)
    return m.eval()


def _data(fx) -> Data:
    p = int(fx["p"])
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    x = torch.stack([a.reshape(-1), b.reshape(-1), torch.full((p * p,), p)], 1)
    y = (x[:, 0] + x[:, 1]) % p
    tr = torch.as_tensor(fx["is_train"])
    task = {"name": "modular", "p": p, "op": "+", "encoding": "tokens", "n_classes": p,
            "vocab": p + 1}
    return Data(x[tr], y[tr], x[~tr], y[~tr], task=task)


def _ckpt(fx, name: str, final: bool = True) -> Checkpoint:
    refs = {"last": _model(fx, "final")} if final else {}
    return Checkpoint(step=int(fx[f"{name}/step"]), model=_model(fx, name), data=_data(fx),
                      references=refs)


def _grid(p: int) -> torch.Tensor:
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    return torch.stack([a.reshape(-1), b.reshape(-1), torch.full((p * p,), p)], 1)


@pytest.mark.parametrize("name", ["init", "memorised", "final"])
def test_neuron_frequencies_equal_theirs(fx, name):
    """Their per-neuron frequency and fraction explained (``extract_freq_2d``: the (k,0),
    (0,k), (k,k) block) equal ours, where theirs is defined: their loop runs over
    ``range(1, p//2)`` and never considers k = (p-1)/2, and a dead neuron keeps -1."""
    p = int(fx["p"])
    ckpt = _ckpt(fx, name)
    with torch.no_grad():
        acts = ckpt.view.hidden_activations(_grid(p), 0)[:, -1]
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
    ds = get("fourier").fn(_ckpt(fx, "final"))
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
    ds = get("fourier").fn(_ckpt(fx, "init", final=False))
    assert ds["freq"].values[ds["key_freqs_step"].values].tolist() == [1, 3, 9]
    assert int((ds["neuron_freq"].values > 0).sum()) == 18
    np.testing.assert_array_equal(ds["key_freqs"].values, ds["key_freqs_step"].values)
    assert "no final checkpoint" in ds.attrs["key_source"]


@pytest.mark.parametrize("name", ["init", "memorised", "final"])
def test_per_frequency_losses_equal_theirs(fx, name):
    """One frequency at a time, every frequency: their ``calculate_excluded_loss`` (train rows)
    and ``calculate_trig_loss([k])`` (all rows, mean added back)."""
    ds = get("fourier").fn(_ckpt(fx, name))
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
    ds = get("fourier").fn(_ckpt(fx, name))
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
    ckpt = _ckpt(fx, "memorised")
    ds = get("fourier").fn(ckpt)
    with torch.no_grad():
        logits = ckpt.view.forward(_grid(int(fx["p"]))).double()
    restricted, excluded, _ = logit_decomposition(logits, int(fx["p"]), [1, 9])
    y = (_grid(int(fx["p"]))[:, 0] + _grid(int(fx["p"]))[:, 1]) % int(fx["p"])
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
    ds = get("fourier").fn(_ckpt(fx, name))
    coef = fx[f"{name}/embed_fourier"]  # (d_model, p)
    e = (coef**2).sum(axis=0)[1:]
    theirs = np.sqrt(e[0::2] + e[1::2])
    np.testing.assert_allclose(ds["embed_freq_norm"].values, theirs, **TOL)
    w_e = torch.as_tensor(fx[f"{name}/weights/embed.W_E"]).T[: int(fx["p"])]
    np.testing.assert_allclose(freq_norms(w_e, int(fx["p"])).numpy(), theirs, **TOL)
