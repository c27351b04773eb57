"""GrokAlign: Jacobian and centroid alignment (Walker et al. 2025; METHODS.md section 3).

For a model ``f: R^d -> R^C`` and an input ``x`` (the model's ``input`` role: the output of
its token embedding, or the raw float input, flattened; see
:mod:`grokscope.measures._jacobian`), with ``J_x = df/dx`` of shape ``(C, d)`` (``C`` logits of
the ``output`` role, e.g. a transformer's last position):

- centroid ``mu_x = J_x^T 1`` (gradient of the **sum** of the logits, one backward pass);
- centroid alignment ``CA(x) = <mu_x, x> / max(|mu_x| |x|, 1e-8)``;
- Jacobian norm ``||J_x||_F`` (exact, batched Jacobians);
- Jacobian alignment ``A(x) = |J_x x|^2 / (||J_x||_F |x|)^2`` [ours], 1 exactly when
  every row of ``J_x`` is parallel to ``x`` (NaN where ``J_x = 0``, left out of the mean);
- rank-one-ness ``sigma_1^2 / sum_i sigma_i^2`` of ``J_x`` (float64 singular values; NaN where
  ``J_x = 0``, and such points are left out of the mean).
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..anatomy import ModelView, missing_role
from ..data import Data
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


def alignment_per_point(
    model: ModelView | nn.Module, x: torch.Tensor, *, chunk: int = 256
) -> dict[str, np.ndarray]:
    """The GrokAlign quantities at every point of ``x``.

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
    parts: dict[str, list[torch.Tensor]] = {
        k: []
        for k in (
            "centroid_alignment",
            "centroid_inner",
            "centroid_norm",
            "jacobian_norm",
            "jacobian_alignment",
            "rank_one",
        )
    }
    for sl in chunks(x.shape[0], chunk):
        iv = input_view(view, x[sl])
        e = iv.e
        mu = centroid(iv, e)  # (n, d)
        jac = input_jacobian(iv, e)  # (n, C, d)
        e64, mu64, j64 = e.double(), mu.double(), jac.double()
        e_norm = e64.norm(dim=1)
        mu_norm = mu64.norm(dim=1)
        inner = (mu64 * e64).sum(1)
        j_norm = j64.flatten(1).norm(dim=1)
        jx = torch.einsum("ncd,nd->nc", j64, e64)
        # sigma_i^2 are the eigenvalues of the smaller Gram matrix (2x faster than svdvals)
        gram = j64 @ j64.transpose(1, 2) if j64.shape[1] <= j64.shape[2] else j64.transpose(1, 2) @ j64
        top = torch.linalg.eigvalsh(gram)[:, -1]
        total = j_norm**2
        rank_one = torch.where(total > 0, top / total.clamp_min(1e-300), float("nan"))
        parts["centroid_alignment"].append(inner / (mu_norm * e_norm).clamp_min(_EPS))
        parts["centroid_inner"].append(inner)
        parts["centroid_norm"].append(mu_norm)
        parts["jacobian_norm"].append(j_norm)
        # undefined (NaN, left out of the mean) where J_x = 0 or x = 0, like rank-one-ness
        defined = (j_norm > 0) & (e_norm > 0)
        parts["jacobian_alignment"].append(torch.where(
            defined, (jx**2).sum(1) / (j_norm * e_norm).clamp_min(1e-300) ** 2, float("nan")
        ))
        parts["rank_one"].append(rank_one)
    return {k: torch.cat(v).cpu().numpy() for k, v in parts.items()}


@register("alignment", kind="step", applies=_applies)
def alignment(
    ckpt: Checkpoint, *, split: str = "test", max_points: int | None = 1024, chunk: int = 256
) -> xr.Dataset:
    """GrokAlign centroid and Jacobian alignment, Jacobian norm and rank-one-ness.

    Parameters
    ----------
    ckpt : Checkpoint
    split : {"test", "train", "all"}
        Evaluation points (``"all"`` = train then test).
    max_points : int or None
        Use the first ``max_points`` points of the split (deterministic); None = all.
    chunk : int
        Points per batched Jacobian.

    Returns
    -------
    xr.Dataset
        Scalars ``centroid_alignment_mean/min/max``, ``centroid_inner_mean``,
        ``centroid_norm_mean``, ``jacobian_norm`` (mean of ``||J_x||_F``),
        ``jacobian_alignment_mean``, ``rank_one_mean`` and ``n_points``.
    """
    x = evaluation_inputs(ckpt.data, split, max_points).to(ckpt.device)
    view = ckpt.view
    per = alignment_per_point(view, x, chunk=chunk)
    ca = per["centroid_alignment"]
    values = {
        "centroid_alignment_mean": float(ca.mean()),
        "centroid_alignment_min": float(ca.min()),
        "centroid_alignment_max": float(ca.max()),
        "centroid_inner_mean": float(per["centroid_inner"].mean()),
        "centroid_norm_mean": float(per["centroid_norm"].mean()),
        "jacobian_norm": float(per["jacobian_norm"].mean()),
        "jacobian_alignment_mean": _nanmean(per["jacobian_alignment"]),
        "rank_one_mean": _nanmean(per["rank_one"]),
    }
    ds = xr.Dataset({k: xr.DataArray(np.float64(v)) for k, v in values.items()})
    ds["n_points"] = xr.DataArray(np.int64(x.shape[0]))
    ds["centroid_alignment_mean"].attrs["long_name"] = "mean <mu_x, x>/(|mu_x||x|)"
    ds["jacobian_norm"].attrs["long_name"] = "mean_x ||J_x||_F"
    ds["jacobian_alignment_mean"].attrs["long_name"] = "mean |J_x x|^2/(||J_x||_F^2 |x|^2)"
    ds["rank_one_mean"].attrs["long_name"] = "mean sigma_1^2/sum sigma_i^2 of J_x"
    ds.attrs.update(
        input_convention=input_convention(view),
        centroid="gradient of the sum of all logits w.r.t. the input role",
        eps=_EPS,
    )
    return ds
