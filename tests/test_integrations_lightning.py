"""GrokscopeCallback in real Lightning training loops (tiny models, ~20 steps on the CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

L = pytest.importorskip("lightning.pytorch")

from _integration_helpers import SCHEDULE, data_fixture, one_thread_fixture  # noqa: E402, F401

import grokscope as gs  # noqa: E402
from grokscope.integrations import GrokscopeCallback  # noqa: E402


class SeqLit(L.LightningModule):
    """The usual way: an nn.Sequential under a custom name, metrics logged by name."""

    def __init__(self, fail_at: int | None = None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(22, 32), nn.ReLU(), nn.Linear(32, 11))
        self.fail_at = fail_at

    def training_step(self, batch, i):
        if self.fail_at is not None and self.global_step == self.fail_at:
            raise RuntimeError("boom")
        x, y = batch
        out = self.net(x)
        loss = nn.functional.cross_entropy(out, y)
        self.log("train_loss", loss)
        self.log("train_acc", (out.argmax(-1) == y).float().mean())
        return loss

    def validation_step(self, batch, i):
        x, y = batch
        self.log("val/accuracy", (self.net(x).argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=1.0)


class EinsumLit(L.LightningModule):
    """Raw parameters and einsum, recorded as the whole LightningModule."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.W_hidden = nn.Parameter(torch.randn(22, 24, generator=g) / 22 ** 0.5)
        self.W_read = nn.Parameter(torch.randn(24, 11, generator=g) / 24 ** 0.5)

    def forward(self, x):
        return torch.einsum("bh,hc->bc", torch.relu(torch.einsum("bi,ih->bh", x, self.W_hidden)),
                            self.W_read)

    def training_step(self, batch, i):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


class Capture(L.Callback):
    """Copies the weights at every global step, independently of grokscope."""

    def __init__(self, attr=None):
        self.attr, self.weights, self.logged = attr, {}, {}

    def _grab(self, trainer, pl_module):
        m = getattr(pl_module, self.attr) if self.attr else pl_module
        self.weights[trainer.global_step] = {k: v.detach().clone() for k, v in m.state_dict().items()}

    def on_train_start(self, trainer, pl_module):
        self._grab(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, i):
        self._grab(trainer, pl_module)
        self.logged[trainer.global_step] = {k: float(v) for k, v in trainer.callback_metrics.items()}


def _loaders(data):
    ds = torch.utils.data.TensorDataset
    return (torch.utils.data.DataLoader(ds(data.x_train, data.y_train), batch_size=64),
            torch.utils.data.DataLoader(ds(data.x_test, data.y_test), batch_size=128))


def _trainer(callbacks, max_steps=20, **kw):
    return L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False,
                     enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=callbacks, **kw)


def _same_weights(run, capture, steps):
    for s in steps:
        stored = run.state_dict_at(int(s))
        assert set(stored) == set(capture.weights[int(s)])
        for k, v in capture.weights[int(s)].items():
            torch.testing.assert_close(stored[k], v, rtol=0, atol=0, msg=f"{k} at step {s}")


def test_records_the_schedule_with_weights_and_metrics(tmp_path, data):
    torch.manual_seed(0)
    cap = Capture("net")
    cb = GrokscopeCallback(tmp_path / "run.zarr", data, module="net",
                           schedule=gs.Schedule(**SCHEDULE))
    _trainer([cb, cap]).fit(SeqLit(), *_loaders(data))
    assert cb.recorder is None  # closed at the end of fit

    run = gs.open_run(tmp_path / "run.zarr")
    np.testing.assert_array_equal(run.steps, gs.Schedule(**SCHEDULE).steps(20))
    assert set(run.state_dict_at(0)) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    _same_weights(run, cap, run.steps)
    m = run.metrics.compute()
    assert {"train_loss", "train_acc", "test_acc"} <= set(m.data_vars)
    # the metric committed with step s is what Lightning had logged at step s
    for s in (1, 6, 20):
        assert m.train_loss.sel(step=s).item() == pytest.approx(cap.logged[s]["train_loss"])
    # val/accuracy -> test_acc: the validation run after the last step is included
    assert 0 <= m.test_acc.sel(step=20).item() <= 1
    assert np.isnan(m.train_loss.sel(step=0).item())  # nothing logged before training
    assert run.verify()["arrays"] >= 4
    res = gs.analyze(run, ["curves", "nfa"], progress=False)
    assert res["curves"].train_acc.sizes["step"] == len(run.steps)
    assert np.isfinite(res["nfa"].nfa_corr_sqrt.sel(layer="0").values).all()


@pytest.mark.slow  # ~2-6 s: the default suite keeps one loop per framework
def test_whole_module_with_raw_parameters(tmp_path, data):
    torch.manual_seed(0)
    cap = Capture()
    cb = GrokscopeCallback(str(tmp_path / "raw.zarr"), data, schedule=gs.Schedule(**SCHEDULE))
    _trainer([cb, cap], max_steps=12, limit_val_batches=0).fit(EinsumLit(), _loaders(data)[0])
    run = gs.open_run(tmp_path / "raw.zarr")
    assert list(run.steps) == [0, 1, 2, 3, 6, 10]
    assert set(run.state_dict_at(0)) == {"W_hidden", "W_read"}
    _same_weights(run, cap, run.steps)
    assert np.isfinite(float(run.metrics.train_loss.sel(step=10)))  # "loss" -> train_loss
    res = gs.analyze(run, ["curves"], progress=False)
    assert res["curves"].train_acc.sel(step=10).item() == pytest.approx(
        _accuracy(run.state_dict_at(10), data), abs=1e-12)


def _accuracy(sd, data):
    m = EinsumLit()
    m.load_state_dict(sd)
    with torch.no_grad():
        return float((m(data.x_train).argmax(-1) == data.y_train).double().mean())


def test_crash_leaves_a_readable_store_with_the_steps_so_far(tmp_path, data):
    torch.manual_seed(0)
    cap = Capture("net")
    cb = GrokscopeCallback(tmp_path / "crash.zarr", data, module="net",
                           schedule=gs.Schedule(**SCHEDULE))
    with pytest.raises(RuntimeError, match="boom"):
        _trainer([cb, cap]).fit(SeqLit(fail_at=8), *_loaders(data))
    run = gs.open_run(tmp_path / "crash.zarr")
    assert list(run.steps) == [0, 1, 2, 3, 6]
    _same_weights(run, cap, run.steps)
    assert run.verify()
    # the writer lock was released: the store re-opens for writing in this process
    with gs.Recorder(tmp_path / "crash.zarr", SeqLit().net, data) as rec:
        assert rec.last_step == 6


def test_submodule_name_is_checked(tmp_path, data):
    cb = GrokscopeCallback(tmp_path / "bad.zarr", data, module="nett")
    with pytest.raises(gs.GrokscopeError, match=r"no such submodule.*\['net'\]"):
        _trainer([cb], max_steps=2).fit(SeqLit(), *_loaders(data))
    assert not (tmp_path / "bad.zarr").exists()


def test_resume_from_a_lightning_checkpoint_continues_the_store(tmp_path, data):
    torch.manual_seed(0)
    ckpt = tmp_path / "at10.ckpt"
    kw = dict(module="net", schedule=gs.Schedule(**SCHEDULE))
    t1 = _trainer([GrokscopeCallback(tmp_path / "r.zarr", data, **kw)], max_steps=10)
    t1.fit(SeqLit(), *_loaders(data))
    t1.save_checkpoint(ckpt)
    cap = Capture("net")
    t2 = _trainer([GrokscopeCallback(tmp_path / "r.zarr", data, **kw), cap], max_steps=20)
    t2.fit(SeqLit(), *_loaders(data), ckpt_path=ckpt)
    run = gs.open_run(tmp_path / "r.zarr")
    np.testing.assert_array_equal(run.steps, gs.Schedule(**SCHEDULE).steps(20))
    _same_weights(run, cap, [15, 20])


def test_live_log_goes_to_the_trainers_tensorboard_logger(tmp_path, data):
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from grokscope.integrations import LiveLog

    torch.manual_seed(0)
    logger = TensorBoardLogger(str(tmp_path / "tb"), name="", version="v0")
    cb = GrokscopeCallback(tmp_path / "run.zarr", data, module="net",
                           schedule=gs.Schedule(**SCHEDULE), live=LiveLog(every=4))
    L.Trainer(max_steps=12, accelerator="cpu", logger=logger, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
              log_every_n_steps=1, callbacks=[cb]).fit(SeqLit(), _loaders(data)[0])
    ea = EventAccumulator(str(tmp_path / "tb" / "v0"), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    acc = ea.Scalars("grokscope/train_acc")
    assert [e.step for e in acc] == [0, 6]  # the 1st and 5th of steps 0 1 2 3 6 10
    res = gs.analyze(tmp_path / "run.zarr", ["curves"], steps=[0, 6], progress=False)
    np.testing.assert_allclose([e.value for e in acc], res["curves"].train_acc.values, atol=1e-6)
    assert [e.step for e in ea.Scalars("grokscope/metrics/train_loss")] == [0, 6][1:]
    assert [im.step for im in ea.Images("grokscope/curves")] == [0, 6]
    assert "train_loss" in ea.Tags()["scalars"]  # Lightning's own logging is untouched


def test_live_log_without_a_sink_or_logger_says_what_to_pass(tmp_path, data):
    from grokscope.integrations import LiveLog

    cb = GrokscopeCallback(tmp_path / "run.zarr", data, module="net", live=LiveLog())
    with pytest.raises(gs.GrokscopeError, match=r"LiveLog\(TensorBoardSink\(log_dir\)\)"):
        _trainer([cb], max_steps=2).fit(SeqLit(), *_loaders(data))


class Interrupted(SeqLit):
    def training_step(self, batch, i):
        if self.global_step == 4:
            raise KeyboardInterrupt
        return super().training_step(batch, i)


def test_ctrl_c_closes_the_store(tmp_path, data):
    import signal

    handler = signal.getsignal(signal.SIGINT)
    cb = GrokscopeCallback(tmp_path / "int.zarr", data, module="net",
                           schedule=gs.Schedule(**SCHEDULE))
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful shutdown ends with sys.exit(1)
            _trainer([cb]).fit(Interrupted(), *_loaders(data))
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl+C
    assert cb.recorder is None
    assert list(gs.open_run(tmp_path / "int.zarr").steps) == [0, 1, 2, 3]
    with gs.Recorder(tmp_path / "int.zarr", SeqLit().net, data) as rec:  # lock released
        assert rec.last_step == 3


@pytest.mark.slow  # ~2 s
def test_gradient_accumulation_records_each_optimizer_step_once(tmp_path, data):
    torch.manual_seed(0)
    cap = Capture("net")
    cb = GrokscopeCallback(tmp_path / "acc.zarr", data, module="net",
                           schedule=gs.Schedule(**SCHEDULE))
    ds = torch.utils.data.TensorDataset(data.x_train, data.y_train)
    _trainer([cb, cap], max_steps=10, accumulate_grad_batches=3, limit_val_batches=0).fit(
        SeqLit(), torch.utils.data.DataLoader(ds, batch_size=20))
    run = gs.open_run(tmp_path / "acc.zarr")
    assert list(run.steps) == [0, 1, 2, 3, 6, 10]
    _same_weights(run, cap, run.steps)


@pytest.mark.slow  # ~2 s
def test_the_older_pytorch_lightning_package(tmp_path, data):
    pl = pytest.importorskip("pytorch_lightning")
    from grokscope.integrations.lightning import callback_class

    cls = callback_class("pytorch_lightning")
    assert issubclass(cls, pl.Callback) and not issubclass(cls, L.Callback)

    class Old(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(22, 16), nn.ReLU(), nn.Linear(16, 11))

        def training_step(self, batch, i):
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    cb = cls(tmp_path / "old.zarr", data, module="net", schedule=gs.Schedule(**SCHEDULE))
    pl.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False,
               callbacks=[cb]).fit(Old(), _loaders(data)[0])
    run = gs.open_run(tmp_path / "old.zarr")
    assert list(run.steps) == [0, 1, 2, 3, 6]
    assert np.isfinite(float(run.metrics.train_loss.sel(step=6)))
