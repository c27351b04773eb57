"""Representation quality index of a token embedding (Liu et al. 2022, "effective theory").

Over the embeddings ``E_0..E_{p-1}`` of the operand tokens (each dimension divided by its std
over tokens, as Liu et al. do), a quadruple ``i < j <= m < n`` with ``i + n = j + m`` is a
parallelogram when ``|E_i + E_n - E_j - E_m|^2 < threshold``; RQI is the fraction of all such
quadruples that are parallelograms. A linear embedding ``E_k = a + k b`` has RQI = 1.

Enumeration: with ``d = j - i`` and ``D_d[x] = E_{x+d} - E_x`` the defect is
``D_d[m] - D_d[i]``; for each ``d`` (a loop of length ``p``) all pairs ``(i, m)`` with
``m - i >= d`` and ``m + d <= p - 1`` are compared at once.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from ..anatomy import ModelView, missing_role
from ..errors import ConfigError, MeasureNotApplicable
from .registry import Checkpoint, register


def n_quadruples(p: int) -> int:
    """Number of quadruples ``i < j <= m < n < p`` with ``i + n = j + m``."""
    d = np.arange(1, p)
    r = np.clip(p - 2 * d, 0, None)  # pairs (i, m) with m - i >= d, m <= p-1-d: r(r+1)/2
    return int((r * (r + 1) // 2).sum())


def rqi_from_embedding(
    E: torch.Tensor | np.ndarray, threshold: float = 0.01, *, normalize: bool = True
) -> tuple[float, int, int]:
    """RQI of an ordered embedding table.

    Parameters
    ----------
    E : array, shape ``(p, d_model)``
        Row ``k`` embeds token ``k``.
    threshold : float
        A quadruple counts when ``|E_i + E_n - E_j - E_m|^2 < threshold``.
    normalize : bool
        Divide each dimension by its std over tokens first (Liu et al.).

    Returns
    -------
    rqi : float
    count : int
        Parallelograms found.
    total : int
        Quadruples examined.
    """
    E = torch.as_tensor(E).detach().to("cpu", torch.float64)
    if E.ndim != 2 or E.shape[0] < 3:
        raise ConfigError(f"rqi: the embedding must be (p >= 3, d), got shape {tuple(E.shape)}")
    if not torch.isfinite(E).all():
        raise ConfigError("rqi: the embedding has non-finite entries")
    if normalize:
        std = E.std(dim=0, unbiased=False)
        E = E / torch.where(std > 0, std, torch.ones_like(std))
    p = E.shape[0]
    total = n_quadruples(p)
    if total == 0:
        raise ConfigError(f"rqi: {p} tokens admit no quadruple i<j<=m<n with i+n=j+m")
    count = 0
    for d in range(1, (p - 1) // 2 + 1):
        diff = E[d:] - E[:-d]  # D_d[x] for x = 0..p-1-d
        r = p - 2 * d  # valid i, m lie in 0..p-1-d with m - i >= d
        if r <= 0:
            break
        a = diff[:r]  # candidates for i: 0..p-1-2d
        b = diff[d:]  # candidates for m: d..p-1-d
        dist = torch.cdist(a, b).square() if a.shape[1] > 1 else (a - b.T).square()
        valid = torch.ones(r, r, dtype=torch.bool).triu()  # m - d >= i
        count += int(((dist < threshold) & valid).sum())
    return count / total, count, total


def _token_count(n_rows: int, data: object) -> int:
    """Rows of the embedding table RQI uses: ``p`` from the task spec, else every row."""
    task = getattr(data, "task", None) or {}
    p = task.get("p")
    if p is None:
        return n_rows
    p = int(p)
    if p > n_rows:
        raise ConfigError(f"rqi: the task has p={p} tokens but the embedding only {n_rows} rows")
    return p


def _applies(view: ModelView, _data: object) -> str | None:
    if view.anatomy.has("embedding"):
        return None
    return str(missing_role("embedding", "rqi", "a token embedding table"))


@register("rqi", kind="step", applies=_applies)
def rqi(ckpt: Checkpoint, *, threshold: float = 0.01, normalize: bool = True) -> xr.Dataset:
    """Representation quality index of the token embedding (Liu et al. 2022).

    Parameters
    ----------
    ckpt : Checkpoint
    threshold : float
        Squared-distance tolerance of a parallelogram (after normalisation).
    normalize : bool
        Divide each embedding dimension by its std over tokens (Liu et al.'s normalisation).

    Returns
    -------
    xr.Dataset
        Scalars ``rqi``, ``n_parallelograms``, ``n_quadruples``, ``n_tokens``. Rows
        ``0..p-1`` of the anatomy's ``embedding`` table are used (``p`` from the task spec; the
        "=" token of a ``p+1`` vocabulary is excluded; for two-hot inputs, whose table has
        ``2p`` rows, the first operand's half); without a ``p`` in the task spec every row of
        the table is used.
    """
    view = ckpt.view
    reason = _applies(view, ckpt.data)
    if reason:
        raise MeasureNotApplicable(reason)
    table = view.embedding_table()
    n_tok = _token_count(table.shape[0], ckpt.data)
    E = table[:n_tok]
    value, count, total = rqi_from_embedding(E, threshold, normalize=normalize)
    return xr.Dataset(
        {
            "rqi": ((), value),
            "n_parallelograms": ((), count),
            "n_quadruples": ((), total),
            "n_tokens": ((), n_tok),
        },
        attrs={
            "normalization": "each embedding dimension divided by its std over the p tokens "
            "(population std), as Liu et al. 2022 normalise per dimension"
            if normalize
            else "none",
            "quadruples": "i < j <= m < n with i + n = j + m; counted when "
            "|E_i + E_n - E_j - E_m|^2 < threshold",
        },
    )
