"""Gaussian mixtures over a per-neuron order parameter (Rubin, Seroussi, Ringel 2023).

Before grokking the per-neuron order parameter ``phi_i`` of the first layer ``W1``
(``(hidden, in)``) is one Gaussian, the distribution it had at random initialisation; at
grokking a finite fraction of neurons ("droplets") leaves it for other modes. Per checkpoint we
fit sklearn ``GaussianMixture`` with ``k = 1..max_components`` components, choose ``k`` by BIC,
and store the fit, the evidence for it and a histogram (docs/methods.md section 2).

Order parameters (``order_parameter="auto"`` picks the first that applies):

``"teacher"``
    ``phi_i = <W1[i], w*>`` when the data carries ``extras["w_star"]`` of size ``in``.
``"fourier"``
    Modular tasks with two-hot inputs (``in = 2p``). From the per-frequency powers
    ``P_ik = |FFT(W1[i,:p])_k|^2 + |FFT(W1[i,p:])_k|^2``, ``k = 1..m``, ``m = (p-1)/2``
    (:func:`fourier_powers`), the **log dominance ratio** of the neuron's dominant frequency
    over the mean power of the others, ``r_i = log((m-1) max_k P_ik / (sum_k P_ik - max_k P_ik))``
    [ours]. It is unbounded above: a neuron that concentrates on one frequency goes to
    ``+inf`` instead of piling up at a ceiling (the dominant *share* ``max_k P_k / sum_k P_k``
    is bounded by 1, and BIC split the pile of pure neurons at that bound into spurious
    components). ``phi_i`` is ``r_i`` through a Box-Cox transform with ``lambda >= 0`` (so it
    stays unbounded above), fitted on 20,000 i.i.d. Gaussian rows (seeded, cached per ``p``), and
    standardised by that null's mean and std: a random layer gives ``phi ~ N(0, 1)`` (one
    Gaussian at every seed, width and ``p`` tested), a pure-frequency neuron sits tens of null
    standard deviations above it.
``"pca"`` [ours]
    Otherwise: each neuron's weight vector projected on the top ``n_components`` right
    singular vectors of the *uncentred* ``W1`` (the origin is kept; each vector's sign is fixed
    so its largest projection is positive).

**The null distribution** is the order parameter at random initialisation: by default
(``null="auto"``) that of the run's first stored step (``ckpt.reference("first")``, step 0 for
runs grokscope records), through the same map (for ``"pca"``, the first step's rows projected
on the current step's singular vectors); without that reference, a calibration on random layers
of the same shape [ours: rows in random directions with the current energy per direction, so
it is analytic]: ``"teacher"`` ``N(0, |w*|^2 s^2)`` with ``s^2 = mean_i |P W1[i]|^2 / (in - 1)``,
``P`` the projection orthogonal to ``w*`` (neurons aligned with ``w*`` do not inflate it);
``"pca"`` ``N(0, mean_i |P W1[i]|^2 / (in - n_components))`` per feature, ``P`` orthogonal to
the kept singular vectors; ``"fourier"`` ``N(0, 1)`` (the Gaussian-row calibration above). A component is **the null component** only if
its mean lies within ``null_sds`` (3) null standard deviations of the null mean (Euclidean
distance after dividing each feature by its null std, for vector ``phi``); of several, the
nearest. ``droplet_fraction = 1 - pi_null``, and **1 when no component is null** (every neuron
has left the random-init distribution).

Fitting [ours where docs/methods.md leaves it open]: each feature is divided by its standard
deviation before fitting (not centred; reported means, variances and BIC are in the original
units), so ``k`` does not depend on the weight scale. For every ``k`` a cold fit (``n_init``
k-means++ initialisations, best likelihood kept) is always made; from the second visited step
on, a warm fit initialised from the previous step's cold fit with the same ``k`` (means,
weights, covariances) is made too, and the one with the lower BIC is kept, so a cold refit never
finds a better BIC than the stored one at any ``k``. (Warm starts come from the previous *cold*
fit, which depends on that step's weights only, so an extended result, for which the engine
replays one stored step, has the same fits as one computed in one pass.) After ``k`` is chosen, its components are matched
to the previous step's components by their means (Hungarian assignment on the distance between
means, in units of the current step's feature std), so a component keeps its index (its slot in
the ``component`` dim, and its colour in the figures) along the trajectory; new components
take the free slots. At the first visited step slot 0 is the component nearest the null mean,
then by distance from it.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.special
import scipy.stats
import torch
import xarray as xr
from scipy.optimize import linear_sum_assignment
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from ..anatomy import ModelView, missing_role
from ..errors import ConfigError
from .registry import Checkpoint, register

_ORDER_PARAMETERS = ("auto", "teacher", "fourier", "pca")
_NULLS = ("auto", "first", "calibration")
_STATE_KEY = "mixture_fits"
#: ``sum_{k != max} P_k`` is floored at this fraction of ``sum_k P_k`` (a row that is exactly
#: one frequency in exact arithmetic; float weights always leave rounding power above it)
_REST_FLOOR = 1e-30


@dataclass
class MixtureFit:
    """One Gaussian mixture fit, in the order parameter's units.

    Attributes
    ----------
    k : int
    weights : ndarray, shape ``(k,)``
    means : ndarray, shape ``(k, f)``
    variances : ndarray, shape ``(k, f)``
        Diagonals of the component covariances.
    bic : float
    converged : bool
    warm_started : bool
        The kept fit is the one initialised from the previous step's fit.
    covariances : ndarray, shape ``(k, f, f)``, optional
        Full component covariances (initialise the next step's warm fit).
    cold_bic : float
        BIC of the cold fit (``n_init`` k-means++ initialisations) at this ``k``; ``bic`` is
        never above it.
    cold_fit : MixtureFit, optional
        That cold fit, when the warm one was kept (see :attr:`cold`).
    """

    k: int
    weights: np.ndarray
    means: np.ndarray
    variances: np.ndarray
    bic: float
    converged: bool
    warm_started: bool
    covariances: np.ndarray | None = None
    cold_bic: float = float("nan")
    cold_fit: MixtureFit | None = None

    @property
    def cold(self) -> MixtureFit:
        """The cold fit at this ``k`` (this fit itself unless the warm one was kept)."""
        return self if self.cold_fit is None else self.cold_fit


# --------------------------------------------------------------------------- order parameters
def first_layer(view: ModelView, module: str | None = None) -> tuple[str, torch.Tensor]:
    """The first-layer weight ``W1`` (``(hidden, in)``) and its linear map's name.

    Parameters
    ----------
    view : ModelView
    module : str, optional
        A linear map of the anatomy (its name, e.g. ``"layers.0"``, ``"fc1"``,
        ``"blocks.0.mlp.W_in"``, or its weight key). Default: the ``in`` map of the first hidden
        layer (an MLP's first layer, a transformer's ``W_in``), else the first linear map.
    """
    anat = view.anatomy
    if module is None:
        module = next((h["in"] for h in anat.hidden if h.get("in")), None)
        if module is None and anat.linear:
            module = anat.linear[0]["name"]
        if module is None:
            raise missing_role(
                "hidden", "mixture", "no hidden layer with an 'in' map and no linear map"
            )
    name = anat.linear_map(module)["name"]
    return name, view.weight(name)


def _fourier_p(task: dict[str, Any] | None, n_in: int) -> int | None:
    if not task or task.get("name") != "modular" or task.get("encoding", "onehot") != "onehot":
        return None
    p = task.get("p")
    return int(p) if p is not None and 2 * int(p) == n_in and int(p) >= 5 else None


def fourier_powers(W1: torch.Tensor, p: int) -> np.ndarray:
    """Per-frequency powers of each neuron's two input halves.

    Parameters
    ----------
    W1 : tensor, shape ``(hidden, 2p)``
    p : int

    Returns
    -------
    ndarray, shape ``(hidden, (p-1)//2)``
        ``|FFT(W1[i,:p])_k|^2 + |FFT(W1[i,p:])_k|^2`` for ``k = 1..(p-1)/2`` (column ``k-1``),
        in float64.
    """
    W = W1.detach().to("cpu", torch.float64)
    m = (p - 1) // 2
    power = (
        torch.fft.rfft(W[:, :p], dim=1)[:, 1 : m + 1].abs() ** 2
        + torch.fft.rfft(W[:, p:], dim=1)[:, 1 : m + 1].abs() ** 2
    )
    return power.numpy()


def log_dominance(power: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``log((m-1) max_k P_k / (sum_k P_k - max_k P_k))`` per row, and ``sum_k P_k``.

    The rest is floored at ``1e-30 sum_k P_k`` (only a row that is exactly one frequency in
    exact arithmetic reaches it). Rows with no power give NaN.
    """
    m = power.shape[1]
    total = power.sum(axis=1)
    top = power.max(axis=1)
    rest = np.maximum(total - top, _REST_FLOOR * total)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.log((m - 1) * top / rest)
    return np.where(total > 0, r, np.nan), total


@functools.lru_cache(maxsize=64)
def _null_calibration(p: int, n_null: int = 20_000) -> tuple[float, float, float]:
    """Box-Cox ``lambda`` (clipped at 0) and the null's mean and std of the transformed ``r``."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(n_null, 2 * p, dtype=torch.float64, generator=gen)
    r, _ = log_dominance(fourier_powers(rows, p))
    r = np.maximum(r, 1e-12)
    lam = max(float(scipy.stats.boxcox_normmax(r, method="mle")), 0.0)
    t = scipy.special.boxcox(r, lam)
    return lam, float(t.mean()), float(t.std())


def fourier_order_parameter(W1: torch.Tensor, p: int) -> np.ndarray:
    """Log dominance ratio of each neuron's Fourier power, calibrated to N(0, 1) at init [ours].

    Parameters
    ----------
    W1 : tensor, shape ``(hidden, 2p)``
    p : int

    Returns
    -------
    ndarray, shape ``(hidden,)``
        ``(boxcox(r, lambda) - mean) / std`` with :func:`log_dominance` ``r`` and the Gaussian-row
        calibration of ``p``; 0 (the null mean) for dead rows (no power).
    """
    r, total = log_dominance(fourier_powers(W1, p))
    lam, mean, std = _null_calibration(p)
    phi = (scipy.special.boxcox(np.where(total > 0, np.maximum(r, 1e-12), 1.0), lam) - mean) / std
    return np.where(total > 0, phi, 0.0)


def _pca_basis(W: np.ndarray, n_components: int) -> np.ndarray:
    """Top right singular vectors of uncentred ``W`` (rows), signs fixed on ``W``."""
    if not 1 <= n_components <= min(W.shape):
        raise ConfigError(
            f"mixture: n_components must be in 1..{min(W.shape)} for W1 of shape {W.shape}"
        )
    _u, _s, vt = np.linalg.svd(W, full_matrices=False)
    basis = vt[:n_components]
    proj = W @ basis.T
    signs = np.sign(proj[np.abs(proj).argmax(axis=0), np.arange(n_components)])
    return basis * np.where(signs == 0, 1.0, signs)[:, None]


def pca_order_parameter(W1: torch.Tensor, n_components: int) -> np.ndarray:
    """Projections of the neurons on the top right singular vectors of uncentred ``W1`` [ours].

    Returns
    -------
    ndarray, shape ``(hidden, n_components)``
    """
    W = W1.detach().to("cpu", torch.float64).numpy()
    return W @ _pca_basis(W, n_components).T


def _kind(W1: torch.Tensor, task: dict[str, Any] | None, extras: dict[str, torch.Tensor],
          how: str) -> tuple[str, int | None]:
    if how not in _ORDER_PARAMETERS:
        raise ConfigError(f"mixture: order_parameter must be one of {_ORDER_PARAMETERS}, got {how!r}")
    n_in = W1.shape[1]
    w_star = extras.get("w_star")
    teacher_ok = w_star is not None and w_star.numel() == n_in
    p = _fourier_p(task, n_in)
    if how == "teacher" or (how == "auto" and teacher_ok):
        if not teacher_ok:
            raise ConfigError(
                f"mixture: order_parameter='teacher' needs data.extras['w_star'] of size {n_in}"
            )
        return "teacher", None
    if how == "fourier" or (how == "auto" and p is not None):
        if p is None:
            raise ConfigError(
                "mixture: order_parameter='fourier' needs a modular task with onehot encoding, "
                f"p >= 5 and a first layer with 2p inputs (got {n_in} inputs, task {task})"
            )
        return "fourier", p
    return "pca", None


def compute_order_parameter(
    W1: torch.Tensor,
    task: dict[str, Any] | None,
    extras: dict[str, torch.Tensor],
    how: str = "auto",
    n_components: int = 2,
) -> tuple[str, np.ndarray]:
    """The per-neuron order parameter and which one was used.

    Returns
    -------
    kind : {"teacher", "fourier", "pca"}
    phi : ndarray, shape ``(hidden,)`` or ``(hidden, n_components)`` for ``"pca"``
    """
    kind, p = _kind(W1, task, extras, how)
    if kind == "teacher":
        ws = extras["w_star"].detach().to("cpu", torch.float64).reshape(-1)
        return kind, (W1.detach().to("cpu", torch.float64) @ ws).numpy()
    if kind == "fourier":
        assert p is not None
        return kind, fourier_order_parameter(W1, p)
    return kind, pca_order_parameter(W1, n_components)


def null_distribution(
    kind: str,
    W1: torch.Tensor,
    extras: dict[str, torch.Tensor],
    *,
    W0: torch.Tensor | None = None,
    p: int | None = None,
    n_components: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (per feature) of the order parameter at random initialisation.

    Parameters
    ----------
    kind : {"teacher", "fourier", "pca"}
    W1 : tensor, shape ``(hidden, in)``
        The current step's layer (``"pca"`` projects on its basis; the calibration uses its
        row norms).
    W0 : tensor, optional
        The same layer at the first stored step; None: the calibration on random layers.
    p : int, optional
        Modulus (``"fourier"``).

    Returns
    -------
    mean, std : ndarray, shape ``(f,)``
    """
    W = W1.detach().to("cpu", torch.float64)
    if W0 is not None:
        W0 = W0.detach().to("cpu", torch.float64)
        if W0.shape != W.shape:
            raise ConfigError(
                f"mixture: the first stored step's layer has shape {tuple(W0.shape)}, the "
                f"current one {tuple(W.shape)}"
            )
        if kind == "teacher":
            phi0 = (W0 @ extras["w_star"].detach().to("cpu", torch.float64).reshape(-1)).numpy()
        elif kind == "fourier":
            assert p is not None
            phi0 = fourier_order_parameter(W0, p)
        else:
            phi0 = W0.numpy() @ _pca_basis(W.numpy(), n_components).T
        phi0 = phi0.reshape(len(phi0), -1)
        return phi0.mean(axis=0), phi0.std(axis=0)
    if kind == "fourier":
        return np.zeros(1), np.ones(1)
    # a random direction u on the sphere: <|W_i| u, v> has variance |W_i|^2 |v|^2 / in. The
    # energy per direction is read off the rows' part orthogonal to the directions phi uses
    # (w*, or the top singular vectors), so neurons that align with them do not inflate it.
    if kind == "teacher":
        w = extras["w_star"].detach().to("cpu", torch.float64).reshape(-1)
        basis = (w / w.norm().clamp_min(torch.finfo(torch.float64).tiny))[None, :]
    else:
        basis = torch.as_tensor(_pca_basis(W.numpy(), n_components))
    rest = W - (W @ basis.T) @ basis
    dof = W.shape[1] - basis.shape[0]
    var = float((rest**2).sum(dim=1).mean()) / dof if dof > 0 else float((W**2).sum(1).mean()) / W.shape[1]
    if kind == "teacher":
        var *= float((w**2).sum())
        return np.zeros(1), np.full(1, np.sqrt(var))
    return np.zeros(n_components), np.full(n_components, np.sqrt(var))


def null_distances(means: np.ndarray, null_mean: np.ndarray, null_std: np.ndarray) -> np.ndarray:
    """Distance of each component mean from the null mean in null standard deviations.

    Euclidean over features after dividing each by its null std; shape ``(k,)``.
    """
    tiny = np.finfo(np.float64).tiny
    z = (np.asarray(means) - null_mean[None, :]) / np.maximum(null_std, tiny)[None, :]
    return np.linalg.norm(z, axis=1)


def droplet_fraction(
    weights: np.ndarray, distances: np.ndarray, null_sds: float = 3.0
) -> tuple[float, int]:
    """``1 - pi_null`` and the null component's index (-1 and 1.0 when none is null).

    The null component is the component nearest the null mean among those within
    ``null_sds`` null standard deviations of it.
    """
    inside = np.flatnonzero(np.asarray(distances) <= null_sds)
    if inside.size == 0:
        return 1.0, -1
    null = int(inside[np.argmin(np.asarray(distances)[inside])])
    return 1.0 - float(weights[null]), null


# --------------------------------------------------------------------------- fitting
def _gm(k: int, seed: int, **kwargs: Any) -> GaussianMixture:
    return GaussianMixture(
        n_components=k, covariance_type="full", random_state=seed, max_iter=500,
        init_params="k-means++", **kwargs,
    )


def _fit(gm: GaussianMixture, z: np.ndarray) -> GaussianMixture:
    # One thread: these fits are tiny, and oversubscribed BLAS/OpenMP pools slow them ~10x.
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(z)
    return gm


def _pack(gm: GaussianMixture, bic: float, cold_bic: float, from_warm: bool,
          scale: np.ndarray) -> MixtureFit:
    """A fitted ``GaussianMixture`` on ``z = x / scale`` back in ``x``'s units."""
    means = gm.means_ * scale
    covariances = gm.covariances_ * np.outer(scale, scale)
    weights = gm.weights_.copy()
    if not from_warm:
        order = np.argsort(np.linalg.norm(means, axis=1), kind="stable")
        means, covariances, weights = means[order], covariances[order], weights[order]
    return MixtureFit(
        k=len(weights), weights=weights, means=means,
        variances=np.einsum("kii->ki", covariances), bic=bic, converged=bool(gm.converged_),
        warm_started=from_warm, covariances=covariances, cold_bic=cold_bic,
    )


def fit_mixtures(
    phi: np.ndarray,
    *,
    max_components: int = 4,
    seed: int = 0,
    n_init: int = 3,
    warm: dict[int, MixtureFit] | None = None,
) -> dict[int, MixtureFit]:
    """Fit Gaussian mixtures with ``k = 1..max_components`` components.

    Parameters
    ----------
    phi : ndarray, shape ``(n,)`` or ``(n, f)``
    max_components : int
    seed : int
        ``random_state`` of every fit.
    n_init : int
        k-means++ initialisations of the cold fit made at every ``k``.
    warm : dict, optional
        Fits by ``k`` (the measure passes the previous step's cold fits): each also initialises
        a warm fit with the same ``k`` (means, weights and covariances); the fit with the lower
        BIC is kept (ties: the warm one).

    Returns
    -------
    dict of int to MixtureFit
        Fits by ``k``; ``k`` larger than the number of distinct points are skipped. Cold fits'
        components are ordered by ``|mean|``, warm fits keep the previous fit's order.
    """
    x = np.asarray(phi, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    if x.ndim != 2 or x.shape[0] < 2:
        raise ConfigError(
            f"mixture: the order parameter must be (n,) or (n, f) with n >= 2 neurons, got "
            f"{np.shape(phi)}"
        )
    if not np.all(np.isfinite(x)):
        raise ConfigError("mixture: the order parameter has non-finite values (non-finite weights?)")
    if max_components < 1:
        raise ConfigError(f"mixture: max_components must be >= 1, got {max_components}")
    if n_init < 1:
        raise ConfigError(f"mixture: n_init must be >= 1, got {n_init}")
    n, f = x.shape
    scale = x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    z = x / scale
    n_distinct = len(np.unique(z, axis=0))
    log_jac = 2.0 * n * float(np.log(scale).sum())
    outer = np.outer(scale, scale)
    fits: dict[int, MixtureFit] = {}
    for k in range(1, max_components + 1):
        if k > n_distinct:
            break
        cold = _fit(_gm(k, seed, n_init=n_init), z)
        cold_bic = float(cold.bic(z))
        best, best_bic, from_warm = cold, cold_bic, False
        prev = (warm or {}).get(k)
        if prev is not None and prev.means.shape == (k, f):
            w0 = np.clip(prev.weights, 1e-6, None)
            init: dict[str, Any] = {"means_init": prev.means / scale, "weights_init": w0 / w0.sum()}
            if prev.covariances is not None and prev.covariances.shape == (k, f, f):
                cov = prev.covariances / outer + 1e-6 * np.eye(f)
                init["precisions_init"] = np.linalg.inv(cov)
            hot = _fit(_gm(k, seed, n_init=1, **init), z)
            hot_bic = float(hot.bic(z))
            if hot_bic <= cold_bic:
                best, best_bic, from_warm = hot, hot_bic, True
        fits[k] = _pack(best, best_bic + log_jac, cold_bic + log_jac, from_warm, scale)
        if from_warm:
            fits[k].cold_fit = _pack(cold, cold_bic + log_jac, cold_bic + log_jac, False, scale)
    return fits


def match_components(
    means: np.ndarray,
    slots: np.ndarray,
    active: np.ndarray,
    scale: np.ndarray,
    order_hint: np.ndarray,
) -> np.ndarray:
    """Slot of each current component: Hungarian assignment to the previous step's components.

    First to the slots active at the previous step; the components left over to slots used
    earlier (a component that vanished and returns keeps its slot); the rest to never-used slots.

    Parameters
    ----------
    means : ndarray, shape ``(k, f)``
        Current component means.
    slots : ndarray, shape ``(K, f)``
        Last known mean of each slot (NaN: never used).
    active : ndarray of bool, shape ``(K,)``
        Slots used at the previous step (the candidates for matching).
    scale : ndarray, shape ``(f,)``
        Distances are measured after dividing each feature by it.
    order_hint : ndarray, shape ``(k,)``
        Components left unmatched take never-used slots in this order (smallest first).

    Returns
    -------
    ndarray of int, shape ``(k,)``
    """
    k = means.shape[0]
    out = np.full(k, -1, dtype=np.int64)

    def assign(candidates: np.ndarray) -> None:
        todo = np.flatnonzero(out < 0)
        if candidates.size and todo.size:
            cost = np.linalg.norm(
                (means[todo][:, None, :] - slots[candidates][None, :, :]) / scale, axis=2
            )
            rows, cols = linear_sum_assignment(cost)
            out[todo[rows]] = candidates[cols]

    assign(np.flatnonzero(active))
    # a component that vanished and comes back takes its old slot (nearest last mean)
    seen = np.isfinite(slots).all(axis=1)
    assign(np.array([s for s in np.flatnonzero(seen & ~active) if s not in out], dtype=np.int64))
    free = [s for s in range(len(slots)) if s not in out]
    for c in sorted(np.flatnonzero(out < 0), key=lambda c: (order_hint[c], c)):
        out[c] = free.pop(0)
    return out


def histogram(values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts and edges over the full range of ``values`` (tail minorities always counted).

    A degenerate range (all values equal) is widened symmetrically.
    """
    if bins < 1:
        raise ConfigError(f"mixture: bins must be >= 1, got {bins}")
    lo, hi = float(values.min()), float(values.max())
    if hi - lo <= 1e-12 * max(abs(lo), abs(hi), 1.0):
        pad = max(abs(lo) * 1e-3, 1e-6)
        lo, hi = lo - pad, hi + pad
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    return counts.astype(np.int64), edges


def _applies(view: ModelView, _data: object) -> str | None:
    anat = view.anatomy
    if any(h.get("in") for h in anat.hidden) or anat.linear:
        return None
    return str(missing_role(
        "hidden", "mixture", "no hidden layer with an 'in' map (nor any linear map) to take "
        "neuron weights from"
    ))


_DESCRIPTIONS = {
    "teacher": "phi_i = <W1[i], w*> (teacher overlap)",
    "fourier": "log dominance ratio r_i = log((m-1) max_k P_ik / sum_{k != max} P_ik) of the "
    "per-frequency powers P_ik = |FFT(W1[i,:p])_k|^2 + |FFT(W1[i,p:])_k|^2, k = 1..m = (p-1)/2 "
    "(unbounded above: pure-frequency neurons do not pile up at a ceiling), through a Box-Cox "
    "transform with lambda >= 0 and standardised, both fitted on 20,000 random Gaussian rows "
    "(random init ~ N(0, 1)) [ours]",
    "pca": "projection of W1[i] on the top {n} right singular vectors of uncentred W1 [ours]",
}


@register("mixture", kind="step", applies=_applies, references=("first",), stateful=True)
def mixture(
    ckpt: Checkpoint,
    *,
    module: str | None = None,
    order_parameter: str = "auto",
    n_components: int = 2,
    max_components: int = 4,
    bins: int = 50,
    seed: int = 0,
    n_init: int = 3,
    warm_start: bool = True,
    null: str = "auto",
    null_sds: float = 3.0,
) -> xr.Dataset:
    """Gaussian mixture over a per-neuron order parameter of the first layer (Rubin et al. 2023).

    Parameters
    ----------
    ckpt : Checkpoint
    module : str, optional
        A linear map of the model's anatomy (name or weight key; weight read as
        ``(hidden, in)``); default the ``in`` map of the first hidden layer (``layers.0`` of an
        MLP, ``blocks.0.mlp.W_in`` of a transformer), else the first linear map.
    order_parameter : {"auto", "teacher", "fourier", "pca"}
        See the module docstring; ``"auto"`` takes teacher, then fourier, then pca.
    n_components : int
        Principal components kept by the ``"pca"`` order parameter [ours].
    max_components : int
        Largest number of mixture components tried (chosen by BIC).
    bins : int
        Histogram bins (over the full range of ``phi``; first coordinate for ``"pca"``).
    seed : int
        ``random_state`` of the fits.
    n_init : int
        k-means++ initialisations of the cold fit made at every ``k`` and every step.
    warm_start : bool
        Also fit every ``k`` from the previous step's fit (the lower BIC is kept) and match the
        chosen components to the previous step's by their means (component identity kept).
    null : {"auto", "first", "calibration"}
        Where the random-init distribution comes from: the first stored step
        (``ckpt.reference("first")``), a calibration on random layers, or ``"auto"``: the first
        step when the engine provides it, else the calibration.
    null_sds : float
        A component is null only if its mean is within this many null standard deviations of
        the null mean.

    Returns
    -------
    xr.Dataset
        Scalars ``k``, ``bic_gap`` (BIC(1) - BIC(k)), ``bic_margin`` (BIC of the runner-up k
        minus BIC(k); NaN with one candidate), ``droplet_fraction``, ``null_component`` (slot;
        -1 when no component is null), ``converged``, ``warm_started`` (a warm fit was tried),
        ``warm_fit_kept``, ``n_neurons``, ``neurons_outside_null`` (share of neurons whose own
        ``phi`` is more than ``null_sds`` null stds from the null mean: a model-free read); ``weights``, ``null_distance`` (``component``),
        ``means`` and ``variances`` (``component`` [, ``feature``]) by slot, NaN in unused slots;
        ``null_mean``, ``null_std`` (scalars, or per ``feature``); ``bic`` and ``cold_bic``
        (``candidate``: k = 1..max_components, NaN where skipped); ``hist_counts`` (``bin``) and
        ``hist_edges`` (``edge``).
    """
    if null not in _NULLS:
        raise ConfigError(f"mixture: null must be one of {_NULLS}, got {null!r}")
    if not null_sds > 0:
        raise ConfigError(f"mixture: null_sds must be > 0, got {null_sds}")
    name, W1 = first_layer(ckpt.view, module)
    data = ckpt.data
    kind, p = _kind(W1, data.task, data.extras, order_parameter)
    _, phi = compute_order_parameter(W1, data.task, data.extras, kind, n_components)
    W0 = None
    if null == "first" or (null == "auto" and "first" in ckpt.references):
        W0 = ckpt.reference_view("first").weight(name)
    null_mean, null_std = null_distribution(
        kind, W1, data.extras, W0=W0, p=p, n_components=n_components
    )
    null_source = (
        "the first stored step (ckpt.reference('first')) through the same map"
        if W0 is not None else {
            "fourier": "calibration: 20,000 random Gaussian rows (N(0, 1) by construction)",
            "teacher": "calibration: random directions, N(0, |w*|^2 s^2), s^2 = mean_i "
            "|P W1[i]|^2 / (in - 1), P the projection orthogonal to w* [ours]",
            "pca": "calibration: random directions, N(0, s^2) per feature, s^2 = mean_i "
            "|P W1[i]|^2 / (in - n_components), P orthogonal to the kept singular vectors "
            "[ours]",
        }[kind]
    )

    state = ckpt.state.get(_STATE_KEY) if warm_start else None
    if state is not None and (state.get("kind") != kind or state.get("K") != max_components):
        state = None
    fits = fit_mixtures(
        phi, max_components=max_components, seed=seed, n_init=n_init,
        warm=None if state is None else state["fits"],
    )
    best = min(fits.values(), key=lambda fit: fit.bic)
    K = max_components
    x = phi.reshape(len(phi), -1)
    f = x.shape[1]
    dist = null_distances(best.means, null_mean, null_std)
    if state is None:
        slot_of = np.argsort(np.argsort(dist, kind="stable"), kind="stable")
        slots = np.full((K, f), np.nan)
    else:
        scale = x.std(axis=0)
        slot_of = match_components(
            best.means, state["slots"], state["active"], np.where(scale > 0, scale, 1.0), dist
        )
        slots = state["slots"].copy()
    slots[slot_of] = best.means
    active = np.zeros(K, dtype=bool)
    active[slot_of] = True
    if warm_start:
        ckpt.state[_STATE_KEY] = {
            # the next warm fits start from this step's *cold* fits, which depend on this
            # step's weights only: an extended result (the engine replays one stored step)
            # then has the same fits as one computed in one pass
            "kind": kind, "K": K, "fits": {kk: fit.cold for kk, fit in fits.items()},
            "slots": slots, "active": active,
        }

    weights = np.full(K, np.nan)
    means = np.full((K, f), np.nan)
    variances = np.full((K, f), np.nan)
    distances = np.full(K, np.nan)
    weights[slot_of], means[slot_of], variances[slot_of] = best.weights, best.means, best.variances
    distances[slot_of] = dist
    frac, null_c = droplet_fraction(best.weights, dist, null_sds)
    null_slot = int(slot_of[null_c]) if null_c >= 0 else -1
    bic = np.array([fits[k].bic if k in fits else np.nan for k in range(1, K + 1)])
    cold_bic = np.array([fits[k].cold_bic if k in fits else np.nan for k in range(1, K + 1)])
    ranked = np.sort(bic[np.isfinite(bic)])
    margin = float(ranked[1] - ranked[0]) if ranked.size > 1 else float("nan")
    outside = float(np.mean(null_distances(x, null_mean, null_std) > null_sds))
    hist_values = x[:, 0]
    counts, edges = histogram(hist_values, bins)
    comp_dims: tuple[str, ...] = ("component",) if phi.ndim == 1 else ("component", "feature")
    null_dims: tuple[str, ...] = () if phi.ndim == 1 else ("feature",)
    if phi.ndim == 1:
        means, variances = means[:, 0], variances[:, 0]
        nm, ns = float(null_mean[0]), float(null_std[0])
    else:
        nm, ns = null_mean, null_std
    return xr.Dataset(
        {
            "k": ((), best.k),
            "weights": (("component",), weights),
            "means": (comp_dims, means),
            "variances": (comp_dims, variances),
            "null_distance": (("component",), distances),
            "bic": (("candidate",), bic),
            "cold_bic": (("candidate",), cold_bic),
            "bic_gap": ((), fits[1].bic - best.bic),
            "bic_margin": ((), margin),
            "droplet_fraction": ((), frac),
            "neurons_outside_null": ((), outside),
            "null_component": ((), null_slot),
            "null_mean": (null_dims, nm),
            "null_std": (null_dims, ns),
            "converged": ((), best.converged),
            "warm_started": ((), state is not None),
            "warm_fit_kept": ((), best.warm_started),
            "n_neurons": ((), int(phi.shape[0])),
            "hist_counts": (("bin",), counts),
            "hist_edges": (("edge",), edges),
        },
        coords={"candidate": np.arange(1, K + 1), "component": np.arange(K)},
        attrs={
            "module": name,
            "order_parameter_used": kind,
            "order_parameter_definition": _DESCRIPTIONS[kind].replace("{n}", str(n_components)),
            "selection": "k minimising BIC over k = 1..max_components; per k the lower BIC of "
            "a cold fit (n_init k-means++ initialisations) and a fit warm-started from the "
            "previous step's fit with the same k",
            "null_source": null_source,
            "null_definition": f"a component is null only if its mean is within {null_sds:g} "
            "null standard deviations of the null mean (Euclidean over features in null-std "
            "units); of several, the nearest",
            "droplet_fraction_definition": "1 - weight of the null component; 1 when no "
            "component is null",
            "neurons_outside_null_definition": f"share of neurons with phi more than "
            f"{null_sds:g} null standard deviations from the null mean (no mixture involved)",
            "component_identity": "slot = component index kept along the trajectory: the "
            "chosen components are matched to the previous step's by their means (Hungarian "
            "assignment, distances in units of the current feature std) [ours]",
            "fit_scaling": "each feature divided by its std before fitting, not centred [ours]",
            "histogram": "bins over the full range of phi (first feature for pca) [ours]",
        },
    )
