"""What the framework callbacks share: lazy imports, metric names, and one recording session.

A framework callback drives a :class:`RecordingSession`:

``open(model, step)``
    at the start of training (after a framework checkpoint was restored, so ``step`` is the
    resumed step): opens the :class:`~grokscope.store.recorder.Recorder` (a store that exists
    is re-opened and appended to).
``step_end(step, model)``
    after each optimizer step: when ``step`` is due, the weights are copied to the CPU
    (a *pending* checkpoint). The frameworks log this step's metrics and run validation only
    after this hook, so the record is committed at the next ``flush``.
``flush(logged)``
    at the start of the next step, at the end of training, or on an exception: commits the
    pending checkpoint with the metrics logged so far (``logged``: name -> number, mapped to
    grokscope names by :func:`map_metrics`), then gives it to the :class:`LiveLog`, if any.
``close(logged)``
    flushes and closes the store. Every committed checkpoint survives a crash anyway (each
    record is its own commit); closing trims the store and releases its writer lock.
"""

from __future__ import annotations

import copy
import importlib
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ..data import Data, as_data
from ..errors import ConfigError, GrokscopeError

__all__ = ["MissingFrameworkError", "RecordingSession", "map_metrics", "metric_name", "require"]


class MissingFrameworkError(GrokscopeError, ImportError):
    """A framework integration was used without its package installed."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingFrameworkError` naming the extra to install.

    Parameters
    ----------
    module : str
        The module to import (``"lightning.pytorch"``).
    extra : str
        The grokscope extra that installs it (``"lightning"``).
    what : str
        What needs it, for the message (``"GrokscopeCallback"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingFrameworkError(
            f"{what} needs the {module.split('.')[0]!r} package, which is not installed "
            f"({exc}); install it with: pip install 'grokscope[{extra}]'"
        ) from exc


# --------------------------------------------------------------------------- metric names
#: split words of logged names and the grokscope split they mean (validation is "test":
#: grokking is about the held-out split, whatever the trainer calls it)
_SPLITS = {"train": "train", "training": "train", "test": "test", "val": "test",
           "valid": "test", "validation": "test", "eval": "test"}
_QUANTITIES = {"loss": "loss", "acc": "acc", "accuracy": "acc"}
_SPLIT_RANK = {"test": 0, "val": 1, "valid": 2, "validation": 3, "eval": 4,
               "train": 0, "training": 1, "": 5}
_SUFFIX_RANK = {"": 0, "step": 1, "epoch": 2}


def submodule(model: nn.Module, module: str | None, who: str) -> nn.Module:
    """``model`` itself, or its submodule at dotted path ``module`` (ConfigError naming ``who``,
    e.g. ``"GrokscopeCallback(module='net')"``, and the model's children when it has none)."""
    if module is None:
        return model
    try:
        return model.get_submodule(module)
    except AttributeError as exc:
        names = [n for n, _ in model.named_children()]
        raise ConfigError(
            f"{who}: the model has no such submodule ({exc}); its children are {names}"
        ) from None


def attach_session(owner: Any, path: Any, data: Data | None, *, module: str | None,
                   config: dict | None, **session_kwargs: Any) -> None:
    """Give a callback ``owner`` its ``module`` (checked), ``_config_given`` and the
    :class:`RecordingSession` that records for it (both framework callbacks start so)."""
    if module is not None and not isinstance(module, str):
        raise ConfigError(f"module must be a submodule path (str) or None, got {module!r}")
    owner.module = module
    owner._config_given = config is not None
    owner.session = RecordingSession(path, data, config=config, **session_kwargs)


def _parse(key: str) -> tuple[str, tuple[int, int]] | None:
    words = [w for w in re.split(r"[/_\-.\s]+", key.strip().lower()) if w]
    suffix = ""
    if len(words) > 1 and words[-1] in ("step", "epoch"):
        suffix = words.pop()
    if words == ["loss"]:  # Hugging Face's and many loops' training loss
        return "train_loss", (_SPLIT_RANK[""], _SUFFIX_RANK[suffix])
    if len(words) != 2:
        return None
    a, b = words
    if a in _QUANTITIES and b in _SPLITS:
        a, b = b, a
    if a not in _SPLITS or b not in _QUANTITIES:
        return None
    return f"{_SPLITS[a]}_{_QUANTITIES[b]}", (_SPLIT_RANK[a], _SUFFIX_RANK[suffix])


def metric_name(key: str) -> str | None:
    """The grokscope metric a logged name stands for, or None.

    ``train_loss``, ``train/loss``, ``loss``, ``train_loss_step`` -> ``train_loss``;
    ``val_acc``, ``val/accuracy``, ``eval_accuracy``, ``test_acc_epoch`` -> ``test_acc``
    (the validation split is grokscope's held-out ``test`` split); anything else -> None.

    Examples
    --------
    >>> [metric_name(k) for k in ("loss", "val/acc", "eval_accuracy", "lr-Adam")]
    ['train_loss', 'test_acc', 'test_acc', None]
    """
    parsed = _parse(key)
    return None if parsed is None else parsed[0]


def _number(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        return float(value.detach().cpu().item()) if value.numel() == 1 else None
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def map_metrics(logged: Mapping[str, Any], mapping: Mapping[str, str] | None = None, *,
                auto: bool = True) -> dict[str, float]:
    """The grokscope metrics in ``logged`` (a framework's latest logged values).

    Parameters
    ----------
    logged : mapping of str to number or scalar tensor
        E.g. Lightning's ``trainer.callback_metrics``; non-scalar values are ignored.
    mapping : mapping of str to str, optional
        ``{grokscope name: logged name}``, taken first (``{"test_acc": "val/top1"}``); any
        grokscope metric name is allowed (``{"lr": "lr-AdamW"}``). A mapped name that is not
        logged (yet) is simply absent.
    auto : bool
        Also map the standard names with :func:`metric_name` (an explicit mapping wins).
        Where several logged names give one metric, ``test`` beats ``val``/``valid``/``eval``
        and a plain name beats its ``_step`` / ``_epoch`` variants.

    Returns
    -------
    dict of str to float
    """
    out: dict[str, float] = {}
    for name, key in (mapping or {}).items():
        if key in logged:
            v = _number(logged[key])
            if v is not None:
                out[name] = v
    if auto:
        best: dict[str, tuple[tuple[int, int], float]] = {}
        for key, value in logged.items():
            parsed = _parse(str(key))
            v = _number(value)
            if parsed is None or v is None or parsed[0] in out:
                continue
            name, rank = parsed
            if name not in best or rank < best[name][0]:
                best[name] = (rank, v)
        out.update({k: v for k, (_, v) in best.items()})
    return out


# --------------------------------------------------------------------------- the session
def _has_steps(path: Any, storage_options: dict | None) -> bool:
    """Whether ``path`` holds a grokscope store with committed steps."""
    from ..store.run import open_run

    local = isinstance(path, os.PathLike) or "://" not in str(path)
    if local and not os.path.exists(path):
        return False
    try:
        return len(open_run(path, storage_options=storage_options)) > 0
    except GrokscopeError:
        return False


class _Weights(nn.Module):
    """A copy of a model's state dict, recordable like the model it was taken from."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._sd = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
                    if isinstance(v, torch.Tensor)}
        self._names = [n for n, _ in model.named_parameters(remove_duplicate=False)]

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return dict(self._sd)

    def named_parameters(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, torch.Tensor]]:  # type: ignore[override]
        for n in self._names:
            if n in self._sd:
                yield n, self._sd[n]


class RecordingSession:
    """The recording behaviour of every framework callback (see the module docstring).

    Parameters
    ----------
    path : str or PathLike
        The store (local folder or fsspec URL).
    data : Data, tuple, dict or None
        The run's split (stored once; measures need it), as for the Recorder. None records
        weights only.
    schedule, config, recorder_kwargs
        Passed to :class:`~grokscope.store.recorder.Recorder` (``recorder_kwargs``: any of
        its other keywords, e.g. ``{"overwrite": True}``).
    metrics, auto_metrics
        How logged names become grokscope metrics (:func:`map_metrics`).
    live : LiveLog, optional
        Sends cheap measures and a curves figure every K recorded checkpoints.
    """

    def __init__(self, path: str | os.PathLike, data: Data | None, *, schedule: Any = None,
                 config: dict | None = None, metrics: Mapping[str, str] | None = None,
                 auto_metrics: bool = True, live: Any = None,
                 recorder_kwargs: Mapping[str, Any] | None = None) -> None:
        data = as_data(data)
        if metrics is not None and not (isinstance(metrics, Mapping) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in metrics.items())):
            raise ConfigError(
                "metrics must map grokscope metric names to logged names, e.g. "
                f"{{'test_acc': 'val/accuracy'}}; got {metrics!r}"
            )
        from ..store.schedule import Schedule

        if schedule is not None and not isinstance(schedule, Schedule):
            raise ConfigError(f"schedule must be a grokscope Schedule, got {type(schedule).__name__}")
        if live is not None and not hasattr(live, "update"):
            raise ConfigError(f"live must be a grokscope.integrations.LiveLog, got {type(live).__name__}")
        self.path = path
        self.data = data
        self.schedule = schedule
        self.config = config
        self.mapping = dict(metrics or {})
        self.auto_metrics = bool(auto_metrics)
        self.live = live
        self.recorder_kwargs = dict(recorder_kwargs or {})
        #: ``config`` was derived by the callback (hparams, TrainingArguments), not given: it
        #: is stored with a new store, never checked against an existing one
        self.config_is_default = False
        self.recorder: Any = None
        self._pending: tuple[int, nn.Module, nn.Module | None] | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def is_open(self) -> bool:
        return self.recorder is not None

    def open(self, model: nn.Module, step: int) -> None:
        """Open (or re-open and continue) the store for ``model``; ``step``: the training
        step the framework starts (or resumes) at."""
        from ..store.recorder import Recorder

        if self.recorder is not None:
            return
        if not isinstance(model, nn.Module):
            raise ConfigError(f"the model to record must be a torch nn.Module, got {type(model).__name__}")
        config = self.config
        if self.config_is_default and not self.recorder_kwargs.get("overwrite") and _has_steps(
                self.path, self.recorder_kwargs.get("storage_options")):
            config = None  # continuing a store: a derived config (hparams, args) may differ
        self.recorder = Recorder(self.path, model, self.data, config=config,
                                 schedule=self.schedule, **self.recorder_kwargs)
        last = self.recorder.last_step
        if last is not None and last > step:
            warnings.warn(
                f"the store {self.path} already holds steps up to {last}, after the step "
                f"{step} training resumes from: those checkpoints (from the interrupted run) "
                f"are kept and recording continues after step {last}",
                UserWarning, stacklevel=3,
            )

    def step_end(self, step: int, model: nn.Module) -> None:
        """After an optimizer step: keep a copy of the weights when ``step`` is due."""
        rec = self.recorder
        if rec is None or not rec.due(step):
            return
        if self._pending is not None and self._pending[0] >= step:
            return
        live_model = None
        if self.live is not None and self.live.is_due(rec.count + 1 + (self._pending is not None)):
            live_model = copy.deepcopy(model).eval()
        pending = (int(step), _Weights(model), live_model)
        if self._pending is not None:  # never reached by the callbacks (they flush first)
            self.flush({})
        self._pending = pending

    def flush(self, logged: Mapping[str, Any]) -> None:
        """Commit the pending checkpoint with the metrics in ``logged``."""
        if self._pending is None or self.recorder is None:
            return
        step, weights, live_model = self._pending
        self._pending = None
        metrics = map_metrics(logged, self.mapping, auto=self.auto_metrics)
        self.recorder.record(step, weights, metrics)
        if self.live is not None and live_model is not None:  # already a private copy
            self.live.log(self.recorder, step, live_model, metrics)

    def close(self, logged: Mapping[str, Any] | None = None, *, failed: bool = False) -> None:
        """Flush the pending checkpoint and close the store (idempotent).

        ``failed``: closing after an exception; a failure to flush or close is then a warning
        (the committed checkpoints are intact), so the training error is the one raised.
        """
        rec = self.recorder
        if rec is None:
            return
        try:
            try:
                self.flush(logged or {})
            finally:
                self.recorder = None
                self._pending = None
                rec.close()
                if self.live is not None:
                    self.live.flush()
        except (GrokscopeError, OSError) as exc:
            if not failed:
                raise
            warnings.warn(f"closing the grokscope store {self.path} after a training error also "
                          f"failed: {exc}", RuntimeWarning, stacklevel=2)
