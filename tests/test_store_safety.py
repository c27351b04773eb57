"""Nothing a user owns is deleted: failed imports, foreign folders and URL prefixes (review findings)."""

from __future__ import annotations

import fsspec
import pytest
import torch

import grokscope as gs
from grokscope.errors import ConfigError, GrokscopeError
from tests._checkpoint_factories import small_data, small_model, trajectory, write_per_epoch


def test_failed_import_into_a_plain_folder_deletes_nothing(tmp_path):
    model = small_model()
    write_per_epoch(tmp_path / "ck", trajectory(model, 3), [0, 10, 20])
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(GrokscopeError):
        gs.import_checkpoints(tmp_path / "ck", precious, model=small_model(), data=small_data(),
                              overwrite=True, progress=False)
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_failed_overwrite_import_keeps_the_old_store(tmp_path):
    model = small_model()
    sds = trajectory(model, 3)
    write_per_epoch(tmp_path / "ck", sds, [0, 10, 20])
    out = tmp_path / "run.zarr"
    gs.import_checkpoints(tmp_path / "ck", out, model=small_model(), data=small_data(), progress=False)
    before = gs.open_run(out).steps.tolist()
    bad = {k: torch.zeros(3, 3) for k in sds[0]}  # wrong shapes: the re-import fails part-way
    torch.save({"model": bad, "epoch": 30}, tmp_path / "ck" / "epoch_30.pt")
    with pytest.raises(GrokscopeError):
        gs.import_checkpoints(tmp_path / "ck", out, model=small_model(), data=small_data(),
                              overwrite=True, progress=False)
    assert gs.open_run(out).steps.tolist() == before
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".run.zarr.")]
    assert leftovers == [".run.zarr.lock"]  # no half-built sibling left behind


def test_successful_overwrite_import_replaces_the_store(tmp_path):
    model = small_model()
    write_per_epoch(tmp_path / "ck", trajectory(model, 3), [0, 10, 20])
    out = tmp_path / "run.zarr"
    gs.import_checkpoints(tmp_path / "ck", out, model=small_model(), data=small_data(), progress=False)
    (tmp_path / "ck" / "epoch_20.pt").unlink()
    run = gs.import_checkpoints(tmp_path / "ck", out, model=small_model(), data=small_data(),
                                overwrite=True, progress=False)
    assert run.steps.tolist() == [0, 10]


def test_recorder_refuses_a_url_prefix_holding_other_files():
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket-safety/notes.txt", b"keep me")
    with pytest.raises(ConfigError, match="not a grokscope store"):
        gs.Recorder("memory://bucket-safety", small_model(), small_data())
    assert fs.cat("/bucket-safety/notes.txt") == b"keep me"


def test_second_writer_is_refused_and_the_lock_is_released_on_close(tmp_path):
    from grokscope.errors import StoreError

    path = tmp_path / "r.zarr"
    model, data = small_model(), small_data()
    rec = gs.Recorder(path, model, data)
    rec.record(0, model)
    with pytest.raises(StoreError, match="already being written"):
        gs.Recorder(path, model, data)
    rec.close()
    with gs.Recorder(path, model, data) as again:
        again.record(1, model)
    assert gs.open_run(path).steps.tolist() == [0, 1]


def test_reopening_with_another_config_is_refused(tmp_path):
    path = tmp_path / "r.zarr"
    model, data = small_model(), small_data()
    with gs.Recorder(path, model, data, config={"lr": 1e-3}) as rec:
        rec.record(0, model)
    with pytest.raises(ConfigError, match="differs from the stored one"):
        gs.Recorder(path, model, data, config={"lr": 0.1})
    with gs.Recorder(path, model, data, config={"lr": 1e-3}) as rec:  # same config continues
        rec.record(1, model)
    assert gs.open_run(path).steps.tolist() == [0, 1]


def test_appending_an_import_from_another_source_is_refused(tmp_path):
    model = small_model()
    write_per_epoch(tmp_path / "a", trajectory(model, 2), [0, 10])
    write_per_epoch(tmp_path / "b", trajectory(model, 3), [0, 10, 20])
    out = tmp_path / "run.zarr"
    gs.import_checkpoints(tmp_path / "a", out, model=small_model(), data=small_data(), progress=False)
    with pytest.raises(ConfigError, match="imported from"):
        gs.import_checkpoints(tmp_path / "b", out, model=small_model(), data=small_data(),
                              progress=False)
