"""A crafted store cannot make grokscope read, write or delete outside itself.

Every name a store's metadata gives (parameters, metrics, the resume and program keys) is
checked to be one segment inside the store before any read, write or delete; a link inside a
store that points outside it stops a writer. Each case also checks that the files outside the
store are untouched.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from grokscope.errors import CorruptStoreError
from grokscope.store import Recorder, open_run

from ._store_helpers import TinyNet, fill_step, tiny_data


def _store(tmp_path: Path) -> Path:
    path = tmp_path / "run.zarr"
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with Recorder(path, model, tiny_data()) as rec:
        for step in (0, 1):
            fill_step(model, step)
            rec.record(step, metrics={"train_loss": 1.0}, optimizer=opt)
    return path


def _outside(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    (victim / "inner").mkdir(parents=True)
    (victim / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    (victim / "inner" / "keep.txt").write_text("keep")
    return victim


def _edit_meta(path: Path, edit) -> None:
    doc = json.loads((path / "zarr.json").read_text())
    edit(doc["attributes"]["grokscope"])
    doc.pop("consolidated_metadata", None)
    (path / "zarr.json").write_text(json.dumps(doc))


def _append(path: Path) -> None:
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with Recorder(path, model, tiny_data()) as rec:
        fill_step(model, 5)
        rec.record(5, optimizer=opt)


def _rename_param(meta: dict, new: str) -> None:
    meta["params"][new] = meta["params"].pop("fc1.weight")


EDITS = {
    "parameter name ../victim": lambda m: _rename_param(m, "../victim"),
    "absolute parameter name": lambda m: _rename_param(m, "/tmp"),
    "metric name ../victim": lambda m: m.update(metrics=["../victim"]),
    "metric name with a slash": lambda m: m.update(metrics=["a/../../victim"]),
    "negative count": lambda m: m["commit"].update(count=-1),
    "count as a string": lambda m: m["commit"].update(count="2"),
    "resume key outside": lambda m: m["commit"]["resume"].update(key="../victim"),
    "shape not a list": lambda m: m["params"]["fc1.weight"].update(shape="8,4"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_crafted_metadata_is_refused_by_readers_and_writers(tmp_path, case):
    path = _store(tmp_path)
    victim = _outside(tmp_path)
    _edit_meta(path, EDITS[case])
    with pytest.raises(CorruptStoreError, match="damaged or crafted|not of the form"):
        open_run(path)
    with pytest.raises(CorruptStoreError, match="damaged or crafted|not of the form"):
        _append(path)
    assert (victim / "inner" / "keep.txt").read_text() == "keep"
    assert sorted(p.name for p in victim.rglob("*")) == ["inner", "keep.txt", "zarr.json"]


@pytest.mark.parametrize("linked", ["_resume", "fc2.bias"])
def test_a_link_leaving_the_store_stops_a_writer(tmp_path, linked):
    path = _store(tmp_path)
    victim = _outside(tmp_path)
    # a crafted store whose folder is a link to a folder outside it (here one holding a
    # zarr.json, so that nothing else would stop the writer from deleting or writing into it)
    import shutil

    shutil.rmtree(path / linked)
    (path / linked).symlink_to(victim, target_is_directory=True)
    with pytest.raises(CorruptStoreError, match="pointing outside the store"):
        _append(path)
    assert (victim / "inner" / "keep.txt").read_text() == "keep"
    assert sorted(p.name for p in victim.rglob("*")) == ["inner", "keep.txt", "zarr.json"]


def test_deleting_through_a_linked_folder_is_refused(tmp_path):
    from grokscope.store import _io

    path = _store(tmp_path)
    victim = _outside(tmp_path)
    (path / "elsewhere").symlink_to(victim, target_is_directory=True)
    store = _io.open_store(path, read_only=False)
    with pytest.raises(CorruptStoreError, match="outside the store"):
        _io.delete_entry(store, "elsewhere/inner")
    _io.delete_entry(store, "elsewhere")  # the link itself goes, never its target
    assert not (path / "elsewhere").exists()
    assert (victim / "inner" / "keep.txt").read_text() == "keep"


def test_a_results_link_leaving_the_store_stops_an_analysis(tmp_path):
    import grokscope as gs

    path = _store(tmp_path)
    victim = _outside(tmp_path)
    (path / "results").symlink_to(victim, target_is_directory=True)
    with pytest.raises(CorruptStoreError, match="pointing outside the store"):
        gs.analyze(path, ["curves"], progress=False, model=TinyNet)
    assert sorted(p.name for p in victim.rglob("*")) == ["inner", "keep.txt", "zarr.json"]


def test_a_last_step_that_disagrees_with_the_step_array_stops_a_writer(tmp_path):
    path = _store(tmp_path)
    _edit_meta(path, lambda m: m["commit"].update(last_step=40))
    with pytest.raises(CorruptStoreError, match="last committed step is 40"):
        _append(path)
    assert list(open_run(path).steps) == [0, 1]


def test_an_array_the_metadata_lost_is_never_overwritten(tmp_path):
    path = _store(tmp_path)
    before = (path / "train_loss" / "c" / "0").read_bytes()
    _edit_meta(path, lambda m: m.update(metrics=[]))
    model = TinyNet()
    with pytest.raises(CorruptStoreError, match="metadata does not list it"):
        with Recorder(path, model, tiny_data()) as rec:
            fill_step(model, 5)
            rec.record(5, metrics={"train_loss": 2.0})
    assert (path / "train_loss" / "c" / "0").read_bytes() == before


def test_a_missing_config_or_a_zero_chunk_is_damage(tmp_path):
    path = _store(tmp_path)
    _edit_meta(path, lambda m: m.pop("config"))
    with pytest.raises(CorruptStoreError, match="'config' is missing"):
        open_run(path)
    path2 = _store(tmp_path / "b")
    doc = json.loads((path2 / "fc1.bias" / "zarr.json").read_text())
    doc["chunk_grid"]["configuration"]["chunk_shape"][0] = 0
    (path2 / "fc1.bias" / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(CorruptStoreError, match="chunk shape"):
        open_run(path2)
    with pytest.raises(CorruptStoreError, match="chunk shape"):
        _append(path2)
