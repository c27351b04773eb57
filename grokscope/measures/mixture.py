"""Gaussian mixtures over a per-neuron order parameter (Rubin, Seroussi, Ringel 2023).

Before grokking the per-neuron order parameter ``phi_i`` of the first layer ``W1``
(``(hidden, in)``) is one Gaussian around 0; at grokking a finite fraction of neurons
("droplets") moves to non-zero modes. Per checkpoint we fit sklearn ``GaussianMixture`` with
``k = 1..max_components`` components, choose ``k`` by BIC, and store the fit and a histogram.

Order parameters (``order_parameter="auto"`` picks the first that applies):

``"teacher"``
    ``phi_i = <W1[i], w*>`` when the data carries ``extras["w_star"]`` of size ``in``.
``"fourier"`` [ours]
    Modular tasks with two-hot inputs (``in = 2p``): per neuron the power
    ``P_k = |FFT(W1[i,:p])_k|^2 + |FFT(W1[i,p:])_k|^2`` at ``k = 1..(p-1)/2`` and its
    dominant-frequency share relative to uniform, ``x_i = n_freq * max_k P_k / sum_k P_k``
    (1 for power spread evenly, ``n_freq`` for a single-frequency neuron). ``x`` of a random
    layer is a right-skewed maximum, and neither ``x`` nor ``log x`` is Gaussian enough: BIC
    then finds a spurious k = 2 at initialisation for many seeds. So ``phi_i`` is ``x_i``
    calibrated against its null distribution: a Box-Cox transform fitted to ``x`` of 20,000
    i.i.d. Gaussian rows (seeded; cached per p), standardised by the null's mean and std. At
    initialisation ``phi`` is then ~N(0, 1) (k = 1 for every seed, width and p tested);
    periodic neurons sit far in the upper tail (the transform is monotone).
``"pca"`` [ours]
    Otherwise: each neuron's weight vector projected on the top ``n_components`` right
    singular vectors of the *uncentred* ``W1`` (the origin is kept, so "near 0" still means
    small weights; each vector's sign is fixed so its largest projection is positive).

Fitting details [ours]: each feature is divided by its standard deviation before fitting
(not centred; reported means/variances/BIC are in the original units), so the fit does not
depend on the weight scale. Cold fits (first step) sort components by ``|mean|``; later steps
warm-start every ``k`` from the previous step's means and weights for that ``k``, so component
identity is stable along the trajectory. The zero component is the one whose mean is closest to
0 (Euclidean norm for vector ``phi``); ``droplet_fraction = 1 - its weight``.
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
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from ..anatomy import ModelView, missing_role
from ..errors import ConfigError
from .registry import Checkpoint, register

_ORDER_PARAMETERS = ("auto", "teacher", "fourier", "pca")
_STATE_KEY = "mixture_fits"


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
    """

    k: int
    weights: np.ndarray
    means: np.ndarray
    variances: np.ndarray
    bic: float
    converged: bool
    warm_started: bool


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
    return int(p) if p is not None and 2 * int(p) == n_in and int(p) >= 3 else None


def _dominant_share(W: torch.Tensor, p: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_freq * max_k P_k / sum_k P_k`` per row of ``W`` ``(n, 2p)``, and ``sum_k P_k``."""
    n_freq = (p - 1) // 2
    power = (
        torch.fft.rfft(W[:, :p], dim=1)[:, 1 : n_freq + 1].abs() ** 2
        + torch.fft.rfft(W[:, p:], dim=1)[:, 1 : n_freq + 1].abs() ** 2
    )
    total = power.sum(dim=1)
    share = n_freq * power.max(dim=1).values / total.clamp_min(torch.finfo(torch.float64).tiny)
    return share.numpy(), total.numpy()


@functools.lru_cache(maxsize=64)
def _null_calibration(p: int, n_null: int = 20_000) -> tuple[float, float, float]:
    """Box-Cox ``lambda`` and the null's mean and std of the transformed dominant share."""
    gen = torch.Generator().manual_seed(0)
    null, _ = _dominant_share(torch.randn(n_null, 2 * p, dtype=torch.float64, generator=gen), p)
    transformed, lam = scipy.stats.boxcox(np.maximum(null, 1.0))
    return float(lam), float(transformed.mean()), float(transformed.std())


def fourier_order_parameter(W1: torch.Tensor, p: int) -> np.ndarray:
    """Dominant-frequency share of each neuron's Fourier power, calibrated to N(0, 1) at init [ours].

    Parameters
    ----------
    W1 : tensor, shape ``(hidden, 2p)``
    p : int

    Returns
    -------
    ndarray, shape ``(hidden,)``
        0 for dead rows (no power).
    """
    share, total = _dominant_share(W1.detach().to("cpu", torch.float64), p)
    lam, mean, std = _null_calibration(p)
    phi = (scipy.special.boxcox(np.maximum(share, 1.0), lam) - mean) / std
    return np.where(total > 0, phi, 0.0)


def pca_order_parameter(W1: torch.Tensor, n_components: int) -> np.ndarray:
    """Projections of the neurons on the top right singular vectors of uncentred ``W1`` [ours].

    Returns
    -------
    ndarray, shape ``(hidden, n_components)``
    """
    W = W1.detach().to("cpu", torch.float64).numpy()
    if not 1 <= n_components <= min(W.shape):
        raise ConfigError(
            f"mixture: n_components must be in 1..{min(W.shape)} for W1 of shape {W.shape}"
        )
    _u, _s, vt = np.linalg.svd(W, full_matrices=False)
    proj = W @ vt[:n_components].T
    signs = np.sign(proj[np.abs(proj).argmax(axis=0), np.arange(n_components)])
    return proj * np.where(signs == 0, 1.0, signs)


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
        ws = w_star.detach().to("cpu", torch.float64).reshape(-1)
        return "teacher", (W1.detach().to("cpu", torch.float64) @ ws).numpy()
    if how == "fourier" or (how == "auto" and p is not None):
        if p is None:
            raise ConfigError(
                "mixture: order_parameter='fourier' needs a modular task with onehot encoding "
                f"and a first layer with 2p inputs (got {n_in} inputs, task {task})"
            )
        return "fourier", fourier_order_parameter(W1, p)
    return "pca", pca_order_parameter(W1, n_components)


# --------------------------------------------------------------------------- fitting
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
        Initialisations of a cold fit (k-means++ seeding); warm fits use one.
    warm : dict, optional
        Previous fits by ``k``; their means and weights initialise the fit with the same ``k``
        (component order is then kept).

    Returns
    -------
    dict of int to MixtureFit
        Fits by ``k``; ``k`` larger than the number of distinct points are skipped.
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
    n, f = x.shape
    scale = x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    z = x / scale
    n_distinct = len(np.unique(z, axis=0))
    log_jac = 2.0 * n * float(np.log(scale).sum())
    fits: dict[int, MixtureFit] = {}
    for k in range(1, max_components + 1):
        if k > n_distinct:
            break
        prev = (warm or {}).get(k)
        use_warm = prev is not None and prev.means.shape == (k, f)
        kwargs: dict[str, Any] = {"n_init": n_init}
        if use_warm:
            w0 = np.clip(prev.weights, 1e-6, None)
            kwargs = {"n_init": 1, "means_init": prev.means / scale, "weights_init": w0 / w0.sum()}
        gm = GaussianMixture(
            n_components=k, covariance_type="full", random_state=seed, max_iter=500,
            init_params="k-means++", **kwargs,
        )
        # One thread: these fits are tiny, and oversubscribed BLAS/OpenMP pools slow them ~10x.
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore", ConvergenceWarning)
            gm.fit(z)
        means = gm.means_ * scale
        variances = np.einsum("kii->ki", gm.covariances_) * scale**2
        weights = gm.weights_.copy()
        if not use_warm:
            order = np.argsort(np.linalg.norm(means, axis=1), kind="stable")
            means, variances, weights = means[order], variances[order], weights[order]
        fits[k] = MixtureFit(
            k=k, weights=weights, means=means, variances=variances,
            bic=float(gm.bic(z)) + log_jac, converged=bool(gm.converged_), warm_started=use_warm,
        )
    return fits


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


@register("mixture", kind="step", applies=_applies, stateful=True)
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
        k-means++ initialisations of cold fits (the best likelihood is kept).
    warm_start : bool
        Initialise each ``k`` from the previous step's fit (component identity kept).

    Returns
    -------
    xr.Dataset
        Scalars ``k``, ``bic_gap`` (BIC(1) - BIC(k)), ``droplet_fraction``, ``zero_component``,
        ``converged``, ``warm_started``, ``n_neurons``; ``weights`` (``component``), ``means``
        and ``variances`` (``component`` [, ``feature``]) padded with NaN to ``max_components``;
        ``bic`` (``candidate``: k = 1..max_components, NaN where skipped); ``hist_counts``
        (``bin``) and ``hist_edges`` (``edge``).
    """
    name, W1 = first_layer(ckpt.view, module)
    kind, phi = compute_order_parameter(
        W1, ckpt.data.task, ckpt.data.extras, order_parameter, n_components
    )
    warm = ckpt.state.get(_STATE_KEY) if warm_start else None
    if warm is not None and warm.get("kind") != kind:
        warm = None
    fits = fit_mixtures(
        phi, max_components=max_components, seed=seed, n_init=n_init,
        warm=None if warm is None else warm["fits"],
    )
    if warm_start:
        ckpt.state[_STATE_KEY] = {"kind": kind, "fits": fits}
    best = min(fits.values(), key=lambda fit: fit.bic)
    zero = int(np.argmin(np.linalg.norm(best.means, axis=1)))
    K = max_components
    f = best.means.shape[1]
    weights = np.full(K, np.nan)
    means = np.full((K, f), np.nan)
    variances = np.full((K, f), np.nan)
    weights[: best.k], means[: best.k], variances[: best.k] = best.weights, best.means, best.variances
    bic = np.array([fits[k].bic if k in fits else np.nan for k in range(1, K + 1)])
    hist_values = phi if phi.ndim == 1 else phi[:, 0]
    counts, edges = histogram(hist_values, bins)
    comp_dims: tuple[str, ...] = ("component",) if phi.ndim == 1 else ("component", "feature")
    if phi.ndim == 1:
        means, variances = means[:, 0], variances[:, 0]
    descriptions = {
        "teacher": "phi_i = <W1[i], w*> (teacher overlap)",
        "fourier": "n_freq * dominant-frequency share of |FFT(W1[i,:p])_k|^2 + "
        "|FFT(W1[i,p:])_k|^2 over k=1..(p-1)/2, Box-Cox calibrated to N(0,1) on 20,000 random "
        "Gaussian rows (init ~ one standard Gaussian; periodic neurons in the upper tail) [ours]",
        "pca": f"projection of W1[i] on the top {n_components} right singular vectors of "
        "uncentred W1 [ours]",
    }
    return xr.Dataset(
        {
            "k": ((), best.k),
            "weights": (("component",), weights),
            "means": (comp_dims, means),
            "variances": (comp_dims, variances),
            "bic": (("candidate",), bic),
            "bic_gap": ((), fits[1].bic - best.bic),
            "droplet_fraction": ((), 1.0 - float(best.weights[zero])),
            "zero_component": ((), zero),
            "converged": ((), best.converged),
            "warm_started": ((), best.warm_started),
            "n_neurons": ((), int(phi.shape[0])),
            "hist_counts": (("bin",), counts),
            "hist_edges": (("edge",), edges),
        },
        coords={"candidate": np.arange(1, K + 1)},
        attrs={
            "module": name,
            "order_parameter_used": kind,
            "order_parameter_definition": descriptions[kind],
            "selection": "k minimising BIC over k = 1..max_components",
            "droplet_fraction_definition": "1 - weight of the component whose mean is closest "
            "to 0 (Euclidean norm for vector phi)",
            "fit_scaling": "each feature divided by its std before fitting, not centred [ours]",
            "histogram": "bins over the full range of phi (first feature for pca) [ours]",
        },
    )

