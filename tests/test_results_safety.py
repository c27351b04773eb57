"""Results in hostile and faulty places: read-only stores (a separate results store instead),
a full disk (StoreWriteError, no orphans left), readers during a rewrite, two analyses at once."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import grokscope as gs
from grokscope import cli, results_io
from grokscope.errors import CorruptStoreError, GrokscopeError, StoreError, StoreWriteError
from grokscope.measures import registry

from .conftest import record_tiny_run

CALLS: list[int] = []
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def counting_measure():
    @registry.register("_rcount")
    def _rcount(ckpt, *, scale=1.0):
        """Test measure: the first weight's mean times ``scale``."""
        CALLS.append(ckpt.step)
        w = next(iter(ckpt.model.parameters()))
        return xr.Dataset({"value": ((), float(w.detach().mean()) * scale)})

    CALLS.clear()
    yield "_rcount"
    registry._REGISTRY.pop("_rcount", None)


def _make_read_only(path: Path, monkeypatch) -> None:
    """Make the store at ``path`` read-only: chmod when that binds us, else (root ignores file
    modes) every write below ``path`` raises PermissionError as a read-only store would."""
    if os.geteuid() != 0:
        for dirpath, dirs, files in os.walk(path):
            for name in dirs + files:
                p = os.path.join(dirpath, name)
                os.chmod(p, os.stat(p).st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        os.chmod(path, os.stat(path).st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        return
    root = os.path.realpath(path)

    def inside(p) -> bool:
        return os.path.realpath(os.fspath(p)).startswith(root)

    def denied(p):
        return PermissionError(errno.EACCES, "Permission denied", os.fspath(p))

    real_mkdir, real_open, real_to_zarr = os.mkdir, os.open, xr.Dataset.to_zarr

    def mkdir(p, *args, **kwargs):
        if inside(p):
            raise denied(p)
        return real_mkdir(p, *args, **kwargs)

    def os_open(p, flags, *args, **kwargs):
        if inside(p) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise denied(p)
        return real_open(p, flags, *args, **kwargs)

    def to_zarr(self, store=None, *args, **kwargs):
        if isinstance(store, str | os.PathLike) and inside(store):
            raise denied(store)
        return real_to_zarr(self, store, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(xr.Dataset, "to_zarr", to_zarr)


def _restore_writable(path: Path) -> None:
    if os.geteuid() != 0:
        for dirpath, _dirs, files in os.walk(path):
            os.chmod(dirpath, os.stat(dirpath).st_mode | stat.S_IWUSR)
            for name in files:
                p = os.path.join(dirpath, name)
                os.chmod(p, os.stat(p).st_mode | stat.S_IWUSR)


def _orphans(run_path: Path) -> list[str]:
    results = run_path / "results"
    return sorted(n for n in os.listdir(results) if ".new-" in n or ".old-" in n) if results.exists() else []


# ---------------------------------------------------------------------------- read-only stores
def test_read_only_store_is_refused_before_computing(tmp_path, counting_measure, monkeypatch):
    path = tmp_path / "ro.zarr"
    record_tiny_run(path)
    _make_read_only(path, monkeypatch)
    try:
        with pytest.raises(GrokscopeError) as info:
            gs.analyze(str(path), ["_rcount"], progress=False)
        msg = str(info.value)
        assert "read-only" in msg and "results=" in msg and "--results" in msg
        assert isinstance(info.value, StoreWriteError)
        assert CALLS == []  # refused up front: nothing computed and thrown away
    finally:
        _restore_writable(path)


def test_read_only_store_cli_says_so_without_traceback(tmp_path, monkeypatch, capsys):
    path = tmp_path / "ro.zarr"
    record_tiny_run(path)
    _make_read_only(path, monkeypatch)
    try:
        rc = cli.main(["analyze", str(path), "-m", "curves", "-q", "--threads", "1"])
        err = capsys.readouterr().err
        assert rc != 0
        assert "Traceback" not in err and "--results" in err and "read-only" in err
    finally:
        _restore_writable(path)


def test_separate_results_store_for_a_read_only_run(tmp_path, counting_measure, monkeypatch, capsys):
    path, res = tmp_path / "ro.zarr", tmp_path / "ro-results.zarr"
    run = record_tiny_run(path)
    _make_read_only(path, monkeypatch)
    try:
        out = gs.analyze(str(path), ["_rcount", "curves"], results=str(res), progress=False)
        assert out["_rcount"].sizes["step"] == len(run.steps)
        assert not (path / "results").exists()
        # the run's reader finds them in the results store
        again = gs.open_run(path, results=res)
        assert sorted(again.results) == ["_rcount", "curves"]
        assert again.results["_rcount"].step.values.tolist() == run.steps.tolist()
        assert "_rcount" not in gs.open_run(path).results
        # plain xarray reads the results store
        plain = xr.open_zarr(str(res), group="results/_rcount", consolidated=False)
        assert plain.sizes["step"] == len(run.steps)
        # the store says whose results it holds
        import zarr

        info = zarr.open_group(str(res), mode="r").attrs[results_io.RESULTS_STORE_ATTR]
        assert info["run"] == str(path) and info["created"] == run.meta["created"]
        # a second analysis extends it without recomputing
        CALLS.clear()
        gs.analyze(str(path), ["_rcount"], results=str(res), progress=False)
        assert CALLS == []
        # the report reads the results store
        folder = gs.report(str(path), tmp_path / "rep", results=str(res), formats=("png",))
        import json

        summary = json.loads((folder / "summary.json").read_text())
        assert {"_rcount", "curves"} <= set(summary["measures_stored"])
        # the CLI: analyze and info with --results
        rc = cli.main(["analyze", str(path), "-m", "curves", "-q", "--results", str(res)])
        assert rc == 0
        rc = cli.main(["info", str(path), "--results", str(res)])
        assert rc == 0 and "results: _rcount, curves" in capsys.readouterr().out
        rc = cli.main(["report", str(path), "-o", str(tmp_path / "rep2"), "--results", str(res),
                       "--formats", "png", "-q"])
        assert rc == 0
        summary = json.loads((tmp_path / "rep2" / "summary.json").read_text())
        assert {"_rcount", "curves"} <= set(summary["measures_stored"])
    finally:
        _restore_writable(path)


def test_results_store_of_another_run_is_refused(tmp_path, counting_measure):
    a = record_tiny_run(tmp_path / "a.zarr", seed=0)
    b = record_tiny_run(tmp_path / "b.zarr", seed=1)
    res = tmp_path / "a-results.zarr"
    gs.analyze(a, ["_rcount"], results=str(res), progress=False)
    with pytest.raises(StoreError, match="belongs to another run"):
        gs.analyze(b, ["_rcount"], results=str(res), progress=False)
    with pytest.raises(StoreError, match="belongs to another run"):
        gs.open_run(b.path, results=res)
    with pytest.raises(StoreError, match="not a results store"):
        gs.analyze(a, ["_rcount"], results=str(b.path), progress=False)
    # the run's own path as results= means its own store
    gs.analyze(a, ["_rcount"], results=str(a.path), progress=False)
    assert "_rcount" in gs.open_run(a.path).results


# ---------------------------------------------------------------------------- disk full
def test_disk_full_raises_store_write_error_and_cleans_up(tmp_path, counting_measure, monkeypatch):
    run = record_tiny_run(tmp_path / "full.zarr")
    gs.analyze(run, ["_rcount"], progress=False)
    real = xr.Dataset.to_zarr

    def fill_disk(self, *args, **kwargs):
        real(self, *args, **kwargs)  # some files were written, then the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(xr.Dataset, "to_zarr", fill_disk)
    with pytest.raises(StoreWriteError) as info:
        gs.analyze(run, {"_rcount": {"scale": 3.0}}, progress=False, flush_seconds=0.0)
    monkeypatch.undo()
    assert "space" in str(info.value) and "run the analysis again" in str(info.value)
    assert _orphans(Path(run.path)) == []
    kept = gs.open_run(run.path).results["_rcount"]
    assert kept.attrs["param_scale"] == 1.0 and kept.sizes["step"] == len(run.steps)


def test_stale_orphans_are_removed_by_the_next_analysis(tmp_path, counting_measure):
    import shutil

    run = record_tiny_run(tmp_path / "o.zarr")
    gs.analyze(run, ["_rcount", "curves"], progress=False)
    results = Path(run.path) / "results"
    # what killed analyses leave behind: half-written new versions and a renamed old one
    shutil.copytree(results / "_rcount", results / "._rcount.new-0badc0de")
    shutil.copytree(results / "_rcount", results / "._rcount.old-0badc0de")
    shutil.copytree(results / "curves", results / ".curves.new-0badc0de")
    gs.analyze(run, ["_rcount"], progress=False)
    assert _orphans(Path(run.path)) == []
    assert sorted(gs.open_run(run.path).results) == ["_rcount", "curves"]


def test_an_orphan_a_live_analysis_owns_is_left_alone(tmp_path, counting_measure):
    import shutil

    run = record_tiny_run(tmp_path / "o.zarr")
    gs.analyze(run, ["_rcount", "curves"], progress=False)
    results = Path(run.path) / "results"
    # an orphan whose writer is alive (holds the result's writer lock) is left alone
    shutil.copytree(results / "curves", results / ".fourier.new-1badc0de")
    loc = results_io.ResultsLocation(run.path)
    held = results_io._try_flock(loc.lock_path("fourier", "write"))
    assert held is not None
    try:
        gs.analyze(run, ["_rcount"], progress=False)
    finally:
        os.close(held)
    assert _orphans(Path(run.path)) == [".fourier.new-1badc0de"]
    assert sorted(gs.open_run(run.path).results) == ["_rcount", "curves"]
    gs.analyze(run, ["_rcount"], progress=False)  # now nobody writes fourier
    assert _orphans(Path(run.path)) == []


# ---------------------------------------------------------------------------- concurrency
ANALYZE = textwrap.dedent("""
    import sys
    import grokscope as gs
    res = gs.analyze(sys.argv[1], ["curves"], progress=False, flush_seconds=0.0, num_threads=1)
    print("steps", res["curves"].sizes["step"])
""")


def _spawn(path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", ANALYZE, str(path)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check_complete(ds: xr.Dataset, steps: list[int]) -> int:
    n = ds.sizes["step"]
    got = ds.step.values.tolist()
    assert got == steps[:n], "a result is always a prefix of the run's steps, in order"
    for name, var in ds.data_vars.items():
        assert var.sizes.get("step") == n, name
        assert not np.isnan(var.values).all(), name
    return n


def test_readers_always_see_a_complete_result_while_it_is_rewritten(tmp_path):
    run = record_tiny_run(tmp_path / "c.zarr", steps=tuple(range(0, 240, 2)))
    steps = run.steps.tolist()
    proc = _spawn(Path(run.path))
    reader = gs.open_run(run.path)
    reads, errors, sizes = 0, [], []
    deadline = time.monotonic() + 240
    while proc.poll() is None or reads < 300:
        assert time.monotonic() < deadline, "the analysis did not finish"
        try:
            ds = reader.results["curves"].load()
        except KeyError:  # not written yet
            if proc.poll() is not None and reads == 0:
                break
            time.sleep(0.002)
            continue
        except Exception as exc:  # noqa: BLE001 - every failure counts
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        try:
            sizes.append(_check_complete(ds, steps))
        except Exception as exc:  # noqa: BLE001 - a torn dataset fails here
            errors.append(f"incomplete: {type(exc).__name__}: {exc}")
        reads += 1
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert errors == [], f"{len(errors)} of {reads + len(errors)} reads failed: {errors[:3]}"
    assert reads >= 300
    assert len(set(sizes)) > 3, "the reads overlapped the rewrites"
    assert sizes == sorted(sizes) and sizes[-1] == len(steps)


def test_two_concurrent_analyses_of_one_measure_match_a_serial_one(tmp_path):
    run = record_tiny_run(tmp_path / "two.zarr", steps=tuple(range(0, 120, 2)))
    procs = [_spawn(Path(run.path)) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    together = gs.open_run(run.path).results["curves"]
    serial = gs.analyze(run.path, ["curves"], progress=False, num_threads=1,
                        results=str(tmp_path / "serial.zarr"))["curves"]
    assert together.step.values.tolist() == run.steps.tolist()
    xr.testing.assert_allclose(together.reset_coords(drop=True), serial.reset_coords(drop=True))
    assert together.attrs["params_key"] == serial.attrs["params_key"]
    assert _orphans(Path(run.path)) == []


def test_results_on_fsspec_stores(tmp_path, counting_measure):
    """memory:// runs keep results in place (no locks) and take a separate results store too;
    a file:// URL is a local store (locks, atomic swap)."""
    import uuid

    url = f"memory://gs-res-{uuid.uuid4().hex}/run.zarr"
    run = record_tiny_run(url)
    out = gs.analyze(url, ["_rcount"], progress=False, flush_seconds=0.0)
    assert out["_rcount"].sizes["step"] == len(run.steps)
    assert gs.open_run(url).results["_rcount"].step.values.tolist() == run.steps.tolist()
    sep = f"memory://gs-res-{uuid.uuid4().hex}/results.zarr"
    gs.analyze(url, {"_rcount": {"scale": 2.0}}, results=sep, progress=False)
    assert gs.open_run(url, results=sep).results["_rcount"].attrs["param_scale"] == 2.0
    assert gs.open_run(url).results["_rcount"].attrs["param_scale"] == 1.0
    furl = f"file://{tmp_path}/f.zarr"
    record_tiny_run(furl)
    gs.analyze(furl, ["_rcount"], progress=False)
    assert "_rcount" in gs.open_run(tmp_path / "f.zarr").results
    assert (tmp_path / "f.zarr" / "results" / ".locks" / "_rcount" / "writer" / "zarr.json").exists()


def test_a_damaged_result_is_a_corrupt_store_error(tmp_path, counting_measure):
    from grokscope.errors import CorruptStoreError

    run = record_tiny_run(tmp_path / "d.zarr")
    gs.analyze(run, ["_rcount"], progress=False)
    chunks = [p for p in (Path(run.path) / "results" / "_rcount" / "value").rglob("*")
              if p.is_file() and p.name != "zarr.json"]
    assert chunks
    chunks[0].write_bytes(b"\x28\xb5\x2f\xfd garbage, not a chunk")
    with pytest.raises(CorruptStoreError, match="recompute=True"):
        gs.open_run(run.path).results["_rcount"]
    fixed = gs.analyze(run, ["_rcount"], progress=False, recompute=True)["_rcount"]
    assert fixed.sizes["step"] == len(run.steps)


# ---------------------------------------------------------------------------- damaged results
def _analysed(tmp_path: Path) -> Path:
    run = record_tiny_run(tmp_path / "run.zarr", steps=[0, 5, 10])
    gs.analyze(run, ["curves"], progress=False)
    return tmp_path / "run.zarr"


def _flip_a_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["flipped byte", "deleted chunk", "edited parameter"])
def test_a_damaged_result_is_reported_never_read(tmp_path, damage):
    path = _analysed(tmp_path)
    group = path / "results" / "curves"
    chunk = next(p for p in sorted((group / "train_loss").rglob("*")) if p.is_file()
                 and p.name != "zarr.json")
    if damage == "flipped byte":  # the chunk's CRC32C no longer matches
        _flip_a_byte(chunk)
    elif damage == "deleted chunk":  # would read as NaN
        chunk.unlink()
    else:  # zarr checksums chunks, not metadata: the attributes carry their own hash
        doc_path = group / "zarr.json"
        doc = json.loads(doc_path.read_text())
        key = next(k for k in doc["attributes"] if k.startswith("param_"))
        doc["attributes"][key] = "something else"
        doc_path.write_text(json.dumps(doc))
    with pytest.raises(CorruptStoreError, match="recompute"):
        gs.open_run(path).results["curves"]
    # the CLI says so and recomputing replaces it
    assert cli.main(["analyze", str(path), "--measures", "curves", "--recompute", "-q"]) == 0
    assert np.isfinite(gs.open_run(path).results["curves"]["train_loss"].values).all()
