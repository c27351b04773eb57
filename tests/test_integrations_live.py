"""LiveLog: live measures and the curves figure, read back from TensorBoard and W&B files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _integration_helpers import SCHEDULE, data_fixture, one_thread_fixture  # noqa: F401
from torch import nn

import grokscope as gs
from grokscope.integrations import LiveLog


def _plain_loop(path, data, live, steps=20):
    """A researcher's own loop with the Recorder; LiveLog after each record."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(22, 32), nn.ReLU(), nn.Linear(32, 11))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1.0)
    sent = {}
    with gs.Recorder(path, model, data, schedule=gs.Schedule(**SCHEDULE)) as rec:
        for step in range(steps + 1):
            if rec.due(step):
                with torch.no_grad():
                    acc = (model(data.x_test).argmax(-1) == data.y_test).double().mean().item()
                rec.record(step, model, {"test_acc": acc})
                out = live.update(rec, model, {"test_acc": acc})
                if out is not None:
                    sent[step] = out
            loss = nn.functional.cross_entropy(model(data.x_train), data.y_train)
            opt.zero_grad()
            loss.backward()
            opt.step()
    live.close()
    return sent


def test_tensorboard_scalars_and_figure_match_the_offline_analysis(tmp_path, data):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from grokscope.integrations import TensorBoardSink

    sent = _plain_loop(tmp_path / "run.zarr", data,
                       LiveLog(TensorBoardSink(tmp_path / "tb"), every=3))
    assert sorted(sent) == [0, 3, 15]  # the 1st, 4th and 7th recorded checkpoints
    ea = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"grokscope/train_acc", "grokscope/test_loss", "grokscope/param_norm",
            "grokscope/rel_distance_init", "grokscope/nfa_corr_sqrt/0",
            "grokscope/metrics/test_acc"} <= tags
    # the live numbers are the ones the offline analysis stores
    res = gs.analyze(tmp_path / "run.zarr", ["curves", "nfa"], steps=[0, 3, 15], progress=False)
    for tag, ref in (("train_acc", res["curves"].train_acc),
                     ("test_loss", res["curves"].test_loss),
                     ("rel_distance_init", res["curves"].rel_distance_init),
                     ("nfa_corr_sqrt/0", res["nfa"].nfa_corr_sqrt.sel(layer="0"))):
        events = ea.Scalars(f"grokscope/{tag}")
        assert [e.step for e in events] == [0, 3, 15]
        np.testing.assert_allclose([e.value for e in events], ref.values, rtol=1e-5, atol=1e-6)
        assert events[-1].value == pytest.approx(sent[15][tag], rel=1e-6, abs=1e-7)
    assert ea.Scalars("grokscope/rel_distance_init")[0].value == 0.0  # step 0 is the reference
    images = ea.Images("grokscope/curves")
    assert [im.step for im in images] == [0, 3, 15]
    assert images[-1].width == 640 and images[-1].height == 420
    assert images[-1].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"


def test_wandb_offline_history(tmp_path, data, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from _wandb_offline import history

    from grokscope.integrations import WandbSink

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="grokscope-test", dir=str(tmp_path), mode="offline")
    try:
        sent = _plain_loop(tmp_path / "run.zarr", data,
                           LiveLog(WandbSink(), every=4, measures=("curves",)))
        run_dir = Path(run.dir).parent  # .../wandb/offline-run-*/files
    finally:
        run.finish()
    rows = history(run_dir)
    assert [r["grokscope/step"] for r in rows] == sorted(sent) == [0, 6]
    for r in rows:
        s = r["grokscope/step"]
        assert r["grokscope/train_acc"] == pytest.approx(sent[s]["train_acc"])
        assert r["grokscope/param_norm"] == pytest.approx(sent[s]["param_norm"])
        assert r["grokscope/curves/_type"] == "image-file"
        assert (run_dir / "files" / r["grokscope/curves/path"]).stat().st_size > 1000
    assert not any(k.startswith("grokscope/nfa") for k in rows[0])  # measures=("curves",)


def test_without_a_linear_map_the_nfa_is_skipped_with_one_warning(tmp_path, data):
    class Sink:
        def __init__(self):
            self.logged = []

        def log(self, step, scalars, images):
            self.logged.append((step, scalars, images))

        def close(self):
            pass

    class RawReadout(nn.Module):  # one raw weight, no hidden layer: nothing for the NFA
        def __init__(self):
            super().__init__()
            self.W_U = nn.Parameter(torch.randn(22, 11) * 0.1)

        def forward(self, x):
            return torch.einsum("bi,ic->bc", x, self.W_U)

    sink = Sink()
    live = LiveLog(sink, every=1, figure=False)
    model = RawReadout()
    with pytest.warns(RuntimeWarning, match="NFA correlation is skipped") as caught:
        with gs.Recorder(tmp_path / "r.zarr", model, data) as rec:
            for step in (0, 1):
                rec.record(step, model)
                live.update(rec, model)
    assert len([w for w in caught if "NFA" in str(w.message)]) == 1
    assert [s for s, _, _ in sink.logged] == [0, 1]
    assert "param_norm" in sink.logged[1][1] or "grokscope/param_norm" in sink.logged[1][1]
    assert not any("nfa" in k for k in sink.logged[1][1])
    assert sink.logged[1][2] == {}


def test_bad_arguments_say_what_to_do():
    with pytest.raises(gs.GrokscopeError, match="every=0"):
        LiveLog(every=0)
    with pytest.raises(gs.GrokscopeError, match="unknown live measure"):
        LiveLog(measures=("lmn",))
    with pytest.raises(gs.GrokscopeError, match="TensorBoardSink or WandbSink"):
        LiveLog(object())
