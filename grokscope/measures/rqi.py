"""Representation quality index of a token embedding (Liu et al. 2022, "effective theory").

Two variants over the embeddings ``E_0..E_{p-1}`` of the operand tokens (each dimension divided
by its std over tokens first, as Liu et al. do):

``"integer"`` (Liu et al.'s, for non-modular tasks)
    A quadruple ``i < j <= m < n`` with ``i + n = j + m`` is a parallelogram when
    ``|E_i + E_n - E_j - E_m|^2 < threshold``; RQI is the fraction of all such quadruples that
    are parallelograms. A linear embedding ``E_k = a + k b`` has RQI = 1.
    Enumeration: with ``d = j - i`` and ``D_d[x] = E_{x+d} - E_x`` the defect is
    ``D_d[m] - D_d[i]``; for each ``d`` (a loop of length ``p``) all pairs ``(i, m)`` with
    ``m - i >= d`` and ``m + d <= p - 1`` are compared at once.

``"modular"`` (for modular tasks [ours])
    The quadruples are the pairs of distinct token pairs ``{i, n} != {j, m}`` (``i != n``,
    ``j != m``) with ``i + n = j + m (mod p)``. No embedding of ``Z_p`` in ``R^d`` satisfies the
    parallelogram relation for all of them (``p (E_1 - E_0) = 0`` would follow), and on the
    circle ``E_k = (cos 2 pi k/p, sin 2 pi k/p)`` the four points form an isosceles trapezoid,
    not a parallelogram: its chords ``E_n - E_i`` and ``E_m - E_j`` are parallel (both
    perpendicular to the direction ``pi (i + n) / p``). A quadruple counts when the chords are
    parallel up to the threshold: with ``a = E_n - E_i``, ``b = E_m - E_j``, the defect
    ``(|a|^2 |b|^2 - (a.b)^2) / ((|a|^2 + |b|^2) / 2)`` (the squared component of one chord
    orthogonal to the other when ``|a| = |b|``; a zero chord never counts) is below the
    threshold. Parallel chords survive any linear map, so every linear image of a circle of
    any frequency (an ellipse, and the per-dimension normalisation) has RQI 1; a random
    embedding, a one-hot table and a multi-frequency embedding do not. A collinear embedding
    (all chords on one line, e.g. ``a + k b``) passes trivially, and in one dimension every
    embedding would: the variant needs ``d >= 2``.

Threshold: Liu et al.'s 0.01 was set for their one-dimensional latent. Both defects are sums of
squares over the ``d`` embedding dimensions (each normalised to unit variance), so by default
the threshold is per dimension: ``threshold * d`` is compared [ours].
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from ..anatomy import ModelView, missing_role
from ..errors import ConfigError, MeasureNotApplicable
from .registry import Checkpoint, register

_VARIANTS = ("auto", "integer", "modular")


def n_quadruples(p: int) -> int:
    """Number of quadruples ``i < j <= m < n < p`` with ``i + n = j + m``."""
    d = np.arange(1, p)
    r = np.clip(p - 2 * d, 0, None)  # pairs (i, m) with m - i >= d, m <= p-1-d: r(r+1)/2
    return int((r * (r + 1) // 2).sum())


def n_modular_quadruples(p: int) -> int:
    """Number of pairs of distinct token pairs ``{i, n} != {j, m}`` (``i != n``, ``j != m``)
    with ``i + n = j + m (mod p)``."""
    i = np.arange(p)
    total = 0
    for s in range(p):
        m = int(((i < (s - i) % p)).sum())  # unordered pairs {i, n}, i < n, with i + n = s
        total += m * (m - 1) // 2
    return total


def _prepare(E: torch.Tensor | np.ndarray, normalize: bool) -> torch.Tensor:
    E = torch.as_tensor(E).detach().to("cpu", torch.float64)
    if E.ndim != 2 or E.shape[0] < 3:
        raise ConfigError(f"rqi: the embedding must be (p >= 3, d), got shape {tuple(E.shape)}")
    if not torch.isfinite(E).all():
        raise ConfigError("rqi: the embedding has non-finite entries")
    if normalize:
        std = E.std(dim=0, unbiased=False)
        E = E / torch.where(std > 0, std, torch.ones_like(std))
    return E


def rqi_from_embedding(
    E: torch.Tensor | np.ndarray, threshold: float = 0.01, *, normalize: bool = True
) -> tuple[float, int, int]:
    """Integer-variant RQI of an ordered embedding table (Liu et al.).

    Parameters
    ----------
    E : array, shape ``(p, d_model)``
        Row ``k`` embeds token ``k``.
    threshold : float
        A quadruple counts when ``|E_i + E_n - E_j - E_m|^2 < threshold`` (compared as given).
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
    E = _prepare(E, normalize)
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


def rqi_modular(
    E: torch.Tensor | np.ndarray, threshold: float = 0.01, *, normalize: bool = True
) -> tuple[float, int, int]:
    """Modular-variant RQI of an embedding of ``Z_p`` (rows ``0..p-1``).

    Parameters
    ----------
    E : array, shape ``(p, d_model)``, ``d_model >= 2``
    threshold : float
        A quadruple ``{i, n}, {j, m}`` (``i + n = j + m mod p``) counts when its chords
        ``a = E_n - E_i`` and ``b = E_m - E_j`` satisfy
        ``(|a|^2 |b|^2 - (a.b)^2) / ((|a|^2 + |b|^2) / 2) < threshold`` (compared as given).
    normalize : bool
        Divide each dimension by its std over tokens first.

    Returns
    -------
    rqi, count, total
        As :func:`rqi_from_embedding`; ``total`` is :func:`n_modular_quadruples`.
    """
    E = _prepare(E, normalize)
    p, dim = E.shape
    if dim < 2:
        raise ConfigError(
            "rqi (modular): a one-dimensional embedding has all chords parallel; the modular "
            "variant needs an embedding of dimension >= 2"
        )
    idx = torch.arange(p)
    count = total = 0
    for s in range(p):
        n = torch.remainder(s - idx, p)
        keep = idx < n
        chords = E[n[keep]] - E[idx[keep]]  # one row per unordered pair {i, n}
        m = chords.shape[0]
        if m < 2:
            continue
        g = chords @ chords.T
        sq = torch.diagonal(g)
        num = (sq[:, None] * sq[None, :] - g.square()).clamp_min(0.0)
        den = (sq[:, None] + sq[None, :]) / 2
        nonzero = (sq[:, None] > 0) & (sq[None, :] > 0)
        defect = torch.where(nonzero, num / torch.where(nonzero, den, 1.0), torch.inf)
        upper = torch.ones(m, m, dtype=torch.bool).triu(diagonal=1)
        count += int(((defect < threshold) & upper).sum())
        total += m * (m - 1) // 2
    if total == 0:
        raise ConfigError(f"rqi (modular): {p} tokens admit no pair of pairs with equal sums")
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


def _is_modular(data: object) -> bool:
    task = getattr(data, "task", None) or {}
    return task.get("name") == "modular"


def _applies(view: ModelView, data: object) -> str | None:
    if not view.anatomy.has("embedding"):
        return str(missing_role("embedding", "rqi", "a token embedding table"))
    task = getattr(data, "task", None) or {}
    if _is_modular(data) and str(task.get("op", "+")) not in ("+", "-"):
        return (
            f"rqi counts quadruples i + n = j + m (mod p), the structure of modular addition; "
            f"op {task.get('op')!r} is not additive"
        )
    return None


def _variant(variant: str, data: object) -> str:
    if variant not in _VARIANTS:
        raise ConfigError(f"rqi: variant must be one of {list(_VARIANTS)}, got {variant!r}")
    modular = _is_modular(data)
    if variant == "auto":
        return "modular" if modular else "integer"
    if variant == "integer" and modular:
        raise ConfigError(
            "rqi: the integer variant counts i + n = j + m over the integers, which a "
            "modular task's embedding need not satisfy (an exact circle embedding scores 0); "
            "use variant='modular' (the default 'auto' does) on modular tasks"
        )
    if variant == "modular" and not modular:
        raise ConfigError("rqi: variant='modular' needs a modular task (task name 'modular')")
    return variant


@register("rqi", kind="step", applies=_applies)
def rqi(
    ckpt: Checkpoint,
    *,
    variant: str = "auto",
    threshold: float = 0.01,
    scale_threshold: bool = True,
    normalize: bool = True,
) -> xr.Dataset:
    """Representation quality index of the token embedding (Liu et al. 2022).

    Parameters
    ----------
    ckpt : Checkpoint
    variant : {"auto", "integer", "modular"}
        ``"auto"``: ``"modular"`` on modular tasks, else ``"integer"``. The integer variant is
        refused on modular tasks.
    threshold : float
        Tolerance of the squared defect (after normalisation), per embedding dimension when
        ``scale_threshold`` (Liu et al.'s 0.01 was set for a one-dimensional latent).
    scale_threshold : bool
        Compare ``threshold * d_model`` (default) instead of ``threshold`` [ours].
    normalize : bool
        Divide each embedding dimension by its std over tokens (Liu et al.'s normalisation).

    Returns
    -------
    xr.Dataset
        Scalars ``rqi``, ``n_parallelograms`` (quadruples that pass), ``n_quadruples``,
        ``n_tokens``, ``embedding_dim``, ``threshold_used``. Rows ``0..p-1`` of the anatomy's
        ``embedding`` table are used (``p`` from the task spec; the "=" token of a ``p+1``
        vocabulary is excluded; for two-hot inputs, whose table has ``2p`` rows, the first
        operand's half); without a ``p`` in the task spec every row of the table is used.
        The modular variant on a one-dimensional embedding: NaN, ``attrs["rqi_skipped"]``.
    """
    view = ckpt.view
    reason = _applies(view, ckpt.data)
    if reason:
        raise MeasureNotApplicable(reason)
    kind = _variant(variant, ckpt.data)
    table = view.embedding_table()
    n_tok = _token_count(table.shape[0], ckpt.data)
    E = table[:n_tok]
    dim = int(E.shape[1])
    used = threshold * dim if scale_threshold else threshold
    attrs: dict[str, str] = {}
    if kind == "modular":
        if dim < 2:
            value, count, total = float("nan"), 0, n_modular_quadruples(n_tok)
            attrs["rqi_skipped"] = "a one-dimensional embedding: every chord is parallel"
        else:
            value, count, total = rqi_modular(E, used, normalize=normalize)
        quads = (
            "pairs of distinct token pairs {i, n} != {j, m} with i + n = j + m (mod p); counted "
            "when the chords a = E_n - E_i, b = E_m - E_j are parallel: "
            "(|a|^2 |b|^2 - (a.b)^2) / ((|a|^2 + |b|^2) / 2) < threshold_used"
        )
    else:
        value, count, total = rqi_from_embedding(E, used, normalize=normalize)
        quads = (
            "i < j <= m < n with i + n = j + m; counted when "
            "|E_i + E_n - E_j - E_m|^2 < threshold_used"
        )
    return xr.Dataset(
        {
            "rqi": ((), value),
            "n_parallelograms": ((), count),
            "n_quadruples": ((), total),
            "n_tokens": ((), n_tok),
            "embedding_dim": ((), dim),
            "threshold_used": ((), float(used)),
        },
        attrs={
            "variant": kind,
            "normalization": "each embedding dimension divided by its std over the p tokens "
            "(population std), as Liu et al. 2022 normalise per dimension"
            if normalize
            else "none",
            "quadruples": quads,
            "threshold_rule": (
                f"threshold_used = threshold x embedding_dim = {threshold} x {dim}: the defect "
                "sums squares over the normalised dimensions, Liu et al.'s 0.01 was set for one"
                if scale_threshold
                else f"threshold_used = threshold = {threshold} (not scaled)"
            ),
            **attrs,
        },
    )
