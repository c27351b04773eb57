"""Known answers of the Gaussian-mixture measure (METHODS.md section 2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from grokscope.data import Data
from grokscope.errors import ConfigError
from grokscope.measures import get
from grokscope.measures.mixture import (
    compute_order_parameter,
    fit_mixtures,
    fourier_order_parameter,
)
from grokscope.measures.registry import Checkpoint

D = 8


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


def test_one_gaussian_gives_one_component():
    phi = np.random.default_rng(1).normal(0.0, 0.2, 600)
    ds, _ = _run(_w1_with_overlaps(phi), _teacher_data())
    assert ds.attrs["order_parameter_used"] == "teacher"
    assert int(ds.k) == 1
    assert float(ds.bic_gap) == 0.0
    assert float(ds.droplet_fraction) == pytest.approx(0.0)
    assert float(ds.means[0]) == pytest.approx(0.0, abs=0.03)
    assert float(ds.variances[0]) == pytest.approx(0.04, rel=0.15)
    assert np.isnan(ds.weights[1:]).all() and ds.weights.sizes["component"] == 4
    assert int(ds.hist_counts.sum()) == 600 and ds.hist_edges.size == 51
    assert bool(ds.converged)


def test_two_separated_gaussians():
    phi = _mixture_samples(1000, 0.7, (0.0, 2.0), 0.15)
    ds, _ = _run(_w1_with_overlaps(phi), _teacher_data())
    assert int(ds.k) == 2
    w = ds.weights.values[:2]
    assert w[0] == pytest.approx(0.7, abs=0.05) and w[1] == pytest.approx(0.3, abs=0.05)
    assert ds.means.values[:2] == pytest.approx([0.0, 2.0], abs=0.05)
    assert float(ds.droplet_fraction) == pytest.approx(0.3, abs=0.05)
    assert int(ds.zero_component) == 0
    assert float(ds.bic_gap) > 100
    assert not bool(ds.warm_started)


def test_scale_invariance_of_choice():
    phi = _mixture_samples(800, 0.7, (0.0, 2.0), 0.15)
    small, _ = _run(_w1_with_overlaps(phi * 1e-4), _teacher_data())
    assert int(small.k) == 2
    assert small.weights.values[0] == pytest.approx(0.7, abs=0.05)


def test_warm_start_keeps_component_order():
    data = _teacher_data()
    state: dict = {}
    phi1 = _mixture_samples(1000, 0.7, (0.5, -2.0), 0.1, seed=2)
    ds1, state = _run(_w1_with_overlaps(phi1), data, state)
    assert int(ds1.k) == 2 and ds1.means.values[0] == pytest.approx(0.5, abs=0.05)
    # Second step: the modes move so that |mean| order flips; identity must follow the modes.
    phi2 = _mixture_samples(1000, 0.7, (1.8, -1.2), 0.1, seed=3)
    ds2, _ = _run(_w1_with_overlaps(phi2), data, state)
    assert bool(ds2.warm_started)
    assert ds2.means.values[:2] == pytest.approx([1.8, -1.2], abs=0.05)
    assert ds2.weights.values[0] == pytest.approx(0.7, abs=0.05)
    cold, _ = _run(_w1_with_overlaps(phi2), data)
    assert cold.means.values[:2] == pytest.approx([-1.2, 1.8], abs=0.05)
    assert int(cold.zero_component) == 0 and int(ds2.zero_component) == 1


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


def test_fourier_order_parameter():
    p = 11
    x = torch.arange(p, dtype=torch.float64)
    wave = torch.cos(2 * math.pi * 3 * x / p)
    g = torch.Generator().manual_seed(0)
    W1 = 0.01 * torch.randn(40, 2 * p, generator=g, dtype=torch.float64)
    W1[:10] = torch.cat([wave, torch.roll(wave, 2)])
    phi = fourier_order_parameter(W1, p)
    # single-frequency neurons share the largest value, far in the upper tail of the null
    assert phi[:10] == pytest.approx(np.full(10, phi[0]))
    assert phi[0] > 3.0 and (phi[10:] < phi[0] - 1.0).all()
    kind, phi2 = compute_order_parameter(
        W1.float(), {"name": "modular", "p": p, "encoding": "onehot"}, {}
    )
    assert kind == "fourier" and phi2 == pytest.approx(phi, abs=1e-5)


def test_fourier_auto_on_modular_data():
    p = 11
    x = torch.eye(2 * p)[:20]
    y = torch.zeros(20, dtype=torch.long)
    data = Data(x, y, x, y, task={"name": "modular", "p": p, "encoding": "onehot"})
    W1 = 0.1 * torch.randn(64, 2 * p)
    ds, _ = _run(W1, data)
    assert ds.attrs["order_parameter_used"] == "fourier"
    assert "[ours]" in ds.attrs["order_parameter_definition"]


@pytest.mark.parametrize("p", [59, 113])
@pytest.mark.parametrize("width", [128, 512])
def test_fourier_random_init_is_one_gaussian(p, width):
    for seed in range(5):
        torch.manual_seed(seed)
        W1 = nn.Linear(2 * p, width).weight.detach()
        phi = fourier_order_parameter(W1, p)
        assert abs(phi.mean()) < 0.3 and 0.7 < phi.std() < 1.3  # calibrated to N(0, 1)
        fits = fit_mixtures(phi)
        assert min(fits.values(), key=lambda f: f.bic).k == 1, (p, width, seed)


def test_fit_needs_two_neurons():
    with pytest.raises(ConfigError, match="n >= 2"):
        fit_mixtures(np.array([0.3]))


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
    assert int(ds.k) >= 2
    assert float(ds.droplet_fraction) == pytest.approx(0.3, abs=0.05)
    ds2, _ = _run(W1, data, state)
    assert bool(ds2.warm_started)


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


def test_with_registered_mlp_on_tasks():
    models = pytest.importorskip("grokscope.models")
    tasks = pytest.importorskip("grokscope.tasks")
    if not (hasattr(models, "build_model") and hasattr(tasks, "make_task")):
        pytest.skip("models/tasks not written yet")
    torch.manual_seed(0)
    data = tasks.make_task("modular", p=13, encoding="onehot")
    model = models.build_model("mlp", in_dim=26, out_dim=13, width=64)
    ds, _ = _run_model(model, data)
    assert ds.attrs["order_parameter_used"] == "fourier" and ds.attrs["module"] == "layers.0"
    teacher = tasks.make_task("teacher", d=20, n_train=50, n_test=10)
    model = models.build_model("mlp", in_dim=20, out_dim=1, width=64, activation="erf")
    ds, _ = _run_model(model, teacher)
    assert ds.attrs["order_parameter_used"] == "teacher"
    assert 1 <= int(ds.k) <= 4


def _run_model(model, data):
    ckpt = Checkpoint(step=0, model=model.eval(), data=data)
    return get("mixture").fn(ckpt), ckpt.state


def test_fourier_droplets_found():
    p = 31
    g = torch.Generator().manual_seed(1)
    x = torch.arange(p, dtype=torch.float32)
    W1 = torch.randn(300, 2 * p, generator=g)
    for r in range(90):  # 30% of the neurons specialise on one frequency each
        k = 1 + r % 15
        wave = torch.cos(2 * math.pi * k * x / p + r)
        W1[r] = torch.cat([wave, wave]) + 0.05 * torch.randn(2 * p, generator=g)
    kind, phi = compute_order_parameter(W1, {"name": "modular", "p": p, "encoding": "onehot"}, {})
    fits = fit_mixtures(phi)
    best = min(fits.values(), key=lambda f: f.bic)
    assert best.k >= 2
    zero = int(np.argmin(np.abs(best.means[:, 0])))
    assert 1 - best.weights[zero] == pytest.approx(0.3, abs=0.05)


def test_module_names_a_linear_map():
    models = pytest.importorskip("grokscope.models")
    tasks = pytest.importorskip("grokscope.tasks")
    torch.manual_seed(0)
    data = tasks.make_task("modular", p=11, encoding="onehot")
    model = models.build_model("mlp", in_dim=22, out_dim=11, width=32, depth=2).eval()
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
    tdata = tasks.make_task("modular", p=11, encoding="tokens")
    tf = models.build_model("transformer", vocab=12, out_dim=11, d_model=16, d_mlp=24).eval()
    ds = get("mixture").fn(Checkpoint(step=0, model=tf, data=tdata), module="blocks.0.mlp.W_in")
    assert ds.attrs["module"] == "blocks.0.mlp.W_in" and int(ds.n_neurons) == 24
    with pytest.raises(ConfigError, match="no linear map"):
        get("mixture").fn(Checkpoint(step=0, model=tf, data=tdata), module="blocks.0.mlp")
