"""A power cut must not make a store unreadable.

A record swaps the root ``zarr.json`` in without ``fsync``; after a power cut it may come back
empty. Compactions and close sync everything before they publish the root, and a durable
fallback root (``_commit/zarr.json``) is written after them and at most every
``_durable.INTERVAL_S`` seconds. Here a power cut is simulated by emptying or garbling the
root (and a row file); readers see exactly the fallback's steps, a Recorder restores the root
and continues, stores without a fallback raise as before, and the compaction path syncs data
before the root that names it.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from grokscope.errors import CorruptStoreError
from grokscope.store import Recorder, _durable, _io, open_run


class EinsumNet(nn.Module):
    """Raw parameters with custom names, einsum forward (how research code writes models)."""

    def __init__(self) -> None:
        super().__init__()
        self.W_embed = nn.Parameter(torch.zeros(4, 6))
        self.W_out = nn.Parameter(torch.zeros(6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bh,ho->bo", torch.relu(x @ self.W_embed), self.W_out)


def _sequential() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


FACTORIES = pytest.mark.parametrize("factory", [_sequential, EinsumNet],
                                    ids=["sequential", "einsum"])


def _set_step(model: nn.Module, step: int) -> None:
    """Deterministic, distinct weights per step."""
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape) * 0.01
                    + step + 0.5 * i)


def _loss(step: int) -> float:
    return 1.0 / (step + 1)


def _record(path: Path, model: nn.Module, steps: range, **kw) -> Recorder:
    """A recorder that recorded ``steps`` and is left open (killed: never closed)."""
    rec = Recorder(path, model, None, steps_per_shard=8, **kw)
    for s in steps:
        _set_step(model, s)
        rec.record(s, metrics={"train_loss": _loss(s)})
    return rec


def _power_cut(rec: Recorder) -> None:
    """Drop the recorder without closing it (its lock goes with it)."""
    rec._release_lock()
    rec._closed = True


@pytest.fixture(autouse=True)
def _no_timed_fallback(monkeypatch):
    # only compactions and close write the fallback, unless a test says otherwise
    monkeypatch.setattr(_durable, "INTERVAL_S", 1e9)


def _check_steps(run, model: nn.Module, steps: list[int]) -> None:
    assert run.steps.tolist() == steps
    np.testing.assert_array_equal(run.metrics["train_loss"].values, [_loss(s) for s in steps])
    for s in (steps[0], steps[len(steps) // 2], steps[-1]):
        _set_step(model, s)
        got = run.state_dict_at(s)
        for k, v in model.state_dict().items():
            assert torch.equal(got[k], v), (k, s)


# ---------------------------------------------------------------------------- readers
@FACTORIES
@pytest.mark.parametrize("damage", [b"", b"\x00" * 4096, b"\x00\xff garbage",
                                    b'{"zarr_format":3,"node_type":"gr', b"[3]"],
                         ids=["empty", "zeros", "garbage", "torn", "not-an-object"])
def test_a_reader_sees_exactly_the_fallback_steps(tmp_path, factory, damage):
    path = tmp_path / "run.zarr"
    model = factory()
    rec = _record(path, model, range(0, 60, 3))  # 20 steps; compactions at 8 and 16 rows
    _power_cut(rec)
    (path / "zarr.json").write_bytes(damage)
    with pytest.warns(UserWarning, match=r"durable fallback root .* holds 16 steps up to step "
                                         r"45: those are readable"):
        run = open_run(path)
    _check_steps(run, factory(), list(range(0, 48, 3)))
    assert run.recovered is not None
    assert run.verify() == {"arrays": len(model.state_dict()) + 3, "chunks": run.verify()[
        "chunks"], "recovered_from_fallback": 1}


def test_a_store_without_a_fallback_raises_as_before(tmp_path):
    path = tmp_path / "run.zarr"
    model = _sequential()
    _power_cut(_record(path, model, range(20)))
    shutil.rmtree(path / "_commit")  # as a store written by grokscope before the fallback
    (path / "zarr.json").write_bytes(b"")
    with pytest.raises(CorruptStoreError, match="is not valid JSON"):
        open_run(path)
    with pytest.raises(CorruptStoreError, match="is not valid JSON"):
        Recorder(path, model, None)
    assert (path / "zarr.json").read_bytes() == b""  # nothing touched


def test_a_damaged_fallback_is_no_fallback(tmp_path):
    path = tmp_path / "run.zarr"
    _power_cut(_record(path, _sequential(), range(20)))
    (path / "_commit" / "zarr.json").write_bytes(b'{"zarr_format":3,"node_type":"group",'
                                                 b'"attributes":{"grokscope_committed_root":'
                                                 b'{"attributes":{}}}}')
    (path / "zarr.json").write_bytes(b"\x00" * 100)
    with pytest.raises(CorruptStoreError, match="is not valid JSON"):
        open_run(path)


def test_a_valid_root_ignores_the_fallback(tmp_path):
    path = tmp_path / "run.zarr"
    model = _sequential()
    _power_cut(_record(path, model, range(20)))  # fallback at 16 rows, root at 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = open_run(path)
    assert len(run.steps) == 20 and run.recovered is None
    assert "recovered_from_fallback" not in run.verify()


def test_an_emptied_row_file_after_the_fallback_is_lost_with_its_step(tmp_path):
    path = tmp_path / "run.zarr"
    model = EinsumNet()
    _power_cut(_record(path, model, range(20)))
    rows = sorted((path / "_tail" / "rows").glob("c.*"))
    assert [p.name for p in rows] == [f"c.{r}.0" for r in range(16, 20)]
    rows[-1].write_bytes(b"")  # step 19's row file, not synced: a power cut may empty it
    (path / "zarr.json").write_bytes(b"")
    with pytest.warns(UserWarning, match="holds 16 steps"):
        run = open_run(path)
    _check_steps(run, EinsumNet(), list(range(16)))
    run.verify()


def test_the_timed_fallback_bounds_the_loss(tmp_path, monkeypatch):
    monkeypatch.setattr(_durable, "INTERVAL_S", 0.0)  # a fallback after every record
    path = tmp_path / "run.zarr"
    model = _sequential()
    _power_cut(_record(path, model, range(19)))
    (path / "zarr.json").write_bytes(b"")
    with pytest.warns(UserWarning, match="holds 19 steps up to step 18"):
        run = open_run(path)
    _check_steps(run, _sequential(), list(range(19)))  # 3 of them from the tail's row files
    run.verify()


# ---------------------------------------------------------------------------- writers
@FACTORIES
def test_a_recorder_restores_the_root_and_continues(tmp_path, factory):
    path = tmp_path / "run.zarr"
    model = factory()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder(path, model, None, steps_per_shard=8)
    for s in range(21):
        _set_step(model, s)
        rec.record(s, metrics={"train_loss": _loss(s)}, optimizer=opt, extra={"at": s})
    _power_cut(rec)
    (path / "zarr.json").write_bytes(b"")
    with pytest.warns(UserWarning, match="restored from it and recording continues after "
                                         "step 15"):
        rec = Recorder(path, model, None)
    assert rec.count == 16 and rec.last_step == 15
    # the resume state the fallback names was kept although later records replaced it
    assert rec.resume_state()["extra"] == {"at": 15}
    with rec:
        for s in range(16, 30):
            _set_step(model, s)
            rec.record(s, metrics={"train_loss": _loss(s)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = open_run(path)
    _check_steps(run, factory(), list(range(30)))
    assert "recovered_from_fallback" not in run.verify()
    assert run.closed
    assert sorted(os.listdir(path / "_resume")) == ["s15", "zarr.json"]


def test_close_leaves_a_fallback_equal_to_the_root(tmp_path):
    path = tmp_path / "run.zarr"
    with _record(path, _sequential(), range(13)):
        pass
    fallback = json.loads((path / "_commit" / "zarr.json").read_bytes())
    assert fallback["attributes"]["grokscope_committed_root"] == json.loads(
        (path / "zarr.json").read_bytes())
    (path / "zarr.json").write_bytes(b"")
    with pytest.warns(UserWarning, match="holds 13 steps up to step 12"):
        run = open_run(path)
    assert run.closed and len(run.steps) == 13
    run.verify()


def test_compaction_syncs_data_before_the_root_that_names_it(tmp_path, monkeypatch):
    """Record every write and fsync (by path) during one compaction: every file it writes
    (shards, scalar chunks, metadata) is synced, then its folder, before the root naming it is
    written; the root is synced before the fallback; compacted row files are never synced."""
    path = tmp_path / "run.zarr"
    model = _sequential()
    rec = _record(path, model, range(7))
    events: list[tuple[str, str]] = []
    real_fsync, real_put = os.fsync, _io.put_file

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def put_file(p: Path, data, **kw) -> None:
        real_put(p, data, **kw)
        events.append(("put", str(p)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(_io, "put_file", put_file)
    _set_step(model, 7)
    rec.record(7, metrics={"train_loss": _loss(7)})  # the 8th row: compacts one shard
    monkeypatch.undo()
    rec.close()
    root, fallback = str(path / "zarr.json"), str(path / "_commit" / "zarr.json")
    puts = [p for kind, p in events if kind == "put"]
    synced = [p for kind, p in events if kind == "fsync"]
    root_puts = [i for i, e in enumerate(events) if e == ("put", root)]
    assert len(root_puts) == 2  # the record's commit, then the compaction's
    publish = root_puts[1]
    written = {p for kind, p in events[root_puts[0] + 1:publish] if kind == "put"}
    shards = {str(path / k / "c.0.0.0") for k in ("0.weight", "2.weight")} | {
        str(path / k / "c.0.0") for k in ("0.bias", "2.bias")}
    assert shards <= written and str(path / "step" / "c" / "0") in written
    before = {p for kind, p in events[:publish] if kind == "fsync"}
    assert written <= before, written - before  # every file, before the root naming it
    assert {str(path / k) for k in ("0.weight", "step/c")} <= before  # and its folder
    row_files = {p for p in synced if "/_tail/rows/c." in p}
    assert not row_files  # compacted rows are deleted, never synced
    # the root, then the fallback (synced before it is renamed into place)
    after = events[publish + 1:]
    i_root = after.index(("fsync", root))
    i_fb = next(i for i, (kind, p) in enumerate(after)
                if kind == "fsync" and p.startswith(str(path / "_commit" / ".zarr.json.")))
    assert i_root < i_fb < after.index(("put", fallback))
    assert puts[-1] == fallback


def test_a_power_cut_before_the_first_compaction_keeps_the_store(tmp_path):
    path = tmp_path / "run.zarr"
    model = _sequential()
    _power_cut(_record(path, model, range(5)))
    (path / "zarr.json").write_bytes(b"")
    with pytest.warns(UserWarning, match="holds no steps"):
        run = open_run(path)
    assert run.steps.tolist() == [] and set(run.config) >= {"model"}
    with pytest.warns(UserWarning, match="holds no steps"):
        rec = Recorder(path, model, None)
    with rec:
        for s in range(3):
            _set_step(model, s)
            rec.record(s, metrics={"train_loss": _loss(s)})
    _check_steps(open_run(path), _sequential(), [0, 1, 2])


def test_a_crafted_root_is_refused_even_with_a_fallback(tmp_path):
    """A root that is a JSON object failing the checks is no power cut's doing: refused as
    before (readers and writers), never silently replaced by the fallback."""
    path = tmp_path / "run.zarr"
    model = _sequential()
    _power_cut(_record(path, model, range(20)))
    doc = json.loads((path / "zarr.json").read_bytes())
    doc["attributes"]["grokscope"]["params"]["../victim"] = doc["attributes"]["grokscope"][
        "params"].pop("0.weight")
    (path / "zarr.json").write_text(json.dumps(doc))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CorruptStoreError, match="damaged or crafted"):
            open_run(path)
        with pytest.raises(CorruptStoreError, match="damaged or crafted"):
            Recorder(path, model, None)
    assert json.loads((path / "zarr.json").read_bytes()) == doc  # untouched


def _fsync_log(monkeypatch) -> list[str]:
    """Record the path of every os.fsync (Linux: through /proc/self/fd)."""
    log: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        log.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return log


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_a_timed_fallback_names_only_synced_row_files(tmp_path, monkeypatch):
    path = tmp_path / "run.zarr"
    model = EinsumNet()
    rec = _record(path, model, range(3))
    monkeypatch.setattr(_durable, "INTERVAL_S", 0.0)
    log = _fsync_log(monkeypatch)
    _set_step(model, 3)
    rec.record(3, metrics={"train_loss": _loss(3)})
    fallback_tmp = next(i for i, p in enumerate(log) if "/_commit/.zarr.json." in p)
    synced = set(log[:fallback_tmp])
    rows = {str(path / "_tail" / "rows" / f"c.{r}.0") for r in range(4)}
    assert rows <= synced  # every row file the fallback lists, before it
    assert {str(path / "_tail" / "rows"), str(path)} <= synced  # and their folders
    monkeypatch.undo()
    rec.close()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_put_file_syncs_a_replacement_before_swapping_it_in(tmp_path, monkeypatch):
    target = tmp_path / "chunk"
    log = _fsync_log(monkeypatch)
    assert _io.put_file(target, b"new", sync_over=True) is False  # a new file: not synced
    assert log == []
    assert _io.put_file(target, b"newer", sync_over=True) is True
    assert len(log) == 1 and ".chunk." in log[0]  # the temporary file, before the swap
    assert target.read_bytes() == b"newer"
    assert _io.put_file(target, b"plain") is False and len(log) == 1


def test_grokscope_verify_says_it_read_the_fallback(tmp_path, capsys):
    from grokscope.cli import main

    path = tmp_path / "run.zarr"
    _power_cut(_record(path, _sequential(), range(10)))
    assert main(["verify", str(path)]) == 0
    assert "fallback" not in capsys.readouterr().out
    (path / "zarr.json").write_bytes(b"")
    with pytest.warns(UserWarning, match="holds 8 steps"):
        assert main(["verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert ": ok (" in out and "read from the durable fallback root _commit/zarr.json" in out
