"""Files per step: committed steps compacted into zarr v3 shards (steps_per_shard,
compact_every), read back bit for bit, checked, resumed, and safe against a kill at any point
of a compaction."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from torch import nn

from grokscope.errors import ConfigError, CorruptStoreError
from grokscope.store import Recorder, open_run
from grokscope.store import recorder as recorder_mod
from tests._store_helpers import (
    TinyNet,
    check_run_exact,
    exit_code_of_forked,
    fill_step,
    tiny_data,
)

TENSORS = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")


def _record(path, steps, *, model=None, **kw):
    model = model or TinyNet()
    kw.setdefault("export_program", False)
    with Recorder(path, model, tiny_data(), **kw) as rec:
        for s in steps:
            fill_step(model, s)
            rec.record(s, metrics={"train_loss": s * 0.5})
    return model


def _entries(path) -> list[str]:
    """Every file and folder under ``path`` (relative), the way an inode count sees them."""
    out = []
    for dirpath, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            out.append(os.path.relpath(os.path.join(dirpath, name), path))
    return sorted(out)


class RawEinsumNet(nn.Module):
    """Raw parameters, custom names, einsum (how research code writes models)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.W_in = nn.Parameter(torch.randn(4, 6, generator=g))
        self.W_out = nn.Parameter(torch.randn(6, 3, generator=g))
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.einsum("bh,ho->bo", torch.relu(x @ self.W_in), self.W_out)


# ---------------------------------------------------------------------------- layout
def test_files_after_close_follow_the_shard_formula(tmp_path):
    """A closed store holds, per tensor, its zarr.json plus ceil(n / S) shard files (no
    folders, no tail); everything else does not grow with the steps (n < 1024)."""
    counts = {}
    for n in (1, 8, 9, 50):
        path = tmp_path / f"run{n}.zarr"
        _record(path, range(n), steps_per_shard=8, compact_every=8)
        entries = _entries(path)
        assert not [e for e in entries if e.startswith("_tail")]
        for t in TENSORS:
            mine = [e for e in entries if e.split(os.sep)[0] == t]
            assert len(mine) == 2 + -(-n // 8), mine  # the folder, zarr.json, the shards
        counts[n] = len(entries)
    base = counts[1] - 4 * 1
    for n, total in counts.items():
        assert total == base + 4 * -(-n // 8)
    # root zarr.json; data/ (folder, zarr.json, 2 x 5 entries for the 2-d x splits and
    # 3 x 4 for y_train, y_test, extra.w_star); step, nonfinite, train_loss (4 each: folder,
    # zarr.json, c/, c/0); the 4 tensor folders with their zarr.json; _commit/ and its
    # zarr.json (the durable fallback root)
    assert base == 1 + (2 + 2 * 5 + 3 * 4) + 3 * 4 + 4 * 2 + 2 == 47


def test_sharded_array_metadata_is_plain_zarr_sharding(tmp_path):
    path = tmp_path / "run.zarr"
    _record(path, range(5), steps_per_shard=4)
    doc = json.loads((path / "fc1.weight" / "zarr.json").read_text())
    assert doc["chunk_grid"]["configuration"]["chunk_shape"] == [4, 8, 4]
    (codec,) = doc["codecs"]
    assert codec["name"] == "sharding_indexed"
    conf = codec["configuration"]
    assert conf["chunk_shape"] == [1, 8, 4]
    assert [c["name"] for c in conf["codecs"]] == ["bytes", "crc32c"]
    assert [c["name"] for c in conf["index_codecs"]] == ["bytes", "crc32c"]
    assert doc["chunk_key_encoding"] == {"name": "default", "configuration": {"separator": "."}}
    meta = json.loads((path / "zarr.json").read_text())["attributes"]["grokscope"]
    assert meta["shards"] == {"steps_per_shard": 4, "compact_every": 4, "tail": "rows"}
    assert meta["commit"]["compacted"] == meta["commit"]["count"] == 5
    # plain zarr and xarray read every row, checking each step's checksum
    arr = zarr.open_array(path, path="fc1.weight", mode="r")
    np.testing.assert_array_equal(arr[:, 0, 0], np.arange(5, dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ds = xr.open_zarr(path)
    np.testing.assert_array_equal(ds["fc2.bias"].values[:, 0],
                                  np.arange(5, dtype=np.float32) + np.float32(0.003))


def test_periodic_compaction_while_recording(tmp_path):
    """Every compact_every steps the full shards are compacted; the tail holds the rest."""
    path = tmp_path / "run.zarr"
    model = TinyNet()
    with Recorder(path, model, tiny_data(), export_program=False, steps_per_shard=4,
                  compact_every=8) as rec:
        seen = []
        for s in range(19):
            fill_step(model, s)
            rec.record(s, metrics={"train_loss": s * 0.5})
            seen.append(rec.compacted)
            run = open_run(path)  # a reader mid-recording sees every committed row exactly
            check_run_exact(run, model)
        assert seen == [0] * 7 + [8] * 8 + [16] * 4
        tail = sorted(os.listdir(path / "_tail" / "rows"))  # one file per step, every tensor
        assert tail == ["c.16.0", "c.17.0", "c.18.0", "zarr.json"]
        assert sorted(os.listdir(path / "_tail")) == ["rows", "zarr.json"]
    assert not (path / "_tail").exists()


# ---------------------------------------------------------------------------- reads
def _random_weights(model: nn.Module, step: int) -> None:
    g = torch.Generator().manual_seed(step)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("factory", [
    TinyNet,
    lambda: nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)),
    RawEinsumNet,
])
def test_reads_are_bitwise_equal_to_the_per_step_layout(tmp_path, factory):
    steps = [0, 1, 2, 5, 9, 14, 20, 27, 35, 44, 54]
    reads = {}
    for layout, kw in (("per_step", {"steps_per_shard": None}),
                       ("sharded", {"steps_per_shard": 4, "compact_every": 4})):
        path = tmp_path / f"{layout}.zarr"
        model = factory()
        with Recorder(path, model, tiny_data(), export_program=False, **kw) as rec:
            for s in steps:
                _random_weights(model, s)
                rec.record(s, metrics={"train_loss": s * 0.5})
            open_mid = open_run(path)  # 8 rows in shards, 3 in the tail
            mid = {k: open_mid.trajectory(k) for k in open_mid.params.data_vars}
        run = open_run(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            plain = xr.open_zarr(path).load()
        reads[layout] = {
            "sd": [run.state_dict_at(s) for s in steps],
            "traj": {k: run.trajectory(k) for k in run.params.data_vars},
            "some": {k: run.trajectory(k, steps=[44, 0, 20]) for k in run.params.data_vars},
            "lazy": run.params.load(),
            "plain": plain,
            "mid": mid,
            "verify": run.verify()["arrays"],
        }
    a, b = reads["per_step"], reads["sharded"]
    for sa, sb in zip(a["sd"], b["sd"]):
        assert sa.keys() == sb.keys()
        for k in sa:
            assert sa[k].numpy().tobytes() == sb[k].numpy().tobytes()
    for k in a["traj"]:
        assert a["traj"][k].tobytes() == b["traj"][k].tobytes() == b["mid"][k].tobytes()
        assert a["some"][k].tobytes() == b["some"][k].tobytes()
        assert a["lazy"][k].values.tobytes() == b["lazy"][k].values.tobytes()
        assert a["plain"][k].values.tobytes() == b["plain"][k].values.tobytes()
    assert a["verify"] == b["verify"]
    key = next(iter(a["traj"]))
    index = (0,) * (a["traj"][key].ndim - 1)
    run = open_run(tmp_path / "sharded.zarr")
    np.testing.assert_array_equal(run.trajectory(key, index=index),
                                  a["traj"][key][(slice(None), *index)])


# ---------------------------------------------------------------------------- integrity
@pytest.fixture
def sharded(tmp_path):
    path = tmp_path / "run.zarr"
    _record(path, range(10), steps_per_shard=4)  # shards of rows 0..3, 4..7, 8..9
    return path


def test_verify_detects_a_changed_byte_inside_a_shard(sharded):
    shard = sharded / "fc1.weight" / "c.1.0.0"
    raw = bytearray(shard.read_bytes())
    row_bytes = 8 * 4 * 4 + 4
    raw[2 * row_bytes + 5] ^= 0x01  # row 6 (shard 1, inner chunk 2), one bit
    shard.write_bytes(bytes(raw))
    run = open_run(sharded)
    with pytest.raises(CorruptStoreError, match=r"fc1\.weight.*row 6 \(step 6\) in shard 1.*CRC32C"):
        run.state_dict_at(6)
    run.state_dict_at(5)  # the other rows of the shard still read
    run.state_dict_at(9)
    with pytest.raises(CorruptStoreError, match=r"fc1\.weight.*row 6"):
        run.trajectory("fc1.weight")
    with pytest.raises(CorruptStoreError, match=r"(?s)1 damaged part.*fc1\.weight.*row 6"):
        run.verify()
    arr = zarr.open_array(sharded, path="fc1.weight", mode="r")
    with pytest.raises(ValueError, match="checksum"):  # plain zarr checks it too
        arr[6]


def test_a_damaged_truncated_or_missing_shard_is_named(sharded):
    shard = sharded / "fc2.bias" / "c.0.0"
    raw = shard.read_bytes()
    shard.write_bytes(raw[:-3] + bytes([raw[-3] ^ 0xFF]) + raw[-2:])  # the index's bytes
    with pytest.raises(CorruptStoreError, match=r"fc2\.bias.*shard 0.*index"):
        open_run(sharded).state_dict_at(2)
    shard.write_bytes(raw[:20])
    with pytest.raises(CorruptStoreError, match=r"shard 0.*truncated"):
        open_run(sharded).trajectory("fc2.bias")
    shard.unlink()
    with pytest.raises(CorruptStoreError, match=r"fc2\.bias.*shard 0.*missing"):
        open_run(sharded).verify()
    # a writer never compacts over damage: rewriting the partial shard 2 needs its rows
    (sharded / "fc2.bias" / "c.2.0").unlink()
    model = TinyNet()
    rec = Recorder(sharded, model, tiny_data())
    with pytest.raises(CorruptStoreError, match=r"fc2\.bias.*shard 2.*missing"):
        for s in range(10, 20):
            fill_step(model, s)
            rec.record(s, metrics={"train_loss": s * 0.5})
    assert rec.count == 16 and rec.compacted == 10  # the steps stay committed in the tail
    with pytest.raises(CorruptStoreError, match="shard 2"):
        rec.close()


def test_an_index_pointing_elsewhere_is_damage_not_other_data(sharded):
    shard = sharded / "fc1.bias" / "c.0.0"
    raw = bytearray(shard.read_bytes())
    n_index = 4 * 16
    index = np.frombuffer(bytes(raw[-n_index - 4:-4]), dtype="<u8").reshape(4, 2).copy()
    index[1, 1] = 8  # a shorter chunk than a row
    body = index.tobytes()
    from grokscope.store._io import crc32c

    raw[-n_index - 4:] = body + crc32c(body)
    shard.write_bytes(bytes(raw))
    with pytest.raises(CorruptStoreError, match=r"row 1 \(step 1\) in shard 0 holds 8 bytes"):
        open_run(sharded).state_dict_at(1)


# ---------------------------------------------------------------------------- resume
def test_resume_after_compaction_rewrites_the_partial_shard(tmp_path):
    path = tmp_path / "run.zarr"
    model = _record(path, range(10), steps_per_shard=4)
    before = (path / "fc1.weight" / "c.2.0.0").read_bytes()  # rows 8, 9
    # stored settings win over the ones passed when re-opening
    with Recorder(path, model, tiny_data(), steps_per_shard=64, compact_every=1) as rec:
        assert rec.compacted == 10 and rec.count == 10
        for s in range(10, 17):
            fill_step(model, s)
            rec.record(s, metrics={"train_loss": s * 0.5})
        assert rec.compacted == 16  # rows 8..15: shard 2 rewritten with rows 10, 11 added
    after = (path / "fc1.weight" / "c.2.0.0").read_bytes()
    assert after[:2 * 132] == before[:2 * 132]  # earlier rows keep their bytes and offsets
    run = open_run(path)
    check_run_exact(run, model)
    assert run.steps.tolist() == list(range(17))
    assert run.verify()["arrays"] == 8
    assert sorted(os.listdir(path / "fc1.weight")) == [f"c.{k}.0.0" for k in range(5)] + [
        "zarr.json"]


def test_old_per_step_stores_read_and_append_in_their_layout(tmp_path):
    path = tmp_path / "run.zarr"
    model = _record(path, range(6), steps_per_shard=None)
    meta = json.loads((path / "zarr.json").read_text())["attributes"]["grokscope"]
    # what stores written before shards hold: no shard settings, no compacted count
    assert "shards" not in meta and "compacted" not in meta["commit"]
    with Recorder(path, model, tiny_data()) as rec:  # the default would shard a new store
        for s in range(6, 9):
            fill_step(model, s)
            rec.record(s, metrics={"train_loss": s * 0.5})
    assert (path / "fc1.weight" / "c" / "8" / "0" / "0").is_file()
    check_run_exact(open_run(path), model)


def test_lz4_and_consolidated_keep_the_per_step_layout(tmp_path):
    for kw in ({"compression": "lz4"}, {"commit": "consolidated"}):
        path = tmp_path / f"{next(iter(kw.values()))}.zarr"
        model = _record(path, range(3), **kw)
        assert (path / "fc1.weight" / "c" / "2" / "0" / "0").is_file()
        check_run_exact(open_run(path), model)


def test_bad_settings_are_refused():
    for kw in ({"steps_per_shard": 0}, {"steps_per_shard": 2.5}, {"compact_every": 0},
               {"steps_per_shard": True}, {"steps_per_shard": 1 << 17}):
        with pytest.raises(ConfigError, match="integer from 1"):
            Recorder("memory://never", TinyNet(), tiny_data(), **kw)


# ---------------------------------------------------------------------------- crafted metadata
@pytest.mark.parametrize("change, match", [
    (lambda m: m["commit"].__setitem__("compacted", 11), "compacted 11"),
    (lambda m: m["commit"].__setitem__("compacted", -1), "compacted -1"),
    (lambda m: m["commit"].__setitem__("compacted", "../../etc"), "compacted"),
    (lambda m: m.__setitem__("shards", {"steps_per_shard": 0, "compact_every": 4}),
     "steps_per_shard 0"),
    (lambda m: m.__setitem__("shards", {"steps_per_shard": 4, "compact_every": True}),
     "compact_every True"),
    (lambda m: m.__setitem__("shards", "big"), "'shards' is not an object"),
    (lambda m: m.pop("shards"), "names no 'shards'"),
])
def test_crafted_shard_metadata_is_refused(sharded, change, match):
    doc = json.loads((sharded / "zarr.json").read_text())
    change(doc["attributes"]["grokscope"])
    (sharded / "zarr.json").write_text(json.dumps(doc))
    before = _entries(sharded)
    with pytest.raises(CorruptStoreError, match=match):
        open_run(sharded)
    with pytest.raises(CorruptStoreError, match=match):
        Recorder(sharded, TinyNet(), tiny_data())
    assert _entries(sharded) == before


def test_a_compacted_count_beyond_the_shards_is_damage(sharded):
    """A crafted boundary that names rows no shard holds is reported, never read as NaN."""
    doc = json.loads((sharded / "zarr.json").read_text())
    doc["attributes"]["grokscope"]["commit"]["compacted"] = 8
    (sharded / "zarr.json").write_text(json.dumps(doc))  # rows 8, 9 "in the tail": none
    with pytest.raises(CorruptStoreError, match="missing"):
        open_run(sharded)
    with pytest.raises(CorruptStoreError, match="missing"):
        Recorder(sharded, TinyNet(), tiny_data())


def test_a_store_sharded_otherwise_is_refused(sharded):
    doc = json.loads((sharded / "fc1.bias" / "zarr.json").read_text())
    doc["codecs"][0]["configuration"]["index_location"] = "start"
    (sharded / "fc1.bias" / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(CorruptStoreError, match="sharded in a way grokscope does not write"):
        open_run(sharded)


def test_a_zero_inner_chunk_is_damage_not_a_crash(sharded):
    """zarr's own validation divides by the inner chunk shape (fuzz case 10628 found a
    ZeroDivisionError escaping open_run)."""
    doc = json.loads((sharded / "fc1.bias" / "zarr.json").read_text())
    doc["codecs"][0]["configuration"]["chunk_shape"] = [0, 8]
    (sharded / "fc1.bias" / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(CorruptStoreError, match="'fc1.bias'.*unreadable"):
        open_run(sharded)


# ---------------------------------------------------------------------------- kills
def _kill_child(path, kill_at: int) -> int:
    """Fork a writer that records steps 0..9 (shards of 4, compacting every 4), closes, then
    records 10..17 and closes, exiting at the ``kill_at``-th compaction kill point; its exit
    status (77: killed there). It writes how many kill points it passed to ``hits.txt``."""
    def child() -> None:
        os.environ[recorder_mod.KILL_ENV] = str(kill_at)
        recorder_mod._kill_hits = 0
        model = TinyNet()
        for steps in (range(0, 10), range(10, 18)):
            with Recorder(path, model, tiny_data(), export_program=False,
                          steps_per_shard=4, compact_every=4) as rec:
                for s in steps:
                    fill_step(model, s)
                    rec.record(s, metrics={"train_loss": s * 0.5})
        (path.parent / "hits.txt").write_text(str(recorder_mod._kill_hits))

    return exit_code_of_forked(child)


def _check_killed_store(path) -> None:
    model = TinyNet()
    run = open_run(path)
    n = len(run.steps)
    assert run.steps.tolist() == list(range(n))  # a prefix: nothing committed was lost
    check_run_exact(run, model)
    run.verify()
    with Recorder(path, model, tiny_data()) as rec:  # resumes after the kill
        assert rec.count == n
        for s in range(n, n + 5):
            fill_step(model, s)
            rec.record(s, metrics={"train_loss": s * 0.5})
    run = open_run(path)
    assert run.steps.tolist() == list(range(n + 5))
    check_run_exact(run, model)
    run.verify()
    assert not (path / "_tail").exists()
    assert not [p for p in path.rglob("*") if p.name.endswith(".gstmp")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ds = xr.open_zarr(path)
    np.testing.assert_array_equal(ds["fc1.bias"].values[:, 0], np.arange(n + 5, dtype=np.float32)
                                  + np.float32(0.001))


pytestmark_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


@pytestmark_fork
@pytest.mark.parametrize("kill_at", [2, 9, 10, 40])
def test_a_kill_inside_compaction_loses_nothing(tmp_path, kill_at):
    path = tmp_path / "run.zarr"
    assert _kill_child(path, kill_at) == 77  # the child stopped at that point
    _check_killed_store(path)


@pytestmark_fork
@pytest.mark.slow
def test_a_kill_at_every_compaction_point_loses_nothing(tmp_path):
    assert _kill_child(tmp_path / "count.zarr", 10**9) == 0
    total = int((tmp_path / "hits.txt").read_text())
    assert 60 < total < 1000
    for kill_at in range(1, total + 1):
        path = tmp_path / f"run{kill_at}.zarr"
        assert _kill_child(path, kill_at) == 77, kill_at
        _check_killed_store(path)


def test_a_reader_opened_before_a_compaction_still_reads_every_row(tmp_path):
    """The writer deletes the per-step files of the rows it compacted; a Run opened before
    reads those rows from their shards (it re-reads the published boundary)."""
    path = tmp_path / "run.zarr"
    model = TinyNet()
    with Recorder(path, model, tiny_data(), export_program=False, steps_per_shard=4,
                  compact_every=100) as rec:
        for s in range(7):
            fill_step(model, s)
            rec.record(s, metrics={"train_loss": s * 0.5})
        early = open_run(path)
        lazy = early.params["fc1.bias"]  # built before the compaction: 7 one-row blocks
        assert list((path / "_tail" / "rows").glob("c.*"))
        assert rec.compact() == 7 and not list((path / "_tail" / "rows").glob("c.*"))
        check_run_exact(early, model)
        np.testing.assert_array_equal(lazy.values[:, 0],
                                      np.arange(7, dtype=np.float32) + np.float32(0.001))


def test_cli_verify_names_a_damaged_shard_row(sharded, capsys):
    from grokscope.cli import main

    assert main(["verify", str(sharded)]) == 0
    shard = sharded / "fc2.weight" / "c.0.0.0"
    raw = bytearray(shard.read_bytes())
    raw[3 * (3 * 8 * 4 + 4)] ^= 0x80  # row 3's first byte
    shard.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(["verify", str(sharded)]) != 0
    text = "".join(capsys.readouterr())
    assert "fc2.weight" in text and "row 3 (step 3)" in text and "CRC32C" in text
    assert "Traceback" not in text


def test_verify_rereads_an_index_a_reader_has_cached(sharded):
    run = open_run(sharded)
    run.state_dict_at(1)  # caches shard 0's index of every tensor
    shard = sharded / "fc1.weight" / "c.0.0.0"
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0x01  # inside the index: its checksum no longer matches
    shard.write_bytes(bytes(raw))
    run.state_dict_at(2)  # the cached index still points at intact, checksummed rows
    with pytest.raises(CorruptStoreError, match=r"fc1\.weight.*shard 0.*index"):
        run.verify()


def _open_with_stale_root(path, stale: dict, monkeypatch):
    """open_run that reads ``stale`` as the root document (what it held when a reader opened
    before a writer went on), then the real one."""
    from grokscope.store import _io

    real = _io.check_root
    calls = []

    def first_stale(store):
        calls.append(1)
        return stale if len(calls) == 1 else real(store)

    monkeypatch.setattr(_io, "check_root", first_stale)
    return open_run(path)


def test_a_reader_opening_after_the_tail_is_removed_reads_the_shards(tmp_path, monkeypatch):
    """open_run read the root before a writer's close compacted every row and removed the
    tail: the tail is not needed (the boundary is re-read), never reported as damage."""

    path = tmp_path / "run.zarr"
    model = TinyNet()
    rec = Recorder(path, model, tiny_data(), export_program=False, steps_per_shard=4)
    for s in range(6):
        fill_step(model, s)
        rec.record(s, metrics={"train_loss": s * 0.5})
    stale = json.loads((path / "zarr.json").read_text())  # compacted 4 of 6
    rec.close()  # compacts all 6, removes _tail
    run = _open_with_stale_root(path, stale, monkeypatch)
    assert stale["attributes"]["grokscope"]["commit"]["compacted"] == 4
    check_run_exact(run, model)
    run.verify()


def test_a_reader_whose_rows_were_compacted_past_its_count_builds_its_dask_view(tmp_path,
                                                                                 monkeypatch):
    """A reader that opened at 1 committed row learns, reading it, that a writer has since
    compacted 8: its lazy (dask) view still has its own 1 row (the watch race: 'Chunks do not
    add up to shape')."""

    path = tmp_path / "run.zarr"
    model = TinyNet()
    with Recorder(path, model, tiny_data(), export_program=False, steps_per_shard=4) as rec:
        fill_step(model, 0)
        rec.record(0, metrics={"train_loss": 0.0})
        stale = json.loads((path / "zarr.json").read_text())  # 1 row, none compacted
        first = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for s in range(1, 9):
            fill_step(model, s)
            rec.record(s, metrics={"train_loss": s * 0.5})
        run = _open_with_stale_root(path, stale, monkeypatch)
        assert stale["attributes"]["grokscope"]["commit"]["compacted"] == 0
        got = run.state_dict_at(0)  # row 0's tail chunk is gone: read from its shard
        for k, v in first.items():
            assert torch.equal(got[k], v), k
        view = run.params["fc1.weight"]
        assert view.shape[0] == 1
        np.testing.assert_array_equal(view.values[0], first["fc1.weight"].numpy())
