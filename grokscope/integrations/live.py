"""Cheap measures and a curves figure, sent to TensorBoard and W&B while training.

:class:`LiveLog` takes over after a checkpoint is recorded: on every ``every``-th recorded
checkpoint (the 1st, the ``every+1``-th, ...) it computes, on a copy of the model,

``curves``
    loss and accuracy on the stored train and test splits, recomputed from the weights, the
    total L2 norm and the largest absolute entry of the parameters, and their relative
    distance from the first recorded checkpoint: the registered ``curves`` measure, so the
    numbers are the ones ``gs.analyze(..., ["curves"])`` stores later. Without a stored
    split: only the norms and the distance.
``nfa``
    the neural feature ansatz correlation ``Pearson(W^T W, AGOP^(1/2))`` of each linear map the
    ``nfa`` measure picks by default (the hidden layers' input maps, not the readout), over
    the first ``max_points`` training inputs. Skipped, with one warning, for a model without
    such a map.

and sends the scalars (tags ``grokscope/train_acc``, ``grokscope/param_norm``,
``grokscope/nfa_corr_sqrt/<layer>``, and the metrics recorded with the checkpoint as
``grokscope/metrics/<name>``) and the training-curves figure (``grokscope/curves``: the
recorded accuracies, or the ones recomputed here when none were recorded, with ``t_train`` /
``t_test`` marked) to each sink: :class:`TensorBoardSink` (``add_scalar`` / ``add_image``) and
:class:`WandbSink` (one ``run.log`` with the scalars and a ``wandb.Image``, against its own
step axis ``grokscope/step``, so it never collides with the trainer's own W&B steps).
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, GrokscopeError
from ._core import require

__all__ = ["LiveLog", "TensorBoardSink", "WandbSink", "render_rgb"]

MEASURES = ("curves", "nfa")


def render_rgb(fig: Any) -> np.ndarray:
    """A matplotlib Figure as an RGB image, shape ``(height, width, 3)``, uint8 (Agg; no
    pyplot state touched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# --------------------------------------------------------------------------- sinks
class TensorBoardSink:
    """Write live scalars and figures to TensorBoard.

    Parameters
    ----------
    log_dir : str or PathLike, optional
        Where a new ``torch.utils.tensorboard.SummaryWriter`` writes (closed by
        :meth:`close`).
    writer : SummaryWriter, optional
        An existing writer instead (e.g. Lightning's ``TensorBoardLogger.experiment``); it is
        flushed, never closed.
    """

    def __init__(self, log_dir: str | os.PathLike | None = None, *, writer: Any = None) -> None:
        if (log_dir is None) == (writer is None):
            raise ConfigError("TensorBoardSink takes either log_dir or writer=, not both or neither")
        if writer is None:
            tb = require("torch.utils.tensorboard", "tensorboard", "TensorBoardSink")
            writer, self._owned = tb.SummaryWriter(str(log_dir)), True
        else:
            self._owned = False
        self.writer = writer

    def log(self, step: int, scalars: dict[str, float], images: dict[str, np.ndarray]) -> None:
        """``add_scalar`` each scalar and ``add_image`` (HWC) each image at ``step``."""
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        for tag, rgb in images.items():
            self.writer.add_image(tag, rgb, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self._owned:
            self.writer.close()
        else:
            self.writer.flush()


class WandbSink:
    """Log live scalars and figures to Weights & Biases.

    Parameters
    ----------
    run : wandb Run, optional
        Default: the active run (``wandb.run``) at the first log, e.g. the one the Lightning
        ``WandbLogger`` or the Hugging Face ``WandbCallback`` started.
    step_metric : str
        The x axis of grokscope's charts (``define_metric``): the training step, logged with
        every entry, so W&B's own step counter is left to the trainer.
    """

    def __init__(self, run: Any = None, *, step_metric: str = "grokscope/step") -> None:
        self._wandb = require("wandb", "wandb", "WandbSink")
        self._run = run
        self.step_metric = step_metric
        self._defined = False

    @property
    def run(self) -> Any:
        run = self._run if self._run is not None else self._wandb.run
        if run is None:
            raise ConfigError(
                "WandbSink has no W&B run: call wandb.init(...) before training (or pass "
                "WandbSink(run)); use wandb.init(mode='offline') to log without a network"
            )
        return run

    def log(self, step: int, scalars: dict[str, float], images: dict[str, np.ndarray]) -> None:
        """One ``run.log`` with the scalars, the images and the step."""
        run = self.run
        if not self._defined:
            prefix = self.step_metric.rsplit("/", 1)[0]
            run.define_metric(self.step_metric)
            run.define_metric(f"{prefix}/*", step_metric=self.step_metric)
            self._defined = True
        entry: dict[str, Any] = {self.step_metric: int(step), **scalars}
        entry.update({tag: self._wandb.Image(rgb) for tag, rgb in images.items()})
        run.log(entry)

    def close(self) -> None:
        """Nothing to do: the run belongs to whoever started it."""


# --------------------------------------------------------------------------- LiveLog
class LiveLog:
    """Every ``every`` recorded checkpoints, cheap measures and a curves figure to the sinks.

    Parameters
    ----------
    *sinks : TensorBoardSink or WandbSink
        Where to send them (any object with ``log(step, scalars, images)`` and ``close()``).
    every : int
        Log on the 1st, ``every + 1``-th, ``2 * every + 1``-th ... recorded checkpoint.
    measures : sequence of {"curves", "nfa"}
        Which live measures (module docstring); ``()`` sends only the recorded metrics and
        the figure.
    figure : bool
        Send the training-curves figure.
    max_points : int
        Training inputs the NFA's AGOP averages over (the first ones).
    nfa_layers : list of str, optional
        Linear maps for the NFA correlation (default: the ``nfa`` measure's choice).
    prefix : str
        Tag prefix.

    Examples
    --------
    From a plain loop, after each record::

        live = LiveLog(TensorBoardSink("tb"), every=5)
        ...
        if rec.due(step):
            rec.record(step, model, metrics)
            live.update(rec, model, metrics)
    """

    def __init__(self, *sinks: Any, every: int = 10, measures: tuple[str, ...] | list[str] = MEASURES,
                 figure: bool = True, max_points: int = 512, nfa_layers: list[str] | None = None,
                 prefix: str = "grokscope") -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"LiveLog(every={every!r}): must be a positive integer")
        if isinstance(measures, str):
            measures = (measures,)
        unknown = sorted(set(measures) - set(MEASURES))
        if unknown:
            raise ConfigError(f"LiveLog: unknown live measure(s) {unknown}; choose from {list(MEASURES)}")
        for s in sinks:
            if not (callable(getattr(s, "log", None)) and callable(getattr(s, "close", None))):
                raise ConfigError(
                    f"LiveLog sinks need log(step, scalars, images) and close(); got "
                    f"{type(s).__name__} (use TensorBoardSink or WandbSink)"
                )
        if not isinstance(max_points, int) or max_points < 1:
            raise ConfigError(f"LiveLog(max_points={max_points!r}): must be a positive integer")
        self.sinks = list(sinks)
        self.every = every
        self.measures = tuple(measures)
        self.figure = bool(figure)
        self.max_points = max_points
        self.nfa_layers = nfa_layers
        self.prefix = prefix.rstrip("/")
        self._cache: dict[str, Any] = {}
        self._history: dict[int, dict[str, float]] = {}
        self._warned: set[str] = set()

    def is_due(self, count: int) -> bool:
        """Whether the ``count``-th recorded checkpoint (1-based) is logged."""
        return count >= 1 and (count - 1) % self.every == 0

    # ------------------------------------------------------------------ update
    def update(self, rec: Any, model: nn.Module | None = None,
               metrics: dict[str, Any] | None = None) -> dict[str, float] | None:
        """Log the checkpoint ``rec`` just committed, when it is due.

        Parameters
        ----------
        rec : Recorder
            The open Recorder (its last committed step and count decide).
        model : nn.Module, optional
            The model just recorded (copied; never changed). Default: the Recorder's model.
        metrics : dict, optional
            The metrics recorded with it.

        Returns
        -------
        dict of str to float or None
            The scalars sent (tags without the prefix), or None when not due.
        """
        if rec.last_step is None or not self.is_due(rec.count):
            return None
        model = copy.deepcopy(model if model is not None else rec._model).eval()
        return self.log(rec, int(rec.last_step), model, metrics)

    def log(self, rec: Any, step: int, model: nn.Module,
            metrics: dict[str, Any] | None = None) -> dict[str, float]:
        """Measure ``model`` (the checkpoint at ``step``, used as it is) and send to the sinks."""
        from ..store.run import open_run

        if self._cache.get("path") != str(rec.path):  # a LiveLog reused for another store
            self._cache, self._history = {"path": str(rec.path)}, {}
        run = open_run(rec.path)
        values = self._measure(run, step, model)
        for k, v in (metrics or {}).items():
            values[f"metrics/{k}"] = float(v)
        self._history[step] = {k: values[k] for k in
                               ("train_acc", "test_acc", "train_loss", "test_loss") if k in values}
        scalars = {f"{self.prefix}/{k}": float(v) for k, v in values.items()}
        images = {}
        if self.figure:
            rgb = self._figure(run, step)
            if rgb is not None:
                images[f"{self.prefix}/curves"] = rgb
        for sink in self.sinks:
            sink.log(step, scalars, images)
        return values

    def flush(self) -> None:
        """Called when the store closes: flush the sinks (a LiveLog stays usable)."""
        for sink in self.sinks:
            flush = getattr(getattr(sink, "writer", None), "flush", None)
            if flush is not None:
                flush()

    def close(self) -> None:
        """Close the sinks this LiveLog created (writers passed in are only flushed)."""
        for sink in self.sinks:
            sink.close()

    # ------------------------------------------------------------------ measures
    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    def _context(self, run: Any, model: nn.Module) -> dict[str, Any]:
        """The split, the anatomy and the first checkpoint, read from the store once."""
        if "first" not in self._cache:
            from ..anatomy import resolve
            from ..errors import StoreError

            try:
                data = run.data
            except StoreError:
                data = None
            first = copy.deepcopy(model)
            first.load_state_dict(run.state_dict_at(int(run.steps[0])))
            anatomy = None
            if data is not None:
                anatomy = resolve(model, data, stored=run.config.get("anatomy"))
            self._cache.update(data=data, first=first.eval(), anatomy=anatomy)
        return self._cache

    def _measure(self, run: Any, step: int, model: nn.Module) -> dict[str, float]:
        from ..measures import registry
        from ..measures.curves import named_float_params, param_vector_norms

        ctx = self._context(run, model)
        dev = next((p.device for p in model.parameters()), torch.device("cpu"))
        first = ctx["first"].to(dev)
        out: dict[str, float] = {}
        if "curves" in self.measures and ctx["data"] is not None:
            ckpt = registry.Checkpoint(step, model, ctx["data"].to(dev), device=dev,
                                       references={"first": first}, anatomy=ctx["anatomy"])
            with torch.no_grad():
                ds = registry.get("curves").fn(ckpt)
            for k in ("train_acc", "test_acc", "train_loss", "test_loss", "param_norm",
                      "linf_norm", "rel_distance_init"):
                out[k] = float(ds[k])
        elif "curves" in self.measures:
            l2, linf, _ = param_vector_norms(model)
            params, ref = named_float_params(model), named_float_params(first)
            d = sum(float(((params[n].double() - ref[n].double()) ** 2).sum()) for n in params)
            r = sum(float((v.double() ** 2).sum()) for v in ref.values())
            out.update(param_norm=l2, linf_norm=linf,
                       rel_distance_init=float(np.sqrt(d / r)) if r > 0 else float("nan"))
        if "nfa" in self.measures:
            out.update(self._nfa(model, ctx, dev))
        return out

    def _nfa(self, model: nn.Module, ctx: dict[str, Any], dev: torch.device) -> dict[str, float]:
        from ..anatomy import ModelView
        from ..measures._jacobian import evaluation_inputs
        from ..measures.nfa import layer_agops, matrix_power_psd, pearson

        if ctx["data"] is None:
            self._warn_once("nfa-data", "LiveLog: the store has no data split, so the live NFA "
                            "correlation is skipped (record with data=gs.Data(...))")
            return {}
        x = evaluation_inputs(ctx["data"], "train", self.max_points).to(dev)
        try:
            res = layer_agops(ModelView(model, ctx["anatomy"]), x, layers=self.nfa_layers)
        except GrokscopeError as exc:
            self._warn_once("nfa", f"LiveLog: the live NFA correlation is skipped ({exc})")
            return {}
        return {f"nfa_corr_sqrt/{k}": pearson(r.weight.T @ r.weight, matrix_power_psd(r.agop, 0.5))
                for k, r in res.items()}

    # ------------------------------------------------------------------ figure
    def _figure(self, run: Any, step: int) -> np.ndarray | None:
        import xarray as xr

        from ..plot._style import PlotDataError
        from ..plot.curves import plot_curves

        metrics = run.metrics.compute()
        have = [k for k in ("train_acc", "test_acc") if k in metrics
                and np.isfinite(metrics[k].values).any()]
        if len(have) < 2 and self._history:
            steps = sorted(self._history)
            names = sorted({k for h in self._history.values() for k in h})
            metrics = xr.Dataset(
                {k: ("step", [self._history[s].get(k, np.nan) for s in steps]) for k in names},
                coords={"step": steps},
            )
        try:
            ax = plot_curves(metrics, title=f"Training curves at step {step:,}")
        except PlotDataError as exc:
            self._warn_once("figure", f"LiveLog: no curves figure ({exc})")
            return None
        return render_rgb(ax.figure)
