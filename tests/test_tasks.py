"""Tests of the built-in tasks: labels, splits, determinism, specs, errors."""

from __future__ import annotations

import json

import pytest
import torch

from grokscope.data import Data
from grokscope.errors import ConfigError, UnknownNameError
from grokscope.tasks import from_spec, make_task, names, register_task
from grokscope.tasks.digits import _load
from grokscope.tasks.modular import all_pairs, encode

SMALL = {
    "modular": {"p": 11},
    "parity": {"n_bits": 10, "k": 3, "n_train": 50, "n_test": 30},
    "teacher": {"d": 8, "n_train": 40, "n_test": 20},
    "digits": {"train_size": 300},
}


def assert_same(a: Data, b: Data) -> None:
    for name in ("x_train", "y_train", "x_test", "y_test"):
        ta, tb = getattr(a, name), getattr(b, name)
        assert ta.dtype == tb.dtype and torch.equal(ta, tb), name
    assert a.task == b.task
    assert a.extras.keys() == b.extras.keys()
    for k in a.extras:
        assert torch.equal(a.extras[k], b.extras[k]), k


def test_names() -> None:
    assert {"modular", "parity", "teacher", "digits"} <= set(names())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_deterministic_and_roundtrip(name: str) -> None:
    a = make_task(name, **SMALL[name])
    b = make_task(name, **SMALL[name])
    assert_same(a, b)
    assert a.task["name"] == name
    json.dumps(a.task)  # JSON-able
    assert_same(from_spec(a.task), a)
    assert_same(from_spec(json.loads(json.dumps(a.task))), a)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_seed_changes_split(name: str) -> None:
    a = make_task(name, **SMALL[name], seed=0)
    b = make_task(name, **SMALL[name], seed=1)
    assert not torch.equal(a.x_train, b.x_train)


def brute(a: int, b: int, p: int, op: str) -> int:
    if op == "+":
        return (a + b) % p
    if op == "-":
        return (a - b) % p
    if op == "*":
        return (a * b) % p
    if op == "/":
        return next(c for c in range(p) if (c * b) % p == a)
    return (a * a + a * b + b * b) % p


@pytest.mark.parametrize("op", ["+", "-", "*", "/", "x2+xy+y2"])
def test_modular_labels(op: str) -> None:
    p = 7
    pairs, labels = all_pairs(p, op)
    n = p * (p - 1) if op == "/" else p * p
    assert pairs.shape == (n, 2) and labels.shape == (n,)
    assert pairs.dtype == labels.dtype == torch.long
    assert len({tuple(r) for r in pairs.tolist()}) == n
    for (a, b), y in zip(pairs.tolist(), labels.tolist()):
        assert y == brute(a, b, p, op)
    if op == "/":
        assert int(pairs[:, 1].min()) == 1


@pytest.mark.parametrize("encoding", ["onehot", "tokens"])
def test_modular_split(encoding: str) -> None:
    p, frac = 13, 0.3
    d = make_task("modular", p=p, op="-", train_frac=frac, encoding=encoding)
    n = p * p
    pt, pe = d.extras["pairs_train"], d.extras["pairs_test"]
    assert len(pt) == int(frac * n) and len(pt) + len(pe) == n
    tr, te = {tuple(r) for r in pt.tolist()}, {tuple(r) for r in pe.tolist()}
    assert not tr & te and len(tr | te) == n
    assert torch.equal(d.y_train, (pt[:, 0] - pt[:, 1]) % p)
    assert torch.equal(d.y_test, (pe[:, 0] - pe[:, 1]) % p)
    assert torch.equal(d.x_train, encode(pt, p, encoding))
    assert d.n_classes == p and d.task["vocab"] == p + 1
    if encoding == "onehot":
        assert d.x_train.dtype == torch.float32 and d.x_train.shape == (len(pt), 2 * p)
        assert torch.equal(d.x_train[:, :p].argmax(1), pt[:, 0])
        assert torch.equal(d.x_train[:, p:].argmax(1), pt[:, 1])
        assert torch.all(d.x_train.sum(1) == 2)
    else:
        assert d.x_train.dtype == torch.long and d.x_train.shape == (len(pt), 3)
        assert torch.equal(d.x_train[:, :2], pt) and torch.all(d.x_train[:, 2] == p)


def test_modular_defaults() -> None:
    d = make_task("modular")
    assert d.task["p"] == 97 and d.task["op"] == "+"
    assert len(d.y_train) == int(0.3 * 97 * 97)


def test_parity() -> None:
    d = make_task("parity", **SMALL["parity"])
    s = d.extras["support"]
    assert s.shape == (3,) and len(set(s.tolist())) == 3 and torch.all(s < 10)
    assert d.x_train.shape == (50, 10) and d.x_test.shape == (30, 10)
    assert set(d.x_train.unique().tolist()) == {-1.0, 1.0}
    for x, y in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
        odd = ((x[:, s] < 0).sum(1) % 2).long()
        assert torch.equal(y, odd)
    assert d.n_classes == 2


def test_teacher() -> None:
    d = make_task("teacher", **SMALL["teacher"], eps=-0.3)
    w = d.extras["w_star"]
    assert w.shape == (8,) and abs(float(w.norm()) - 1) < 1e-6
    assert d.y_train.shape == (40, 1) and d.y_train.dtype == torch.float32
    assert not d.is_classification and d.task["loss"] == "mse"
    z = d.x_test.double() @ w.double()
    expected = z + -0.3 * (z**3 - 3 * z)
    torch.testing.assert_close(d.y_test[:, 0].double(), expected, rtol=1e-5, atol=1e-5)


def test_digits() -> None:
    d = make_task("digits", train_size=300)
    assert d.x_train.shape == (300, 64) and d.x_test.shape == (1797 - 300, 64)
    assert float(d.x_train.min()) >= 0 and float(d.x_train.max()) <= 1
    assert d.n_classes == 10 and set(d.y_train.unique().tolist()) <= set(range(10))
    # the split is a partition of the 1797 images
    x_all, y_all = _load()
    both = torch.cat([d.x_train, d.x_test])
    assert len(both) == len(x_all)
    torch.testing.assert_close(both.sum(0), x_all.sum(0))
    assert torch.equal(torch.cat([d.y_train, d.y_test]).bincount(), y_all.bincount())
    train_rows = {tuple(r) for r in d.x_train.tolist()}
    assert not train_rows & {tuple(r) for r in d.x_test.tolist()}  # the 1797 images are distinct
    big = make_task("digits", train_size=5000)
    assert 0 < len(big.x_test) and len(big.x_train) + len(big.x_test) == 1797
    assert_same(from_spec(big.task), big)


def test_unknown_task_lists_names() -> None:
    with pytest.raises(UnknownNameError, match="modular"):
        make_task("nope")


@pytest.mark.parametrize(
    "params",
    [
        {"p": 1},
        {"p": 2.5},
        {"train_frac": 0.0},
        {"train_frac": 1.0},
        {"train_frac": 1.5},
        {"op": "^"},
        {"op": "/", "p": 12},
        {"encoding": "bits"},
        {"seed": -1},
        {"bogus": 3},
    ],
)
def test_modular_bad_params(params: dict) -> None:
    with pytest.raises(ConfigError):
        make_task("modular", **params)


@pytest.mark.parametrize(
    "name,params",
    [
        ("parity", {"k": 0}),
        ("parity", {"k": 11, "n_bits": 10}),
        ("teacher", {"d": 0}),
        ("teacher", {"eps": "x"}),
        ("digits", {"train_size": 0}),
    ],
)
def test_other_bad_params(name: str, params: dict) -> None:
    with pytest.raises(ConfigError):
        make_task(name, **params)


def test_from_spec_needs_name() -> None:
    with pytest.raises(ConfigError):
        from_spec({"p": 3})


def test_register_task() -> None:
    def make_tiny(n: int = 3, seed: int = 0) -> Data:
        x = torch.arange(n, dtype=torch.float32)[:, None]
        return Data(x, x, x, x, task={"name": "tiny_test_task", "n": n, "seed": seed})

    register_task("tiny_test_task", make_tiny)
    assert "tiny_test_task" in names()
    d = make_task("tiny_test_task", n=4)
    assert_same(from_spec(d.task), d)
    with pytest.raises(ConfigError, match="already registered"):
        register_task("tiny_test_task", lambda: d)
