"""The trajectory store: roundtrips, errors, fault injection (see test_store_crash.py for kills)."""

from __future__ import annotations

import errno
import json
import uuid
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

import grokscope as gs
from grokscope.errors import (
    ConfigError,
    CorruptStoreError,
    ModelMismatchError,
    NotAStoreError,
    SchemaVersionError,
    StepOrderError,
    StoreWriteError,
    UntrustedCodeError,
)
from grokscope.results_io import write_result
from grokscope.store import Recorder, Schedule, StepNotFoundError, open_run
from grokscope.store import _io as store_io
from tests._store_helpers import TinyNet, check_run_exact, fill_step, tiny_data

STEPS = [0, 1, 2, 5, 10, 30, 100]


def record(path, steps=STEPS, model=None, data=None, **kw):
    model = model or TinyNet()
    with Recorder(path, model, data if data is not None else tiny_data(), **kw) as rec:
        for s in steps:
            fill_step(model, s)
            rec.record(s, metrics={"train_loss": s * 0.5, "test_acc": torch.tensor(0.25)})
    return model


@pytest.fixture
def run_path(tmp_path):
    return tmp_path / "run.zarr"


# ---------------------------------------------------------------------------- roundtrip
def test_roundtrip_exact(run_path):
    data = tiny_data()
    model = record(run_path, data=data, config={"seed": 3, "optimizer": {"lr": 1e-3}})
    run = open_run(run_path)
    np.testing.assert_array_equal(run.steps, STEPS)
    assert run.steps.dtype == np.int64
    check_run_exact(run, model)
    for s in STEPS:
        fill_step(model, s)
        sd = run.state_dict_at(s)
        for k, v in model.state_dict().items():
            assert torch.equal(sd[k], v)
    # the lazy datasets agree with the eager reads
    np.testing.assert_array_equal(run.params["fc1.weight"].values, run.trajectory("fc1.weight"))
    assert run.params["fc1.weight"].dims == ("step", "fc1_weight_dim0", "fc1_weight_dim1")
    np.testing.assert_array_equal(run.metrics["test_acc"].values, 0.25)
    np.testing.assert_array_equal(run.metrics["nonfinite"].values, 0)
    np.testing.assert_array_equal(run.metrics.step.values, STEPS)
    # data split, task, extras, config
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(run.data, name), getattr(data, name))
    assert torch.equal(run.data.extras["w_star"], data.extras["w_star"])
    assert run.data.task == data.task
    assert run.config["seed"] == 3 and run.config["optimizer"] == {"lr": 1e-3}
    assert run.config["task"] == data.task
    assert run.config["model"]["factory"] == "tests._store_helpers:TinyNet"
    info = run.info()
    assert info["steps"] == {"count": len(STEPS), "first": 0, "last": 100}
    assert info["tensors"]["fc1.weight"] == [8, 4]
    assert info["nbytes"] == run.nbytes > 0
    assert "train_loss" in info["metrics"]
    assert "7 checkpoints" in repr(run)
    assert len(run.results) == 0


def test_model_at_instance_class_and_trust(run_path):
    record(run_path, export_program=False)  # no stored program: the class spec only
    run = open_run(run_path)
    m = run.model_at(10, model=TinyNet())
    assert torch.all(m.fc1.weight == 10) and not m.training
    m2 = run.model_at(10, model=TinyNet)  # a class: called with the spec kwargs (none)
    assert torch.equal(m2.fc2.bias, m.fc2.bias)
    with pytest.raises(UntrustedCodeError, match="trust_code=True"):
        run.model_at(10)
    m3 = open_run(run_path, trust_code=True).model_at(10)
    assert torch.equal(m3.fc1.weight, m.fc1.weight)
    with pytest.raises(ModelMismatchError, match="fc1.weight"):
        run.model_at(10, model=TinyNet(width=9))


def test_registered_model_spec_roundtrip(run_path):
    from grokscope.models import build_model

    model = build_model("mlp", in_dim=4, out_dim=3, width=16)
    with Recorder(run_path, model, tiny_data()) as rec:
        rec.record(0)
    run = open_run(run_path)
    assert run.config["model"]["name"] == "mlp"
    rebuilt = run.model_at(0)  # a registered name needs no trust
    for k, v in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v)


def test_plain_xarray_after_close(run_path):
    model = record(run_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(run_path, consolidated=False)  # no warning when told
    assert ds.sizes["step"] == len(STEPS)
    # the root carries no consolidated metadata (it would hide results/ written later):
    # xarray's default falls back to each array's metadata, with its RuntimeWarning
    with pytest.warns(RuntimeWarning, match="consolidated"):
        assert xr.open_zarr(run_path).sizes["step"] == len(STEPS)
    np.testing.assert_array_equal(ds.step.values, STEPS)
    fill_step(model, 30)
    np.testing.assert_array_equal(ds["fc2.weight"].sel(step=30).values,
                                  model.fc2.weight.detach().numpy())
    np.testing.assert_array_equal(ds["train_loss"].values, np.array(STEPS) * 0.5)
    data = xr.open_zarr(run_path, group="data")
    assert data["x_train"].shape == (12, 4)
    arr = zarr.open_array(run_path, path="fc1.weight", mode="r")
    assert arr.chunks == (1, 8, 4) and np.isnan(arr.fill_value)


def test_memory_url_roundtrip():
    url = f"memory://gs-test-{uuid.uuid4().hex}/run.zarr"
    model = record(url)
    run = open_run(url)
    check_run_exact(run, model)
    assert torch.equal(run.data.x_train, tiny_data().x_train)
    # re-open for appending through the URL
    with Recorder(url, model, tiny_data()) as rec:
        fill_step(model, 200)
        rec.record(200, metrics={"train_loss": 100.0})
    assert open_run(url).steps[-1] == 200


def test_file_url_and_compression(tmp_path):
    url = f"file://{tmp_path}/c.zarr"
    model = record(url, compression="lz4")
    run = open_run(url)
    check_run_exact(run, model)
    arr = zarr.open_array(tmp_path / "c.zarr", path="fc1.weight", mode="r")
    assert any("blosc" in type(c).__name__.lower() for c in arr.metadata.codecs)
    np.testing.assert_array_equal(run.trajectory("fc1.weight", index=(1, 2)), run.steps)


def test_consolidated_commit_mode(run_path):
    model = TinyNet()
    with Recorder(run_path, model, tiny_data(), commit="consolidated") as rec:
        for s in range(70):  # crosses the first capacity growth
            fill_step(model, s)
            rec.record(s, metrics={"train_loss": s * 0.5})
            if s in (3, 66):
                # mid-run, plain xarray (consolidated) sees exactly the committed prefix
                ds = xr.open_zarr(run_path, consolidated=True)
                assert ds.sizes["step"] == s + 1
                np.testing.assert_array_equal(ds.step.values, np.arange(s + 1))
    check_run_exact(open_run(run_path), model)


def test_trajectory_and_element_reads(run_path):
    model = record(run_path)
    run = open_run(run_path)
    fill_step(model, 5)
    w = run.trajectory("fc1.weight", steps=[5, 30])
    assert w.shape == (2, 8, 4) and np.all(w[0] == 5)
    np.testing.assert_array_equal(run.trajectory("fc2.bias", index=(-1,)),
                                  (run.steps + 3 / 1000).astype(np.float32))
    with pytest.raises(ConfigError):
        run.trajectory("nope")
    with pytest.raises(StepNotFoundError, match=r"nearby recorded steps: \[2, 5, 10, 30, 100\]"):
        run.state_dict_at(20)


def test_bfloat16_and_buffers(run_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)).to(torch.bfloat16)
    with Recorder(run_path, model, None) as rec:
        rec.record(0)
    run = open_run(run_path)
    sd = run.state_dict_at(0)
    for k, v in model.state_dict().items():
        assert sd[k].dtype == v.dtype and torch.equal(sd[k], v), k
    with pytest.raises(gs.GrokscopeError, match="no data split"):
        _ = run.data


def test_results_mapping(run_path):
    record(run_path)
    ds = xr.Dataset({"norm": (("step",), np.arange(3.0))}, coords={"step": [0, 1, 2]},
                    attrs={"p": 1})
    ds.to_zarr(run_path, group="results/norms", mode="w", zarr_format=3, consolidated=False)
    assert list(open_run(run_path).results) == []  # written without the completion marker
    write_result(str(run_path), "norms", ds)
    run = open_run(run_path)
    assert list(run.results) == ["norms"]
    got = run.results["norms"]
    np.testing.assert_array_equal(got["norm"].values, np.arange(3.0))
    assert got.attrs["p"] == 1
    with pytest.raises(KeyError, match="analyze"):
        run.results["other"]


# ---------------------------------------------------------------------------- order, reopen
def test_step_order_errors_write_nothing(run_path):
    model = TinyNet()
    with Recorder(run_path, model, tiny_data()) as rec:
        fill_step(model, 5)
        rec.record(5, metrics={"train_loss": 2.5})
        before = sorted(p.relative_to(run_path) for p in run_path.rglob("*"))
        for bad in (5, 3):
            with pytest.raises(StepOrderError, match="nothing was written"):
                rec.record(bad, metrics={"train_loss": 1.0})
        with pytest.raises(StepOrderError):
            rec.record(-1)
        after = sorted(p.relative_to(run_path) for p in run_path.rglob("*"))
        assert before == after
        assert rec.last_step == 5 and rec.count == 1
        assert not rec.due(5) and rec.due(6)
    run = open_run(run_path)
    np.testing.assert_array_equal(run.steps, [5])
    check_run_exact(run, model)


def test_reopen_appends_and_checks(run_path):
    model = record(run_path, steps=[0, 1, 2])
    with Recorder(run_path, model, tiny_data()) as rec:
        assert rec.last_step == 2 and rec.count == 3
        with pytest.raises(StepOrderError):
            rec.record(2)
        fill_step(model, 7)
        rec.record(7, metrics={"train_loss": 3.5})
    run = open_run(run_path)
    np.testing.assert_array_equal(run.steps, [0, 1, 2, 7])
    # test_acc was not given at step 7: NaN there
    assert np.isnan(run.metrics["test_acc"].values[-1])
    with pytest.raises(ModelMismatchError, match=r"fc1\.weight.*\(8, 4\).*\(9, 4\)"):
        Recorder(run_path, TinyNet(width=9), tiny_data())
    other = torch.nn.Linear(4, 3)
    with pytest.raises(ModelMismatchError, match="missing keys"):
        Recorder(run_path, other, tiny_data())
    with pytest.raises(ConfigError, match="data split"):
        Recorder(run_path, model, tiny_data(n=14))
    # overwrite starts over
    with Recorder(run_path, model, tiny_data(), overwrite=True) as rec:
        assert rec.last_step is None
        rec.record(0)
    assert open_run(run_path).steps.tolist() == [0]


def test_record_mismatched_model_and_bad_metric(run_path):
    with Recorder(run_path, TinyNet(), tiny_data()) as rec:
        with pytest.raises(ModelMismatchError, match="fc2"):
            rec.record(0, model=TinyNet(d_out=5))
        with pytest.raises(ConfigError, match="metric"):
            rec.record(0, metrics={"step": 1.0})
        with pytest.raises(ConfigError, match="number"):
            rec.record(0, metrics={"loss": "high"})
        assert rec.count == 0


def test_refuses_foreign_paths(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a grokscope store"):
        Recorder(tmp_path / "notes", TinyNet(), tiny_data(), overwrite=True)
    assert (tmp_path / "notes" / "a.txt").exists()


def test_nan_weights_flagged(run_path):
    model = TinyNet()
    with Recorder(run_path, model, tiny_data()) as rec:
        fill_step(model, 0)
        rec.record(0)
        with torch.no_grad():
            model.fc1.weight[0, :2] = float("nan")
            model.fc2.bias[0] = float("inf")
        with pytest.warns(RuntimeWarning, match="non-finite"):
            rec.record(1)
    run = open_run(run_path)
    np.testing.assert_array_equal(run.metrics["nonfinite"].values, [0, 3])
    w = run.state_dict_at(1)["fc1.weight"]
    assert torch.isnan(w[0, :2]).all() and torch.isinf(run.state_dict_at(1)["fc2.bias"][0])


def test_resume_state_roundtrip(run_path):
    model = TinyNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).sum().backward()
        opt.step()
    rng = torch.get_rng_state()
    with Recorder(run_path, model, tiny_data()) as rec:
        assert rec.resume_state() is None
        rec.record(0, optimizer=opt)
        rec.record(1, optimizer=opt.state_dict(), extra={"rng": rng, "epoch": 4})
        rec.record(2)  # no resume state: the last saved one stays
        state = rec.resume_state()
    assert state["step"] == 1 and state["extra"]["epoch"] == 4
    assert torch.equal(state["extra"]["rng"], rng)
    ref = opt.state_dict()
    assert state["optimizer"]["param_groups"] == ref["param_groups"]
    for k, v in ref["state"].items():
        for name, t in v.items():
            assert torch.equal(state["optimizer"]["state"][k][name], t)
    opt2 = torch.optim.AdamW(TinyNet().parameters(), lr=1e-2)
    opt2.load_state_dict(state["optimizer"])
    # only the latest resume state is kept
    assert sorted(p.name for p in (run_path / "_resume").iterdir()) == ["s1", "zarr.json"]
    with Recorder(run_path, model, tiny_data()) as rec:
        assert rec.resume_state()["step"] == 1
    with pytest.raises(ConfigError, match="weights_only"):
        with Recorder(run_path, model, tiny_data()) as rec:
            rec.record(3, extra={"obj": object()})


# ---------------------------------------------------------------------------- errors on open
def test_not_a_store(tmp_path):
    with pytest.raises(NotAStoreError, match="not a grokscope store"):
        open_run(tmp_path / "missing.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAStoreError):
        open_run(tmp_path / "empty")
    zarr.open_group(tmp_path / "plain.zarr", mode="w")
    with pytest.raises(NotAStoreError, match="not a grokscope store"):
        open_run(tmp_path / "plain.zarr")


def test_schema_version_check(run_path):
    record(run_path, steps=[0])
    doc = json.loads((run_path / "zarr.json").read_text())
    doc["attributes"]["grokscope_schema"] = 999
    (run_path / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(SchemaVersionError, match="upgrade grokscope"):
        open_run(run_path)
    with pytest.raises(SchemaVersionError):
        Recorder(run_path, TinyNet(), tiny_data())


def test_corrupt_chunk_truncated(run_path):
    record(run_path, steps_per_shard=None)  # one file per step (shards: test_store_shards.py)
    chunk = run_path / "fc1.weight" / "c" / "3" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:10])
    run = open_run(run_path)
    with pytest.raises(CorruptStoreError, match="fc1.weight.*Restore"):
        run.state_dict_at(5)
    with pytest.raises(CorruptStoreError, match="fc1.weight"):
        _ = run.params["fc1.weight"].values
    run.state_dict_at(10)  # other steps still read
    chunk.unlink()
    with pytest.raises(CorruptStoreError, match="missing"):
        open_run(run_path).state_dict_at(5)


def test_corrupt_compressed_chunk(run_path):
    record(run_path, compression="lz4")
    chunk = run_path / "fc1.weight" / "c" / "3" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    chunk.write_bytes(bytes(raw[:8]) + b"\xff" * (len(raw) - 8))
    with pytest.raises(CorruptStoreError, match="fc1.weight"):
        open_run(run_path).state_dict_at(5)


@pytest.mark.parametrize("doc", ["zarr.json", "fc2.bias/zarr.json", "train_loss/zarr.json"])
def test_corrupt_metadata(run_path, doc):
    record(run_path)
    # a store without the durable fallback root, as written before it (with one, a damaged
    # root reads from it: tests/test_store_power_loss.py)
    (run_path / "_commit" / "zarr.json").unlink()
    (run_path / doc).write_text('{"zarr_format": 3, "node_ty')
    with pytest.raises(CorruptStoreError, match="restore"):
        open_run(run_path)


# ---------------------------------------------------------------------------- write failures
class _FailOn:
    """Replacement for ``_io.put_file`` that raises ENOSPC on the k-th call."""

    def __init__(self, real, k):
        self.real, self.k, self.n = real, k, 0

    def __call__(self, path, data, **kw):
        self.n += 1
        if self.n == self.k:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return self.real(path, data, **kw)


def test_disk_full_mid_record_keeps_last_commit(run_path, monkeypatch):
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    real = store_io.put_file
    rec = Recorder(run_path, model, tiny_data())
    step = 0
    # count the writes of one record (with a new metric and a resume state)
    counter = _FailOn(real, 0)
    monkeypatch.setattr(store_io, "put_file", counter)
    fill_step(model, step)
    rec.record(step, metrics={"train_loss": 0.0}, optimizer=opt)
    n_writes = counter.n
    # the row file, the new metric's metadata, the resume state's group, metadata and bytes,
    # the root document (a sharded store commits scalars in the root: docs/store.md)
    assert n_writes >= 6
    for k in range(1, n_writes + 2):
        step += 1
        fill_step(model, step)
        metrics = {"train_loss": step * 0.5, f"extra{k}": 1.0}
        monkeypatch.setattr(store_io, "put_file", _FailOn(real, k))
        try:
            rec.record(step, metrics=metrics, optimizer=opt)
        except StoreWriteError as exc:
            assert "keeps its" in str(exc)
            run = open_run(run_path)
            assert run.steps[-1] == rec.last_step == step - 1
            check_run_exact(run, model)
            monkeypatch.setattr(store_io, "put_file", real)
            rec.record(step, metrics={"train_loss": step * 0.5}, optimizer=opt)  # retry works
        assert rec.last_step == step
    monkeypatch.setattr(store_io, "put_file", real)
    rec.close()
    run = open_run(run_path)
    check_run_exact(run, model)
    assert run.steps.tolist() == list(range(step + 1))
    assert Recorder(run_path, model, tiny_data()).resume_state()["step"] == step
    # a metric whose first write failed is NaN, never a stale value
    for name in run.metrics.data_vars:
        if name.startswith("extra"):
            vals = run.metrics[name].values
            assert set(np.unique(vals[~np.isnan(vals)])) <= {1.0}


# ---------------------------------------------------------------------------- schedule
def test_schedule():
    s = Schedule(log_until=100, per_decade=4, every=50)
    assert s.steps(300).tolist() == [0, 1, 2, 3, 6, 10, 18, 32, 56, 100, 150, 200, 250, 300]
    assert all(s.due(int(x)) for x in s.steps(1000))
    due = [x for x in range(1001) if s.due(x)]
    assert due == s.steps(1000).tolist()
    d = Schedule()
    steps = d.steps(5000)
    assert steps[0] == 0 and np.all(np.diff(steps) > 0)
    assert d.due(0) and d.due(1000) and d.due(1100) and not d.due(1150)
    assert 20 <= np.sum((steps >= 100) & (steps < 1000)) <= 21
    with pytest.raises(ConfigError):
        Schedule(every=0)
