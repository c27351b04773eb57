"""Chunk checksums: silent corruption of a store is detected on read.

Every array a Recorder writes ends its codec chain with zarr v3's ``crc32c`` codec; grokscope's
readers (and plain zarr) verify it, and a missing chunk of a committed row is an error, never
NaN. Stores written before checksums (``Recorder(checksum=False)`` writes them) read as before.
"""

from __future__ import annotations

import os
import warnings

import google_crc32c
import numpy as np
import pytest
import torch
import xarray as xr
import zarr

import grokscope as gs
from grokscope.cli import main
from grokscope.errors import CorruptStoreError
from grokscope.store import Recorder, open_run
from tests._store_helpers import TinyNet, check_run_exact, fill_step, tiny_data

STEPS = [0, 1, 2, 5, 10]
KEY = "fc1.weight"  # (8, 4) float32: 128 data bytes per chunk
ROW = 3  # step 5


def record(path, steps=STEPS, **kw):
    model = TinyNet()
    kw.setdefault("export_program", False)
    # these tests damage one step's chunk file: the per-step layout (stores written before
    # shards, lz4 and consolidated stores, a sharded store's tail while recording);
    # tests/test_store_shards.py damages the shards a closed store holds
    kw.setdefault("steps_per_shard", None)
    with Recorder(path, model, tiny_data(), **kw) as rec:
        for s in steps:
            fill_step(model, s)
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            rec.record(s, metrics={"train_loss": s * 0.5, "test_acc": 0.25}, optimizer=opt)
    return model


def chunk_path(path, name=KEY, row=ROW):
    ndim = zarr.open_array(path, path=name, mode="r").ndim
    return path / name / "c" / str(row) / ("/".join("0" * (ndim - 1)))


def param_nbytes(name=KEY):
    return TinyNet().state_dict()[name].numel() * 4


@pytest.fixture
def path(tmp_path):
    p = tmp_path / "run.zarr"
    record(p)
    return p


def _no_warnings():
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("error")  # a warning instead of the error fails the test
    return ctx


# ---------------------------------------------------------------------------- (a) plausible
def test_plausible_floats_of_the_same_length_are_detected(path):
    """A weight chunk overwritten with believable weights (checksum not recomputed)."""
    chunk = chunk_path(path)
    raw = chunk.read_bytes()
    n = param_nbytes()
    fake = (np.arange(n // 4, dtype=np.float32) * 0.01 - 0.1).tobytes()
    chunk.write_bytes(fake + raw[n:])  # same length; any trailing checksum kept as it was
    run = open_run(path)
    with pytest.raises(CorruptStoreError, match=r"'fc1\.weight'.*step 5.*[Rr]estore"):
        run.state_dict_at(5)
    with pytest.raises(CorruptStoreError, match=r"fc1\.weight.*checksum"):
        _ = run.params[KEY].values  # the lazy (dask) view
    with pytest.raises(CorruptStoreError, match=r"fc1\.weight"):
        run.trajectory(KEY)
    with pytest.raises(CorruptStoreError, match=r"fc1\.weight"):
        run.trajectory(KEY, index=(0, 0))
    with pytest.raises(CorruptStoreError, match=r"fc1\.weight.*step 5"):
        gs.analyze(path, ["curves"], model=TinyNet, progress=False, num_threads=1)
    run.state_dict_at(10)  # the other steps still read


# ---------------------------------------------------------------------------- (b) random
@pytest.mark.parametrize("compression", [None, "lz4"])
def test_random_bytes_raise_not_nan(tmp_path, compression):
    p = tmp_path / "run.zarr"
    record(p, compression=compression)
    chunk = chunk_path(p)
    n = len(chunk.read_bytes())
    rng = np.random.default_rng(0)
    chunk.write_bytes(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    run = open_run(p)
    ctx = _no_warnings()
    try:
        with pytest.raises(CorruptStoreError, match=r"fc1\.weight.*step 5"):
            run.state_dict_at(5)
        with pytest.raises(CorruptStoreError, match=r"fc1\.weight"):
            _ = run.params[KEY].values
    finally:
        ctx.__exit__(None, None, None)


def test_one_flipped_bit_in_a_compressed_chunk(tmp_path):
    """bytes -> blosc -> crc32c: the checksum covers the compressed bytes."""
    p = tmp_path / "run.zarr"
    record(p, compression="lz4")
    codecs = [type(c).__name__ for c in zarr.open_array(p, path=KEY, mode="r").metadata.codecs]
    assert codecs == ["BytesCodec", "BloscCodec", "Crc32cCodec"]
    chunk = chunk_path(p)
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    chunk.write_bytes(bytes(raw))
    with pytest.raises(CorruptStoreError, match=r"fc1\.weight.*step 5.*checksum"):
        open_run(p).state_dict_at(5)


# ---------------------------------------------------------------------------- (c) missing
@pytest.mark.parametrize("name", ["train_loss", "test_acc", "nonfinite"])
def test_a_deleted_metric_chunk_is_an_error_not_nan(path, name):
    (path / name / "c" / "0").unlink()
    run = open_run(path)
    with pytest.raises(CorruptStoreError, match=rf"'{name}'.*missing"):
        _ = run.metrics[name].values
    with pytest.raises(CorruptStoreError, match=rf"'{name}'.*missing"):
        run.trajectory(name)
    # a writer re-opening the store refuses to rewrite the lost values as NaN
    with pytest.raises(CorruptStoreError, match=rf"'{name}'.*missing"):
        Recorder(path, TinyNet(), tiny_data())


def test_a_deleted_step_chunk_is_an_error(path):
    (path / "step" / "c" / "0").unlink()
    with pytest.raises(CorruptStoreError, match=r"'step'.*missing"):
        open_run(path)


def test_a_deleted_weight_or_data_chunk_is_an_error(path, tmp_path):
    chunk_path(path).unlink()
    with pytest.raises(CorruptStoreError, match=r"fc1\.weight.*step 5.*missing"):
        open_run(path).trajectory(KEY, index=(1, 1))
    (path / "data" / "x_train" / "c" / "0" / "0").unlink()
    with pytest.raises(CorruptStoreError, match=r"data/x_train.*missing"):
        _ = open_run(path).data


def test_a_metric_first_logged_late_has_every_chunk(tmp_path):
    """Rows before a metric's first value are NaN and stored (so a missing chunk is damage)."""
    p = tmp_path / "run.zarr"
    model = TinyNet()
    with Recorder(p, model, None, export_program=False) as rec:
        for s in range(1030):
            rec.record(s, metrics={"late": 1.0} if s >= 1027 else None)
    run = open_run(p)
    late = run.trajectory("late")
    assert np.isnan(late[:1027]).all() and (late[1027:] == 1.0).all()
    assert (p / "late" / "c" / "0").exists()


# ---------------------------------------------------------------------------- (d) truncated
def test_a_truncated_chunk_is_an_error(path):
    chunk = chunk_path(path)
    chunk.write_bytes(chunk.read_bytes()[: param_nbytes() // 2])
    run = open_run(path)
    # one entry before the cut: a byte-range read would not notice, a verified read does
    with pytest.raises(CorruptStoreError, match=r"fc1\.weight.*step 5.*truncated"):
        run.trajectory(KEY, index=(0, 0))
    with pytest.raises(CorruptStoreError, match=r"fc1\.weight.*truncated"):
        run.state_dict_at(5)


def test_a_truncated_or_changed_resume_state_is_an_error(path):
    meta = open_run(path).meta["commit"]["resume"]
    chunk = path / meta["key"] / "c" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[100] ^= 0x20  # one flipped bit inside the torch.save archive
    chunk.write_bytes(bytes(raw))
    rec = Recorder(path, TinyNet(), tiny_data())
    try:
        with pytest.raises(CorruptStoreError, match=r"_resume/s10.*checksum"):
            rec.resume_state()
    finally:
        rec.close()


def test_a_changed_data_split_is_an_error(path):
    chunk = path / "data" / "x_train" / "c" / "0" / "0"
    raw = chunk.read_bytes()
    n = tiny_data().x_train.numel() * 4
    chunk.write_bytes(np.full(n // 4, 0.5, dtype=np.float32).tobytes() + raw[n:])
    with pytest.raises(CorruptStoreError, match=r"data/x_train.*checksum"):
        _ = open_run(path).data


# ---------------------------------------------------------------------------- (e) legacy
def test_a_store_without_checksums_reads_as_before(tmp_path):
    p = tmp_path / "legacy.zarr"
    model = record(p, checksum=False)
    grp = zarr.open_group(p, mode="r")
    for name in (KEY, "step", "nonfinite", "train_loss", "data/x_train"):
        assert [type(c).__name__ for c in grp[name].metadata.codecs] == ["BytesCodec"]
    assert chunk_path(p).stat().st_size == param_nbytes()  # no trailing checksum
    run = open_run(p)
    check_run_exact(run, model)
    np.testing.assert_array_equal(run.trajectory(KEY, index=(1, 2)), run.steps + 0.0)
    assert torch.equal(run.data.x_train, tiny_data().x_train)
    assert open_run(p).meta["commit"]["resume"]["step"] == 10
    # appending with this code keeps the store's format; a metric first logged now reads NaN
    # before (its earlier chunk written as fill), exactly as before
    with Recorder(p, model, tiny_data()) as rec:
        assert rec.resume_state()["step"] == 10
        fill_step(model, 11)
        rec.record(11, metrics={"train_loss": 5.5, "new": 1.0})
    run = open_run(p)
    assert [type(c).__name__ for c in zarr.open_array(p, path="new", mode="r").metadata.codecs] \
        == ["BytesCodec"]
    np.testing.assert_array_equal(run.trajectory("new"), [np.nan] * 5 + [1.0])
    check_run_exact(run, model)


def test_a_legacy_metric_never_logged_in_a_chunk_reads_nan(tmp_path):
    """Old writers left a late metric's earlier chunks unwritten: still NaN, no error."""
    p = tmp_path / "legacy.zarr"
    model = TinyNet()
    with Recorder(p, model, None, export_program=False, checksum=False) as rec:
        for s in range(1026):
            rec.record(s, metrics={"late": 2.0} if s == 1025 else None)
    (p / "late" / "c" / "0").unlink()  # what the old writer left: no chunk 0
    late = open_run(p).trajectory("late")
    assert np.isnan(late[:1025]).all() and late[1025] == 2.0


# ---------------------------------------------------------------------------- (f) plain zarr
def test_every_array_carries_crc32c_and_plain_zarr_verifies_it(tmp_path):
    p = tmp_path / "run.zarr"
    model = record(p, export_program=True)
    grp = zarr.open_group(p, mode="r")
    arrays = {}

    def walk(g, prefix=""):
        for name, node in g.members():
            if isinstance(node, zarr.Array):
                arrays[prefix + name] = node
            else:
                walk(node, prefix + name + "/")

    walk(grp)
    assert {KEY, "step", "nonfinite", "train_loss", "data/x_train", "data/extra.w_star",
            "_model/program"} <= set(arrays)
    assert any(k.startswith("_resume/") for k in arrays)
    for name, arr in arrays.items():
        assert type(arr.metadata.codecs[-1]).__name__ == "Crc32cCodec", name
    # the recorder's raw chunk is the bytes followed by their CRC32C, as zarr's codec writes it
    raw = chunk_path(p).read_bytes()
    n = param_nbytes()
    assert len(raw) == n + 4
    assert raw[n:] == int(google_crc32c.value(raw[:n])).to_bytes(4, "little")
    fill_step(model, 5)
    np.testing.assert_array_equal(zarr.open_array(p, path=KEY, mode="r")[ROW],
                                  model.state_dict()[KEY].numpy())
    np.testing.assert_array_equal(zarr.open_array(p, path="train_loss", mode="r")[:],
                                  np.array(STEPS) * 0.5)
    ds = xr.open_zarr(p)
    np.testing.assert_array_equal(ds["step"].values, STEPS)
    # plain zarr detects a change too
    chunk_path(p).write_bytes(bytes(n) + raw[n:])
    with pytest.raises(ValueError, match="checksum"):
        zarr.open_array(p, path=KEY, mode="r")[ROW]


# ---------------------------------------------------------------------------- (g) the CLI
def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out + err


def test_cli_reports_a_corrupt_store_without_a_traceback(path, capsys):
    (path / "test_acc" / "c" / "0").unlink()
    code, text = _cli(capsys, "info", str(path))
    assert code != 0
    assert "test_acc" in text and "missing" in text and "Restore" in text
    assert "Traceback" not in text

    chunk = chunk_path(path)
    raw = chunk.read_bytes()
    n = param_nbytes()
    chunk.write_bytes(np.full(n // 4, 0.125, dtype=np.float32).tobytes() + raw[n:])
    code, text = _cli(capsys, "analyze", str(path), "-q", "-m", "curves", "--threads", "1",
                      "--model", "tests._store_helpers:TinyNet")
    assert code != 0
    assert "fc1.weight" in text and "step 5" in text and "checksum" in text
    assert "Traceback" not in text


def test_checksums_change_no_value(tmp_path):
    """The same record with and without checksums reads back identically."""
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    record(a)
    record(b, checksum=False)
    ra, rb = open_run(a), open_run(b)
    for key in ra.params:
        np.testing.assert_array_equal(ra.trajectory(key), rb.trajectory(key))
    for name in ("train_loss", "test_acc", "nonfinite"):
        np.testing.assert_array_equal(ra.trajectory(name), rb.trajectory(name))
    assert os.path.getsize(chunk_path(a)) == os.path.getsize(chunk_path(b)) + 4


# ---------------------------------------------------------------------------- Run.verify
def test_verify_reads_every_chunk_and_lists_every_damaged_one(path):
    counts = open_run(path).verify()
    assert counts["chunks"] == 4 * len(STEPS) + 4  # 4 tensors x 5 rows, 4 scalar arrays x 1
    assert counts["arrays"] == 4 + 4 + 2  # + the data split and the resume state
    chunk = chunk_path(path, "fc2.bias", row=1)
    chunk.write_bytes(bytes(12) + chunk.read_bytes()[12:])
    (path / "test_acc" / "c" / "0").unlink()
    run = open_run(path)  # opening reads only the steps
    with pytest.raises(CorruptStoreError) as info:
        run.verify()
    msg = str(info.value)
    assert msg.startswith(f"2 damaged part(s) in {path}")
    assert "'fc2.bias'" in msg and "step 1" in msg and "checksum" in msg
    assert "'test_acc'" in msg and "missing" in msg and "Restore the store" in msg


def test_a_changed_program_chunk_is_named_by_its_checksum(tmp_path):
    """The stored torch.export program (bytes -> blosc zstd -> crc32c) is checked by zarr's
    codec on read; its failure becomes a CorruptStoreError naming the program."""
    p = tmp_path / "run.zarr"
    record(p, steps=[0, 1], export_program=True)
    chunk = p / "_model" / "program" / "c" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x04
    chunk.write_bytes(bytes(raw))
    with pytest.raises(CorruptStoreError, match=r"_model/program.*CRC32C"):
        open_run(p).model_at(1)


def test_cli_verify_names_a_damaged_weight_that_info_does_not_read(path, capsys):
    code, text = _cli(capsys, "verify", str(path))
    assert code == 0 and "ok (" in text
    chunk = chunk_path(path)
    raw = chunk.read_bytes()
    chunk.write_bytes(bytes(8) + raw[8:])
    code, text = _cli(capsys, "verify", str(path))
    assert code != 0
    assert "fc1.weight" in text and "checksum" in text and "Traceback" not in text
