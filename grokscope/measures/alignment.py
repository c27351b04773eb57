"""GrokAlign: Jacobian and centroid alignment (Walker et al. 2025; docs/methods.md section 3).

For a model ``f: R^d -> R^C`` and an input ``x`` (the model's ``input`` role: the output of
its token embedding, before any positional embedding, or the raw float input, flattened; see
:mod:`grokscope.measures._jacobian`), with ``J_x = df/dx`` of shape ``(C, d)`` (``C`` logits of
the ``output`` role, e.g. a transformer's last position):

- centroid ``mu_x = J_x^T 1`` (gradient of the **sum** of the logits: one forward and one
  backward pass per batch, never a full Jacobian);
- centroid alignment ``CA(x) = <mu_x, x> / max(|mu_x| |x|, 1e-8)``;
- Jacobian norm ``||J_x||_F`` (exact, batched Jacobians);
- Jacobian alignment ``A(x) = |J_x x|^2 / (||J_x||_F |x|)^2`` [ours], 1 exactly when
  every row of ``J_x`` is parallel to ``x`` (NaN where ``J_x = 0``, left out of the mean);
  ``1/d`` in expectation when ``J_x`` does not depend on the direction of ``x``;
- rank-one-ness ``sigma_1^2 / sum_i sigma_i^2`` of ``J_x`` (float64 singular values; NaN where
  ``J_x = 0``, and such points are left out of the mean); at least ``1/min(C, d)``;
- PC1 (GrokAlign's own statistic, the authors' ``PC1`` class): the explained variance of the
  first principal component of each point's Jacobian, ``sigma_1^2 / sum_i sigma_i^2`` of the
  uncentred ``J_x``, averaged over the first ``pc1_points`` (64, as the authors'
  ``pc1(x[:64])``) evaluation points: the rank-one-ness of the authors' point set.

The centroid quantities use every evaluation point (one backward per batch); the full-Jacobian
quantities (``C`` backward passes per point) use the first ``jacobian_points`` of them.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..anatomy import ModelView, missing_role
from ..data import Data
from ..errors import ConfigError
from ._jacobian import (
    as_view,
    centroid,
    chunks,
    evaluation_inputs,
    input_convention,
    input_jacobian,
    input_view,
)
from .registry import Checkpoint, register

_EPS = 1e-8
_CENTROID_KEYS = ("centroid_alignment", "centroid_inner", "centroid_norm")
_JACOBIAN_KEYS = ("jacobian_norm", "jacobian_alignment", "rank_one")


def _applies(view: ModelView, data: Data) -> str | None:
    if view.anatomy.input.get("module") is None and not torch.is_floating_point(data.x_train):
        return str(missing_role(
            "input", "alignment",
            f"the inputs are {data.x_train.dtype} tokens, which cannot be differentiated, and no "
            "module's output (a token embedding) is named as the input",
        ))
    return None


def _nanmean(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def centroid_per_point(
    model: ModelView | nn.Module, x: torch.Tensor, *, chunk: int | None = 256
) -> dict[str, np.ndarray]:
    """Centroid alignment, ``<mu_x, x>`` and ``|mu_x|`` at every point of ``x``.

    One forward (the input role) and one forward + backward (the rest of the model, with
    ``grad_outputs = ones``) per chunk: no Jacobian is built.

    Returns
    -------
    dict of str to ndarray, each shape ``(n,)``
        ``centroid_alignment``, ``centroid_inner``, ``centroid_norm``.
    """
    view = as_view(model, x)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in _CENTROID_KEYS}
    for sl in chunks(x.shape[0], chunk):
        iv = input_view(view, x[sl])
        e64, mu64 = iv.e.double(), centroid(iv).double()
        e_norm, mu_norm = e64.norm(dim=1), mu64.norm(dim=1)
        inner = (mu64 * e64).sum(1)
        parts["centroid_alignment"].append(inner / (mu_norm * e_norm).clamp_min(_EPS))
        parts["centroid_inner"].append(inner)
        parts["centroid_norm"].append(mu_norm)
    return {k: torch.cat(v).cpu().numpy() for k, v in parts.items()}


def jacobian_per_point(
    model: ModelView | nn.Module, x: torch.Tensor, *, chunk: int | None = 256
) -> dict[str, np.ndarray]:
    """``||J_x||_F``, Jacobian alignment and rank-one-ness at every point of ``x`` (batched
    Jacobians, ``C`` backward passes per chunk).

    Returns
    -------
    dict of str to ndarray, each shape ``(n,)``
        ``jacobian_norm``, ``jacobian_alignment``, ``rank_one``.
    """
    view = as_view(model, x)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in _JACOBIAN_KEYS}
    for sl in chunks(x.shape[0], chunk):
        iv = input_view(view, x[sl])
        e64, j64 = iv.e.double(), input_jacobian(iv).double()  # (n, d), (n, C, d)
        e_norm = e64.norm(dim=1)
        j_norm = j64.flatten(1).norm(dim=1)
        jx = torch.einsum("ncd,nd->nc", j64, e64)
        # sigma_i^2 are the eigenvalues of the smaller Gram matrix (2x faster than svdvals)
        gram = j64 @ j64.transpose(1, 2) if j64.shape[1] <= j64.shape[2] else j64.transpose(1, 2) @ j64
        top = torch.linalg.eigvalsh(gram)[:, -1]
        total = j_norm**2
        parts["jacobian_norm"].append(j_norm)
        # undefined (NaN, left out of the mean) where J_x = 0 or x = 0, like rank-one-ness
        defined = (j_norm > 0) & (e_norm > 0)
        parts["jacobian_alignment"].append(torch.where(
            defined, (jx**2).sum(1) / (j_norm * e_norm).clamp_min(1e-300) ** 2, float("nan")
        ))
        parts["rank_one"].append(
            torch.where(total > 0, top / total.clamp_min(1e-300), float("nan"))
        )
    return {k: torch.cat(v).cpu().numpy() for k, v in parts.items()}


def alignment_per_point(
    model: ModelView | nn.Module, x: torch.Tensor, *, chunk: int | None = 256
) -> dict[str, np.ndarray]:
    """Every GrokAlign quantity at every point of ``x`` (:func:`centroid_per_point` and
    :func:`jacobian_per_point` together).

    Parameters
    ----------
    model : ModelView or nn.Module
        The model with its roles (a bare module gets its anatomy detected on ``x``).
    x : tensor, shape ``(n, *input_shape)``
        Raw inputs (tokens or features).
    chunk : int
        Points per batched Jacobian (bounds memory at ``chunk * C * d`` floats).

    Returns
    -------
    dict of str to ndarray, each shape ``(n,)``
        ``centroid_alignment``, ``centroid_inner``, ``centroid_norm``, ``jacobian_norm``,
        ``jacobian_alignment``, ``rank_one``.
    """
    view = as_view(model, x)
    return {**centroid_per_point(view, x, chunk=chunk), **jacobian_per_point(view, x, chunk=chunk)}


def pc1(model: ModelView | nn.Module, x: torch.Tensor, *, chunk: int | None = 256) -> float:
    """GrokAlign's PC1 of the points ``x``: the mean over points of the explained variance of
    the first principal component of the (uncentred) Jacobian ``J_x``,
    ``sigma_1^2 / sum_i sigma_i^2`` (the authors' ``PC1`` class, called on 64 training points).
    NaN points (``J_x = 0``) are left out."""
    return _nanmean(jacobian_per_point(model, x, chunk=chunk)["rank_one"])


def _positive_or_none(name: str, v: int | None) -> int | None:
    if v is None:
        return None
    if int(v) < 1:
        raise ConfigError(f"{name} must be a positive integer or None, got {v!r}")
    return int(v)


@register("alignment", kind="step", applies=_applies)
def alignment(
    ckpt: Checkpoint,
    *,
    split: str = "train",
    max_points: int | None = None,
    jacobian_points: int | None = 256,
    pc1_points: int | None = 64,
    chunk: int = 256,
) -> xr.Dataset:
    """GrokAlign centroid alignment (every point), Jacobian norm, Jacobian alignment,
    rank-one-ness and PC1 (subsamples).

    Parameters
    ----------
    ckpt : Checkpoint
    split : {"train", "test", "all"}
        Evaluation points (``"all"`` = train then test). Default: the training set, as the
        authors evaluate training batches.
    max_points : int or None
        Use the first ``max_points`` points of the split (deterministic); None = all.
    jacobian_points : int or None
        The full-Jacobian quantities (``jacobian_norm``, ``jacobian_alignment_mean``,
        ``rank_one_mean``) use the first ``jacobian_points`` evaluation points (``C``
        backward passes each); None = all.
    pc1_points : int or None
        PC1 uses the first ``pc1_points`` evaluation points (the authors: 64); None = all.
    chunk : int
        Points per batch.

    Returns
    -------
    xr.Dataset
        Scalars ``centroid_alignment_mean/min/max``, ``centroid_inner_mean``,
        ``centroid_norm_mean`` (all ``n_points``), ``jacobian_norm`` (mean of
        ``||J_x||_F``), ``jacobian_alignment_mean``, ``rank_one_mean`` (the first
        ``n_jacobian_points``), ``pc1`` (the first ``n_pc1_points``) and the three counts.
    """
    jacobian_points = _positive_or_none("jacobian_points", jacobian_points)
    pc1_points = _positive_or_none("pc1_points", pc1_points)
    x = evaluation_inputs(ckpt.data, split, max_points).to(ckpt.device)
    n = x.shape[0]
    n_jac = n if jacobian_points is None else min(jacobian_points, n)
    n_pc1 = n if pc1_points is None else min(pc1_points, n)
    view = ckpt.view
    cen = centroid_per_point(view, x, chunk=chunk)
    # one set of Jacobians serves both subsamples (the first points of the split)
    jac = jacobian_per_point(view, x[: max(n_jac, n_pc1)], chunk=chunk)
    ca = cen["centroid_alignment"]
    values = {
        "centroid_alignment_mean": float(ca.mean()),
        "centroid_alignment_min": float(ca.min()),
        "centroid_alignment_max": float(ca.max()),
        "centroid_inner_mean": float(cen["centroid_inner"].mean()),
        "centroid_norm_mean": float(cen["centroid_norm"].mean()),
        "jacobian_norm": float(jac["jacobian_norm"][:n_jac].mean()),
        "jacobian_alignment_mean": _nanmean(jac["jacobian_alignment"][:n_jac]),
        "rank_one_mean": _nanmean(jac["rank_one"][:n_jac]),
        "pc1": _nanmean(jac["rank_one"][:n_pc1]),
    }
    ds = xr.Dataset({k: xr.DataArray(np.float64(v)) for k, v in values.items()})
    ds["n_points"] = xr.DataArray(np.int64(n))
    ds["n_jacobian_points"] = xr.DataArray(np.int64(n_jac))
    ds["n_pc1_points"] = xr.DataArray(np.int64(n_pc1))
    ds["centroid_alignment_mean"].attrs["long_name"] = "mean <mu_x, x>/(|mu_x||x|)"
    ds["jacobian_norm"].attrs["long_name"] = "mean_x ||J_x||_F"
    ds["jacobian_alignment_mean"].attrs["long_name"] = "mean |J_x x|^2/(||J_x||_F^2 |x|^2)"
    ds["rank_one_mean"].attrs["long_name"] = "mean sigma_1^2/sum sigma_i^2 of J_x"
    ds["pc1"].attrs["long_name"] = "GrokAlign PC1: mean sigma_1^2/sum sigma_i^2 of J_x"
    with torch.no_grad():
        e1 = view.embed(x[:1])
        d, c = int(e1.shape[1]), int(view.forward_from_input(e1, x[:1]).shape[-1])
    ds.attrs.update(
        input_convention=input_convention(view),
        centroid="gradient of the sum of all logits w.r.t. the input role (one backward per "
        "batch), over every evaluation point",
        eps=_EPS,
        points=f"the first points of split {split!r}: centroid quantities on n_points, the "
        "full-Jacobian quantities on the first n_jacobian_points, pc1 on the first n_pc1_points",
        pc1_definition="GrokAlign's PC1 class (mitchell-solomon/grokalign utils.py): per point, "
        "the explained variance of the first principal component of the uncentred Jacobian "
        "(sigma_1^2/sum sigma_i^2), averaged over the first pc1_points (the authors: 64); it is "
        "rank-one-ness on the authors' point set (reading the paper as PC1 of 'centred, stacked' Jacobians does "
        "not match their code)",
        jacobian_alignment_random=1.0 / d,
        jacobian_alignment_note="[ours] 1 when every row of J_x is parallel to x; 1/d (d = "
        "input size) in expectation when J_x does not depend on the direction of x",
        rank_one_min=1.0 / min(c, d),
        rank_one_note="sigma_1^2/sum sigma_i^2 of J_x: 1 when J_x has rank one (one input "
        "direction drives every logit), 1/min(C, d) when all singular values are equal",
    )
    return ds
