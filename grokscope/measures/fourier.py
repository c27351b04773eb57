"""Fourier progress measures for modular arithmetic (docs/methods.md sections 6 and 9).

Nanda et al. (2023) found that networks trained on modular addition learn a few *key
frequencies* ``w_k = 2 pi k / p`` and compute ``cos(w_k (a + b - c))``. This module measures,
at one checkpoint, how far that circuit has formed.

Basis
-----
The real Fourier basis over ``Z_p`` (``p`` odd): row 0 the constant ``1/sqrt(p)``, then for
``k = 1..(p-1)/2`` the rows ``cos(2 pi k x / p)`` and ``sin(2 pi k x / p)``, each normalised to
unit length. It is orthonormal, so norms can be split exactly into components.

Definitions [ours where the paper leaves a choice]
--------------------------------------------------
- **Neuron frequency.** Each hidden neuron's activation over all ``p^2`` inputs ``(a, b)``
  (the post-activation of the anatomy's first ``hidden`` layer; with a position axis, at the
  output role's position, else the last: a transformer's MLP neurons at the ``=`` token) is
  centred and 2-D Fourier transformed,
  ``C = B A B^T``. Frequency ``k`` owns the components ``(k, 0)``, ``(0, k)`` and ``(k, k)``
  (cos/sin each: 2 + 2 + 4 terms); its share is their squared norm over the total squared
  norm (Nanda et al.'s ``extract_freq_2d``). Cross terms ``(k, k')`` with ``k != k'`` belong to
  no frequency. ``neuron_freq`` is the frequency with the largest share, or 0 when that share
  is below ``min_share`` (a neuron not explained by one frequency, e.g. at initialisation) or
  the neuron is dead.
- **Key frequencies.** ``freq_share[k]`` is the fraction of *all* neurons whose
  ``neuron_freq`` is ``k``; key frequencies are those with ``freq_share >= min_neurons_frac``
  (default [ours]: half the share that uniform use of all ``K = (p-1)/2`` frequencies would
  give, ``0.5 / K``) and at least ``min_rel_share`` (0.1 [ours]) of the largest
  ``freq_share``, or, when ``n_key`` is set, the ``n_key`` largest shares (ties by lower
  ``k``, only shares > 0). Nanda et al. take every frequency some neuron peaks at
  (``np.unique``), which at initialisation is nearly all of them; the ``min_share`` and count
  thresholds make the set empty there and equal to theirs on a grokked transformer.
  A transformer uses a handful; a wide MLP spreads its neurons over (nearly) every frequency,
  and then ablating "the key frequencies" keeps or removes the whole ``a + b`` subspace:
  ``all_frequencies_key`` says so (the set used holds at least ``all_key_frac`` of the ``K``).
- **Which key set the losses use.** ``keys="final"`` (default, as Nanda et al. do along a
  trajectory): the key set of the run's *final* stored step (the engine's ``"last"``
  reference; computed once per run and cached), so every step ablates the same frequencies.
  ``keys="step"``: each step's own set. The step's own set is always reported
  (``key_freqs_step``).
- **Restricted / excluded loss** (ops ``"+"`` and ``"-"`` only; ``s = a + b`` or ``a - b``).
  The logits over the full ``p x p`` table, per class, are projected on the orthonormal
  directions ``cos(w_k s)``, ``sin(w_k s)`` (Nanda et al.'s ``get_component_cos_xpy`` /
  ``_sin_xpy``). Restricted logits = per-class mean over inputs + the projection on the key
  frequencies; cross-entropy over the whole table. Excluded logits = logits - that projection;
  cross-entropy over the training pairs. Both all key frequencies at once
  (``restricted_loss``, ``excluded_loss``; NaN where the key set used is empty: removing
  nothing would equal the train loss) and one frequency at a time for every ``k``
  (``restricted_loss_freq``, ``excluded_loss_freq``, dim ``freq``). Other ops: NaN with the
  reason in attrs.
- **key_logit_share** (Varma et al.): ``||projection||^2 / ||logits - mean||^2`` (squared-norm
  share of the centred logits inside the key subspace; > 0.95 means the generalising circuit
  dominates); ``freq_logit_share`` the same per frequency. NaN for ops other than
  ``"+"``/``"-"``.
- **margin_per_norm**: mean correct-class margin (correct logit - largest other) over the
  task's train and test samples, divided by the total parameter L2 norm.
- **Embedding frequencies and Gini** of per-frequency norms (``k = 1..(p-1)/2``, cos and sin
  combined, constant left out) of the ``embedding`` table (token inputs: rows ``0..p-1``;
  two-hot inputs: the first layer's columns as a ``(2p, width)`` table, each half transformed
  and the halves' squared norms added) and of the neuron-to-logit map of hidden layer 0
  (``view.neuron_to_logit(0)``: an MLP's readout weight, a transformer's ``W_U^T W_out``; when
  layer 0 feeds another hidden layer, the readout weight), transformed over the token /
  output-class index. ``embed_key_freqs``: frequencies holding at least ``embed_key_ratio``
  times the uniform share ``1/K`` of the embedding's squared Fourier norm [ours]. Without an
  out map or unembedding the readout norms are NaN (reason in attrs).

The model is seen only through its anatomy (:class:`~grokscope.anatomy.ModelView`): the
``hidden``, ``embedding``, ``output`` and (for the readout norms) ``unembedding``/``readout``
roles.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

from ..anatomy import ModelView, missing_role
from ..errors import ConfigError, MeasureNotApplicable
from .curves import margins, param_vector_norms
from .registry import Checkpoint, register

__all__ = [
    "embedding_key_frequencies",
    "fourier",
    "fourier_basis",
    "freq_norms",
    "gini",
    "key_frequencies",
    "logit_decomposition",
    "neuron_frequencies",
    "per_frequency_losses",
]


# --------------------------------------------------------------------------- basis maths
def fourier_basis(
    p: int, *, dtype: torch.dtype = torch.float64, device: Any = "cpu"
) -> torch.Tensor:
    """The real orthonormal Fourier basis over ``Z_p`` (``p`` odd).

    Returns
    -------
    Tensor, shape ``(p, p)``
        Row 0 constant; rows ``2k-1``, ``2k`` are ``cos``, ``sin`` of ``2 pi k x / p``.
    """
    if p < 3 or p % 2 == 0:
        raise ConfigError(f"the real Fourier basis here needs an odd modulus p >= 3, got {p}")
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.ones(p, dtype=torch.float64)]
    for k in range(1, (p - 1) // 2 + 1):
        rows.append(torch.cos(2 * math.pi * k * x / p))
        rows.append(torch.sin(2 * math.pi * k * x / p))
    b = torch.stack(rows)
    b = b / torch.linalg.vector_norm(b, dim=1, keepdim=True)
    return b.to(device=device, dtype=dtype)


def _row_freq(p: int) -> torch.Tensor:
    """Frequency of each basis row: ``[0, 1, 1, 2, 2, ...]``."""
    return torch.div(torch.arange(p) + 1, 2, rounding_mode="floor")


def neuron_frequencies(acts: torch.Tensor, p: int) -> torch.Tensor:
    """Share of each neuron's centred 2-D Fourier norm owned by each frequency.

    Parameters
    ----------
    acts : Tensor, shape ``(p*p, N)``
        Activations at inputs ``(a, b)`` in row-major order (row ``a*p + b``).
    p : int

    Returns
    -------
    Tensor, shape ``(K, N)``, ``K = (p-1)/2``
        ``share[k-1, n]``: squared norm of components ``(k,0), (0,k), (k,k)`` over the total
        (0 for a dead neuron).
    """
    if acts.ndim != 2 or acts.shape[0] != p * p:
        raise ConfigError(
            f"activations must have shape (p*p, N) = ({p * p}, N), got {tuple(acts.shape)}"
        )
    a = acts.double()
    a = a - a.mean(dim=0, keepdim=True)
    basis = fourier_basis(p, device=a.device)
    coef = torch.einsum("ia,abn,jb->ijn", basis, a.reshape(p, p, -1), basis)
    energy = (coef**2).reshape(p * p, -1)
    f = _row_freq(p).to(a.device)
    fi, fj = f[:, None].expand(p, p), f[None, :].expand(p, p)
    owned = ((fi == fj) | (fi == 0) | (fj == 0)) & ((fi + fj) > 0)
    group = torch.where(owned, torch.maximum(fi, fj), torch.zeros_like(fi)).reshape(-1)
    k_max = (p - 1) // 2
    sums = torch.zeros(k_max + 1, energy.shape[1], dtype=energy.dtype, device=a.device)
    sums.index_add_(0, group, energy)
    total = energy.sum(dim=0)
    live = total > 1e-20 * max(float(total.max()), 1e-300)
    return torch.where(live, sums[1:] / torch.where(live, total, 1.0), 0.0)


def key_frequencies(
    share: torch.Tensor,
    *,
    min_share: float,
    min_neurons_frac: float | None,
    n_key: int | None,
    min_rel_share: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-neuron frequency and the key-frequency mask.

    Parameters
    ----------
    share : Tensor, shape ``(K, N)``
        From :func:`neuron_frequencies`.
    min_share : float
        A neuron belongs to its top frequency when that holds at least this share.
    min_neurons_frac : float or None
        A key frequency holds at least this fraction of all neurons (None: ``0.5 / K``).
    n_key : int or None
        Take the ``n_key`` largest ``freq_share`` instead of the two thresholds.
    min_rel_share : float
        A key frequency also holds at least this fraction of the largest ``freq_share``.

    Returns
    -------
    neuron_freq : int array ``(N,)`` (0 = none), neuron_share : float array ``(N,)``,
    freq_share : float array ``(K,)``, key : bool array ``(K,)``
    """
    best, arg = share.max(dim=0)
    best, arg = best.cpu().numpy(), arg.cpu().numpy() + 1
    neuron_freq = np.where(best >= min_share, arg, 0).astype(np.int64)
    if best.size and not (best > 0).any():
        neuron_freq[:] = 0
    k_max = share.shape[0]
    counts = np.bincount(neuron_freq, minlength=k_max + 1)[1:]
    freq_share = counts / max(len(neuron_freq), 1)
    if n_key is None:
        if min_neurons_frac is None:
            min_neurons_frac = 0.5 / max(k_max, 1)
        key = freq_share >= max(min_neurons_frac, min_rel_share * float(freq_share.max(initial=0)))
        key &= freq_share > 0
    else:
        if n_key < 0:
            raise ConfigError(f"n_key must be a non-negative count, got {n_key}")
        order = np.lexsort((np.arange(k_max), -freq_share))[:n_key]
        key = np.zeros(k_max, dtype=bool)
        key[order[freq_share[order] > 0]] = True
    return neuron_freq, best.astype(np.float64), freq_share.astype(np.float64), key


def _sum_directions(p: int, freqs: list[int], sign: int, device: Any) -> torch.Tensor:
    """Orthonormal ``cos/sin(w_k (a + sign*b))`` columns over the ``p x p`` grid, ``(p*p, 2m)``."""
    a = torch.arange(p, dtype=torch.float64, device=device)
    s = (a[:, None] + sign * a[None, :]).reshape(-1)
    cols = []
    for k in freqs:
        w = 2 * math.pi * k / p
        cols += [torch.cos(w * s), torch.sin(w * s)]
    if not cols:
        return torch.zeros(p * p, 0, dtype=torch.float64, device=device)
    u = torch.stack(cols, dim=1)
    return u / torch.linalg.vector_norm(u, dim=0, keepdim=True)


def logit_decomposition(
    logits: torch.Tensor, p: int, freqs: list[int], *, op: str = "+"
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Split table logits into the key-frequency part and the rest.

    Parameters
    ----------
    logits : Tensor, shape ``(p*p, C)``
        Logits at ``(a, b)`` in row-major order.
    freqs : list of int
        Key frequencies (``1..(p-1)/2``).
    op : {"+", "-"}

    Returns
    -------
    restricted : Tensor ``(p*p, C)``
        Per-class mean + projection on the ``cos/sin(w_k (a op b))`` directions.
    excluded : Tensor ``(p*p, C)``
        ``logits - projection``.
    key_share : float
        ``||projection||^2 / ||logits - mean||^2`` (NaN when the centred logits are 0).
    """
    if op not in ("+", "-"):
        raise ConfigError(f"logit_decomposition is defined for '+' and '-', got {op!r}")
    lg = logits.double()
    mean = lg.mean(dim=0, keepdim=True)
    centred = lg - mean
    u = _sum_directions(p, list(freqs), 1 if op == "+" else -1, lg.device)
    proj = u @ (u.T @ centred)
    total = float((centred**2).sum())
    share = float((proj**2).sum()) / total if total > 0 else float("nan")
    return mean + proj, lg - proj, share


def per_frequency_losses(
    logits: torch.Tensor, labels: torch.Tensor, train_rows: torch.Tensor, p: int, *, op: str = "+"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Restricted and excluded loss with one frequency at a time, for every frequency.

    Parameters
    ----------
    logits : Tensor, shape ``(p*p, C)``
        Logits at ``(a, b)`` in row-major order.
    labels : Tensor, shape ``(p*p,)``
    train_rows : Tensor of int
        Rows of the training pairs.
    op : {"+", "-"}

    Returns
    -------
    restricted : array ``(K,)``
        Cross-entropy over the whole table of per-class mean + frequency ``k``'s
        ``cos/sin(w_k (a op b))`` projection.
    excluded : array ``(K,)``
        Cross-entropy over the training rows of the logits minus that projection.
    share : array ``(K,)``
        Squared-norm share of the centred logits in frequency ``k``'s two directions.
    """
    if op not in ("+", "-"):
        raise ConfigError(f"per_frequency_losses is defined for '+' and '-', got {op!r}")
    lg = logits.double()
    mean = lg.mean(dim=0, keepdim=True)
    centred = lg - mean
    total = float((centred**2).sum())
    k_max = (p - 1) // 2
    u = _sum_directions(p, list(range(1, k_max + 1)), 1 if op == "+" else -1, lg.device)
    coef = u.T @ centred  # (2K, C)
    restricted, excluded, share = (np.empty(k_max) for _ in range(3))
    for i in range(k_max):
        proj = u[:, 2 * i : 2 * i + 2] @ coef[2 * i : 2 * i + 2]
        restricted[i] = float(F.cross_entropy(mean + proj, labels))
        excluded[i] = float(F.cross_entropy((lg - proj)[train_rows], labels[train_rows]))
        share[i] = float((proj**2).sum()) / total if total > 0 else float("nan")
    return restricted, excluded, share


def embedding_key_frequencies(norms: Any, ratio: float) -> np.ndarray:
    """Frequencies holding at least ``ratio / K`` of the squared Fourier norm (bool ``(K,)``).

    ``norms`` are per-frequency norms (:func:`freq_norms`); all False when they are all zero
    or not finite.
    """
    e = np.asarray(norms, dtype=np.float64) ** 2
    total = e.sum()
    if not np.isfinite(total) or total <= 0:
        return np.zeros(e.shape, dtype=bool)
    return e / total >= ratio / e.size


def freq_norms(mat: torch.Tensor, p: int) -> torch.Tensor:
    """Per-frequency norms of ``mat`` Fourier-transformed along its first axis.

    Parameters
    ----------
    mat : Tensor, shape ``(p, m)``

    Returns
    -------
    Tensor, shape ``(K,)``
        ``sqrt(||cos_k . mat||^2 + ||sin_k . mat||^2)`` for ``k = 1..(p-1)/2``.
    """
    coef = fourier_basis(p, device=mat.device) @ mat.double()
    e = (coef**2).sum(dim=1)[1:]
    return torch.sqrt(e[0::2] + e[1::2])


def gini(values: Any) -> float:
    """Gini coefficient of non-negative values (0 = all equal, ``(n-1)/n`` = one non-zero)."""
    x = np.sort(np.abs(np.asarray(values, dtype=np.float64)).reshape(-1))
    n, total = x.size, x.sum()
    if n == 0 or total <= 0:
        return float("nan")
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * x).sum() / (n * total))


# --------------------------------------------------------------------------- model access
def _input_format(data: Any, p: int) -> str | None:
    x = data.x_train
    if torch.is_floating_point(x) and x.ndim == 2 and x.shape[1] == 2 * p:
        return "twohot"
    if not torch.is_floating_point(x) and x.ndim == 2 and x.shape[1] >= 2:
        return "tokens"
    return None


def _data_reason(data: Any) -> str | None:
    """Why the data is not a modular task fourier can read, or None."""
    task = getattr(data, "task", None) or {}
    if task.get("name") != "modular":
        return (
            f"fourier measures need a modular-arithmetic task (this task is {task.get('name')!r})"
        )
    p = task.get("p")
    if not isinstance(p, int) or p < 3 or p % 2 == 0:
        return f"fourier measures need an odd modulus p >= 3 in the task spec (got p={p!r})"
    if _input_format(data, p) is None:
        return "fourier measures need two-hot (n, 2p) float inputs or (a, b, ...) token inputs"
    return None


def _applies(view: ModelView, data: Any) -> str | None:
    reason = _data_reason(data)
    if reason is not None:
        return reason
    anat = view.anatomy
    if not anat.has("hidden"):
        return str(missing_role("hidden", "fourier", "its neurons are Fourier-transformed"))
    if not anat.has("embedding"):
        return str(missing_role("embedding", "fourier", "its token table is Fourier-transformed"))
    return None


def _grid_inputs(data: Any, p: int, device: Any) -> torch.Tensor:
    """Model inputs for every ``(a, b)`` in row-major order, in the data's encoding."""
    a = torch.arange(p, device=device)
    aa, bb = torch.meshgrid(a, a, indexing="ij")
    aa, bb = aa.reshape(-1), bb.reshape(-1)
    x = data.x_train
    if _input_format(data, p) == "twohot":
        grid = torch.zeros(p * p, 2 * p, dtype=x.dtype, device=device)
        rows = torch.arange(p * p, device=device)
        grid[rows, aa] = 1
        grid[rows, p + bb] = 1
        return grid
    rest = x[:1, 2:].to(device).expand(p * p, -1)
    return torch.cat([aa[:, None], bb[:, None], rest], dim=1).to(x.dtype)


def _pairs_of(x: torch.Tensor, p: int) -> torch.Tensor:
    """``(a, b)`` of each input row, ``(n, 2)``."""
    if torch.is_floating_point(x):
        return torch.stack([x[:, :p].argmax(dim=1), x[:, p:].argmax(dim=1)], dim=1)
    return x[:, :2].long()


def _check_chunk(chunk: int) -> None:
    if chunk < 1:
        raise ConfigError(f"chunk must be a positive number of rows, got {chunk}")


@torch.no_grad()
def _logits(view: ModelView, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """``view.forward`` ``chunk`` rows at a time: ``(n, C)``."""
    _check_chunk(chunk)
    return torch.cat([view.forward(x[i : i + chunk]) for i in range(0, len(x), chunk)])


def _position(view: ModelView) -> int:
    """The sequence position neurons are read at: the output role's, else the last."""
    pos = view.anatomy.output.get("position")
    return -1 if pos is None else int(pos)


@torch.no_grad()
def _neuron_acts(view: ModelView, x: torch.Tensor, chunk: int) -> tuple[torch.Tensor, bool]:
    """Post-activations of hidden layer 0, ``(n, N)`` (a position axis is read at
    :func:`_position`), and whether they had a position axis."""
    _check_chunk(chunk)
    pos = _position(view)
    out, positional = [], False
    for i in range(0, len(x), chunk):
        h = view.hidden_activations(x[i : i + chunk], 0)
        positional = h.ndim == 3
        out.append(h[:, pos] if positional else h.reshape(h.shape[0], -1))
    return torch.cat(out), positional


def _describe_neurons(view: ModelView, positional: bool) -> str:
    h = view.hidden_layer(0)
    cap = h.get("capture")
    where = (f"{cap['at']} of {cap['module']!r}" if cap
             else f"{h.get('activation')} of the map {h.get('in')!r}")
    at = ""
    if positional:
        pos = _position(view)
        at = " at the last position" if pos == -1 else f" at position {pos}"
    return f"post-activation of hidden layer {h['name']!r} ({where}){at}"


def _embedding_norms(view: ModelView, p: int, fmt: str) -> torch.Tensor:
    """Per-frequency norms of the embedding table over the token axis.

    Token inputs: rows ``0..p-1``. Two-hot inputs: the table has ``2p`` rows (what each input
    unit adds); its two halves (operand ``a``, operand ``b``) are transformed separately and
    their squared norms added.
    """
    table = view.embedding_table()
    if fmt == "twohot":
        if table.shape[0] != 2 * p:
            raise MeasureNotApplicable(
                f"the embedding table has {table.shape[0]} rows, not the 2p = {2 * p} two-hot "
                "input units"
            )
        halves = freq_norms(table[:p], p) ** 2 + freq_norms(table[p:], p) ** 2
        return torch.sqrt(halves)
    if table.shape[0] < p:
        raise MeasureNotApplicable(
            f"the embedding table has {table.shape[0]} rows, fewer than the p = {p} operand tokens"
        )
    return freq_norms(table[:p], p)


def _neuron_to_logit(view: ModelView) -> tuple[torch.Tensor, str]:
    """The map from hidden layer 0 to the logits ``(C, N)`` and what it is.

    When layer 0's out map feeds another hidden layer (a deep MLP) there is no linear path to
    the logits: the readout weight is used instead (over the output-class index the Fourier
    norms need only its rows).
    """
    anat = view.anatomy
    out = anat.hidden[0].get("out")
    if out and any(h.get("in") == out for h in anat.hidden[1:]) and anat.readout is not None:
        w = view.weight(anat.readout)
        cls_ = anat.output.get("classes")
        w = w if cls_ is None else w[int(cls_[0]) : int(cls_[1])]
        return w, f"weight of the readout {anat.readout!r}"
    m = view.neuron_to_logit(0)
    if out == anat.readout:
        return m, f"weight of the readout {out!r}"
    return m, f"unembedding @ weight of {out!r}"


def _readout_norms(view: ModelView, p: int) -> tuple[torch.Tensor, str]:
    m, what = _neuron_to_logit(view)
    if m.shape[0] < p:
        raise MeasureNotApplicable(
            f"the model has {m.shape[0]} outputs, fewer than p = {p} classes"
        )
    return freq_norms(m[:p], p), what


# --------------------------------------------------------------------------- the measure
_KEYS = ("final", "step")


def _key_set(
    view: ModelView, grid: torch.Tensor, p: int, chunk: int, rule: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool, bool]:
    """Neuron frequencies and key set of ``view`` on the full table.

    Returns ``neuron_freq, neuron_share, freq_share, key`` (see :func:`key_frequencies`),
    whether the neurons have a position axis, and whether every activation was finite (when
    not, the key set is empty).
    """
    acts, positional = _neuron_acts(view, grid, chunk)
    finite = bool(torch.isfinite(acts).all())
    if not finite:
        acts = torch.nan_to_num(acts, nan=0.0, posinf=0.0, neginf=0.0)
    share = neuron_frequencies(acts, p)
    neuron_freq, neuron_share, freq_share, key = key_frequencies(share, **rule)
    if not finite:
        key = np.zeros_like(key)
    return neuron_freq, neuron_share, freq_share, key, positional, finite


def _final_keys(
    ckpt: Checkpoint, grid: torch.Tensor, p: int, chunk: int, rule: dict[str, Any]
) -> tuple[np.ndarray, bool]:
    """The key set of the run's final stored step, computed once per run (``ckpt.state``)."""
    last = ckpt.reference("last")
    cache_key = ("fourier_final_keys", id(last), p, tuple(sorted(rule.items())))
    if cache_key not in ckpt.state:
        *_, key, _, finite = _key_set(ckpt.reference_view("last"), grid, p, chunk, rule)
        ckpt.state[cache_key] = (key, finite)
    key, finite = ckpt.state[cache_key]
    return key.copy(), finite


@register("fourier", kind="step", applies=_applies, references=("last",),
          references_used=lambda params: ("last",) if params.get("keys") == "final" else ())
def fourier(
    ckpt: Checkpoint,
    *,
    keys: str = "final",
    min_share: float = 0.25,
    min_neurons_frac: float | None = None,
    min_rel_share: float = 0.1,
    n_key: int | None = None,
    all_key_frac: float = 0.9,
    embed_key_ratio: float = 2.0,
    chunk: int = 4096,
) -> xr.Dataset:
    """Key frequencies, restricted/excluded loss, Gini sparsity and circuit efficiency.

    Parameters
    ----------
    ckpt : Checkpoint
        A modular-arithmetic run (see :func:`_applies`).
    keys : {"final", "step"}
        The key set the restricted/excluded losses and ``key_logit_share`` use: the final
        stored step's (Nanda et al.'s choice along a trajectory; the engine provides the
        ``"last"`` reference; a checkpoint given without one uses its own set, and
        ``attrs["key_source"]`` says so) or each step's own.
    min_share : float
        Smallest share of a neuron's centred Fourier norm its top frequency must hold for the
        neuron to count as that frequency's.
    min_neurons_frac : float or None
        Fraction of all neurons a frequency needs to be key (ignored when ``n_key`` is set);
        None means ``0.5 / K`` with ``K = (p-1)/2``: half of uniform use [ours].
    min_rel_share : float
        A key frequency also needs at least this fraction of the neurons of the most used
        frequency [ours: 0.1; on Nanda et al.'s grokked p = 113 transformer (seed 1) it drops
        two frequencies held by ~1% of the neurons each, whose removal changes the loss by
        < 1e-8, and keeps the five circuit frequencies, the smallest at 0.43 of the largest].
    n_key : int or None
        Take the ``n_key`` most frequent neuron frequencies as key instead.
    all_key_frac : float
        ``all_frequencies_key`` is True when the key set used holds at least this fraction of
        the ``K`` frequencies [ours: 0.9, "(nearly) every frequency"].
    embed_key_ratio : float
        A frequency is an embedding key frequency when it holds at least
        ``embed_key_ratio / K`` of the embedding's squared Fourier norm [ours: 2, twice
        uniform].
    chunk : int
        Inputs per forward pass.

    Returns
    -------
    xr.Dataset
        dim ``neuron``: ``neuron_freq`` (0 = none), ``neuron_freq_share``;
        dim ``freq`` (``1..(p-1)/2``): ``freq_share``, ``key_freqs`` (bool: the set the losses
        use), ``key_freqs_step`` (bool: this step's own set), ``embed_key_freqs`` (bool),
        ``embed_freq_norm``, ``readout_freq_norm``, ``restricted_loss_freq`` (all data),
        ``excluded_loss_freq`` (train), ``freq_logit_share``;
        scalars: ``n_key_freqs`` (the set used), ``n_key_freqs_step``,
        ``n_embed_key_freqs``, ``all_frequencies_key``, ``restricted_loss`` (all data),
        ``excluded_loss`` (train; both NaN where the set used is empty), ``loss_all``,
        ``loss_train`` (unablated, same data), ``key_logit_share``, ``gini_embed``,
        ``gini_readout``, ``margin``, ``param_norm``, ``margin_per_norm``.
    """
    if keys not in _KEYS:
        raise ConfigError(f"fourier: keys must be one of {list(_KEYS)}, got {keys!r}")
    if not 0 < all_key_frac <= 1:
        raise ConfigError(f"fourier: all_key_frac must lie in (0, 1], got {all_key_frac}")
    if embed_key_ratio <= 0:
        raise ConfigError(f"fourier: embed_key_ratio must be positive, got {embed_key_ratio}")
    data = ckpt.data
    reason = _data_reason(data)  # before the anatomy: a foreign task cannot even be probed
    if reason is not None:
        raise MeasureNotApplicable(reason)
    view = ckpt.view
    reason = _applies(view, data)
    if reason is not None:
        raise MeasureNotApplicable(reason)
    p = int(data.task["p"])
    op = str(data.task.get("op", "+"))
    fmt = str(_input_format(data, p))
    device = ckpt.device
    k_max = (p - 1) // 2
    rule = {"min_share": min_share, "min_neurons_frac": min_neurons_frac, "n_key": n_key,
            "min_rel_share": min_rel_share}
    attrs: dict[str, Any] = {}

    grid = _grid_inputs(data, p, device)
    neuron_freq, neuron_share, freq_share, key_step, acts_have_position, _ = _key_set(
        view, grid, p, chunk, rule
    )
    if keys == "step":
        key, key_source = key_step.copy(), "this step's own key set"
    elif "last" in ckpt.references:
        key, final_finite = _final_keys(ckpt, grid, p, chunk, rule)
        key_source = "the final stored step's key set (attrs reference_last_step)"
        if not final_finite:
            attrs["final_keys_skipped"] = (
                "the final step's neuron activations are not finite: no final key set"
            )
    else:
        key = key_step.copy()
        key_source = "this step's own key set (no final checkpoint was given)"
    freqs = [int(k) for k in np.flatnonzero(key) + 1]
    n_used = len(freqs)
    all_key = bool(n_used > 0 and n_used >= all_key_frac * k_max)

    logits = _logits(view, grid, chunk).double()
    nan = float("nan")
    restricted_loss = excluded_loss = loss_all = loss_train = key_share = nan
    restricted_k = excluded_k = share_k = np.full(k_max, nan)
    if op in ("+", "-"):
        aa = torch.arange(p, device=device)
        labels = torch.remainder(aa[:, None] + (1 if op == "+" else -1) * aa[None, :], p).reshape(
            -1
        )
        tr_pairs = _pairs_of(data.x_train, p).to(device)
        tr_rows = tr_pairs[:, 0] * p + tr_pairs[:, 1]
        if torch.equal(labels[tr_rows], data.y_train.to(device).long()):
            restricted, excluded, key_share = logit_decomposition(logits, p, freqs, op=op)
            if n_used:
                restricted_loss = float(F.cross_entropy(restricted, labels))
                excluded_loss = float(F.cross_entropy(excluded[tr_rows], labels[tr_rows]))
            loss_all = float(F.cross_entropy(logits, labels))
            loss_train = float(F.cross_entropy(logits[tr_rows], labels[tr_rows]))
            restricted_k, excluded_k, share_k = per_frequency_losses(
                logits, labels, tr_rows, p, op=op
            )
        else:
            attrs["restricted_skipped"] = (
                f"the training labels are not (a {op} b) mod p for the decoded pairs"
            )
    else:
        attrs["restricted_skipped"] = (
            f"restricted/excluded loss and key_logit_share are defined for '+' and '-' only "
            f"(op is {op!r})"
        )

    x_all = torch.cat([data.x_train, data.x_test]).to(device)
    y_all = torch.cat([data.y_train, data.y_test]).to(device)
    margin = float(margins(_logits(view, x_all, chunk).double(), y_all).mean())
    l2, _, _ = param_vector_norms(view.model)

    emb_norm = _embedding_norms(view, p, fmt).cpu().numpy()
    emb_key = embedding_key_frequencies(emb_norm, embed_key_ratio)
    try:
        out_t, readout_map = _readout_norms(view, p)
        out_norm = out_t.cpu().numpy()
    except (MeasureNotApplicable, ConfigError) as exc:
        out_norm = np.full(k_max, nan)
        readout_map = "none"
        attrs["readout_skipped"] = str(exc)

    ds = xr.Dataset(
        {
            "neuron_freq": (("neuron",), neuron_freq),
            "neuron_freq_share": (("neuron",), neuron_share),
            "freq_share": (("freq",), freq_share),
            "key_freqs": (("freq",), key),
            "key_freqs_step": (("freq",), key_step),
            "embed_key_freqs": (("freq",), emb_key),
            "embed_freq_norm": (("freq",), emb_norm),
            "readout_freq_norm": (("freq",), out_norm),
            "restricted_loss_freq": (("freq",), restricted_k),
            "excluded_loss_freq": (("freq",), excluded_k),
            "freq_logit_share": (("freq",), share_k),
            "n_key_freqs": ((), n_used),
            "n_key_freqs_step": ((), int(key_step.sum())),
            "n_embed_key_freqs": ((), int(emb_key.sum())),
            "all_frequencies_key": ((), all_key),
            "restricted_loss": ((), restricted_loss),
            "excluded_loss": ((), excluded_loss),
            "loss_all": ((), loss_all),
            "loss_train": ((), loss_train),
            "key_logit_share": ((), key_share),
            "gini_embed": ((), gini(emb_norm)),
            "gini_readout": ((), gini(out_norm)),
            "margin": ((), margin),
            "param_norm": ((), l2),
            "margin_per_norm": ((), margin / l2 if l2 > 0 else nan),
        },
        coords={"freq": np.arange(1, k_max + 1), "neuron": np.arange(len(neuron_freq))},
    )
    ds.attrs.update(
        p=p,
        op=op,
        basis="real orthonormal Fourier basis over Z_p (constant, cos_k, sin_k)",
        neuron_activation=_describe_neurons(view, acts_have_position),
        readout_map=readout_map,
        frequency_components="(k,0), (0,k), (k,k) cos/sin terms of the centred 2-D transform",
        key_rule=(
            f"top {n_key} by neuron count"
            if n_key is not None
            else f"freq_share >= max({min_neurons_frac if min_neurons_frac is not None else '0.5/K'}"
            f", {min_rel_share} x the largest freq_share) (neurons whose top frequency holds >= "
            f"{min_share} of their centred norm)"
        ),
        keys=keys,
        key_source=key_source,
        all_frequencies_key_rule=(
            f"True when the key set used holds >= {all_key_frac} of the K = {k_max} "
            "frequencies: ablating 'the key frequencies' then keeps (restricted) or removes "
            "(excluded) the whole cos/sin(w (a op b)) subspace and tests no sparsity"
        ),
        excluded=(
            "key frequencies used ablated at once; loss on the training pairs; NaN where the "
            "key set used is empty (n_key_freqs = 0: removing nothing would equal loss_train)"
        ),
        restricted=(
            "per-class mean + key cos/sin(w_k(a op b)) projection; loss on the full table; NaN "
            "where the key set used is empty"
        ),
        per_frequency=(
            "restricted_loss_freq / excluded_loss_freq / freq_logit_share: frequency k alone "
            "kept / removed, for every k (Nanda et al.'s one-at-a-time ablation)"
        ),
        embed_key_rule=(
            f"embed_key_freqs: squared Fourier norm of the embedding >= {embed_key_ratio}/K "
            "of its total"
        ),
        key_logit_share_definition="squared-norm share of centred table logits in the key subspace",
        margin_definition="mean (correct logit - max other) over train+test / total L2 norm",
        **attrs,
    )
    return ds
