"""A Hugging Face ``transformers.TrainerCallback`` that records a run into a grokscope store.

Steps are ``state.global_step`` (optimizer steps taken). The weights before training (or at
the resumed step) are recorded at ``on_train_begin``, every due step at ``on_step_end``; each
record is committed at the next ``on_step_begin`` (or at ``on_train_end``), after the Trainer
has logged (``on_log``) and evaluated (``on_evaluate``) that step, so its metrics go with it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..data import Data
from ..errors import ConfigError
from ._core import attach_session, require, submodule

__all__ = ["GrokscopeTrainerCallback"]

_transformers = require("transformers", "hf", "GrokscopeTrainerCallback")


class GrokscopeTrainerCallback(_transformers.TrainerCallback):
    """Record a Hugging Face ``Trainer`` run into a grokscope store.

    Parameters
    ----------
    path : str or PathLike
        The store (local folder or fsspec URL). An existing store is re-opened and continued,
        so ``trainer.train(resume_from_checkpoint=...)`` keeps one store.
    data : Data or None
        The run's train/test split (``gs.Data(x_train, y_train, x_test, y_test)``; ``x`` is
        what the model's forward takes first), stored once; the measures need it. None
        records the weights only.
    module : str, optional
        Record this submodule of the Trainer's model (dotted path) instead of the model.
    schedule : Schedule, optional
        Which global steps to record; default ``gs.Schedule()``.
    config : dict, optional
        JSON-able run settings kept as ``run.config``; default: the ``TrainingArguments``'
        learning rate, weight decay, batch size, warm-up, scheduler and seed.
    metrics : dict, optional
        ``{grokscope name: logged name}`` beyond the automatic mapping (``loss`` ->
        ``train_loss``, ``eval_loss`` -> ``test_loss``, ``eval_accuracy`` -> ``test_acc``;
        see :func:`grokscope.integrations.metric_name`).
    auto_metrics : bool
        Map the standard logged names.
    live : LiveLog, optional
        Send cheap measures and a curves figure to TensorBoard / W&B every K records.
    recorder_kwargs : dict, optional
        Other :class:`~grokscope.store.recorder.Recorder` keywords (``overwrite`` ...).

    Notes
    -----
    The Trainer calls no callback when training raises. Every committed checkpoint survives
    the error (and a killed process); call :meth:`close` (or use the callback as a context
    manager around ``trainer.train()``) to release the store's writer lock in a process that
    goes on, e.g. a notebook. A new ``train()`` with the same callback closes the previous
    session first. Metrics are the latest values logged at or before the recorded step.
    """

    def __init__(self, path: str | os.PathLike, data: Data | None, *, module: str | None = None,
                 schedule: Any = None, config: dict | None = None,
                 metrics: Mapping[str, str] | None = None, auto_metrics: bool = True,
                 live: Any = None, recorder_kwargs: Mapping[str, Any] | None = None) -> None:
        attach_session(self, path, data, module=module, schedule=schedule, config=config,
                       metrics=metrics, auto_metrics=auto_metrics, live=live,
                       recorder_kwargs=recorder_kwargs)
        self._logged: dict[str, Any] = {}

    @property
    def recorder(self) -> Any:
        """The open :class:`~grokscope.store.recorder.Recorder` (None outside ``train``)."""
        return self.session.recorder

    def _model(self, kwargs: Mapping[str, Any]) -> Any:
        model = kwargs.get("model")
        if model is None:
            raise ConfigError("the Trainer passed no model to GrokscopeTrainerCallback")
        return submodule(model, self.module, f"GrokscopeTrainerCallback(module={self.module!r})")

    @staticmethod
    def _args_config(args: Any) -> dict:
        keys = ("learning_rate", "weight_decay", "per_device_train_batch_size",
                "gradient_accumulation_steps", "warmup_steps", "lr_scheduler_type", "seed",
                "adam_beta1", "adam_beta2", "optim")
        out = {}
        for k in keys:
            v = getattr(args, k, None)
            v = getattr(v, "value", v)  # enums
            if v is None or isinstance(v, bool | int | float | str):
                out[k] = v
        return {"training_args": out}

    # ------------------------------------------------------------------ hooks
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        self.session.close(self._logged, failed=True)  # a previous train() that raised
        self._logged = {}
        if not self._config_given:
            self.session.config = self._args_config(args)
            self.session.config_is_default = True
        model = self._model(kwargs)
        self.session.open(model, state.global_step)
        self.session.step_end(state.global_step, model)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.session.flush(self._logged)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.session.is_open:
            self.session.step_end(state.global_step, self._model(kwargs))

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None,
               **kwargs: Any) -> None:
        logs = dict(logs or {})
        if "train_runtime" in logs:  # the end-of-training summary: train_loss is a mean over the run
            return
        self._logged.update(logs)

    def on_evaluate(self, args: Any, state: Any, control: Any,
                    metrics: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        self._logged.update(metrics or {})

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.session.close(self._logged)

    # ------------------------------------------------------------------ outside the Trainer
    def close(self) -> None:
        """Commit a pending checkpoint and close the store (after a ``train()`` that raised)."""
        self.session.close(self._logged)

    def __enter__(self) -> GrokscopeTrainerCallback:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.session.close(self._logged, failed=exc_type is not None)
