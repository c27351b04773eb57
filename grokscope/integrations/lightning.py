"""A PyTorch Lightning callback that records a run into a grokscope store.

``GrokscopeCallback`` subclasses ``lightning.pytorch.Callback`` (the ``lightning`` package);
with only the older ``pytorch_lightning`` package installed it subclasses that one's
``Callback`` instead, and :func:`callback_class` gives the class for either package.

Steps are Lightning's ``trainer.global_step`` (optimizer steps taken). Step 0 (the weights
before training, or the resumed step) is recorded at ``on_train_start``, every due step at
``on_train_batch_end``; each is committed at the next batch's start (or at the end of
training), once this step's metrics and any validation that followed it are in
``trainer.callback_metrics``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

from torch import nn

from ..data import Data
from ..errors import ConfigError
from ._core import attach_session, require, submodule

__all__ = ["GrokscopeCallback", "callback_class"]  # noqa: F822 (built by __getattr__)

_PACKAGES = {"lightning": "lightning.pytorch", "pytorch_lightning": "pytorch_lightning"}


class _Hooks:
    """Record a Lightning run into a grokscope store.

    Parameters
    ----------
    path : str or PathLike
        The store (local folder or fsspec URL). An existing store is re-opened and continued,
        so resuming from a Lightning checkpoint (``trainer.fit(..., ckpt_path=...)``) keeps
        one store.
    data : Data or None
        The run's train/test split (``gs.Data(x_train, y_train, x_test, y_test)``), stored
        once; the measures need it. None records the weights only.
    module : str, optional
        Record this submodule of the LightningModule (``"model"``: ``pl_module.model``, any
        dotted path ``get_submodule`` takes) instead of the whole LightningModule. The
        recorded model's forward must take the inputs in ``data``.
    schedule : Schedule, optional
        Which global steps to record; default ``gs.Schedule()`` (log-spaced to step 1000,
        then every 100).
    config : dict, optional
        JSON-able run settings kept as ``run.config``. Default: the LightningModule's
        ``hparams`` (when JSON-able) under ``"hparams"``.
    metrics : dict, optional
        ``{grokscope name: logged name}`` for names the automatic mapping does not know
        (``{"test_acc": "val/top1"}``); see :func:`grokscope.integrations.metric_name`.
    auto_metrics : bool
        Map the standard logged names (``train_loss``, ``val_acc``, ``val/accuracy``, ...).
    live : LiveLog, optional
        Send cheap measures and a curves figure to TensorBoard / W&B every K records. A
        ``LiveLog`` without sinks uses the Trainer's ``TensorBoardLogger`` /
        ``WandbLogger``.
    recorder_kwargs : dict, optional
        Other :class:`~grokscope.store.recorder.Recorder` keywords (``overwrite``,
        ``compression``, ``model_kwargs`` ...).

    Notes
    -----
    The store is closed at the end of ``fit`` and when training raises (Lightning's
    ``on_exception``, which also covers Ctrl+C); every committed checkpoint survives even a
    killed process. Metrics are the latest values Lightning has at commit time: a validation
    metric is the one from the last validation run at or before the recorded step.
    """

    def __init__(self, path: str | os.PathLike, data: Data | None, *, module: str | None = None,
                 schedule: Any = None, config: dict | None = None,
                 metrics: Mapping[str, str] | None = None, auto_metrics: bool = True,
                 live: Any = None, recorder_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        attach_session(self, path, data, module=module, schedule=schedule, config=config,
                       metrics=metrics, auto_metrics=auto_metrics, live=live,
                       recorder_kwargs=recorder_kwargs)

    @property
    def recorder(self) -> Any:
        """The open :class:`~grokscope.store.recorder.Recorder` (None outside ``fit``)."""
        return self.session.recorder

    def _model(self, pl_module: nn.Module) -> nn.Module:
        return submodule(pl_module, self.module, f"GrokscopeCallback(module={self.module!r})")

    def _default_config(self, pl_module: Any) -> None:
        if self._config_given or self.session.config is not None:
            return
        hparams = getattr(pl_module, "hparams", None)
        if hparams:
            from ..store.recorder import _jsonable

            try:
                self.session.config = {"hparams": _jsonable(dict(hparams), "hparams")}
                self.session.config_is_default = True
            except ConfigError:
                self.session.config = None  # not JSON-able: keep none rather than fail

    @staticmethod
    def _logged(trainer: Any) -> Mapping[str, Any]:
        return dict(trainer.callback_metrics)

    def _sinks_from_loggers(self, trainer: Any) -> None:
        """A LiveLog given without sinks logs where the Trainer's loggers do."""
        live = self.session.live
        if live is None or live.sinks:
            return
        from .live import TensorBoardSink, WandbSink

        for logger in trainer.loggers:
            kinds = {c.__name__ for c in type(logger).__mro__}
            if "TensorBoardLogger" in kinds:
                live.sinks.append(TensorBoardSink(writer=logger.experiment))
            elif "WandbLogger" in kinds:
                live.sinks.append(WandbSink(logger.experiment))
        if not live.sinks:
            raise ConfigError(
                "GrokscopeCallback(live=LiveLog()) has no sinks and the Trainer has no "
                "TensorBoardLogger or WandbLogger: pass LiveLog(TensorBoardSink(log_dir)) or "
                "LiveLog(WandbSink()), or give the Trainer one of those loggers"
            )

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.global_rank != 0:
            return
        self._sinks_from_loggers(trainer)
        self._default_config(pl_module)
        model = self._model(pl_module)
        self.session.open(model, trainer.global_step)
        self.session.step_end(trainer.global_step, model)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:
        self.session.flush(self._logged(trainer))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.session.is_open:
            self.session.step_end(trainer.global_step, self._model(pl_module))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.session.flush(self._logged(trainer))

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self.session.close(self._logged(trainer))

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.session.close(self._logged(trainer), failed=True)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.session.close(self._logged(trainer), failed=True)

    def close(self) -> None:
        """Close the store (the hooks do this; for use outside ``Trainer.fit``)."""
        self.session.close()


@functools.cache
def callback_class(package: str = "lightning") -> type:
    """``GrokscopeCallback`` for ``package``: ``"lightning"`` (``lightning.pytorch``) or
    ``"pytorch_lightning"`` (the older package name); a Trainer accepts only callbacks of its
    own package."""
    if package not in _PACKAGES:
        raise ConfigError(f"package must be one of {sorted(_PACKAGES)}, got {package!r}")
    mod = require(_PACKAGES[package], "lightning", "GrokscopeCallback")
    return type("GrokscopeCallback", (_Hooks, mod.Callback),
                {"__doc__": _Hooks.__doc__, "__module__": __name__})


def _default_class() -> type:
    try:
        return callback_class("lightning")
    except ImportError:
        try:
            return callback_class("pytorch_lightning")
        except ImportError:
            pass
        raise


def __getattr__(name: str) -> Any:
    if name == "GrokscopeCallback":
        return _default_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
