"""Hostile and faulty stores (issue "Hostile and faulty stores", item 6): a kill before the
first commit, lock files beside refused targets, file names that disagree with the step in
the file, unsafe pickles that name their global, identical weights under several steps."""

from __future__ import annotations

import os
import signal
import warnings

import numpy as np
import pytest
import torch

import grokscope as gs
from grokscope.errors import (
    CheckpointFormatError,
    ConfigError,
    GrokscopeError,
    NotAStoreError,
    UnsafeCheckpointError,
)
from grokscope.store import _io
from grokscope.store.importers import add_import_parser, cmd_import, import_checkpoints
from tests._checkpoint_factories import NotAWeight, small_data, small_model, trajectory


def _imp(src, out, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("data", small_data())
    return import_checkpoints(src, out, model=small_model(), **kw)


# ---------------------------------------------------------------------------- a. killed before the first commit
def _killed_before_first_commit(path) -> None:
    """Fork a writer that is SIGKILLed at its very first atomic replace (the root document)."""
    pid = os.fork()
    if pid == 0:  # child: die exactly between writing the temp file and renaming it
        try:
            def die(*_a, **_k):
                os.kill(os.getpid(), signal.SIGKILL)

            _io.os.replace = die
            gs.Recorder(path, small_model(), small_data())
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status), status


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_kill_before_the_first_commit_leaves_a_store_we_recognise(tmp_path):
    path = tmp_path / "run.zarr"
    _killed_before_first_commit(path)
    left = [p.name for p in path.rglob("*")]
    assert left and all(n.endswith(_io.TMP_SUFFIX) for n in left), left  # only our temp file
    with pytest.raises(NotAStoreError, match="unfinished grokscope store"):
        gs.open_run(path)
    # overwrite clears it
    model = small_model()
    with gs.Recorder(path, model, small_data(), overwrite=True) as rec:
        rec.record(0, model)
    assert gs.open_run(path).steps.tolist() == [0]
    assert not [p for p in path.rglob("*") if p.name.endswith(_io.TMP_SUFFIX)]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_recording_into_an_unfinished_store_says_so_and_proceeds(tmp_path):
    path = tmp_path / "run.zarr"
    _killed_before_first_commit(path)
    model = small_model()
    with pytest.warns(UserWarning, match="unfinished grokscope store.*no data"):
        rec = gs.Recorder(path, model, small_data())
    with rec:
        rec.record(5, model)
    assert gs.open_run(path).steps.tolist() == [5]


def _two_checkpoints(tmp_path):
    """A folder of two checkpoint files, steps 0 and 10."""
    ck = tmp_path / "ck"
    ck.mkdir()
    for sd, step in zip(trajectory(small_model(), 2), [0, 10], strict=True):
        torch.save({"model": sd, "epoch": step}, ck / f"epoch_{step}.pt")
    return ck


def test_a_import_with_overwrite_clears_an_unfinished_store(tmp_path):
    ck = _two_checkpoints(tmp_path)
    out = tmp_path / "run.zarr"
    out.mkdir()
    (out / f".zarr.json.0123456789ab{_io.TMP_SUFFIX}").write_bytes(b'{"zarr_fo')
    run = _imp(ck, out, overwrite=True)
    assert run.steps.tolist() == [0, 10]
    assert not list(out.rglob(f"*{_io.TMP_SUFFIX}"))
    # without overwrite too: it holds no data
    out2 = tmp_path / "run2.zarr"
    out2.mkdir()
    (out2 / f".zarr.json.0123456789ab{_io.TMP_SUFFIX}").write_bytes(b"{")
    with pytest.warns(UserWarning, match="unfinished"):
        assert _imp(ck, out2).steps.tolist() == [0, 10]


def test_a_a_folder_with_anything_else_is_never_deleted(tmp_path):
    path = tmp_path / "mixed"
    path.mkdir()
    (path / f".zarr.json.0123456789ab{_io.TMP_SUFFIX}").write_bytes(b"{")
    (path / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="not a grokscope store"):
            gs.Recorder(path, small_model(), small_data(), overwrite=overwrite)
    ck = tmp_path / "ck"
    ck.mkdir()
    torch.save({"model": small_model().state_dict(), "epoch": 0}, ck / "epoch_0.pt")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="not a grokscope store"):
            _imp(ck, path, overwrite=overwrite)
    assert (path / "notes.txt").read_text() == "keep me"
    assert len(list(path.iterdir())) == 2


# ---------------------------------------------------------------------------- b. lock files
def _locks(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".lock"))


def test_b_refused_targets_leave_no_lock_file(tmp_path):
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    afile = tmp_path / "afile.zarr"
    afile.write_text("a file")
    foreign = tmp_path / "foreign.zarr"
    foreign.mkdir()
    (foreign / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    for target in (folder, afile, foreign):
        for overwrite in (False, True):
            with pytest.raises(GrokscopeError):
                gs.Recorder(target, small_model(), small_data(), overwrite=overwrite)
    assert _locks(tmp_path) == []


def test_b_refused_import_leaves_no_lock_file(tmp_path):
    ck = _two_checkpoints(tmp_path)
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    for overwrite in (False, True):
        with pytest.raises(GrokscopeError, match="not a grokscope store"):
            _imp(ck, folder, overwrite=overwrite)
    assert _locks(tmp_path) == []
    # a successful overwrite-import leaves only the store's own lock file
    out = tmp_path / "run.zarr"
    _imp(ck, out)
    _imp(ck, out, overwrite=True)
    assert _locks(tmp_path) == [".run.zarr.lock"]
    assert sorted(p.name for p in tmp_path.iterdir() if "run.zarr" in p.name) == [
        ".run.zarr.lock", "run.zarr"]


def test_b_a_lock_removed_by_a_refused_writer_still_excludes(tmp_path):
    """Removing the lock file of a refused target must not let two writers in at once."""
    path = tmp_path / "r.zarr"
    model, data = small_model(), small_data()
    rec = gs.Recorder(path, model, data)
    with pytest.raises(GrokscopeError, match="already being written"):
        gs.Recorder(path, model, data)
    assert (tmp_path / ".r.zarr.lock").exists()  # the holder's lock file is never removed
    rec.close()


# ---------------------------------------------------------------------------- c. step sources
def _named(tmp_path, meta_steps, names):
    ck = tmp_path / "ck"
    ck.mkdir(exist_ok=True)
    sds = trajectory(small_model(), len(names))
    for sd, step, name in zip(sds, meta_steps, names):
        torch.save({"model": sd, "epoch": step}, ck / name)
    return ck, sds


def test_c_name_and_metadata_disagreeing_is_refused(tmp_path):
    ck, _ = _named(tmp_path, [1, 2], ["ckpt_100.pt", "ckpt_200.pt"])
    with pytest.raises(CheckpointFormatError) as info:
        _imp(ck, tmp_path / "run.zarr")
    msg = str(info.value)
    assert "ckpt_100.pt" in msg and "100" in msg and "'epoch'" in msg and " 1" in msg
    assert "step_from" in msg and "--step-from" in msg
    assert not (tmp_path / "run.zarr").exists()


def test_c_the_caller_chooses_the_step_source(tmp_path):
    ck, _ = _named(tmp_path, [1, 2], ["ckpt_100.pt", "ckpt_200.pt"])
    run = _imp(ck, tmp_path / "a.zarr", step_from="name")
    assert run.steps.tolist() == [100, 200]
    notes = run.config["import"]
    assert "name" in notes["step_source"]
    assert notes["step_disagreements"]  # the overruled values are kept
    np.testing.assert_array_equal(run.metrics["epoch"].values, [1, 2])  # the epoch stays a metric
    run = _imp(ck, tmp_path / "b.zarr", step_from="meta")
    assert run.steps.tolist() == [1, 2]
    assert "epoch" in run.config["import"]["step_source"]
    with pytest.raises(ConfigError, match="step_from"):
        _imp(ck, tmp_path / "c.zarr", step_from="file")


def test_c_agreeing_sources_are_noted(tmp_path):
    ck, _ = _named(tmp_path, [10, 20], ["epoch10_seed3.pt", "epoch20_seed3.pt"])
    run = _imp(ck, tmp_path / "run.zarr")
    assert run.steps.tolist() == [10, 20]
    assert "epoch" in run.config["import"]["step_source"]
    assert "agree" in run.config["import"]["step_source"]


def test_c_names_without_numbers_keep_their_behaviour(tmp_path):
    ck, _ = _named(tmp_path, [0, 7], ["init.pt", "final.pt"])
    for step_from in (None, "name", "meta"):
        run = _imp(ck, tmp_path / f"run_{step_from}.zarr", step_from=step_from)
        assert run.steps.tolist() == [0, 7]


def test_c_cli_step_from(tmp_path, capsys):
    import argparse

    ck, _ = _named(tmp_path, [1, 2], ["ckpt_100.pt", "ckpt_200.pt"])
    parser = argparse.ArgumentParser(prog="grokscope")
    add_import_parser(parser.add_subparsers(dest="command"))
    base = ["import", str(ck), "--model", "torch.nn:Sequential", "--no-progress"]
    args = parser.parse_args([*base, "-o", str(tmp_path / "a.zarr"), "--step-from", "name"])
    assert args.step_from == "name"
    args = parser.parse_args([*base, "-o", str(tmp_path / "b.zarr")])
    assert args.step_from is None
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "-o", str(tmp_path / "c.zarr"), "--step-from", "x"])
    capsys.readouterr()


def test_c_cli_passes_step_from(tmp_path, monkeypatch):
    import argparse

    from grokscope.store import importers

    seen = {}
    monkeypatch.setattr(importers, "import_checkpoints",
                        lambda *a, **kw: seen.update(kw) or (_ for _ in ()).throw(ConfigError("x")))
    parser = argparse.ArgumentParser(prog="grokscope")
    add_import_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["import", "ck", "-o", "o.zarr", "--model", "mlp", "--step-from",
                              "meta"])
    assert cmd_import(args) == 2
    assert seen["step_from"] == "meta"


# ---------------------------------------------------------------------------- d. unsafe pickles
def test_d_unsafe_pickle_names_its_global_and_what_to_do(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    torch.save({"model": small_model().state_dict(), "epoch": 0, "meta": NotAWeight()},
               ck / "epoch_0.pt")
    with pytest.raises(UnsafeCheckpointError) as info:
        _imp(ck, tmp_path / "run.zarr")
    msg = str(info.value)
    assert "tests._checkpoint_factories.NotAWeight" in msg
    assert "trust_pickle=True" in msg and "--trust-pickle" in msg
    assert "torch.serialization.add_safe_globals" in msg


class _Sneaky:
    def __reduce__(self):
        return (os.getcwd, ())  # harmless, but from a module torch blocks outright


def test_d_blocked_module_is_named_and_never_allowlisted(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    torch.save({"model": small_model().state_dict(), "epoch": 0, "x": _Sneaky()},
               ck / "epoch_0.pt")
    with pytest.raises(UnsafeCheckpointError) as info:
        _imp(ck, tmp_path / "run.zarr")
    msg = str(info.value)
    assert f"{os.getcwd.__module__}.getcwd" in msg and "blocked" in msg
    assert "add_safe_globals" not in msg


# ---------------------------------------------------------------------------- e. identical weights
def test_e_identical_weights_at_different_steps_are_reported(tmp_path):
    sds = trajectory(small_model(), 2)
    ck = tmp_path / "ck"
    ck.mkdir()
    series = [(0, sds[0]), (10, sds[1]), (20, sds[1]), (30, sds[0]), (40, sds[1])]
    for step, sd in series:
        torch.save({"model": {k: v.clone() for k, v in sd.items()}, "epoch": step},
                   ck / f"epoch_{step}.pt")
    with pytest.warns(UserWarning, match=r"identical weights.*\[0, 30\].*\[10, 20, 40\]"):
        run = _imp(ck, tmp_path / "run.zarr")
    assert run.steps.tolist() == [0, 10, 20, 30, 40]  # still imported: the steps are distinct
    assert run.config["import"]["identical_weights"] == [[0, 30], [10, 20, 40]]


def test_e_distinct_weights_say_nothing(tmp_path):
    sds = trajectory(small_model(), 3)
    ck = tmp_path / "ck"
    ck.mkdir()
    for step, sd in zip([0, 10, 20], sds):
        torch.save({"model": sd, "epoch": step}, ck / f"epoch_{step}.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = _imp(ck, tmp_path / "run.zarr")
    assert "identical_weights" not in run.config["import"]
