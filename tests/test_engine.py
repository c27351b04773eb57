"""The engine: step selection, skipping, resume, inapplicable measures, non-finite weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import grokscope as gs
from grokscope import results_io
from grokscope.engine import pick_device, resolve_measures
from grokscope.errors import ConfigError, UnknownNameError
from grokscope.measures import registry

from .conftest import record_tiny_run

CALLS: list[int] = []


@pytest.fixture
def counting_measure():
    """A step measure that counts its calls; removed from the registry afterwards."""

    def never_on_transformers(view, data):
        transformer = any(lin["name"].startswith("blocks.") for lin in view.anatomy.linear)
        return "needs an MLP" if transformer else None

    @registry.register("_count", applies=never_on_transformers)
    def _count(ckpt, *, scale=1.0):
        """Test measure: the first weight's mean times ``scale``."""
        CALLS.append(ckpt.step)
        w = next(iter(ckpt.model.parameters()))
        return xr.Dataset({"value": ((), float(w.detach().mean()) * scale)})

    CALLS.clear()
    yield "_count"
    registry._REGISTRY.pop("_count", None)


def test_skip_computed_steps_and_resume(tmp_path, counting_measure):
    run = record_tiny_run(tmp_path / "r.zarr")
    steps = run.steps.tolist()
    gs.analyze(run, ["_count"], steps=f"{steps[0]}:{steps[2]}", progress=False)
    assert CALLS == steps[:3]
    CALLS.clear()
    res = gs.analyze(run, ["_count"], progress=False)  # the interrupted analysis resumes
    assert CALLS == steps[3:]
    assert res["_count"].step.values.tolist() == steps
    CALLS.clear()
    gs.analyze(run, ["_count"], progress=False)
    assert CALLS == []
    res = gs.analyze(run, {"_count": {"scale": 2.0}}, progress=False)
    assert CALLS == steps
    assert res["_count"].attrs["param_scale"] == 2.0


def test_results_persist_in_store(tmp_path, counting_measure):
    run = record_tiny_run(tmp_path / "r.zarr")
    gs.analyze(run, ["_count"], progress=False)
    reopened = gs.open_run(tmp_path / "r.zarr")
    ds = results_io.read_result(str(reopened.path), "_count")
    assert ds is not None and ds.sizes["step"] == len(run.steps)
    plain = xr.open_zarr(str(tmp_path / "r.zarr"), group="results/_count", consolidated=False)
    assert "value" in plain


def test_incomplete_result_is_recomputed(tmp_path, counting_measure):
    import zarr

    run = record_tiny_run(tmp_path / "r.zarr")
    gs.analyze(run, ["_count"], progress=False)
    grp = zarr.open_group(str(run.path), path="results/_count", mode="r+")
    grp.attrs[results_io.COMPLETE_ATTR] = False  # as if killed mid-write
    CALLS.clear()
    gs.analyze(run, ["_count"], progress=False)
    assert CALLS == run.steps.tolist()


def test_inapplicable_measure_is_skipped_with_reason(tmp_path, counting_measure):
    run = record_tiny_run(tmp_path / "t.zarr", model_name="transformer", encoding="tokens")
    res = gs.analyze(run, ["_count"], progress=False)
    assert "_count" not in res and res.skipped["_count"] == "needs an MLP"


def test_nonfinite_weights_give_nan_and_flag(tmp_path, counting_measure):
    run = record_tiny_run(tmp_path / "n.zarr", break_at=10)
    with pytest.warns(UserWarning, match="non-finite"):
        res = gs.analyze(run, ["_count"], progress=False)
    ds = res["_count"]
    flagged = ds.nonfinite_weights.sel(step=10).item()
    assert flagged and np.isnan(ds.value.sel(step=10).item())
    assert not ds.nonfinite_weights.sel(step=0).item()


def test_resolve_measures_orders_dependencies_and_checks_params():
    plan = [s.name for s, _ in resolve_measures(["phases"])]
    assert plan.index("curves") < plan.index("phases")
    with pytest.raises(UnknownNameError):
        resolve_measures(["no_such_measure"])
    with pytest.raises(ConfigError, match="no parameter"):
        resolve_measures({"curves": {"no_such_param": 1}})


def test_pick_device():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ConfigError, match="unknown device 'warp-drive'.*'auto', 'cpu'"):
        pick_device("warp-drive")
    with pytest.raises(ConfigError, match="^train: unknown device 3"):
        pick_device(3, who="train")  # not a device string at all


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_says_use_auto(tmp_path):
    with pytest.raises(ConfigError, match="^device 'cuda' was asked for but no CUDA GPU.*'auto'"):
        pick_device("cuda")
    with pytest.raises(ConfigError, match="^train: device 'cuda:1' was asked for"):
        gs.train("modular", "mlp", tmp_path / "r.zarr", steps=2, device="cuda:1",
                 progress=False)


def test_reference_steps_are_part_of_the_skip_key(tmp_path):
    """A measure compared with the last checkpoint is recomputed when the run grows."""
    import torch

    from grokscope.store.recorder import Recorder

    run = record_tiny_run(tmp_path / "g.zarr", steps=(0, 5, 10))
    first = gs.analyze(run, ["nfa"], progress=False)["nfa"]
    assert first.attrs["reference_last_step"] == 10
    model = run.model_at(10)
    torch.manual_seed(1)
    with torch.no_grad():
        for prm in model.parameters():
            prm.add_(0.5 * torch.randn_like(prm))
    with Recorder(run.path, model, run.data) as rec:
        rec.record(20, model)
    grown = gs.analyze(gs.open_run(run.path), ["nfa"], progress=False)["nfa"]
    assert grown.attrs["reference_last_step"] == 20
    assert grown.step.values.tolist() == [0, 5, 10, 20]
    # step 10 is no longer the final step: its AGOP alignment is recomputed, not kept at 1
    assert float(grown.agop_alignment.sel(step=10).max()) < 1.0 - 1e-6


def test_failed_result_write_keeps_the_last_complete_version(tmp_path, counting_measure, monkeypatch):
    run = record_tiny_run(tmp_path / "k.zarr")
    gs.analyze(run, ["_count"], progress=False)

    def boom(*args, **kwargs):
        raise OSError("killed mid-write")

    monkeypatch.setattr(xr.Dataset, "to_zarr", boom)
    with pytest.raises(OSError):
        gs.analyze(run, {"_count": {"scale": 3.0}}, progress=False)
    monkeypatch.undo()
    kept = gs.open_run(run.path).results["_count"]
    assert kept.attrs["param_scale"] == 1.0 and kept.sizes["step"] == len(run.steps)


def test_stateful_measure_is_rewarmed_when_a_result_is_extended(tmp_path):
    """An extended mixture result continues its warm start instead of starting cold."""
    run = record_tiny_run(tmp_path / "w.zarr")
    steps = run.steps.tolist()
    gs.analyze(run, ["mixture"], steps=f"{steps[0]}:{steps[2]}", progress=False)
    extended = gs.analyze(run, ["mixture"], progress=False)["mixture"]
    whole = gs.analyze(run, ["mixture"], progress=False, recompute=True)["mixture"]
    # without the replay the first new step would be a cold fit (warm_started False)
    assert bool(extended.warm_started.sel(step=steps[3]))
    assert extended.k.values.tolist() == whole.k.values.tolist()
