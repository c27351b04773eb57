"""The tail of a sharded store being recorded: the newest steps' scalars (step, nonfinite,
metrics) committed in the root document (``commit.tail``) and their tensors in one row file per
step (``_tail/rows``). Readers mid-record, kills between the tail write and the commit, damage,
crafted metadata, and stores written before (per-tensor tails, scalars in their chunks)."""

from __future__ import annotations

import base64
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from grokscope.errors import CorruptStoreError
from grokscope.store import Recorder, _io, _scalar_tail, open_run
from grokscope.store import recorder as recorder_mod
from tests._store_helpers import (
    TinyNet,
    check_run_exact,
    exit_code_of_forked,
    fill_step,
    tiny_data,
)

FIXTURES = Path(__file__).parent / "fixtures" / "store_formats"
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


class EinsumNet(nn.Module):
    """Raw parameters with custom names, einsum forward (how research code writes models)."""

    def __init__(self) -> None:
        super().__init__()
        self.W_embed = nn.Parameter(torch.zeros(4, 6))
        self.W_out = nn.Parameter(torch.zeros(6, 3))
        self.temperature = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bh,ho->bo", torch.relu(x @ self.W_embed), self.W_out) \
            / self.temperature


def _root(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())


def _write_root(path: Path, doc: dict) -> None:
    (path / "zarr.json").write_text(json.dumps(doc))


def _metrics_at(s: int) -> dict[str, float]:
    """A metric every step, one first logged at step 5, one every third step."""
    out = {"train_loss": 1.0 / (s + 1)}
    if s >= 5:
        out["test_acc"] = s / 100
    if s % 3 == 0:
        out["lr"] = 0.1 * 0.9 ** s
    return out


def _expected_metric(name: str, steps: list[int]) -> np.ndarray:
    return np.array([_metrics_at(s).get(name, np.nan) for s in steps])


# ---------------------------------------------------------------------------- readers mid-record
@pytest.mark.filterwarnings("ignore:step .* non-finite:RuntimeWarning")
@pytest.mark.parametrize("factory", [
    lambda: nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)),
    EinsumNet,
], ids=["sequential", "einsum"])
def test_a_reader_mid_record_sees_exactly_the_committed_steps(tmp_path, factory, monkeypatch):
    """After every record a new reader sees exactly the committed steps, weights, metrics
    (one first logged late, one now and then) and nonfinite counts, across compactions and
    scalar-tail flushes; a reader opened earlier keeps reading its own prefix exactly."""
    monkeypatch.setattr(_scalar_tail, "MAX_ROWS", 3)  # flushes between compactions too
    path = tmp_path / "run.zarr"
    model = factory()
    g = torch.Generator().manual_seed(0)
    steps: list[int] = []
    weights: list[dict[str, torch.Tensor]] = []
    early = None
    with Recorder(path, model, tiny_data(), export_program=False, steps_per_shard=4,
                  compact_every=8) as rec:
        for i in range(21):
            s = 3 * i + 1
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(torch.randn(p.shape, generator=g))
                if i == 9:  # a non-finite weight is recorded and counted
                    next(model.parameters()).view(-1)[0] = float("nan")
            rec.record(s, metrics=_metrics_at(s))
            steps.append(s)
            weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            run = open_run(path)
            assert run.steps.tolist() == steps
            for name in ("train_loss", "test_acc", "lr"):
                if name in run.metrics:
                    np.testing.assert_array_equal(run.metrics[name].values,
                                                  _expected_metric(name, steps))
            assert run.metrics["nonfinite"].values.tolist() == [int(j == 9)
                                                                for j in range(i + 1)]
            for key in weights[0]:
                np.testing.assert_array_equal(run.trajectory(key),
                                              np.stack([w[key].numpy() for w in weights]))
            if i == 6:
                early = run
        assert rec.compacted == 16
    assert early is not None and early.steps.tolist() == steps[:7]
    np.testing.assert_array_equal(early.metrics["train_loss"].values,
                                  _expected_metric("train_loss", steps[:7]))
    for key in weights[0]:
        np.testing.assert_array_equal(early.params[key].values,
                                      np.stack([w[key].numpy() for w in weights[:7]]))
    run = open_run(path)
    run.verify()
    assert "tail" not in _root(path)["attributes"]["grokscope"]["commit"]  # closed: none left
    np.testing.assert_array_equal(run.metrics["test_acc"].values,
                                  _expected_metric("test_acc", steps))


def test_a_record_writes_one_row_file_and_the_root(tmp_path, monkeypatch):
    """The cost structure the benchmark measures: between compactions and flushes a record of
    a sharded store writes two files (its row file and the root document), not one per tensor
    plus one per scalar array."""
    written: list[str] = []
    put = _io.put_file

    def counting(path, data, **kw):
        written.append(os.path.relpath(path, tmp_path / "run.zarr"))
        put(path, data, **kw)

    model = TinyNet()
    with Recorder(tmp_path / "run.zarr", model, tiny_data(), export_program=False) as rec:
        fill_step(model, 0)
        rec.record(0, metrics={"train_loss": 0.0, "test_acc": 0.5})  # creates the metrics
        monkeypatch.setattr(_io, "put_file", counting)
        for s in range(1, 6):
            fill_step(model, s)
            rec.record(s, metrics={"train_loss": s * 0.5, "test_acc": 0.5})
        monkeypatch.setattr(_io, "put_file", put)
        fill_step(model, 6)
        rec.record(6, metrics={"train_loss": 3.0, "late": float("nan")})
        # the root is serialised in parts (the unchanging ones once): the same document
        assert _root(tmp_path / "run.zarr") == rec._root_doc(rec._meta)
        assert _root(tmp_path / "run.zarr")["attributes"]["grokscope"]["metrics"] == [
            "train_loss", "test_acc", "late"]
    assert written == [p for s in range(1, 6) for p in (f"_tail/rows/c.{s}.0", "zarr.json")]
    assert _root(tmp_path / "run.zarr") == rec._root_doc(rec._meta)


# ---------------------------------------------------------------------------- kills
def _kill_metrics(s: int) -> dict[str, float]:
    """``train_loss`` (checked by check_run_exact) and a metric first logged at step 2."""
    return {"train_loss": s * 0.5, **({"test_acc": s / 100} if s >= 2 else {})}


def _check_kill_metrics(run) -> None:
    steps = run.steps.tolist()
    if "test_acc" in run.metrics:
        np.testing.assert_array_equal(run.metrics["test_acc"].values,
                                      [s / 100 if s >= 2 else np.nan for s in steps])


def _kill_child(path: Path, n: int, where: str) -> int:
    """Fork a writer that records steps 0..n-1 (shards of 4, compacting every 8, a scalar tail
    of at most 3 rows), then dies (exit 77) inside the record of step n: ``"commit"`` when it
    writes the root document, ``"flush"`` after the first scalar chunk a tail flush writes."""
    def child() -> None:
        _scalar_tail.MAX_ROWS = 3
        model = TinyNet()
        rec = Recorder(path, model, tiny_data(), export_program=False, steps_per_shard=4,
                       compact_every=8)
        for s in range(n):
            fill_step(model, s)
            rec.record(s, metrics=_kill_metrics(s))
        if where == "commit":
            recorder_mod.Recorder._write_root = lambda *a, **k: os._exit(77)
        else:
            flush = recorder_mod._Scalar.flush

            def flush_then_die(self, *a, **k):
                flush(self, *a, **k)
                os._exit(77)

            recorder_mod._Scalar.flush = flush_then_die
        fill_step(model, n)
        rec.record(n, metrics=_kill_metrics(n))

    return exit_code_of_forked(child)


@needs_fork
@pytest.mark.parametrize("n,where", [(1, "commit"), (6, "commit"), (11, "commit"),
                                     (3, "flush"), (11, "flush")])
def test_a_kill_between_the_tail_write_and_the_commit_loses_nothing(tmp_path, n, where):
    """Killed after step n's row file (and, for "flush", part of a scalar-tail flush) but
    before its commit: the store holds exactly steps 0..n-1, verifies, and a new writer
    continues it (the torn step is written again)."""
    path = tmp_path / "run.zarr"
    assert _kill_child(path, n, where) == 77
    assert (path / "_tail" / "rows" / f"c.{n}.0").is_file()  # the kill landed after it
    model = TinyNet()
    run = open_run(path)
    assert run.steps.tolist() == list(range(n))
    check_run_exact(run, model)
    _check_kill_metrics(run)
    run.verify()
    with Recorder(path, model, tiny_data()) as rec:
        assert rec.count == n
        for s in range(n, n + 6):
            fill_step(model, s)
            rec.record(s, metrics=_kill_metrics(s))
            check_run_exact(open_run(path), model)
            _check_kill_metrics(open_run(path))
    run = open_run(path)
    assert run.steps.tolist() == list(range(n + 6))
    check_run_exact(run, model)
    _check_kill_metrics(run)
    assert "test_acc" in run.metrics
    run.verify()
    assert not (path / "_tail").exists()


# ---------------------------------------------------------------------------- damage
def _recording(tmp_path: Path, n: int = 7):
    """A store with ``n`` committed steps, 4 compacted, the others in the tail (writer open)."""
    path = tmp_path / "run.zarr"
    model = TinyNet()
    rec = Recorder(path, model, tiny_data(), export_program=False, steps_per_shard=4)
    for s in range(n):
        fill_step(model, s)
        rec.record(s, metrics={"train_loss": s * 0.5})
    return path, rec


def _abandon(rec: Recorder) -> None:
    """Leave ``rec`` as a killed writer would (nothing closed or flushed), its lock released."""
    rec._closed = True
    rec._release_lock()


def test_a_damaged_scalar_tail_is_named(tmp_path):
    path, rec = _recording(tmp_path)
    doc = _root(path)
    cols = doc["attributes"]["grokscope"]["commit"]["tail"]["columns"]
    raw = bytearray(base64.b64decode(cols["train_loss"]))
    raw[3] ^= 0x10  # a plausible float, its checksum kept
    cols["train_loss"] = base64.b64encode(bytes(raw)).decode()
    _write_root(path, doc)
    with pytest.raises(CorruptStoreError, match=r"'train_loss'.*CRC32C"):
        open_run(path)
    _abandon(rec)
    with pytest.raises(CorruptStoreError, match="train_loss"):
        Recorder(path, TinyNet(), tiny_data())


@pytest.mark.parametrize("change,match", [
    (lambda t: t.update(start=7), "tail.start"),
    (lambda t: t.update(start=-1), "tail.start"),
    (lambda t: t["columns"].pop("nonfinite"), "tail.columns"),
    (lambda t: t["columns"].update(train_loss=5), "tail.columns"),
    (lambda t: t["columns"].update(step="not base64!"), "base64"),
    (lambda t: t["columns"].update(step=base64.b64encode(b"\0" * 12).decode()), "'step'.*bytes"),
    (lambda t: t.update(extra=1), "tail"),
])
def test_crafted_scalar_tails_are_refused(tmp_path, change, match):
    path, rec = _recording(tmp_path)
    _abandon(rec)
    doc = _root(path)
    change(doc["attributes"]["grokscope"]["commit"]["tail"])
    _write_root(path, doc)
    with pytest.raises(CorruptStoreError, match=match):
        open_run(path)


def test_a_damaged_row_file_is_named_with_its_tensor_and_row(tmp_path):
    path, rec = _recording(tmp_path)
    row = path / "_tail" / "rows" / "c.5.0"
    raw = bytearray(row.read_bytes())
    off = json.loads((path / "_tail" / "rows" / "zarr.json").read_text())
    entries = {k: (o, n) for k, o, n in off["attributes"]["grokscope_rows"]}
    raw[entries["fc2.weight"][0] + 2] ^= 0x01
    row.write_bytes(bytes(raw))
    run = open_run(path)
    np.testing.assert_array_equal(run.trajectory("fc1.weight")[5], np.float32(5.0))
    with pytest.raises(CorruptStoreError, match=r"'fc2.weight'.*row 5.*CRC32C"):
        run.trajectory("fc2.weight")
    with pytest.raises(CorruptStoreError, match=r"(?s)1 damaged part.*fc2.weight.*row 5"):
        run.verify()
    row.write_bytes(bytes(raw[:200]))  # truncated inside fc2.weight
    with pytest.raises(CorruptStoreError, match=r"'fc2.weight'.*row 5.*truncated"):
        open_run(path).state_dict_at(5)
    row.unlink()
    with pytest.raises(CorruptStoreError, match=r"row 5.*missing"):
        open_run(path).state_dict_at(5)
    _abandon(rec)


@pytest.mark.parametrize("entries", [
    [["fc1.weight", 0, 132], ["fc1.bias", 100, 36], ["fc2.weight", 168, 100],
     ["fc2.bias", 268, 16]],  # overlapping
    [["fc1.weight", 0, 132], ["fc1.bias", 132, 36], ["fc2.weight", 168, 100]],  # one missing
    [["fc1.weight", 0, 132], ["../x", 132, 36], ["fc2.weight", 168, 100], ["fc2.bias", 268, 16]],
    "not a list",
])
def test_crafted_row_file_layouts_are_refused(tmp_path, entries):
    path, rec = _recording(tmp_path)
    _abandon(rec)
    meta = path / "_tail" / "rows" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["grokscope_rows"] = entries
    meta.write_text(json.dumps(doc))
    with pytest.raises(CorruptStoreError, match="per-step tail"):
        open_run(path)
    with pytest.raises(CorruptStoreError, match="per-step tail"):
        Recorder(path, TinyNet(), tiny_data())


# ---------------------------------------------------------------------------- stores written before
def test_a_killed_store_with_per_tensor_tails_reads_and_continues(tmp_path):
    """A sharded store written before the row files and the scalar tail (per-tensor
    ``_tail/<key>`` arrays, every scalar in its chunks), killed with 7 steps committed and 4
    compacted (tests/fixtures/store_formats/README.md): read exactly, verified, continued in
    its own layout, readable mid-append, closed."""
    with zipfile.ZipFile(FIXTURES / "sharded_per_tensor_tail_killed.zip") as z:
        z.extractall(tmp_path)
    path = tmp_path / "run.zarr"
    meta = _root(path)["attributes"]["grokscope"]
    assert meta["commit"]["count"] == 7 and meta["commit"]["compacted"] == 4
    assert "tail" not in meta["commit"] and "tail" not in meta["shards"]
    model = TinyNet()
    run = open_run(path)
    check_run_exact(run, model)
    np.testing.assert_array_equal(run.metrics["test_acc"].values,
                                  [np.nan] * 5 + [0.5, 0.6])
    run.verify()
    with Recorder(path, model, tiny_data()) as rec:
        for s in range(7, 12):
            fill_step(model, s)
            rec.record(s, metrics={"train_loss": s * 0.5, "test_acc": s / 10})
            mid = open_run(path)
            check_run_exact(mid, model)
            np.testing.assert_array_equal(mid.metrics["test_acc"].values[5:],
                                          np.arange(5, s + 1) / 10)
        assert (path / "_tail" / "fc1.weight").is_dir()  # its own layout kept
    run = open_run(path)
    assert run.steps.tolist() == list(range(12))
    check_run_exact(run, model)
    run.verify()
    assert not (path / "_tail").exists()


# ---------------------------------------------------------------------------- atomic writes
def test_put_file_over_an_existing_file_swaps_it_in_whole(tmp_path):
    """Over a regular file the new content is swapped in (no temporary file left); a symlink
    is replaced as a link (os.replace), never followed; a folder is refused as before."""
    target = tmp_path / "doc.json"
    target.write_bytes(b"old")
    _io.put_file(target, (b"new", b"er"))
    assert target.read_bytes() == b"newer"
    assert sorted(os.listdir(tmp_path)) == ["doc.json"]
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep")
    link = tmp_path / "link"
    link.symlink_to(outside)
    _io.put_file(link, b"x")
    assert outside.read_bytes() == b"keep" and not link.is_symlink() and link.read_bytes() == b"x"
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError):
        _io.put_file(tmp_path / "folder", b"x")
    assert sorted(os.listdir(tmp_path)) == ["doc.json", "folder", "link", "outside"]


# ---------------------------------------------------------------------------- fuzz
@pytest.fixture(scope="module")
def recording_pristine(tmp_path_factory):
    """A store abandoned while recording: 6 steps committed, 4 in shards, 2 in row files, the
    scalars of the last 2 in the root's commit.tail, a resume state; and what it holds."""
    from tests.test_store_fuzz import _snapshot_data

    path = tmp_path_factory.mktemp("tail-fuzz-pristine") / "store"
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rec = Recorder(path, model, tiny_data(), config={"seed": 0}, steps_per_shard=4)
    for step in range(0, 60, 10):
        fill_step(model, step)
        model.fc1.weight.grad = torch.ones_like(model.fc1.weight)
        opt.step()
        fill_step(model, step)
        rec.record(step, metrics={"train_loss": step * 0.5, "test_acc": step / 100},
                   optimizer=opt)
    _abandon(rec)
    commit = _root(path)["attributes"]["grokscope"]["commit"]
    assert commit["compacted"] == 4 and commit["tail"]["start"] == 4
    return path, _snapshot_data(path)


@pytest.mark.slow
def test_fuzz_damage_to_a_store_being_recorded(recording_pristine, tmp_path, capsys):
    """tests/test_store_fuzz.py's damage (metadata, chunks, keys, shapes, links) on a store
    whose newest steps are in the tail: every outcome is the exact data or a GrokscopeError,
    nothing outside the store changes, the CLI prints no traceback."""
    from tests.test_store_fuzz import _fuzz

    _fuzz(300, 20_000, recording_pristine, tmp_path, capsys)
