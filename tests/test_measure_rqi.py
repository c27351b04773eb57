"""Known answers of the representation quality index (docs/methods.md section 8)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from grokscope.data import Data
from grokscope.errors import ConfigError
from grokscope.measures import get
from grokscope.measures.registry import Checkpoint
from grokscope.measures.rqi import (
    n_modular_quadruples,
    n_quadruples,
    rqi_from_embedding,
    rqi_modular,
)


class Embedder(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.embed = nn.Embedding(*weight.shape)
        with torch.no_grad():
            self.embed.weight.copy_(weight)
        self.out = nn.Linear(weight.shape[1], 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(x).sum(1))


def _data(p: int, name: str = "modular", op: str = "+", eq: int | None = None) -> Data:
    eq = p if eq is None else eq
    x = torch.tensor([[0, 1, eq], [1, 2, eq]])
    y = torch.tensor([1, 3 % p])
    task = {"name": name, "p": p, "op": op, "encoding": "tokens", "vocab": p + 1}
    return Data(x, y, x, y, task=task)


def _circle(p: int, f: int = 1) -> torch.Tensor:
    k = torch.arange(p, dtype=torch.float64)
    return torch.stack([torch.cos(2 * math.pi * f * k / p), torch.sin(2 * math.pi * f * k / p)], 1)


def _brute_modular(E: np.ndarray, threshold: float, *, zero_chords_fail: bool = True,
                   normalize: bool = True) -> tuple[int, int]:
    """Every pair of distinct unordered pairs with equal sums mod p, chords compared directly."""
    E = np.asarray(E, dtype=np.float64)
    if normalize:
        E = E / np.where(E.std(0) > 0, E.std(0), 1)
    p = len(E)
    pairs = [(i, n) for i in range(p) for n in range(i + 1, p)]
    count = total = 0
    for (i, n), (j, m) in itertools.combinations(pairs, 2):
        if (i + n - j - m) % p:
            continue
        total += 1
        a, b = E[n] - E[i], E[m] - E[j]
        aa, bb, ab = a @ a, b @ b, a @ b
        if aa == 0 or bb == 0:
            count += not zero_chords_fail
            continue
        count += (aa * bb - ab**2) / ((aa + bb) / 2) < threshold
    return count, total


def _brute(E: np.ndarray, threshold: float) -> tuple[int, int]:
    E = E / np.where(E.std(0) > 0, E.std(0), 1)
    p = len(E)
    count = total = 0
    for i, j, m in itertools.combinations_with_replacement(range(p), 3):
        n = j + m - i
        if not (i < j <= m < n < p):
            continue
        total += 1
        count += float(np.sum((E[i] + E[n] - E[j] - E[m]) ** 2)) < threshold
    return count, total


@pytest.mark.parametrize("p", [3, 4, 7, 10])
def test_n_quadruples_matches_enumeration(p):
    assert n_quadruples(p) == _brute(np.random.default_rng(0).normal(size=(p, 2)), 0.01)[1]


def test_linear_embedding_gives_one():
    k = torch.arange(13, dtype=torch.float64)[:, None]
    a, b = torch.randn(1, 6, dtype=torch.float64), torch.randn(1, 6, dtype=torch.float64)
    value, count, total = rqi_from_embedding(a + k * b)
    assert value == 1.0 and count == total == n_quadruples(13)


def test_random_embedding_near_zero():
    E = torch.randn(31, 32, generator=torch.Generator().manual_seed(0))
    assert rqi_from_embedding(E) == (0.0, 0, n_quadruples(31))
    # even with the threshold scaled to the dimension (0.32): the defect of random rows is ~4d
    assert rqi_from_embedding(E, 0.01 * 32) == (0.0, 0, n_quadruples(31))
    assert rqi_modular(E, 0.01 * 32) == (0.0, 0, n_modular_quadruples(31))


@pytest.mark.parametrize("dim", [1, 3])
def test_matches_brute_force(dim):
    rng = np.random.default_rng(dim)
    # a noisy linear embedding: some quadruples pass the threshold, some do not
    E = np.arange(11)[:, None] * rng.normal(size=(1, dim)) + 0.2 * rng.normal(size=(11, dim))
    value, count, total = rqi_from_embedding(E, threshold=0.05)
    bc, bt = _brute(E, 0.05)
    assert (count, total) == (bc, bt)
    assert 0 < value < 1


def test_measure_excludes_equals_token():
    p = 11
    lin = torch.arange(p, dtype=torch.float32)[:, None] * torch.randn(1, 8)
    weight = torch.cat([lin, 50 * torch.randn(1, 8)])  # the "=" row would break linearity
    ds = get("rqi").fn(Checkpoint(step=0, model=Embedder(weight).eval(),
                                  data=_data(p, name="addition")))
    assert float(ds.rqi) == 1.0 and ds.attrs["variant"] == "integer"
    assert int(ds.n_tokens) == p and int(ds.n_quadruples) == n_quadruples(p)
    assert "per dimension" in ds.attrs["normalization"]
    with_eq = get("rqi").fn(Checkpoint(step=0, model=Embedder(weight).eval(),
                                       data=_data(p + 1, name="addition", eq=p)))
    assert float(with_eq.rqi) < 0.9  # the "=" row included: not linear


# ---------------------------------------------------------------- the modular variant
@pytest.mark.parametrize("p", [3, 4, 7, 10, 13])
def test_n_modular_quadruples_matches_enumeration(p):
    E = np.random.default_rng(p).normal(size=(p, 3))
    assert n_modular_quadruples(p) == _brute_modular(E, 0.01)[1]
    if p % 2:
        assert n_modular_quadruples(p) == p * math.comb((p - 1) // 2, 2)


@pytest.mark.parametrize("p", [7, 23, 113])
@pytest.mark.parametrize("f", [1, 3])
def test_circle_embedding_gives_one(p, f):
    """E_k = (cos 2 pi f k / p, sin 2 pi f k / p): the chords of every quadruple with
    i + n = j + m (mod p) are parallel (an isosceles trapezoid)."""
    value, count, total = rqi_modular(_circle(p, f), 1e-12)
    assert value == 1.0 and count == total == n_modular_quadruples(p)
    # the integer variant's parallelogram holds on the circle only by coincidence
    # (f (n - i + m - j) = 2p): it is the wrong test for a modular task
    assert rqi_from_embedding(_circle(p, f), 0.02)[0] < 0.07


def test_linear_image_of_a_circle_gives_one():
    """Parallel chords survive any linear map: a circle in a random plane of R^16 (an ellipse
    after the per-dimension normalisation) plus an offset."""
    g = torch.Generator().manual_seed(3)
    A = torch.randn(2, 16, generator=g, dtype=torch.float64)
    E = _circle(23, 5) @ A + torch.randn(16, generator=g, dtype=torch.float64)
    assert rqi_modular(E, 0.16) == (1.0, 1265, 1265)


def test_modular_variant_rejects_random_one_hot_and_two_frequencies():
    p = 23
    g = torch.Generator().manual_seed(0)
    assert rqi_modular(torch.randn(p, 32, generator=g), 0.32)[:2] == (0.0, 0)
    assert rqi_modular(torch.eye(p), 0.01 * p)[:2] == (0.0, 0)  # a lookup table: no structure
    two = torch.cat([_circle(p, 1), _circle(p, 2)], 1)  # a torus knot, not one circle
    value, count, total = rqi_modular(two, 0.04)
    assert (count, total) == (92, 1265)  # only the quadruples whose chords happen to align
    assert value == pytest.approx(92 / 1265)


@pytest.mark.parametrize("dim", [2, 5])
def test_modular_matches_brute_force(dim):
    rng = np.random.default_rng(dim)
    p = 13
    E = _circle(p).numpy() @ rng.normal(size=(2, dim)) + 0.05 * rng.normal(size=(p, dim))
    thr = 0.01 * dim
    value, count, total = rqi_modular(E, thr)
    assert (count, total) == _brute_modular(E, thr)
    assert 0 < count < total  # the noise level puts quadruples on both sides
    assert value == count / total


def test_modular_refuses_one_dimension_and_zero_chords():
    with pytest.raises(ConfigError, match="dimension >= 2"):
        rqi_modular(torch.arange(7.0)[:, None])
    E = _circle(7).numpy()
    E[3] = E[2]  # tokens 2 and 3 share an embedding: chord {2, 3} is zero, never parallel
    value, count, total = rqi_modular(E, 0.02, normalize=False)
    assert (count, total) == _brute_modular(E, 0.02, normalize=False) == (9, 21)
    # a zero chord has defect 0 by the formula; counted, it would add its 2 quadruples
    assert _brute_modular(E, 0.02, normalize=False, zero_chords_fail=False) == (11, 21)


def test_measure_variants_and_threshold_rule():
    p = 11
    model = Embedder(torch.cat([_circle(p, 2).float() @ torch.randn(2, 6), torch.randn(1, 6)]))
    ds = get("rqi").fn(Checkpoint(step=0, model=model.eval(), data=_data(p)))
    assert ds.attrs["variant"] == "modular" and float(ds.rqi) == 1.0
    assert int(ds.n_quadruples) == n_modular_quadruples(p) == 110
    assert int(ds.embedding_dim) == 6 and float(ds.threshold_used) == pytest.approx(0.06)
    assert "0.01 x 6" in ds.attrs["threshold_rule"]
    raw = get("rqi").fn(Checkpoint(step=0, model=model.eval(), data=_data(p)),
                        scale_threshold=False)
    assert float(raw.threshold_used) == 0.01 and "not scaled" in raw.attrs["threshold_rule"]
    with pytest.raises(ConfigError, match="integer variant"):
        get("rqi").fn(Checkpoint(step=0, model=model.eval(), data=_data(p)), variant="integer")
    with pytest.raises(ConfigError, match="modular task"):
        get("rqi").fn(Checkpoint(step=0, model=model.eval(), data=_data(p, name="addition")),
                      variant="modular")
    with pytest.raises(ConfigError, match="variant"):
        get("rqi").fn(Checkpoint(step=0, model=model.eval(), data=_data(p)), variant="mod")
    one_d = Embedder(torch.arange(p + 1, dtype=torch.float32)[:, None])
    nan = get("rqi").fn(Checkpoint(step=0, model=one_d.eval(), data=_data(p)))
    assert math.isnan(float(nan.rqi)) and "one-dimensional" in nan.attrs["rqi_skipped"]


def test_not_applicable_to_non_additive_modular_ops():
    spec = get("rqi")
    view = Checkpoint(step=0, model=Embedder(torch.randn(8, 3)), data=_data(7)).view
    assert spec.applies(view, _data(7, op="-")) is None
    reason = spec.applies(view, _data(7, op="*"))
    assert "'*'" in reason and "not additive" in reason


# ---------------------------------------------------------------- Liu et al.'s own code
LIU = Path(__file__).parent / "fixtures" / "rqi" / "liu_rqi.npz"
LIU_CASES = ["random_p10_d1", "noisy_linear_p10_d1", "linear_p10_d1", "noisy_linear_p12_d3"]


@pytest.mark.parametrize("case", LIU_CASES)
def test_integer_variant_equals_liu_et_al(case):
    """Their loop (phase_diagram.ipynb, tests/fixtures/rqi/README.md) divides by the unbiased
    std and starts i at 1 (token 0 never enters a quadruple); with those two conventions ours
    counts the same quadruples and parallelograms."""
    z = np.load(LIU)
    E = torch.as_tensor(z[f"{case}/latent"])
    theirs = (float(z[f"{case}/rqi"]), int(z[f"{case}/count"]), int(z[f"{case}/base"]))
    value, count, total = rqi_from_embedding(E[1:] / E.std(dim=0), 0.01, normalize=False)
    assert (count, total) == theirs[1:]
    assert value == pytest.approx(theirs[0], abs=1e-7)  # theirs: a float32 division


def test_integer_variant_differs_from_liu_by_our_conventions():
    """Our defaults: population std and every token (70 quadruples at p = 10, theirs 50);
    the measure also scales the threshold with the dimension (d = 3: 0.03). The values,
    pinned: theirs 0.02, 0.92, 1, 0.642 -> ours 0, 0.929, 1, 0.608 (unscaled) / 0.944."""
    z = np.load(LIU)
    ours = {c: rqi_from_embedding(torch.as_tensor(z[f"{c}/latent"]))[1:] for c in LIU_CASES}
    assert ours == {"random_p10_d1": (0, 70), "noisy_linear_p10_d1": (65, 70),
                    "linear_p10_d1": (70, 70), "noisy_linear_p12_d3": (76, 125)}
    scaled = rqi_from_embedding(torch.as_tensor(z["noisy_linear_p12_d3/latent"]), 0.03)
    assert scaled[1:] == (118, 125)


def test_applies_and_errors():
    spec = get("rqi")
    view = Checkpoint(step=0, model=Embedder(torch.randn(5, 2)), data=_data(4)).view
    assert spec.applies(view, _data(4)) is None
    lin_data = Data(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), torch.randn(2, 2),
                    torch.tensor([0, 1]))
    reason = spec.applies(Checkpoint(step=0, model=nn.Linear(2, 2), data=lin_data).view, lin_data)
    assert isinstance(reason, str) and "\n" not in reason
    assert "'embedding'" in reason and "anatomy=" in reason
    with pytest.raises(ConfigError):
        rqi_from_embedding(torch.randn(2, 4))
    with pytest.raises(ConfigError, match="p=9"):  # more operand tokens than table rows
        get("rqi").fn(Checkpoint(step=0, model=Embedder(torch.randn(5, 2)), data=_data(9),
                                 anatomy=view.anatomy))


def test_with_registered_transformer():
    from grokscope.models import build_model

    torch.manual_seed(0)
    model = build_model("transformer", vocab=12, out_dim=11, d_model=16, d_mlp=32)
    ds = get("rqi").fn(Checkpoint(step=0, model=model.eval(), data=_data(11)))
    assert int(ds.n_tokens) == 11 and ds.attrs["variant"] == "modular"
    table = model.embed.weight.detach()[:11]
    assert (float(ds.rqi), int(ds.n_parallelograms)) == rqi_modular(table, 0.16)[:2]
    assert int(ds.n_parallelograms) == 0  # random initialisation
    with torch.no_grad():  # a circle in the embedding: 1
        model.embed.weight[:11] = (_circle(11, 4) @ torch.randn(2, 16, dtype=torch.float64)).float()
    assert float(get("rqi").fn(Checkpoint(step=0, model=model.eval(), data=_data(11))).rqi) == 1.0


def test_plot_names_the_variant():
    import matplotlib

    matplotlib.use("Agg")
    from grokscope.plot import plot_rqi

    p = 11
    model = Embedder(torch.cat([_circle(p, 2).float() @ torch.randn(2, 6), torch.randn(1, 6)]))
    ds = get("rqi").fn(Checkpoint(step=0, model=model.eval(), data=_data(p))).expand_dims(step=[0])
    ax = plot_rqi(ds)
    assert "(modular)" in ax.get_title() and "parallel-chord" in ax.get_ylabel()


def _ideal_fourier_mlp_first_layer(p: int, width: int, freqs: list[int], seed: int) -> np.ndarray:
    """``(p, width)``: operand-a weights of a perfectly grokked two-hot MLP, each neuron a pure
    cosine over tokens at one frequency (cycled through ``freqs``) with its own phase and
    amplitude (Nanda et al.; He et al.'s single-frequency neurons)."""
    rng = np.random.default_rng(seed)
    a = np.arange(p)[:, None]
    f = np.array([freqs[h % len(freqs)] for h in range(width)])
    phase = rng.uniform(0, 2 * np.pi, width)
    amp = rng.uniform(0.5, 1.5, width)
    return amp * np.cos(2 * np.pi * f * a / p + phase)


def test_an_ideal_grokked_mlp_embedding_spread_over_frequencies_scores_zero():
    """Why the demo's RQI is 0 (docs/measures.md, rqi): the first layer of a grokked two-hot MLP
    is a sum of circles at many frequencies, and its chords are not parallel, even with no noise
    at all; the neurons of any one frequency alone form one (elliptic) circle and score 1."""
    p, width = 23, 44
    E = _ideal_fourier_mlp_first_layer(p, width, list(range(1, 12)), seed=0)  # all 11 freqs
    total = n_modular_quadruples(p)
    assert rqi_modular(E, 0.01 * width) == (0.0, 0, total)
    # every neuron is a pure single frequency: the structure RQI cannot see is perfect
    power = np.abs(np.fft.rfft(E - E.mean(0), axis=0)[1:]) ** 2
    assert np.allclose(power.max(0) / power.sum(0), 1.0)
    # one frequency's neurons (4 of them, 4 phases): a linear image of one circle
    one = E[:, ::11]
    assert rqi_modular(one, 0.01 * one.shape[1]) == (1.0, total, total)
    # two frequencies already fall to a minority of the quadruples (cf. the torus knot above)
    two = E[:, [h for h in range(width) if h % 11 in (0, 1)]]
    assert rqi_modular(two, 0.01 * two.shape[1]) == (80 / 1265, 80, 1265)


def test_independent_check_tool_agrees_with_the_measure():
    """tools/rqi_embedding_check.py (numpy only, used for the numbers in docs/measures.md)
    counts the same quadruples as rqi_modular on a noisy circle."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tools" / "rqi_embedding_check.py"
    spec = importlib.util.spec_from_file_location("rqi_embedding_check", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    p, dim = 17, 3
    rng = np.random.default_rng(1)
    E = _circle(p, 3).numpy() @ rng.normal(size=(2, dim)) + 0.03 * rng.normal(size=(p, dim))
    quads = tool.modular_quadruples(p)
    assert len(quads) == n_modular_quadruples(p)
    frac, _ = tool.chord_stats(E / E.std(0), quads, 0.01 * dim)
    value, count, total = rqi_modular(E, 0.01 * dim)
    assert 0 < count < total and frac == pytest.approx(value, abs=1e-12)
