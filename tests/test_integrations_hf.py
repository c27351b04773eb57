"""GrokscopeTrainerCallback in real Hugging Face Trainer loops (tiny models, ~20 steps, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from _integration_helpers import SCHEDULE, data_fixture, one_thread_fixture  # noqa: E402, F401

import grokscope as gs  # noqa: E402
from grokscope.integrations import GrokscopeTrainerCallback, LiveLog  # noqa: E402


class Tiny(nn.Module):
    """A plain nn.Module the way HF Trainer users write one: a dict with the loss."""

    def __init__(self, fail_at_call: int | None = None):
        super().__init__()
        self.fc1, self.out = nn.Linear(22, 32), nn.Linear(32, 11)
        self.fail_at_call, self.calls = fail_at_call, 0

    def forward(self, x, labels=None):
        logits = self.out(torch.relu(self.fc1(x)))
        if labels is None:
            return logits
        if self.training:
            self.calls += 1
            if self.calls == self.fail_at_call:
                raise RuntimeError("boom")
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


class TinyConfig(transformers.PretrainedConfig):
    model_type = "grokscope-tiny"

    def __init__(self, n_in=22, hidden=24, n_classes=11, **kw):
        super().__init__(**kw)
        self.n_in, self.hidden, self.n_classes = n_in, hidden, n_classes


class TinyForClassification(transformers.PreTrainedModel):
    """A PreTrainedModel with Hugging Face's layer names, returning a ModelOutput."""

    config_class = TinyConfig

    def __init__(self, config):
        super().__init__(config)
        self.dense = nn.Linear(config.n_in, config.hidden)
        self.classifier = nn.Linear(config.hidden, config.n_classes)
        self.post_init()

    def forward(self, x, labels=None):
        logits = self.classifier(torch.tanh(self.dense(x)))
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return transformers.modeling_outputs.SequenceClassifierOutput(loss=loss, logits=logits)


class Capture(transformers.TrainerCallback):
    """Copies the weights at every global step, independently of grokscope."""

    def __init__(self):
        self.weights = {}

    def _grab(self, state, model):
        self.weights[state.global_step] = {k: v.detach().clone()
                                           for k, v in model.state_dict().items()}

    def on_train_begin(self, args, state, control, model=None, **kw):
        self._grab(state, model)

    def on_step_end(self, args, state, control, model=None, **kw):
        self._grab(state, model)


class ListSink:
    def __init__(self):
        self.logged = []

    def log(self, step, scalars, images):
        self.logged.append((step, scalars))

    def close(self):
        pass


def _rows(data, split):
    x, y = data.split(split)
    return [{"x": a, "labels": b} for a, b in zip(x, y)]


def _accuracy(p):
    return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}


def _trainer(model, data, callbacks, tmp_path, max_steps=20, **kw):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=max_steps, per_device_train_batch_size=64,
        per_device_eval_batch_size=128, learning_rate=1e-2, weight_decay=1.0, logging_steps=1,
        eval_strategy="steps", eval_steps=5, report_to=[], use_cpu=True,
        **{"save_strategy": "no", "disable_tqdm": True, "seed": 0, **kw})
    return transformers.Trainer(model=model, args=args, train_dataset=_rows(data, "train"),
                                eval_dataset=_rows(data, "test"), compute_metrics=_accuracy,
                                callbacks=callbacks)


def _same_weights(run, cap, steps):
    for s in steps:
        stored = run.state_dict_at(int(s))
        assert set(stored) == set(cap.weights[int(s)])
        for k, v in cap.weights[int(s)].items():
            torch.testing.assert_close(stored[k], v, rtol=0, atol=0, msg=f"{k} at step {s}")


def test_records_the_schedule_with_weights_and_metrics(tmp_path, data):
    torch.manual_seed(0)
    cap = Capture()
    sink = ListSink()
    cb = GrokscopeTrainerCallback(tmp_path / "run.zarr", data, schedule=gs.Schedule(**SCHEDULE),
                                  live=LiveLog(sink, every=3, figure=False))
    trainer = _trainer(Tiny(), data, [cb, cap], tmp_path)
    trainer.train()
    assert cb.recorder is None
    run = gs.open_run(tmp_path / "run.zarr")
    np.testing.assert_array_equal(run.steps, gs.Schedule(**SCHEDULE).steps(20))
    _same_weights(run, cap, run.steps)
    m = run.metrics.compute()
    history = {h["step"]: h for h in trainer.state.log_history if "loss" in h}
    evals = {h["step"]: h for h in trainer.state.log_history if "eval_accuracy" in h}
    for s in (1, 10, 20):  # the step's own logged loss, not the end-of-run mean "train_loss"
        assert m.train_loss.sel(step=s).item() == pytest.approx(history[s]["loss"])
    assert m.test_acc.sel(step=15).item() == pytest.approx(evals[15]["eval_accuracy"])
    assert m.test_loss.sel(step=6).item() == pytest.approx(evals[5]["eval_loss"])  # latest
    assert np.isnan(m.test_acc.sel(step=3).item())  # nothing evaluated before step 5
    assert run.config["training_args"]["learning_rate"] == 1e-2
    assert run.verify()
    res = gs.analyze(run, ["curves", "nfa"], progress=False)
    assert res["curves"].test_loss.sel(step=20).item() == pytest.approx(
        evals[20]["eval_loss"], rel=1e-5)  # the recorded weights are the evaluated ones
    assert np.isfinite(res["nfa"].nfa_corr_sqrt.sel(layer="fc1").values).all()
    # live logging through the callback: records 1, 4, 7 with the step's own metrics
    assert [step for step, _ in sink.logged] == [0, 3, 15]
    live = dict(sink.logged)
    assert live[15]["grokscope/metrics/train_loss"] == pytest.approx(history[15]["loss"])
    assert live[15]["grokscope/test_loss"] == pytest.approx(
        res["curves"].test_loss.sel(step=15).item(), rel=1e-6)


@pytest.mark.slow  # ~2-6 s: the default suite keeps one loop per framework
def test_pretrained_model_with_hf_names(tmp_path, data):
    torch.manual_seed(0)
    cap = Capture()
    cb = GrokscopeTrainerCallback(tmp_path / "pt.zarr", data, schedule=gs.Schedule(**SCHEDULE))
    _trainer(TinyForClassification(TinyConfig()), data, [cb, cap], tmp_path, max_steps=10).train()
    run = gs.open_run(tmp_path / "pt.zarr")
    assert list(run.steps) == [0, 1, 2, 3, 6, 10]
    assert {"dense.weight", "classifier.weight"} <= set(run.state_dict_at(0))
    _same_weights(run, cap, run.steps)
    res = gs.analyze(run, ["curves"], progress=False)
    assert np.isfinite(res["curves"].train_acc.values).all()


def test_crash_leaves_a_readable_store_and_close_releases_it(tmp_path, data):
    torch.manual_seed(0)
    cap = Capture()
    cb = GrokscopeTrainerCallback(tmp_path / "crash.zarr", data,
                                  schedule=gs.Schedule(**SCHEDULE))
    with pytest.raises(RuntimeError, match="boom"), cb:
        _trainer(Tiny(fail_at_call=9), data, [cb, cap], tmp_path).train()
    run = gs.open_run(tmp_path / "crash.zarr")
    assert list(run.steps) == [0, 1, 2, 3, 6]  # step 8 raised in its forward pass
    _same_weights(run, cap, run.steps)
    assert run.verify()
    with gs.Recorder(tmp_path / "crash.zarr", Tiny(), data) as rec:  # the lock is released
        assert rec.last_step == 6


def test_unknown_submodule_is_named(tmp_path, data):
    cb = GrokscopeTrainerCallback(tmp_path / "bad.zarr", data, module="encoder")
    with pytest.raises(gs.GrokscopeError, match=r"no such submodule.*\['fc1', 'out'\]"):
        _trainer(Tiny(), data, [cb], tmp_path, max_steps=2).train()


@pytest.mark.slow  # ~3 s: two train() calls and a checkpoint on disk
def test_resume_from_a_trainer_checkpoint_continues_the_store(tmp_path, data):
    torch.manual_seed(0)
    kw = dict(schedule=gs.Schedule(**SCHEDULE))
    first = _trainer(Tiny(), data, [GrokscopeTrainerCallback(tmp_path / "r.zarr", data, **kw)],
                     tmp_path, max_steps=20, save_strategy="steps", save_steps=10)
    first.train()
    ckpt = tmp_path / "hf" / "checkpoint-10"
    assert ckpt.is_dir()
    # the store holds steps up to 20, the checkpoint is at 10: kept, with a warning
    cap = Capture()
    again = _trainer(Tiny(), data, [GrokscopeTrainerCallback(tmp_path / "r.zarr", data, **kw), cap],
                     tmp_path, max_steps=30)
    with pytest.warns(UserWarning, match="already holds steps up to 20"):
        again.train(resume_from_checkpoint=str(ckpt))
    run = gs.open_run(tmp_path / "r.zarr")
    np.testing.assert_array_equal(run.steps, gs.Schedule(**SCHEDULE).steps(30))
    _same_weights(run, cap, [25, 30])
