"""analyses/11_forecast_signals.py: its signal definitions on constructed cases with known answers."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from grokscope.anatomy import ModelView, detect
from grokscope.data import Data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    path = ROOT / "analyses" / "11_forecast_signals.py"
    spec = importlib.util.spec_from_file_location("analysis_11_forecast_signals", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_class_separation_known_answer(script):
    # class means 1 and 11, grand mean 6: tr S_B = 2*25 + 2*25 = 100; tr S_W = 4 * 1 = 4;
    # (100 / (k - 1)) / (4 / (n - k)) = 100 / 2 = 50
    h = torch.tensor([[0.0], [2.0], [10.0], [12.0]])
    y = torch.tensor([0, 0, 1, 1])
    assert script.class_separation(h, y) == pytest.approx(math.log(50.0), abs=1e-12)
    # labels that say nothing about the features: the ratio per degree of freedom is ~1
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4000, 8, generator=g)
    assert abs(script.class_separation(noise, torch.randint(0, 40, (4000,), generator=g))) < 0.1


def test_class_separation_undefined_cases_are_nan(script):
    h = torch.randn(6, 3)
    assert math.isnan(script.class_separation(h, torch.zeros(6, dtype=torch.long)))  # one class
    assert math.isnan(script.class_separation(h[:2], torch.tensor([0, 1])))  # n <= k
    same = torch.tensor([[1.0], [1.0], [5.0], [5.0]])  # no within-class scatter
    assert math.isnan(script.class_separation(same, torch.tensor([0, 0, 1, 1])))


class RawEinsum(nn.Module):
    """A researcher's model: raw parameters, einsum, custom names."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.W_in = nn.Parameter(torch.tensor([[a, 0.0], [0.0, 1.0]]))  # (d, hidden)
        self.W_out = nn.Parameter(torch.tensor([[1.0, -1.0], [0.5, 0.5]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(torch.einsum("nd,dh->nh", x, self.W_in))
        return torch.einsum("nh,hc->nc", h, self.W_out)


def sequential(a: float) -> nn.Module:
    m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[a, 0.0], [0.0, 1.0]]))
        m[0].bias.zero_()
        m[2].weight.copy_(torch.tensor([[1.0, 0.5], [-1.0, 0.5]]))
        m[2].bias.zero_()
    return m


def designed_data() -> Data:
    # feature 0 is the class (0 / 1), feature 1 has the same mean (2) in both classes:
    # hidden = (a * class, e), so tr S_B = a^2 * 1 and tr S_W = 4: separation log(a^2 / 2)
    x = torch.tensor([[0.0, 1.0], [0.0, 3.0], [1.0, 1.0], [1.0, 3.0]])
    y = torch.tensor([0, 0, 1, 1])
    return Data(x, y, x.clone(), y.clone(), task={"name": "toy", "n_classes": 2})


@pytest.mark.parametrize("make", [sequential, RawEinsum], ids=["sequential", "raw-einsum"])
def test_checkpoint_values_read_the_hidden_layer_through_the_anatomy(script, make):
    data = designed_data()
    first = make(1.0)
    anat = detect(first, data.x_train)
    v0 = ModelView(first, anat)
    vals, agop = script.checkpoint_values(ModelView(make(2.0), anat), v0, data)
    assert vals["sep_train"] == pytest.approx(math.log(2.0), abs=1e-9)
    assert vals["sep_test"] == pytest.approx(math.log(2.0), abs=1e-9)
    assert agop.shape == (2, 2)
    # the Jacobian of the logits w.r.t. the input is W_out^T diag(relu') W_in^T: every point
    # is in the active region of both units (inputs > 0 on the used axes except class 0's
    # first unit, whose pre-activation is 0), so the norm is finite and positive
    assert vals["jac_norm"] > 0
    vals0, _ = script.checkpoint_values(v0, v0, data)
    assert vals0["sep_train"] == pytest.approx(math.log(0.5), abs=1e-9)
    assert math.isnan(vals0["nfa_init_removed"])  # W = W0: undefined


def test_window_samples_and_trends(script):
    steps = np.array([0, 10, 20, 40, 60, 70, 80, 90, 100, 120])
    # upto 100: seen steps 0..100, window = steps >= 70 -> 70, 80, 90, 100 (all four)
    assert script.window_samples(steps, 100) == [70, 80, 90, 100]
    # a designed cache: sep_train = 0.01 * step (slope 0.01, trend 0.01 * upto = 1.0),
    # sep_test = 2 - 0.005 * step; jac_norm = exp(0.002 * step)
    vals = {str(int(s)): {"nfa": 0.5, "nfa_init_removed": 0.1, "centroid_align": 0.2,
                          "jac_norm": math.exp(0.002 * s), "rank_one": 0.3,
                          "sep_train": 0.01 * s, "sep_test": 2 - 0.005 * s}
            for s in steps}
    cache = {"steps": vals, "first_step": 0, "agop_cos": {"70,100": 0.9, "0,100": 0.4}}
    sig = script.point_signals(cache, steps, 100)
    assert sig["sep_train_trend"] == pytest.approx(1.0)
    assert sig["sep_test_trend"] == pytest.approx(-0.5)
    assert sig["sep_gap"] == pytest.approx(1.5 - 1.0)
    assert sig["jac_norm_rel"] == pytest.approx(0.2)
    assert sig["jac_norm_trend"] == pytest.approx(0.2)
    assert sig["nfa_trend"] == pytest.approx(0.0, abs=1e-12)
    assert (sig["agop_stability"], sig["agop_init_cos"]) == (0.9, 0.4)


def test_rank_auroc_matches_the_pairwise_one(script):
    r = np.random.default_rng(1)
    y = r.random(200) < 0.6
    s = np.round(r.random(200) * 10) + y  # ties included
    assert script._auroc_fast(y, s) == pytest.approx(script.EV.auroc(y, s), abs=1e-12)
    assert math.isnan(script._auroc_fast(np.ones(5, bool), np.arange(5.0)))
