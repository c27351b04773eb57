"""Fuzzing the store: random damage to metadata and chunks, then every way of using it.

A seeded generator mutates a small recorded store (keys, shapes, counts, codecs, bytes of
chunks and documents, hostile paths pointing outside the store) and then reads it (open_run,
every parameter trajectory, the metrics, the split, the stored results), appends to it with a
Recorder (optimizer state included: the resume key once made ``shutil.rmtree`` delete a folder
outside the store) and runs the CLI on it. Every outcome must be exact data or a
GrokscopeError, nothing outside the store may change, and the CLI never raises (it prints a
message and exits non-zero; a raised exception is a traceback).

The default run covers ``FUZZ_CASES`` cases (printed at the end); the slow-marked test runs
1,200 others (seeds 10,000 to 11,199).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import grokscope as gs
from grokscope import cli
from grokscope.errors import GrokscopeError
from grokscope.store import Recorder, open_run

from ._store_helpers import TinyNet, fill_step, tiny_data

FUZZ_CASES = 60
STEPS = (0, 10, 20)

HOSTILE = [
    "../outside", "../../outside", "/", None, -1, 0, 1, 2**63, 1.5, True, "", "nan", "a/b",
    "..", ".", [], {}, [1, -2], {"key": "../outside"}, "x" * 300, "zarr.json", "\u0000",
    "_resume/s1/../../../outside", "results/../../outside",
]


# ---------------------------------------------------------------------------- the pristine store
def _record(path: Path) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    data = tiny_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with Recorder(path, model, data, config={"seed": 0}) as rec:
        for step in STEPS:
            fill_step(model, step)
            model.fc1.weight.grad = torch.ones_like(model.fc1.weight)
            opt.step()  # gives the optimizer a momentum buffer to save
            fill_step(model, step)
            rec.record(step, metrics={"train_loss": step * 0.5, "test_acc": step / 100},
                       optimizer=opt)
    gs.analyze(str(path), ["curves"], progress=False)


def _snapshot_data(path: Path) -> dict:
    run = open_run(path)
    out = {"steps": run.steps.copy()}
    for key in run.params.data_vars:
        out[f"param:{key}"] = run.trajectory(key)
    for name in run.metrics.data_vars:
        out[f"metric:{name}"] = np.asarray(run.metrics[name].values)
    data = run.data
    for split in ("x_train", "y_train", "x_test", "y_test"):
        out[f"data:{split}"] = getattr(data, split).numpy()
    for name in run.results:
        out[f"result:{name}"] = run.results[name].load()
    return out


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-pristine")
    path = root / "store"
    _record(path)
    return path, _snapshot_data(path)


# ---------------------------------------------------------------------------- mutations
def _files(store: Path) -> list[Path]:
    return sorted(p for p in store.rglob("*") if p.is_file())


def _json_paths(doc, prefix=()):
    """Every (path, value) inside a JSON document."""
    yield prefix, doc
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _json_paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _json_paths(v, (*prefix, i))


def _set(doc, path, value, delete=False):
    node = doc
    for k in path[:-1]:
        node = node[k]
    if delete and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = value


def _mutate_json(rnd: random.Random, file: Path, outside: Path) -> str:
    doc = json.loads(file.read_bytes())
    paths = [p for p, _ in _json_paths(doc) if p]
    if not paths:
        return "empty document"
    path = rnd.choice(paths)
    hostile = [*HOSTILE, str(outside), str(outside / "victim.txt"), f"file://{outside}"]
    old = copy.deepcopy(doc)
    _, value = next((p, v) for p, v in _json_paths(old) if p == path)
    kind = rnd.choice(["hostile", "hostile", "delete", "number", "shape"])
    if kind == "delete":
        _set(doc, path, None, delete=True)
    elif kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        _set(doc, path, rnd.choice([value + 1, value - 1, value * 2, -value, value + 10**6]))
    elif kind == "shape" and isinstance(value, list) and value:
        _set(doc, path, value[:-1] if rnd.random() < 0.5 else [*value, rnd.choice([0, 1, 7])])
    else:
        _set(doc, path, copy.deepcopy(rnd.choice(hostile)))
    file.write_text(json.dumps(doc))
    return f"{kind} {'.'.join(map(str, path))} (was {json.dumps(value)[:60]})"


def _mutate_bytes(rnd: random.Random, file: Path) -> str:
    raw = bytearray(file.read_bytes())
    kind = rnd.choice(["flip", "same-length", "truncate", "extend", "delete", "empty"])
    if kind == "delete":
        file.unlink()
    elif kind == "empty":
        file.write_bytes(b"")
    elif kind == "truncate":
        file.write_bytes(bytes(raw[: rnd.randrange(len(raw))]) if raw else b"")
    elif kind == "extend":
        file.write_bytes(bytes(raw) + os.urandom(rnd.choice([1, 4, 64])))
    elif kind == "same-length":
        # plausible floats of the same length (a silent overwrite)
        n = len(raw) // 4
        vals = np.asarray([rnd.uniform(-1, 1) for _ in range(n)], dtype="<f4").tobytes()
        file.write_bytes(vals + bytes(raw[4 * n:]))
    else:
        if not raw:
            return "flip (empty file)"
        i = rnd.randrange(len(raw))
        raw[i] ^= 1 << rnd.randrange(8)
        file.write_bytes(bytes(raw))
    return kind


def _mutate(rnd: random.Random, store: Path, outside: Path) -> str:
    files = _files(store)
    docs = [f for f in files if f.name == "zarr.json"]
    # the root document and the arrays' documents hold the keys, shapes, counts and codecs
    root = store / "zarr.json"
    what = rnd.random()
    if what < 0.35:
        target = root
        note = _mutate_json(rnd, target, outside)
    elif what < 0.6:
        target = rnd.choice(docs)
        note = _mutate_json(rnd, target, outside) if rnd.random() < 0.8 else _mutate_bytes(rnd, target)
    elif what < 0.95:
        target = rnd.choice([f for f in files if f.name != "zarr.json"])
        note = _mutate_bytes(rnd, target)
    else:
        # a symlink inside the store pointing outside (a crafted archive)
        target = rnd.choice([p for p in store.iterdir() if p.is_dir()])
        shutil.rmtree(target)
        target.symlink_to(outside, target_is_directory=True)
        note = "symlink to outside"
    return f"{target.relative_to(store)}: {note}"


# ---------------------------------------------------------------------------- the checks
def _tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` with a hash of its bytes (folders marked)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = f"link:{os.readlink(p)}"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def _same(a, b) -> bool:
    if hasattr(a, "identical"):
        return bool(a.identical(b))
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


def _read_everything(path: Path, want: dict, *, appended: bool = False) -> None:
    """Read the store back; every value it returns must equal the pristine one. After an
    append (which may have committed its step even when closing the store then failed) one
    more step, the next integer, may follow."""
    run = open_run(path)
    n = len(want["steps"])
    assert _same(run.steps[:n], want["steps"]), "steps changed"
    assert len(run.steps) == n or (appended and len(run.steps) == n + 1
                                   and run.steps[-1] == want["steps"][-1] + 1), run.steps
    extra_steps = len(run.steps) - n
    for key in run.params.data_vars:
        assert f"param:{key}" in want, f"an unknown parameter {key!r} appeared"
        assert _same(run.trajectory(key)[:n], want[f"param:{key}"]), f"{key} changed"
    for name in run.metrics.data_vars:
        if f"metric:{name}" in want:
            assert _same(np.asarray(run.metrics[name].values)[:n], want[f"metric:{name}"]), name
    data = run.data
    for split in ("x_train", "y_train", "x_test", "y_test"):
        assert _same(getattr(data, split).numpy(), want[f"data:{split}"]), split
    for name in run.results:
        got = run.results[name].load()
        if f"result:{name}" in want and not extra_steps:
            assert _same(got, want[f"result:{name}"]), f"result {name} changed"


def _append(path: Path) -> None:
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with Recorder(path, model, tiny_data()) as rec:
        state = rec.resume_state()
        if state is not None and state.get("optimizer") is not None:
            opt.load_state_dict(state["optimizer"])
        last = rec.last_step if rec.last_step is not None else -1
        fill_step(model, last + 1)
        rec.record(last + 1, metrics={"train_loss": 1.0}, optimizer=opt)


def _outcome(fn, *args, **kwargs) -> str:
    try:
        fn(*args, **kwargs)
    except GrokscopeError as exc:
        return f"refused: {type(exc).__name__}"
    return "ok"


def _cli_never_raises(argv: list[str], capsys) -> int:
    code = cli.main(argv)  # an exception here would be a traceback on the command line
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code:
        assert "error:" in err
    return code


def _one_case(seed: int, pristine, tmp_path: Path, capsys) -> tuple[str, str]:
    src, want = pristine
    rnd = random.Random(seed)
    sandbox = tmp_path / f"case{seed}"
    outside = sandbox / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "victim.txt").write_text("must survive")
    (outside / "dir" / "b.txt").write_text("must survive too")
    store = sandbox / "store"
    shutil.copytree(src, store)
    note = _mutate(rnd, store, outside)
    before = _tree(outside)
    outcomes = [_outcome(_read_everything, store, want)]
    appended = _outcome(_append, store)
    outcomes.append(appended)
    outcomes.append(_outcome(_read_everything, store, want, appended=True))
    _cli_never_raises(["info", str(store)], capsys)
    if rnd.random() < 0.2:
        _cli_never_raises(["analyze", str(store), "--measures", "curves", "-q"], capsys)
    assert _tree(outside) == before, f"case {seed} ({note}) changed files outside the store"
    # nothing else beside the store, except the writer's own lock file
    assert {p.name for p in sandbox.iterdir()} <= {"store", "outside", ".store.lock"}
    shutil.rmtree(sandbox)
    return note, " / ".join(outcomes)


def _fuzz(n: int, first_seed: int, pristine, tmp_path, capsys) -> None:
    tally: dict[str, int] = {}
    for seed in range(first_seed, first_seed + n):
        try:
            note, outcome = _one_case(seed, pristine, tmp_path, capsys)
        except AssertionError as exc:
            raise AssertionError(f"fuzz case {seed}: {exc}") from exc
        except Exception as exc:
            raise AssertionError(
                f"fuzz case {seed}: a {type(exc).__name__} escaped (not a GrokscopeError): {exc}"
            ) from exc
        tally[outcome] = tally.get(outcome, 0) + 1
    with capsys.disabled():
        print(f"\nstore fuzz: {n} cases (seeds {first_seed}..{first_seed + n - 1}); "
              f"outcomes read / append / read again: {dict(sorted(tally.items()))}")
    # the damage must actually be noticed in a good share of the cases (a fuzzer whose
    # mutations are all harmless tests nothing)
    refused = sum(v for k, v in tally.items() if "refused" in k)
    assert refused >= n // 4


def test_fuzz_store_damage(pristine, tmp_path, capsys):
    _fuzz(FUZZ_CASES, 0, pristine, tmp_path, capsys)


@pytest.mark.slow
def test_fuzz_store_damage_long(pristine, tmp_path, capsys):
    _fuzz(1200, 10_000, pristine, tmp_path, capsys)
