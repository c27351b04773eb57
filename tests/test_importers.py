"""Importing foreign checkpoints: every format, refusals, mismatches, CPU mapping, roundtrip."""

from __future__ import annotations

import argparse
import math
import warnings

import numpy as np
import pytest
import torch

from grokscope.errors import (
    CheckpointFormatError,
    ConfigError,
    ModelMismatchError,
    UnsafeCheckpointError,
)
from grokscope.store import _formats
from grokscope.store._formats import name_kind, open_source
from grokscope.store.importers import (
    add_import_parser,
    cmd_import,
    import_checkpoints,
    modular_full_set,
)
from tests._checkpoint_factories import (
    NotAWeight,
    claim_cuda,
    small_data,
    small_model,
    trajectory,
    write_lightning,
    write_list_bundle,
    write_nanda_bundle,
    write_per_epoch,
    write_safetensors,
)

STEPS = [0, 10, 20, 30]


@pytest.fixture
def model():
    return small_model()


@pytest.fixture
def sds(model):
    return trajectory(model, len(STEPS))


def _imp(src, out, model, data=None, **kw):
    kw.setdefault("progress", False)
    return import_checkpoints(src, out, model=model, data=data, **kw)


def assert_roundtrip(run, sds, steps):
    """The stored parameters equal the saved tensors exactly, at the right steps."""
    assert list(run.steps) == list(steps)
    for sd, step in zip(sds, steps):
        got = run.state_dict_at(step)
        assert set(got) == set(sd)
        for k, v in sd.items():
            g = torch.as_tensor(np.asarray(got[k]))
            assert g.dtype == v.dtype and torch.equal(g, v), (step, k)


def assert_source(source, sds, steps):
    """A scanned source yields exactly the saved tensors at ``steps`` (no store written)."""
    assert source.steps == list(steps)
    for item, sd, step in zip(source, sds, steps):
        assert item.step == step and set(item.state_dict) == set(sd)
        assert all(torch.equal(item.state_dict[k], v) for k, v in sd.items())


# ---------------------------------------------------------------------------- formats
def test_per_epoch_folder_roundtrip_and_metrics(tmp_path, model, sds):
    write_per_epoch(tmp_path / "ck", sds, STEPS)
    run = _imp(tmp_path / "ck", tmp_path / "run.zarr", model, small_data())
    assert_roundtrip(run, sds, STEPS)
    m = run.metrics
    np.testing.assert_allclose(m["train_loss"].values, [1.0 / (s + 1) for s in STEPS])
    np.testing.assert_allclose(m["test_acc"].values, [s / 1000 for s in STEPS], rtol=1e-6)
    assert "epoch" not in m  # the step key is the step, not a metric
    cfg = run.config
    assert cfg["imported_from"] == str(tmp_path / "ck")
    assert cfg["format"] == "torch_files" and cfg["files"] == 4


@pytest.mark.parametrize(
    "names",
    [["epoch_{step}.pt"] * 4, ["ckpt-{step:05d}.pth"] * 4, ["{step}.pt"] * 4,
     ["model_v2_epoch{step}.bin"] * 4],
)
def test_bare_state_dicts_step_from_name(tmp_path, model, sds, names):
    for sd, step, name in zip(sds, STEPS, names):
        write_per_epoch(tmp_path / "ck", [sd], [step], name=name, state_key=None)
    assert_source(open_source(tmp_path / "ck"), sds, STEPS)


def test_name_kinds():
    assert name_kind("epoch_120.pt") == ("numeric", 120)
    assert name_kind("ckpt-00500.pth") == ("numeric", 500)
    assert name_kind("epoch=3-step=400.ckpt") == ("numeric", 400)
    assert name_kind("init.pth") == ("init", 0)
    assert name_kind("initial_weights.pt") == ("init", 0)
    assert name_kind("final.pth") == ("final", None)
    assert name_kind("last.ckpt") == ("final", None)
    assert name_kind("best.pt") == ("unknown", None)


@pytest.mark.parametrize("state_key", ["state_dict", "model_state_dict", "net", "params"])
def test_state_dict_key_variants(tmp_path, model, sds, state_key):
    write_per_epoch(tmp_path / "ck", sds, STEPS, state_key=state_key, step_in_file="step")
    assert_source(open_source(tmp_path / "ck"), sds, STEPS)


def test_step_key_and_state_key_options(tmp_path, model, sds):
    # the file's "epoch" is not the step we want: "iters" is; weights nested under ema.model
    for sd, step in zip(sds, STEPS):
        (tmp_path / "ck").mkdir(exist_ok=True)
        torch.save({"epoch": 1, "iters": step * 7, "ema": {"model": sd}, "model": {}},
                   tmp_path / "ck" / f"e{step}.pt")
    run = _imp(tmp_path / "ck", tmp_path / "run.zarr", model, small_data(),
               step_key="iters", state_key="ema.model")
    assert_roundtrip(run, sds, [s * 7 for s in STEPS])
    assert np.all(run.metrics["epoch"].values == 1)
    with pytest.raises(CheckpointFormatError, match="state_key"):
        _imp(tmp_path / "ck", tmp_path / "r2.zarr", model, small_data(), state_key="nope")
    with pytest.raises(CheckpointFormatError, match="step_key"):
        _imp(tmp_path / "ck", tmp_path / "r3.zarr", model, small_data(), step_key="nope",
             state_key="ema.model")


def test_lightning_prefix_stripped(tmp_path, model, sds):
    paths = write_lightning(tmp_path / "lt", sds, STEPS)
    (tmp_path / "lt" / "last.ckpt").write_bytes(paths[-1].read_bytes())  # Lightning's alias
    run = _imp(tmp_path / "lt", tmp_path / "run.zarr", model, small_data())
    assert_roundtrip(run, sds, STEPS)  # global_step wins over epoch and the file name
    np.testing.assert_array_equal(run.metrics["epoch"].values, [s // 10 for s in STEPS])
    cfg = run.config
    assert cfg["format"] == "lightning"
    assert cfg["import"]["stripped_prefix"] == "model."
    assert cfg["import"]["ignored_keys"] == ["criterion.weight"]
    assert cfg["import"]["source_config"]["hyper_parameters"] == {"lr": 0.01, "width": 8}
    assert cfg["import"]["skipped_aliases"] == ["last.ckpt (= epoch=3-step=30.ckpt)"]


class _Wrapper(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = small_model()

    def forward(self, x):
        return self.net(x)


def test_prefix_added_when_model_wraps(tmp_path, sds):
    wrapped = _Wrapper()
    write_per_epoch(tmp_path / "ck", sds, STEPS)
    run = _imp(tmp_path / "ck", tmp_path / "run.zarr", wrapped, small_data())
    assert_roundtrip(run, [{f"net.{k}": v for k, v in sd.items()} for sd in sds], STEPS)
    assert run.config["import"]["added_prefix"] == "net."


def test_safetensors_folder(tmp_path, model, sds):
    write_safetensors(tmp_path / "st", sds, STEPS)
    run = _imp(tmp_path / "st", tmp_path / "run.zarr", model, small_data())
    assert_roundtrip(run, sds, STEPS)
    np.testing.assert_allclose(run.metrics["train_loss"].values, [0.5 / (s + 1) for s in STEPS])
    assert "note" not in run.metrics  # text metadata is not a metric
    assert run.config["format"] == "safetensors"


def test_numbered_subfolders(tmp_path, model, sds):
    from safetensors.torch import save_file

    for sd, step in zip(sds, STEPS):
        sub = tmp_path / "hf" / f"checkpoint-{step}"
        sub.mkdir(parents=True)
        save_file(sd, str(sub / "model.safetensors"))
        (sub / "trainer_state.json").write_text("{}")
    run = _imp(tmp_path / "hf", tmp_path / "run.zarr", model, small_data())
    assert_roundtrip(run, sds, STEPS)


def test_nanda_bundle_losses_by_epoch_and_index_split(tmp_path):
    p = 5
    x_all, y_all, task = modular_full_set(p, "+")
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(0))
    tr, te = perm[:8], perm[8:]
    model = torch.nn.Sequential(torch.nn.Embedding(p + 1, 4), torch.nn.Flatten(),
                                torch.nn.Linear(12, p))
    sds = trajectory(model, 3)
    epochs = [99, 199, 299]
    path = write_nanda_bundle(tmp_path / "full_run_data.pth", sds, epochs, n_epochs=300,
                              indices=(tr, te))
    run = _imp(path, tmp_path / "run.zarr", model, None, full_data=(x_all, y_all, task))
    assert_roundtrip(run, sds, epochs)
    # per-epoch lists become metrics at the checkpoint epochs: list[epoch]
    np.testing.assert_array_equal(run.metrics["train_loss"].values, epochs)
    np.testing.assert_array_equal(run.metrics["test_loss"].values, [10.0 + e for e in epochs])
    d = run.data
    torch.testing.assert_close(torch.as_tensor(np.asarray(d.x_train)), x_all[tr])
    torch.testing.assert_close(torch.as_tensor(np.asarray(d.y_test)), y_all[te])
    assert torch.equal(torch.as_tensor(np.asarray(d.y_train)),
                       (x_all[tr, 0] + x_all[tr, 1]) % p)
    assert run.config["format"] == "bundle"
    assert run.config["import"]["source_config"]["config"] == {"d_model": 8, "seed": 0}
    assert "skipped_aliases" in run.config["import"]  # "model" = the last checkpoint
    # without the full set the indices cannot be resolved: a clear error
    with pytest.raises(ConfigError, match="full_data"):
        _imp(path, tmp_path / "r2.zarr", model, None)


def test_bundle_final_model_kept_when_different(tmp_path, model, sds):
    final = trajectory(model, 2, seed=9)[1]
    path = write_nanda_bundle(tmp_path / "b.pth", sds, STEPS, n_epochs=31, final=final)
    run = _imp(path, tmp_path / "run.zarr", model, small_data())
    assert_roundtrip(run, [*sds, final], [*STEPS, 31])
    assert run.config["import"]["final"]["step"] == 31


def test_bundle_losses_aligned_by_position(tmp_path, model, sds):
    path = tmp_path / "b.pth"
    torch.save({"checkpoints": sds, "checkpoint_epochs": [100, 200, 300, 400],
                "train_losses": [4.0, 3.0, 2.0, 1.0], "test_accs": [0.1, 0.2]}, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = _imp(path, tmp_path / "run.zarr", model, small_data())
    np.testing.assert_array_equal(run.metrics["train_loss"].values, [4.0, 3.0, 2.0, 1.0])
    assert "test_acc" not in run.metrics  # 2 entries: matches neither epochs nor checkpoints
    assert any("test_accs" in str(w.message) for w in caught)
    assert run.config["import"]["series_not_aligned"] == ["test_accs (length 2)"]


def test_list_bundle(tmp_path, model, sds):
    path = write_list_bundle(tmp_path / "list.pt", sds[::-1], STEPS[::-1])  # unsorted on disk
    run = _imp(path, tmp_path / "run.zarr", model, small_data())
    assert_roundtrip(run, sds, STEPS)
    np.testing.assert_allclose(run.metrics["train_loss"].values, [s * 0.1 for s in STEPS])


def test_dict_of_steps_bundle(tmp_path, model, sds):
    torch.save({str(s): sd for s, sd in zip(STEPS, sds)}, tmp_path / "d.pt")
    run = _imp(tmp_path / "d.pt", tmp_path / "run.zarr", model, small_data())
    assert_roundtrip(run, sds, STEPS)


def test_single_checkpoint_file(tmp_path, model, sds):
    write_per_epoch(tmp_path, sds[:1], [7])
    run = _imp(tmp_path / "epoch_7.pt", tmp_path / "run.zarr", model, small_data())
    assert_roundtrip(run, sds[:1], [7])
    assert run.config["format"] == "file"


# ---------------------------------------------------------------------------- names
def test_init_carries_split_and_final_duplicate_skipped(tmp_path, model, sds):
    data = small_data(seed=3)
    ck = tmp_path / "ck"
    write_per_epoch(ck, sds[1:], STEPS[1:], state_key="model", step_in_file=None)
    torch.save({"model": sds[0], "train_data": data.x_train, "train_labels": data.y_train,
                "test_data": data.x_test, "test_labels": data.y_test}, ck / "init.pth")
    torch.save({"model": sds[-1]}, ck / "final.pth")  # = epoch_30
    run = _imp(ck, tmp_path / "run.zarr", model, None)
    assert_roundtrip(run, sds, STEPS)
    assert torch.equal(torch.as_tensor(np.asarray(run.data.x_train)), data.x_train)
    assert torch.equal(torch.as_tensor(np.asarray(run.data.y_test)), data.y_test)
    notes = run.config["import"]
    assert notes["split_from"] == "init.pth"
    assert notes["skipped_aliases"] == ["final.pth (= epoch_30.pt)"]


def test_final_distinct_goes_after_last(tmp_path, model, sds):
    ck = tmp_path / "ck"
    write_per_epoch(ck, sds[:3], STEPS[:3], step_in_file=None)
    torch.save({"model": sds[3]}, ck / "last.pt")
    run = _imp(ck, tmp_path / "run.zarr", model, small_data())
    assert_roundtrip(run, sds, [0, 10, 20, 21])
    assert run.config["import"]["final"] == {"file": "last.pt", "step": 21}


def test_unknown_names_error_or_skip(tmp_path, model, sds):
    ck = tmp_path / "ck"
    write_per_epoch(ck, sds[:2], STEPS[:2], step_in_file=None)
    torch.save({"model": sds[2]}, ck / "best.pt")
    torch.save({"model": sds[3]}, ck / "swa.pt")
    with pytest.raises(CheckpointFormatError, match=r"best\.pt.*swa\.pt.*skip_unknown"):
        _imp(ck, tmp_path / "run.zarr", model, small_data())
    run = _imp(ck, tmp_path / "run2.zarr", model, small_data(), skip_unknown=True)
    assert_roundtrip(run, sds[:2], STEPS[:2])
    assert run.config["import"]["skipped_unknown"] == ["best.pt", "swa.pt"]


def test_duplicate_steps_error_names_files(tmp_path, model, sds):
    ck = tmp_path / "ck"
    ck.mkdir()
    torch.save({"model": sds[0], "epoch": 5}, ck / "x_1.pt")
    torch.save({"model": sds[1], "epoch": 5}, ck / "y_2.pt")
    with pytest.raises(CheckpointFormatError, match=r"step 5 .*x_1\.pt.*y_2\.pt"):
        _imp(ck, tmp_path / "run.zarr", model, small_data(), step_from="meta")


def test_empty_folder_and_missing_path(tmp_path, model):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no checkpoints here")
    with pytest.raises(CheckpointFormatError, match="no checkpoint files"):
        _imp(tmp_path / "empty", tmp_path / "run.zarr", model, small_data())
    with pytest.raises(CheckpointFormatError, match="no such"):
        _imp(tmp_path / "nothing", tmp_path / "run.zarr", model, small_data())


def test_corrupt_file(tmp_path, model):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "epoch_1.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointFormatError, match="epoch_1.pt"):
        _imp(tmp_path / "ck", tmp_path / "run.zarr", model, small_data())


def test_mixed_formats_refused(tmp_path, model, sds):
    write_per_epoch(tmp_path / "ck", sds[:1], [0])
    write_safetensors(tmp_path / "ck", sds[1:2], [10])
    with pytest.raises(CheckpointFormatError, match="both"):
        _imp(tmp_path / "ck", tmp_path / "run.zarr", model, small_data())


def test_no_split_anywhere(tmp_path, model, sds):
    write_per_epoch(tmp_path / "ck", sds, STEPS)
    with pytest.raises(ConfigError, match="data="):
        _imp(tmp_path / "ck", tmp_path / "run.zarr", model, None)


# ---------------------------------------------------------------------------- safety
def test_pickled_code_refused_then_trusted(tmp_path, model, sds):
    write_per_epoch(tmp_path / "ck", sds, STEPS, extra={"meta": NotAWeight()})
    with pytest.raises(UnsafeCheckpointError) as info:
        _imp(tmp_path / "ck", tmp_path / "run.zarr", model, small_data())
    msg = str(info.value)
    assert "epoch_0.pt" in msg and "trust_pickle=True" in msg and "--trust-pickle" in msg
    assert "NotAWeight" in msg
    assert not (tmp_path / "run.zarr").exists()  # refused before anything is written
    run = _imp(tmp_path / "ck", tmp_path / "run.zarr", model, small_data(), trust_pickle=True)
    assert_roundtrip(run, sds, STEPS)


def test_numpy_scalars_and_namespace_load_without_trust(tmp_path, model, sds):
    (tmp_path / "ck").mkdir()
    for sd, step in zip(sds, STEPS):
        torch.save({"model": sd, "epoch": np.int64(step), "train_loss": np.float64(step + 0.5),
                    "args": argparse.Namespace(lr=0.1, wd=1.0)}, tmp_path / "ck" / f"{step}.pt")
    run = _imp(tmp_path / "ck", tmp_path / "run.zarr", model, small_data())
    assert_roundtrip(run, sds, STEPS)
    np.testing.assert_array_equal(run.metrics["train_loss"].values, [s + 0.5 for s in STEPS])
    assert run.config["import"]["source_config"]["args"] == {"lr": 0.1, "wd": 1.0}


def test_files_saved_on_cuda_import_on_cpu(tmp_path, model, sds):
    paths = write_per_epoch(tmp_path / "ck", sds, STEPS)
    for path in paths:
        claim_cuda(path)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(paths[0], weights_only=True)  # what a naive loader hits
    run = _imp(tmp_path / "ck", tmp_path / "run.zarr", model, small_data())
    assert_roundtrip(run, sds, STEPS)


def test_every_torch_load_is_weights_only_on_cpu(tmp_path, model, sds, monkeypatch):
    write_per_epoch(tmp_path / "ck", sds, STEPS)
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(_formats.torch, "load", spy)
    _imp(tmp_path / "ck", tmp_path / "run.zarr", model, small_data())
    assert calls
    assert all(c.get("map_location") == "cpu" and c.get("weights_only") is True for c in calls)


# ---------------------------------------------------------------------------- mismatches
def test_mismatch_missing_unexpected_and_shapes(tmp_path, sds):
    write_per_epoch(tmp_path / "ck", sds, STEPS)
    other = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 5))
    with pytest.raises(ModelMismatchError) as info:
        _imp(tmp_path / "ck", tmp_path / "run.zarr", other, small_data())
    msg = str(info.value)
    assert "epoch_0.pt" in msg and "2.weight: file (3, 8) vs model (5, 8)" in msg
    assert "state_key" in msg

    deeper = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3),
                                 torch.nn.ReLU(), torch.nn.Linear(3, 3))
    with pytest.raises(ModelMismatchError, match=r"missing keys \(2\): 4.bias, 4.weight"):
        _imp(tmp_path / "ck", tmp_path / "run2.zarr", deeper, small_data())
    shallow = torch.nn.Sequential(torch.nn.Linear(4, 8))
    with pytest.raises(ModelMismatchError, match=r"unexpected keys \(2\): 2.bias, 2.weight"):
        _imp(tmp_path / "ck", tmp_path / "run3.zarr", shallow, small_data())


def test_mismatch_in_a_later_file_names_it(tmp_path, model, sds):
    bad = dict(sds[2])
    bad["0.weight"] = torch.zeros(9, 4)
    write_per_epoch(tmp_path / "ck", [sds[0], sds[1], bad], STEPS[:3])
    with pytest.raises(ModelMismatchError, match=r"(?s)epoch_20\.pt.*0\.weight: file \(9, 4\)"):
        _imp(tmp_path / "ck", tmp_path / "run.zarr", model, small_data())
    assert not (tmp_path / "run.zarr").exists()  # the half-written store is removed


def test_key_map_for_other_renamings(tmp_path, model, sds):
    renamed = [{k.replace("0.", "first.").replace("2.", "second."): v for k, v in sd.items()}
               for sd in sds]
    write_per_epoch(tmp_path / "ck", renamed, STEPS)

    def back(sd):
        return {k.replace("first.", "0.").replace("second.", "2."): v for k, v in sd.items()}

    run = _imp(tmp_path / "ck", tmp_path / "run.zarr", model, small_data(), key_map=back)
    assert_roundtrip(run, sds, STEPS)


# ---------------------------------------------------------------------------- models
def test_registered_model_name_and_class(tmp_path):
    from grokscope.models import build_model

    net = build_model("mlp", in_dim=4, out_dim=3, width=8)
    sds = trajectory(net, 3)
    write_per_epoch(tmp_path / "ck", sds, STEPS[:3])
    run = _imp(tmp_path / "ck", tmp_path / "a.zarr", "mlp", small_data(),
               model_kwargs={"width": 8})  # in/out sizes inferred from the data
    assert_roundtrip(run, sds, STEPS[:3])
    assert run.config["model"]["name"] == "mlp"
    run2 = _imp(tmp_path / "ck", tmp_path / "b.zarr", type(net), small_data(),
                model_kwargs={"in_dim": 4, "out_dim": 3, "width": 8})
    assert_roundtrip(run2, sds, STEPS[:3])
    model_at = run.model_at(STEPS[1])
    for k, v in sds[1].items():
        assert torch.equal(model_at.state_dict()[k], v)


def test_overwrite(tmp_path, model, sds):
    write_per_epoch(tmp_path / "ck", sds, STEPS)
    _imp(tmp_path / "ck", tmp_path / "run.zarr", model, small_data())
    run = _imp(tmp_path / "ck", tmp_path / "run.zarr", model, small_data(), overwrite=True)
    assert_roundtrip(run, sds, STEPS)


# ---------------------------------------------------------------------------- CLI
def _parse(argv):
    parser = argparse.ArgumentParser(prog="grokscope")
    add_import_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_import(tmp_path, capsys):
    from grokscope.models import build_model

    net = build_model("mlp", in_dim=4, out_dim=3, width=8)
    sds = trajectory(net, 2)
    data = small_data()
    ck = tmp_path / "ck"
    write_per_epoch(ck, sds[1:], [50], step_in_file=None)
    torch.save({"model": sds[0], "x_train": data.x_train, "y_train": data.y_train,
                "x_test": data.x_test, "y_test": data.y_test}, ck / "init.pt")
    args = _parse(["import", str(ck), "-o", str(tmp_path / "run.zarr"), "--model", "mlp",
                   "--model-kwargs", '{"width": 8}', "--no-progress"])
    assert args.func is cmd_import
    assert cmd_import(args) == 0
    assert "imported 2 checkpoints" in capsys.readouterr().out
    from grokscope.store.run import open_run

    assert_roundtrip(open_run(tmp_path / "run.zarr"), sds, [0, 50])

    bad = _parse(["import", str(ck), "-o", str(tmp_path / "r2.zarr"), "--model", "mlp",
                  "--model-kwargs", '{"width": 9}', "--no-progress"])
    assert cmd_import(bad) == 2
    assert "does not match" in capsys.readouterr().err
    code = _parse(["import", str(ck), "-o", str(tmp_path / "r3.zarr"), "--model",
                   "torch.nn:Linear", "--model-kwargs", '{"in_features": 4, "out_features": 3}'])
    assert cmd_import(code) == 2
    assert "trust" in capsys.readouterr().err


def test_cli_full_set_for_index_splits(tmp_path, capsys):
    from grokscope.models import build_model

    p = 5
    net = build_model("mlp", in_dim=12, out_dim=p, vocab=p + 1, n_tokens=3, embed_dim=4, width=8)
    sds = trajectory(net, 2)
    tr, te = torch.arange(10), torch.arange(10, 25)
    write_nanda_bundle(tmp_path / "run.pth", sds, [0, 1], n_epochs=2, indices=(tr, te))
    out = tmp_path / "a.zarr"
    args = _parse(["import", str(tmp_path / "run.pth"), "-o", str(out), "--model", "mlp",
                   "--model-kwargs", '{"embed_dim": 4, "width": 8}', "--full-set", '{"p": 5}',
                   "--no-progress"])
    assert cmd_import(args) == 0, capsys.readouterr().err
    from grokscope.store.run import open_run

    run = open_run(out)
    assert_roundtrip(run, sds, [0, 1])
    x_all, y_all, _ = modular_full_set(p, "+")
    assert torch.equal(torch.as_tensor(np.asarray(run.data.x_test)), x_all[te])
    assert run.data.task["name"] == "modular" and run.data.task["p"] == p
    assert torch.equal(torch.as_tensor(np.asarray(run.data.extras["pairs_train"])), x_all[tr, :2])
    bad = _parse(["import", str(tmp_path / "run.pth"), "-o", str(tmp_path / "b.zarr"),
                  "--model", "mlp", "--full-set", "[5]"])
    assert cmd_import(bad) == 2
    assert "--full-set must be a JSON object" in capsys.readouterr().err
    from grokscope.cli import main

    assert main(["import", str(tmp_path / "run.pth"), "-o", str(tmp_path / "c.zarr"), "--model",
                 "mlp", "--model-kwargs", '{"embed_dim": 4, "width": 8}', "--full-set",
                 '{"p": 5}', "--no-progress"]) == 0


def test_progress_bar_shown(tmp_path, model, sds, capsys):
    write_per_epoch(tmp_path / "ck", sds, STEPS)
    _imp(tmp_path / "ck", tmp_path / "run.zarr", model, small_data(), progress=True)
    err = capsys.readouterr().err
    assert "import" in err and "4/4" in err


def test_open_source_scan_is_lazy(tmp_path, model, sds):
    write_per_epoch(tmp_path / "ck", sds, STEPS)
    src = open_source(tmp_path / "ck")
    assert src.steps == STEPS and len(src) == 4
    items = list(src)
    assert [i.step for i in items] == STEPS
    assert all(math.isfinite(v) for i in items for v in i.scalars.values())


def test_interrupted_import_resumes(tmp_path, model, sds, monkeypatch):
    write_per_epoch(tmp_path / "ck", sds, STEPS)
    from grokscope.store import recorder

    real = recorder.Recorder.record
    def flaky(self, step, *args, **kwargs):
        if step == 20:
            raise KeyboardInterrupt
        return real(self, step, *args, **kwargs)

    monkeypatch.setattr(recorder.Recorder, "record", flaky)
    with pytest.raises(KeyboardInterrupt):
        _imp(tmp_path / "ck", tmp_path / "run.zarr", model, small_data())
    monkeypatch.setattr(recorder.Recorder, "record", real)
    with pytest.warns(UserWarning, match="up to 10"):
        run = _imp(tmp_path / "ck", tmp_path / "run.zarr", model, small_data())
    assert_roundtrip(run, sds, STEPS)


def test_pickled_module_needs_trust(tmp_path, model, sds):
    (tmp_path / "ck").mkdir()
    for sd, step in zip(sds, STEPS):
        net = small_model()
        net.load_state_dict(sd)
        torch.save({"model": net, "epoch": step}, tmp_path / "ck" / f"m{step}.pt")
    with pytest.raises(UnsafeCheckpointError, match="Sequential"):
        open_source(tmp_path / "ck")
    assert_source(open_source(tmp_path / "ck", trust_pickle=True), sds, STEPS)
