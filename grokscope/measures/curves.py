"""Training curves recomputed from the stored weights (docs/methods.md section 1).

Per checkpoint: loss and accuracy on each split, the total and per-tensor L2 norm of the
parameters, their l-infinity norm, and the relative distance from the first checkpoint
``||theta_t - theta_0|| / ||theta_0||``. Recomputing (rather than reading the trainer's
metrics) gives the same curves for imported runs, whose trainers logged something else or
nothing. The logits come from the model's anatomy (``ckpt.view.forward``: the output role, e.g.
the last position and the first ``p`` logits of a transformer returning ``(n, 3, vocab)``),
never from the raw output flattened.

Losses
------
Classification (integer labels) uses the mean cross-entropy, unless the task spec says
``"loss": "mse"``, in which case the loss is the mean squared error against one-hot targets
(``F.mse_loss`` averaged over samples *and* classes); accuracy is the arg-max accuracy in both
cases. Regression (float targets) uses ``F.mse_loss`` averaged over all elements and reports
accuracy as NaN.

The helpers here (:func:`forward_chunked`, :func:`margins`, :func:`param_vector_norms`) are
shared by the other measure modules of this package.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

from ..anatomy import ModelView, model_output_tensor
from ..data import Data
from ..errors import ConfigError, ModelMismatchError
from .registry import Checkpoint, register

__all__ = [
    "curves",
    "forward_chunked",
    "loss_and_accuracy",
    "margins",
    "named_float_params",
    "param_vector_norms",
]


def named_float_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's floating-point parameters by name (buffers such as masks excluded).

    Returns
    -------
    dict of str to Tensor
        Detached parameters in ``named_parameters()`` order.
    """
    return {n: p.detach() for n, p in model.named_parameters() if torch.is_floating_point(p)}


def param_vector_norms(model: torch.nn.Module) -> tuple[float, float, dict[str, float]]:
    """Total L2 norm, l-infinity norm and per-tensor L2 norms of the parameters.

    Returns
    -------
    l2 : float
        ``sqrt(sum_tensors ||W||_F^2)``.
    linf : float
        ``max |theta_i|`` over every parameter entry.
    per_tensor : dict of str to float
        ``||W||_F`` of each parameter tensor.
    """
    params = named_float_params(model)
    if not params:
        raise ModelMismatchError("the model has no floating-point parameters to measure")
    per = {n: float(torch.linalg.vector_norm(p.double())) for n, p in params.items()}
    l2 = math.sqrt(sum(v * v for v in per.values()))
    linf = max(float(p.abs().max()) if p.numel() else 0.0 for p in params.values())
    return l2, linf, per


@torch.no_grad()
def forward_chunked(
    model_or_view: ModelView | Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    chunk: int = 4096,
) -> torch.Tensor:
    """Logits of ``x`` evaluated ``chunk`` rows at a time.

    Parameters
    ----------
    model_or_view : ModelView or callable
        A :class:`~grokscope.anatomy.ModelView`: its :meth:`~grokscope.anatomy.ModelView.forward`
        (the output role applied: the read-out position and class slice, ``(n, C)``). Any other
        callable (e.g. an ``nn.Module``): its return value's logits tensor
        (:func:`~grokscope.anatomy.model_output_tensor`) flattened per row, as before views
        existed; prefer a view, which reads a ``(n, ctx, vocab)`` output at the right place.
    x : Tensor, shape ``(n, *input_shape)``
    chunk : int
        Rows per forward pass (bounds memory).

    Returns
    -------
    Tensor, shape ``(n, C)``
    """
    if chunk < 1:
        raise ConfigError(f"chunk must be a positive number of rows, got {chunk}")
    if isinstance(model_or_view, ModelView):
        view = model_or_view
        if torch.is_floating_point(x):
            x = x.to(view.dtype)  # float inputs in the model's precision
        fn = view.forward
    elif callable(model_or_view):
        def fn(rows: torch.Tensor) -> torch.Tensor:
            out = model_output_tensor(model_or_view(rows))
            return out.reshape(out.shape[0], -1)
    else:
        raise ConfigError(
            f"forward_chunked needs a ModelView or a callable model, got {type(model_or_view).__name__}"
        )
    outs = [fn(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)]
    if not outs:
        raise ConfigError("cannot evaluate the model on an empty input set")
    out = torch.cat(outs, dim=0)
    return out.reshape(out.shape[0], -1)


def margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Correct-class margin ``f_y(x) - max_{c != y} f_c(x)`` per sample.

    Parameters
    ----------
    logits : Tensor, shape ``(n, C)``, ``C >= 2``
    y : LongTensor, shape ``(n,)``

    Returns
    -------
    Tensor, shape ``(n,)``
    """
    if logits.shape[1] < 2:
        raise ConfigError(f"a margin needs at least 2 classes, got logits {tuple(logits.shape)}")
    y = y.long()
    correct = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return correct - other


def loss_and_accuracy(
    logits: torch.Tensor, y: torch.Tensor, *, loss: str = "ce"
) -> tuple[float, float]:
    """Mean loss and accuracy of ``logits`` against targets ``y``.

    Parameters
    ----------
    logits : Tensor, shape ``(n, C)``
    y : Tensor, shape ``(n,)`` integer labels or ``(n, k)`` float targets
    loss : {"ce", "mse"}
        ``"mse"`` with integer labels compares against one-hot targets.

    Returns
    -------
    loss, accuracy : float
        Accuracy is NaN for float targets; both are NaN when ``n == 0``.
    """
    if y.shape[0] == 0:
        return float("nan"), float("nan")
    logits = logits.double()
    classification = not torch.is_floating_point(y) and y.ndim == 1
    if classification:
        y = y.long()
        acc = float((logits.argmax(dim=1) == y).double().mean())
        if loss == "mse":
            target = F.one_hot(y, logits.shape[1]).double()
            return float(F.mse_loss(logits, target)), acc
        return float(F.cross_entropy(logits, y)), acc
    target = y.double().reshape(logits.shape)
    return float(F.mse_loss(logits, target)), float("nan")


def task_loss(data: Data) -> str:
    """``"mse"`` when the task spec says so or the targets are floats, else ``"ce"``."""
    if data.task and str(data.task.get("loss", "")).lower() in ("mse", "l2", "squared"):
        return "mse"
    return "ce" if data.is_classification else "mse"


@register("curves", kind="step", references=("first",))
def curves(ckpt: Checkpoint, *, chunk: int = 4096) -> xr.Dataset:
    """Loss, accuracy and parameter norms at one checkpoint, recomputed from the weights.

    Parameters
    ----------
    ckpt : Checkpoint
        Uses ``ckpt.view`` for the logits (the output role applied: a model returning
        ``(n, ctx, vocab)`` is read at its read-out position and class slice), the parameters
        of ``ckpt.model`` and ``ckpt.reference("first")``, and ``ckpt.data``.
    chunk : int
        Samples per forward pass.

    Returns
    -------
    xr.Dataset
        Scalars ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``, ``param_norm``
        (total L2), ``linf_norm`` (max absolute entry), ``rel_distance_init``
        (``||theta_t - theta_0|| / ||theta_0||``, NaN when ``theta_0 = 0``) and
        ``param_norm_tensor`` (dim ``tensor``: the Frobenius norm of each parameter tensor).
    """
    model, data = ckpt.model, ckpt.data
    view = ckpt.view
    kind = task_loss(data)
    out: dict[str, tuple] = {}
    for split in ("train", "test"):
        x, y = data.split(split)
        if x.shape[0] == 0:
            loss, acc = float("nan"), float("nan")
        else:
            loss, acc = loss_and_accuracy(forward_chunked(view, x, chunk), y, loss=kind)
        out[f"{split}_loss"] = ((), loss)
        out[f"{split}_acc"] = ((), acc)

    l2, linf, per = param_vector_norms(model)
    params = named_float_params(model)
    ref = named_float_params(ckpt.reference("first"))
    if set(ref) != set(params) or any(ref[n].shape != params[n].shape for n in params):
        raise ModelMismatchError(
            "the first checkpoint's parameters do not match this checkpoint's "
            f"(names/shapes differ: {sorted(set(ref) ^ set(params))[:5]}); "
            "the run must keep one architecture throughout"
        )
    d2 = sum(
        float(((params[n].double() - ref[n].to(params[n].device).double()) ** 2).sum())
        for n in params
    )
    r2 = sum(float((ref[n].double() ** 2).sum()) for n in ref)
    rel = math.sqrt(d2) / math.sqrt(r2) if r2 > 0 else float("nan")

    names = list(per)
    ds = xr.Dataset(
        {
            **out,
            "param_norm": ((), l2),
            "linf_norm": ((), linf),
            "rel_distance_init": ((), rel),
            "param_norm_tensor": (("tensor",), np.array([per[n] for n in names])),
        },
        coords={"tensor": np.array(names, dtype=str)},
    )
    ds.attrs.update(
        loss=kind,
        loss_definition=(
            "mean cross-entropy"
            if kind == "ce"
            else "F.mse_loss (mean over samples and outputs; one-hot targets for class labels)"
        ),
        norms_over="named_parameters (floating point; buffers excluded)",
    )
    return ds
