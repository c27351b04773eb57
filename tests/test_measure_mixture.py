"""Known answers of the Gaussian-mixture measure (docs/methods.md section 2).

Rubin, Seroussi and Ringel published no code, so the known answers are hand-built: samples
from one Gaussian, a 0.7/0.3 mixture, a modular MLP at random initialisation and the same MLP
with every first-layer neuron a pure frequency; the fits are cross-checked against sklearn's
``GaussianMixture`` called directly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import torch
from sklearn.mixture import GaussianMixture
from torch import nn

import grokscope as gs
from grokscope.data import Data
from grokscope.errors import ConfigError
from grokscope.measures import get
from grokscope.measures.mixture import (
    MixtureFit,
    _null_calibration,
    compute_order_parameter,
    droplet_fraction,
    fit_mixtures,
    fourier_order_parameter,
    fourier_powers,
    log_dominance,
)
from grokscope.measures.registry import Checkpoint
from grokscope.models import build_model
from grokscope.tasks import make_task

D = 8
P = 23
KEYS = (3, 7)
MODULAR = {"name": "modular", "p": P, "encoding": "onehot"}


class TwoLayer(nn.Module):
    def __init__(self, W1: torch.Tensor):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(W1.shape[1], W1.shape[0]), nn.Linear(W1.shape[0], 1)])
        with torch.no_grad():
            self.layers[0].weight.copy_(W1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[1](torch.erf(self.layers[0](x)))


def _teacher_data() -> Data:
    x = torch.randn(20, D)
    w_star = torch.zeros(D)
    w_star[0] = 1.0
    y = x[:, :1]
    return Data(x, y, x, y, task={"name": "teacher"}, extras={"w_star": w_star})


def _w1_with_overlaps(phi: np.ndarray, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    W1 = 0.3 * torch.randn(len(phi), D, generator=g)
    W1[:, 0] = torch.as_tensor(phi, dtype=torch.float32)
    return W1


def _mixture_samples(n, w, mus, sd, seed=0):
    rng = np.random.default_rng(seed)
    comp = rng.random(n) < w
    return np.where(comp, rng.normal(mus[0], sd, n), rng.normal(mus[1], sd, n))


def _run(W1, data, state=None, **params):
    ckpt = Checkpoint(step=0, model=TwoLayer(W1).eval(), data=data, state=state if state is not None else {})
    return get("mixture").fn(ckpt, **params), ckpt.state


def _run_model(model, data, state=None, first=None, **params):
    refs = {} if first is None else {"first": first}
    ckpt = Checkpoint(step=0, model=model.eval(), data=data, references=refs,
                      state=state if state is not None else {})
    return get("mixture").fn(ckpt, **params), ckpt.state


def _modular_mlp(seed: int = 0, width: int = 64) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", in_dim=2 * P, out_dim=P, width=width).eval()


def _make_pure(model: nn.Module, seed: int = 1) -> nn.Module:
    """Every first-layer neuron ``0.3 cos(2 pi f a/p + t) `` on the a half and the same
    frequency ``f`` in {3, 7} (alternating) with another phase on the b half."""
    g = torch.Generator().manual_seed(seed)
    x = torch.arange(P, dtype=torch.float64)
    W = model.layers[0].weight
    with torch.no_grad():
        for i in range(W.shape[0]):
            f = KEYS[i % 2]
            ta, tb = (2 * math.pi * torch.rand(2, generator=g, dtype=torch.float64)).tolist()
            W[i, :P] = (0.3 * torch.cos(2 * math.pi * f * x / P + ta)).float()
            W[i, P:] = (0.3 * torch.cos(2 * math.pi * f * x / P + tb)).float()
    return model


# ----------------------------------------------------------------------------- Gaussian samples
def test_one_gaussian_gives_one_component():
    phi = np.random.default_rng(1).normal(0.0, 0.2, 600)
    W1 = _w1_with_overlaps(phi)
    ds, _ = _run(W1, _teacher_data())
    assert ds.attrs["order_parameter_used"] == "teacher"
    assert int(ds.k) == 1
    assert float(ds.bic_gap) == 0.0
    assert float(ds.droplet_fraction) == 0.0 and int(ds.null_component) == 0
    assert float(ds.means[0]) == pytest.approx(0.0, abs=0.03)
    assert float(ds.variances[0]) == pytest.approx(0.04, rel=0.15)
    assert np.isnan(ds.weights[1:]).all() and ds.weights.sizes["component"] == 4
    assert int(ds.hist_counts.sum()) == 600 and ds.hist_edges.size == 51
    assert bool(ds.converged)
    # no first step given: the null is random directions with the energy per direction of the
    # rows' part orthogonal to w* = e_0 (columns 1..D-1), |w*| = 1
    rms = float((W1[:, 1:].double() ** 2).sum(1).mean().sqrt())
    assert float(ds.null_mean) == 0.0
    assert float(ds.null_std) == pytest.approx(rms / math.sqrt(D - 1), rel=1e-9)
    assert ds.attrs["null_source"].startswith("calibration")


def test_two_separated_gaussians():
    phi = _mixture_samples(1000, 0.7, (0.0, 2.0), 0.15)
    ds, _ = _run(_w1_with_overlaps(phi), _teacher_data())
    assert int(ds.k) == 2
    w = ds.weights.values[:2]
    assert w[0] == pytest.approx(0.7, abs=0.05) and w[1] == pytest.approx(0.3, abs=0.05)
    assert ds.means.values[:2] == pytest.approx([0.0, 2.0], abs=0.05)
    # null std ~0.48 here: the mode at 2 is > 3 null stds away, the one at 0 is the null
    assert float(ds.droplet_fraction) == pytest.approx(1 - w[0], abs=1e-12)
    assert float(ds.droplet_fraction) == pytest.approx(0.3, abs=0.05)
    assert int(ds.null_component) == 0
    d = ds.null_distance.values
    assert d[0] < 3 < d[1]
    assert float(ds.bic_gap) > 100
    bic = ds.bic.values
    assert float(ds.bic_gap) == pytest.approx(bic[0] - bic[1], abs=1e-9)
    assert float(ds.bic_margin) == pytest.approx(np.sort(bic)[1] - bic[1], abs=1e-9)
    assert float(ds.bic_margin) > 0
    assert not bool(ds.warm_started)
    # share of neurons individually beyond 3 null stds: about the droplet's
    assert float(ds.neurons_outside_null) == pytest.approx(0.3, abs=0.05)


def test_scale_invariance_of_choice():
    phi = _mixture_samples(800, 0.7, (0.0, 2.0), 0.15)
    small, _ = _run(_w1_with_overlaps(phi * 1e-4), _teacher_data())
    assert int(small.k) == 2
    assert small.weights.values[0] == pytest.approx(0.7, abs=0.05)


def test_deterministic_under_seed():
    phi = _mixture_samples(400, 0.6, (0.0, 1.0), 0.3)
    a, _ = _run(_w1_with_overlaps(phi), _teacher_data())
    b, _ = _run(_w1_with_overlaps(phi), _teacher_data())
    np.testing.assert_array_equal(a.bic.values, b.bic.values)
    np.testing.assert_array_equal(a.means.values, b.means.values)


def test_constant_order_parameter():
    fits = fit_mixtures(np.zeros(50), max_components=4)
    assert list(fits) == [1]
    assert fits[1].means[0, 0] == 0.0


def test_fit_needs_two_neurons():
    with pytest.raises(ConfigError, match="n >= 2"):
        fit_mixtures(np.array([0.3]))


# ----------------------------------------------------------------------------- the null rule
def test_null_component_rule():
    w = np.array([0.6, 0.4])
    assert droplet_fraction(w, np.array([2.9, 5.0])) == (pytest.approx(0.4), 0)
    # no component within 3 null stds: every neuron left the random-init distribution
    assert droplet_fraction(w, np.array([3.1, 5.0])) == (1.0, -1)
    # of several inside, the nearest
    assert droplet_fraction(w, np.array([1.0, 0.5])) == (pytest.approx(0.6), 1)
    assert droplet_fraction(w, np.array([3.1, 5.0]), null_sds=4.0) == (pytest.approx(0.4), 0)


def test_no_null_component_gives_droplet_one():
    """Every neuron far from the init distribution: droplet 1, whatever k is."""
    phi = _mixture_samples(800, 0.7, (4.0, 6.0), 0.1)
    ds, _ = _run(_w1_with_overlaps(phi), _teacher_data())
    assert int(ds.k) == 2
    assert (ds.null_distance.values[:2] > 3).all()
    assert float(ds.droplet_fraction) == 1.0 and int(ds.null_component) == -1


def test_null_from_the_first_step():
    data = _teacher_data()
    W0 = 0.3 * torch.randn(500, D, generator=torch.Generator().manual_seed(4))
    phi = _mixture_samples(500, 0.5, (0.0, 1.5), 0.1)
    ds, _ = _run_model(TwoLayer(_w1_with_overlaps(phi)), data, first=TwoLayer(W0))
    phi0 = W0[:, 0].double().numpy()  # w* = e_0
    assert float(ds.null_mean) == pytest.approx(phi0.mean(), rel=1e-6)
    assert float(ds.null_std) == pytest.approx(phi0.std(), rel=1e-6)
    assert ds.attrs["null_source"].startswith("the first stored step")
    # null std 0.3: the mode at 1.5 is 5 null stds out, the one at 0 is the null
    assert float(ds.droplet_fraction) == pytest.approx(float(np.mean(phi > 0.75)), abs=0.01)
    with pytest.raises(ConfigError, match="'first'"):
        _run(_w1_with_overlaps(phi), data, null="first")
    with pytest.raises(ConfigError):
        _run(_w1_with_overlaps(phi), data, null="nope")


# ----------------------------------------------------------------------------- Fourier order parameter
def _dft_power(row: np.ndarray, k: int) -> float:
    x = np.arange(len(row))
    return float(abs(np.sum(row * np.exp(-2j * np.pi * k * x / len(row)))) ** 2)


def test_fourier_powers_and_log_dominance_known_answer():
    p, m = 11, 5
    x = np.arange(p)
    row_a = np.cos(2 * np.pi * 3 * x / p) + 0.1 * np.cos(2 * np.pi * 5 * x / p)
    row_b = np.roll(row_a, 2)
    rng = np.random.default_rng(0)
    W = np.stack([np.concatenate([row_a, row_b]), rng.normal(size=2 * p)])
    power = fourier_powers(torch.as_tensor(W), p)
    want = [[_dft_power(r[:p], k) + _dft_power(r[p:], k) for k in range(1, m + 1)] for r in W]
    np.testing.assert_allclose(power, want, rtol=1e-10, atol=1e-10)
    # P_3 = 2 (p/2)^2, P_5 = 2 (0.1 p/2)^2: ratio 100, so r = log((m-1) 100)
    r, total = log_dominance(power)
    assert r[0] == pytest.approx(math.log(4 * 100), rel=1e-10)
    assert total[0] == pytest.approx(2 * (p / 2) ** 2 * 1.01, rel=1e-10)
    P_ = np.array(want[1])
    assert r[1] == pytest.approx(math.log((m - 1) * P_.max() / (P_.sum() - P_.max())), rel=1e-10)
    # phi is r through the Gaussian-row calibration
    lam, mu, sd = _null_calibration(p)
    phi = fourier_order_parameter(torch.as_tensor(W), p)
    np.testing.assert_allclose(phi, (scipy.special.boxcox(r, lam) - mu) / sd, rtol=1e-12)


@pytest.mark.parametrize("p", [11, 23, 59, 113])
def test_fourier_order_parameter_is_unbounded(p):
    """Purer neurons keep moving up: no ceiling where pure neurons pile up."""
    lam, _, sd = _null_calibration(p)
    assert lam >= 0.0  # Box-Cox with lambda < 0 is bounded above by -1/lambda
    x = np.arange(p)
    wave = np.cos(2 * np.pi * 2 * x / p)
    leak = np.cos(2 * np.pi * 5 * x / p)
    eps = 10.0 ** -np.arange(1, 7)
    rows = np.stack([np.concatenate([wave + e * leak, wave + e * leak]) for e in eps])
    phi = fourier_order_parameter(torch.as_tensor(rows), p)
    assert (np.diff(phi) > 0.1).all(), phi
    # r grows by log(100) per decade of leakage; phi by at least the log-slope of Box-Cox
    r, _ = log_dominance(fourier_powers(torch.as_tensor(rows), p))
    np.testing.assert_allclose(np.diff(r), 2 * math.log(10), rtol=1e-4)
    assert phi[0] > 5  # 99% of the power in one frequency: far from the null N(0, 1)


def test_fourier_order_parameter_dead_rows_and_equal_neurons():
    p = 11
    x = torch.arange(p, dtype=torch.float64)
    wave = torch.cos(2 * math.pi * 3 * x / p) + 0.01 * torch.cos(2 * math.pi * 4 * x / p)
    W1 = torch.zeros(6, 2 * p, dtype=torch.float64)
    W1[:4] = torch.cat([wave, torch.roll(wave, 2)])
    phi = fourier_order_parameter(W1, p)
    assert phi[:4] == pytest.approx(np.full(4, phi[0]), rel=1e-9)
    assert (phi[4:] == 0.0).all()
    kind, phi2 = compute_order_parameter(W1.float(), MODULAR | {"p": p}, {})
    assert kind == "fourier" and phi2[:4] == pytest.approx(phi[:4], rel=1e-3)


@pytest.mark.parametrize("p", [23, 59, 113])
@pytest.mark.parametrize("width", [128, 512])
def test_fourier_random_init_is_one_gaussian(p, width):
    for seed in range(5):
        torch.manual_seed(seed)
        W1 = nn.Linear(2 * p, width).weight.detach()
        phi = fourier_order_parameter(W1, p)
        assert abs(phi.mean()) < 0.3 and 0.7 < phi.std() < 1.3  # calibrated to N(0, 1)
        fits = fit_mixtures(phi)
        assert min(fits.values(), key=lambda f: f.bic).k == 1, (p, width, seed)


def test_fourier_droplets_found():
    p = 31
    g = torch.Generator().manual_seed(1)
    x = torch.arange(p, dtype=torch.float32)
    W1 = torch.randn(300, 2 * p, generator=g)
    for r in range(90):  # 30% of the neurons specialise on one frequency each
        k = 1 + r % 15
        wave = torch.cos(2 * math.pi * k * x / p + r)
        W1[r] = torch.cat([wave, wave]) + 0.05 * torch.randn(2 * p, generator=g)
    xs = torch.eye(2 * p)[:20]
    data = Data(xs, torch.zeros(20, dtype=torch.long), xs, torch.zeros(20, dtype=torch.long),
                task=MODULAR | {"p": p})
    ds, _ = _run(W1, data)
    assert ds.attrs["order_parameter_used"] == "fourier" and int(ds.k) >= 2
    assert float(ds.droplet_fraction) == pytest.approx(0.3, abs=0.03)
    assert float(ds.neurons_outside_null) == pytest.approx(0.3, abs=0.03)


# ----------------------------------------------------------------------------- the modular MLP
def test_modular_mlp_at_init_is_one_gaussian_no_droplet():
    data = make_task("modular", p=P, encoding="onehot")
    for seed in range(3):
        model = _modular_mlp(seed)
        ds, _ = _run_model(model, data)  # calibration null
        assert ds.attrs["order_parameter_used"] == "fourier" and ds.attrs["module"] == "layers.0"
        assert int(ds.k) == 1 and float(ds.droplet_fraction) == 0.0, seed
        assert float(ds.null_distance[0]) < 1.0
        ds, _ = _run_model(model, data, first=model)  # the step itself as the first step
        assert int(ds.k) == 1 and float(ds.droplet_fraction) == 0.0


def test_modular_mlp_of_pure_frequencies_is_all_droplet():
    data = make_task("modular", p=P, encoding="onehot")
    init = _modular_mlp(0)
    pure = _make_pure(_modular_mlp(0))
    for first in (None, init):
        ds, _ = _run_model(pure, data, first=first)
        assert float(ds.droplet_fraction) >= 0.9
        assert float(ds.neurons_outside_null) == 1.0
        assert (ds.null_distance.values[np.isfinite(ds.null_distance.values)] > 10).all()


def test_zoo_seq_mlp_init_and_pure():
    from tests._zoo import data_for, seq_mlp

    torch.manual_seed(0)
    model = seq_mlp(P).eval()
    data = data_for("seq_mlp", P)
    ds = get("mixture").fn(Checkpoint(step=0, model=model, data=data))
    assert ds.attrs["order_parameter_used"] == "fourier"
    assert int(ds.k) == 1 and float(ds.droplet_fraction) == 0.0
    name = ds.attrs["module"]
    W = dict(model.named_parameters())[f"{name}.weight"]
    x = torch.arange(P, dtype=torch.float32)
    with torch.no_grad():
        for i in range(W.shape[0]):
            W[i] = torch.cat([torch.cos(2 * math.pi * KEYS[i % 2] * x / P + i)] * 2)
    ds = get("mixture").fn(Checkpoint(step=0, model=model, data=data))
    assert float(ds.droplet_fraction) >= 0.9


def test_two_step_trajectory_through_analyze(tmp_path):
    """Random init, then every neuron a pure frequency from {3, 7}: one Gaussian and no droplet,
    then droplet fraction >= 0.9 (the issue's hand-built trajectory)."""
    data = make_task("modular", p=P, encoding="onehot", train_frac=0.5, seed=0)
    model = _modular_mlp(0)
    with gs.Recorder(tmp_path / "pure.zarr", model, data, config={"seed": 0}) as rec:
        rec.record(0, model)
        rec.record(1, _make_pure(model))
    ds = gs.analyze(gs.open_run(tmp_path / "pure.zarr"), ["mixture"], progress=False)["mixture"]
    assert ds.attrs["null_source"].startswith("the first stored step")
    assert ds.attrs["reference_first_step"] == 0
    s0, s1 = ds.sel(step=0), ds.sel(step=1)
    assert int(s0.k) == 1 and float(s0.droplet_fraction) == 0.0
    assert float(s1.droplet_fraction) >= 0.9 and int(s1.null_component) == -1
    # the null is step 0's distribution: its mean is the step-0 component's mean
    assert float(s0.null_mean) == pytest.approx(float(s0.means[0]), abs=1e-6)


# ----------------------------------------------------------------------------- sklearn cross-check
def test_fits_equal_sklearn_called_directly():
    """The stored BIC per k, the chosen k, its weights and the BIC gap/margin are those of
    sklearn's GaussianMixture fitted here on the same order parameter (scaled by its std as the
    measure does; the BIC then moves back to phi's units by 2 n log std)."""
    data = make_task("modular", p=P, encoding="onehot")
    model = _modular_mlp(2, width=200)
    x = torch.arange(P, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # 30% of the neurons near-pure frequencies with noise
        W = model.layers[0].weight
        for i in range(60):
            W[i] = 0.3 * torch.cat([torch.cos(2 * math.pi * KEYS[i % 2] * x / P + i)] * 2)
            W[i] += 0.03 * torch.randn(2 * P, generator=g)
    ds, _ = _run_model(model, data)
    _, phi = compute_order_parameter(model.layers[0].weight, data.task, {})
    s = phi.std()
    z = (phi / s)[:, None]
    bics, models = [], []
    for k in range(1, 5):
        gm = GaussianMixture(k, covariance_type="full", random_state=0, n_init=3, max_iter=500,
                             init_params="k-means++").fit(z)
        bics.append(gm.bic(z) + 2 * len(z) * math.log(s))
        models.append(gm)
    np.testing.assert_allclose(ds.bic.values, bics, rtol=1e-6)
    k = int(np.argmin(bics)) + 1
    assert int(ds.k) == k >= 2
    w = ds.weights.values[np.isfinite(ds.weights.values)]
    np.testing.assert_allclose(np.sort(w), np.sort(models[k - 1].weights_), atol=1e-6)
    mu = ds.means.values[np.isfinite(ds.means.values)]
    np.testing.assert_allclose(np.sort(mu), np.sort(models[k - 1].means_[:, 0] * s), atol=1e-6)
    assert float(ds.bic_gap) == pytest.approx(bics[0] - bics[k - 1], rel=1e-6)
    assert float(ds.bic_margin) == pytest.approx(np.sort(bics)[1] - np.sort(bics)[0], rel=1e-6)
    assert float(ds.droplet_fraction) == pytest.approx(0.3, abs=0.03)


# ----------------------------------------------------------------------------- warm starts, identity
def test_cold_fit_wins_over_a_stuck_warm_fit():
    """A warm start far from the data is stuck; the cold fit (n_init inits) is kept instead."""
    phi = _mixture_samples(1000, 0.6, (0.0, 3.0), 0.2)
    stuck = MixtureFit(
        k=2, weights=np.array([0.5, 0.5]), means=np.array([[50.0], [60.0]]),
        variances=np.array([[1e-4], [1e-4]]), bic=0.0, converged=True, warm_started=False,
        covariances=np.full((2, 1, 1), 1e-4),
    )
    fits = fit_mixtures(phi, warm={2: stuck})
    assert not fits[2].warm_started and fits[2].bic == fits[2].cold_bic
    assert min(fits.values(), key=lambda f: f.bic).k == 2
    assert fits[2].means[:, 0] == pytest.approx([0.0, 3.0], abs=0.05)
    # a good warm start reaches the same optimum and is kept (ties go to the warm fit)
    good = fit_mixtures(phi, warm=fits)
    assert good[2].warm_started and good[2].bic <= good[2].cold_bic
    assert good[2].bic == pytest.approx(fits[2].bic, rel=1e-9)


def _drift_phi(t: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Three modes: A moves from 4 down to 0.5 (passing B and C in distance from the null at
    0), B and C drift slowly; C empties at t = 3, 4 and returns at t = 5."""
    rng = np.random.default_rng(100 + t)
    a = 4.0 - 0.5 * t
    b = -1.5 - 0.05 * t
    c = -3.0 + 0.05 * t
    parts = [rng.normal(a, 0.12, 300), rng.normal(b, 0.12, 400)]
    if t not in (3, 4):
        parts.append(rng.normal(c, 0.12, 300))
    return np.concatenate(parts), (a, b, c)


def test_component_identity_follows_the_modes():
    data = _teacher_data()
    state: dict = {}
    slots: dict[str, set[int]] = {"a": set(), "b": set(), "c": set()}
    for t in range(8):
        phi, modes = _drift_phi(t)
        ds, state = _run(_w1_with_overlaps(phi), data, state)
        m = ds.means.values
        assert int(ds.k) == (2 if t in (3, 4) else 3), t
        for name, mode in zip("abc", modes):
            if name == "c" and t in (3, 4):
                continue
            slot = int(np.nanargmin(np.abs(m - mode)))
            assert abs(m[slot] - mode) < 0.1
            slots[name].add(slot)
        # the stored BIC is never worse than the cold fit's, and k is its minimiser
        assert (ds.bic.values <= ds.cold_bic.values + 1e-9).all()
        assert int(ds.k) == int(np.nanargmin(ds.bic.values)) + 1
    assert all(len(s) == 1 for s in slots.values()), slots
    assert len(set.union(*slots.values())) == 3
    # without matching, the index follows the distance from the null: A's index changes
    def cold_slot_of_a(t):
        phi, modes = _drift_phi(t)
        m = _run(_w1_with_overlaps(phi), data, warm_start=False)[0].means.values
        return int(np.nanargmin(np.abs(m - modes[0])))

    assert cold_slot_of_a(0) == 2 and cold_slot_of_a(7) == 0


def test_extending_a_warm_trajectory_keeps_slots():
    data = _teacher_data()
    state: dict = {}
    phi1 = _mixture_samples(1000, 0.7, (0.5, -2.0), 0.1, seed=2)
    ds1, state = _run(_w1_with_overlaps(phi1), data, state)
    assert int(ds1.k) == 2 and ds1.means.values[0] == pytest.approx(0.5, abs=0.05)
    # second step: the modes move so that the order by distance from the null flips
    phi2 = _mixture_samples(1000, 0.7, (2.8, -1.2), 0.1, seed=3)
    ds2, _ = _run(_w1_with_overlaps(phi2), data, state)
    assert bool(ds2.warm_started)
    assert ds2.means.values[:2] == pytest.approx([2.8, -1.2], abs=0.05)
    assert ds2.weights.values[0] == pytest.approx(0.7, abs=0.05)
    cold, _ = _run(_w1_with_overlaps(phi2), data)
    assert cold.means.values[:2] == pytest.approx([-1.2, 2.8], abs=0.05)
    # a cold fit orders by distance from the null; the warm one keeps the modes' slots
    assert cold.null_distance.values[0] < cold.null_distance.values[1]
    np.testing.assert_allclose(ds2.null_distance.values[:2], cold.null_distance.values[1::-1])


# ----------------------------------------------------------------------------- other order parameters
def test_pca_fallback_vector_valued():
    x = torch.randn(20, D)
    y = torch.zeros(20, dtype=torch.long)
    data = Data(x, y, x, y)
    rng = np.random.default_rng(0)
    W1 = torch.as_tensor(rng.normal(0, 0.1, (300, D)), dtype=torch.float32)
    W1[:90, 0] += 3.0  # a droplet of neurons along one direction
    ds, state = _run(W1, data)
    assert ds.attrs["order_parameter_used"] == "pca"
    assert ds.means.dims == ("component", "feature") and ds.means.sizes["feature"] == 2
    assert ds.null_std.dims == ("feature",)
    assert int(ds.k) >= 2
    assert float(ds.droplet_fraction) == pytest.approx(0.3, abs=0.05)
    ds2, _ = _run(W1, data, state)
    assert bool(ds2.warm_started)
    np.testing.assert_allclose(ds2.means.values, ds.means.values, atol=1e-6, equal_nan=True)


def test_bad_order_parameter():
    with pytest.raises(ConfigError):
        _run(torch.randn(10, D), _teacher_data(), order_parameter="fourier")
    with pytest.raises(ConfigError):
        _run(torch.randn(10, D), _teacher_data(), order_parameter="nope")
    with pytest.raises(ConfigError):
        _run(torch.randn(10, D), _teacher_data(), module="missing")


def test_applies():
    data = _teacher_data()
    view = Checkpoint(step=0, model=TwoLayer(torch.randn(4, D)), data=data).view
    assert get("mixture").applies(view, data) is None
    reason = get("mixture").applies(Checkpoint(step=0, model=nn.ReLU(), data=data).view, data)
    assert isinstance(reason, str) and "'hidden'" in reason and "anatomy=" in reason
    assert get("mixture").references == ("first",)


def test_teacher_mlp_at_init_is_one_gaussian():
    teacher = make_task("teacher", d=20, n_train=50, n_test=10)
    for seed in range(3):
        torch.manual_seed(seed)
        model = build_model("mlp", in_dim=20, out_dim=1, width=256, activation="erf")
        ds, _ = _run_model(model, teacher)
        assert ds.attrs["order_parameter_used"] == "teacher"
        assert int(ds.k) == 1 and float(ds.droplet_fraction) == 0.0, seed


def test_module_names_a_linear_map():
    torch.manual_seed(0)
    data = make_task("modular", p=11, encoding="onehot")
    model = build_model("mlp", in_dim=22, out_dim=11, width=32, depth=2).eval()
    by_default, _ = _run_model(model, data)
    by_path = get("mixture").fn(Checkpoint(step=0, model=model, data=data), module="layers.0")
    by_key = get("mixture").fn(Checkpoint(step=0, model=model, data=data), module="layers.0.weight")
    for ds in (by_default, by_path, by_key):
        assert ds.attrs["module"] == "layers.0" and ds.attrs["order_parameter_used"] == "fourier"
        np.testing.assert_array_equal(ds.hist_counts.values, by_default.hist_counts.values)
    second = get("mixture").fn(Checkpoint(step=0, model=model, data=data), module="layers.1")
    assert second.attrs["module"] == "layers.1" and second.attrs["order_parameter_used"] == "pca"
    _, phi = compute_order_parameter(model.layers[1].weight.detach(), data.task, {})
    assert second.hist_counts.values.sum() == 32 and phi.shape == (32, 2)
    tdata = make_task("modular", p=11, encoding="tokens")
    tf = build_model("transformer", vocab=12, out_dim=11, d_model=16, d_mlp=24).eval()
    ds = get("mixture").fn(Checkpoint(step=0, model=tf, data=tdata), module="blocks.0.mlp.W_in")
    assert ds.attrs["module"] == "blocks.0.mlp.W_in" and int(ds.n_neurons) == 24
    with pytest.raises(ConfigError, match="no linear map"):
        get("mixture").fn(Checkpoint(step=0, model=tf, data=tdata), module="blocks.0.mlp")
