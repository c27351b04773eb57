"""Linear mapping number (Liu, Zhong, Tegmark 2023; METHODS.md section 4).

For a sub-network ``g`` and ``N`` fixed samples ``h_1..h_N`` at its input, the linearity
matrix ``L`` holds, for every pair ``i < j``, the mean over outputs ``k`` of the squared
Pearson correlation between ``t`` and ``g_k(h_i + t (h_j - h_i))`` over ``n_points`` values
of ``t`` in ``[0, 1]``; ``L_ii = 1``. With ``p_i = |lambda_i| / sum |lambda|`` over the
eigenvalues of ``L``, ``S = -sum p_i log2 p_i`` and ``LMN = 2^S``: 1 for an affine ``g``,
``c`` when the samples fall into ``c`` mutually non-linear groups.

All pairs are evaluated in batches (``chunk`` pairs, i.e. ``chunk * n_points`` rows per call
of ``g``); the correlations are accumulated in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..errors import ConfigError, MeasureNotApplicable
from .registry import Checkpoint, register

#: An output is "constant along the segment" when its spread is below this many machine
#: epsilons (of the dtype ``g`` computed in) times its RMS along the segment [ours].
_CONST_EPS = 64.0

PairFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def lmn_from_matrix(L: np.ndarray | torch.Tensor) -> float:
    """The linear mapping number ``2^S`` of a linearity matrix.

    Parameters
    ----------
    L : array, shape ``(N, N)``
        Symmetric linearity matrix (``L_ii = 1``).

    Returns
    -------
    float
        ``2^S`` with ``S = -sum_i p_i log2 p_i``, ``p_i = |lambda_i| / sum_j |lambda_j|``
        over the eigenvalues of ``L`` (computed in float64).
    """
    return float(2.0 ** _entropy_bits(L))


def _entropy_bits(L: np.ndarray | torch.Tensor) -> float:
    if isinstance(L, torch.Tensor):
        L = L.detach().cpu().numpy()
    L = np.asarray(L, dtype=np.float64)
    if L.ndim != 2 or L.shape[0] != L.shape[1] or L.shape[0] == 0:
        raise ConfigError(f"the linearity matrix must be square and non-empty, got shape {L.shape}")
    if not np.all(np.isfinite(L)):
        raise ConfigError("the linearity matrix has non-finite entries (non-finite outputs of g?)")
    lam = np.abs(np.linalg.eigvalsh(0.5 * (L + L.T)))
    total = lam.sum()
    if total <= 0:
        raise ConfigError("the linearity matrix has only zero eigenvalues; its entropy is undefined")
    p = lam / total
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def _pair_r2(y: torch.Tensor, t: torch.Tensor, eval_dtype: torch.dtype) -> torch.Tensor:
    """Mean over outputs of r^2(t, y_k) per pair: ``y (P, T, K)`` -> ``(P,)`` float64.

    In float64 with ``y`` centred per output before its moments are taken (a one-pass
    ``sum y^2 - (sum y)^2 / T`` loses every digit when an output's mean dwarfs its change).
    An output whose spread is below ``_CONST_EPS`` machine epsilons (of ``eval_dtype``) of its
    RMS is constant: ``r^2 = 1``.
    """
    y = y.to(torch.float64)
    t64 = t.to(torch.float64)
    tc = t64 - t64.mean()
    s2 = (y * y).sum(dim=1)
    yc = y - y.mean(dim=1, keepdim=True)
    cov = torch.einsum("ptk,t->pk", yc, tc)
    ss_y = (yc * yc).sum(dim=1)
    r2 = cov * cov / (ss_y * (tc * tc).sum()).clamp_min(torch.finfo(torch.float64).tiny)
    eps = torch.finfo(eval_dtype).eps if eval_dtype.is_floating_point else 0.0
    constant = ss_y <= (_CONST_EPS * eps) ** 2 * s2
    r2 = torch.where(constant, torch.ones_like(r2), r2.clamp(0.0, 1.0))
    return r2.mean(dim=-1)


def _linearity(
    fn: PairFn, h: torch.Tensor, n_points: int, chunk: int
) -> np.ndarray:
    """Linearity matrix where ``fn(points (m, d), anchor (m,)) -> (m, K)``."""
    if h.ndim != 2:
        raise ConfigError(f"samples h must have shape (N, d), got {tuple(h.shape)}")
    if n_points < 3:
        raise ConfigError(f"n_points must be >= 3 to correlate along a segment, got {n_points}")
    if chunk < 1:
        raise ConfigError(f"chunk (pairs per batch) must be >= 1, got {chunk}")
    n = h.shape[0]
    L = np.eye(n, dtype=np.float64)
    if n < 2:
        return L
    t = torch.linspace(0.0, 1.0, n_points, device=h.device, dtype=h.dtype)
    iu, ju = torch.triu_indices(n, n, offset=1, device=h.device)
    vals = torch.empty(iu.numel(), dtype=torch.float64, device=h.device)
    with torch.no_grad():
        for s in range(0, iu.numel(), chunk):
            i, j = iu[s : s + chunk], ju[s : s + chunk]
            hi = h[i]
            pts = torch.addcmul(hi[:, None, :], t[None, :, None], (h[j] - hi)[:, None, :])
            out = fn(pts.reshape(-1, h.shape[1]), i.repeat_interleave(n_points))
            y = out.reshape(i.numel(), n_points, -1)
            vals[s : s + chunk] = _pair_r2(y, t, out.dtype)
    vals_np = vals.cpu().numpy()
    iu_np, ju_np = iu.cpu().numpy(), ju.cpu().numpy()
    L[iu_np, ju_np] = vals_np
    L[ju_np, iu_np] = vals_np
    return L


def linearity_matrix(
    g: Callable[[torch.Tensor], torch.Tensor],
    h: torch.Tensor,
    n_points: int = 21,
    *,
    chunk: int = 1024,
) -> np.ndarray:
    """The linearity matrix ``L`` of ``g`` over the samples ``h``.

    Parameters
    ----------
    g : callable
        ``g(points) -> outputs``, shapes ``(m, d) -> (m, K)`` (or ``(m,)`` for one output).
    h : tensor, shape ``(N, d)``
        The samples at the input of ``g``.
    n_points : int
        Points per segment, ``t = linspace(0, 1, n_points)``.
    chunk : int
        Pairs evaluated per call of ``g`` (memory ``~ chunk * n_points * d``).

    Returns
    -------
    ndarray, shape ``(N, N)``, float64
        ``L_ij = mean_k r_k^2`` for ``i != j``, ``L_ii = 1``; a constant output counts as
        ``r^2 = 1``.
    """

    def fn(pts: torch.Tensor, _anchor: torch.Tensor) -> torch.Tensor:
        out = g(pts)
        return out.reshape(pts.shape[0], -1)

    return _linearity(fn, h, n_points, chunk)


# --------------------------------------------------------------------------- sub-networks
def _has_hidden(model: nn.Module) -> bool:
    return callable(getattr(model, "hidden", None)) and callable(getattr(model, "from_hidden", None))


def _has_input_split(model: nn.Module) -> bool:
    return callable(getattr(model, "embed_inputs", None)) and callable(
        getattr(model, "forward_from_input", None)
    )


def _default_module(model: nn.Module, layer: int = 0) -> str | None:
    """Where to cut a model without ``hidden()``: block ``layer``'s ``mlp.W_in`` (the MLP
    neurons' pre-activation: after their activation a one-block transformer is affine), else
    (layer 0) the first nn.Linear."""
    names = dict(model.named_modules())
    if f"blocks.{layer}.mlp.W_in" in names:
        return f"blocks.{layer}.mlp.W_in"
    if layer == 0:
        for name, mod in names.items():
            if isinstance(mod, nn.Linear):
                return name
    return None


def _applies(model: nn.Module, _data: object) -> str | None:
    if _has_hidden(model) or _default_module(model) is not None:
        return None
    return "the model has no hidden()/from_hidden() methods and no nn.Linear to cut at"


def _hook_subnetwork(
    model: nn.Module, module: str, x: torch.Tensor
) -> tuple[torch.Tensor, PairFn]:
    """Samples at ``module``'s output and ``fn(points, anchor)`` running the rest of the model.

    The rest of the model sees the other inputs (e.g. residual streams) of sample ``anchor``
    while ``module``'s output is replaced by ``points`` [ours].
    """
    try:
        target = model.get_submodule(module)
    except AttributeError as exc:
        names = [n for n, _ in model.named_modules() if n]
        raise ConfigError(f"lmn: model has no module {module!r}; modules: {names[:40]}") from exc
    captured: dict[str, torch.Tensor] = {}

    def capture(_m: nn.Module, _inp: object, out: object) -> None:
        if not isinstance(out, torch.Tensor):
            raise ConfigError(
                f"lmn: module {module!r} returns {type(out).__name__}, not a tensor; "
                "cut the network at a module with a tensor output"
            )
        captured["h"] = out.detach()

    handle = target.register_forward_hook(capture)
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    h_full = captured["h"]
    shape = h_full.shape[1:]
    h = h_full.reshape(h_full.shape[0], -1)

    def fn(pts: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        def replace(_m: nn.Module, _inp: object, out: torch.Tensor) -> torch.Tensor:
            return pts.reshape(pts.shape[0], *shape).to(out.dtype)

        hd = target.register_forward_hook(replace)
        try:
            out = model(x[anchor])
        finally:
            hd.remove()
        return out.reshape(pts.shape[0], -1)

    return h, fn


@dataclass
class SubNetwork:
    """A cut of a model for LMN.

    Attributes
    ----------
    h : tensor, shape ``(N, d)``
        The samples at the cut (what gets interpolated).
    fn : callable
        ``fn(points (m, d), anchor (m,)) -> (m, K)``: the rest of the network; ``anchor`` is
        the index (into the samples) of each segment's first sample.
    description : str
    affine : bool
        True when ``g`` is affine by construction (LMN = 1).
    """

    h: torch.Tensor
    fn: PairFn
    description: str
    affine: bool = False

    def linearity(self, n_points: int = 21, chunk: int = 1024) -> np.ndarray:
        """The linearity matrix ``(N, N)`` of this cut (all pairs batched, ``chunk`` at a time)."""
        return _linearity(self.fn, self.h, n_points, chunk)


def _push_through_linear(model: nn.Module, layer: int, h: torch.Tensor) -> SubNetwork | None:
    """Move the cut past the first Linear of ``from_hidden`` when that is exact [ours].

    Interpolation commutes with an affine map, so segments between ``h_i, h_j`` map to
    segments between ``W h_i + b, W h_j + b``: ``g`` then starts at the pre-activation of
    layer ``layer + 1``, saving its matmul for every interpolated point. Used only for models
    with ``layers`` (nn.Linear list) and ``act`` whose ``from_hidden`` is checked to agree.
    """
    layers, act = getattr(model, "layers", None), getattr(model, "act", None)
    if not isinstance(layers, nn.ModuleList) or not isinstance(act, nn.Module):
        return None
    if not 0 <= layer < len(layers) - 1 or not isinstance(layers[layer + 1], nn.Linear):
        return None
    nxt = layer + 1
    readout = nxt == len(layers) - 1

    def fn(z: torch.Tensor, _anchor: torch.Tensor) -> torch.Tensor:
        if readout:
            return z
        return model.from_hidden(act(z), nxt).reshape(z.shape[0], -1)

    with torch.no_grad():
        z = layers[nxt](h)
        probe = h[: min(4, h.shape[0])]
        want = model.from_hidden(probe, layer).reshape(probe.shape[0], -1)
        got = fn(layers[nxt](probe), torch.zeros(probe.shape[0], dtype=torch.long, device=h.device))
    tol = 1e-9 if h.dtype == torch.float64 else 1e-3
    atol = tol * float(want.abs().max().clamp_min(1.0)) if want.numel() else tol
    if got.shape != want.shape or not torch.allclose(got, want, rtol=tol, atol=atol):
        return None
    return SubNetwork(
        z.reshape(z.shape[0], -1),
        fn,
        f"hidden layer {layer} post-activation -> logits (model.hidden/from_hidden; segments "
        f"mapped through layers.{nxt} first, exact for an affine map)",
        affine=readout,
    )


def subnetwork(
    model: nn.Module, xs: torch.Tensor, *, layer: int = 0, module: str | None = None
) -> SubNetwork:
    """The samples at the cut and the rest of the network (see :func:`lmn` for the rules).

    Parameters
    ----------
    model : nn.Module
    xs : tensor, shape ``(N, *input_shape)``
        The chosen samples' inputs.
    layer, module
        As in :func:`lmn`.
    """
    affine = False
    if module is None and layer == -1:
        if _has_input_split(model):
            with torch.no_grad():
                h = model.embed_inputs(xs)

            def fn(pts: torch.Tensor, _anchor: torch.Tensor) -> torch.Tensor:
                return model.forward_from_input(pts).reshape(pts.shape[0], -1)

            subnet = "network input (model.embed_inputs) -> logits (model.forward_from_input)"
        else:
            if not torch.is_floating_point(xs):
                raise ConfigError(
                    "lmn: layer=-1 needs float inputs or a model with embed_inputs()/"
                    "forward_from_input(); pass layer>=0 or module='...'"
                )
            h = xs.flatten(1)

            def fn(pts: torch.Tensor, _anchor: torch.Tensor) -> torch.Tensor:
                return model(pts.view(pts.shape[0], *xs.shape[1:])).reshape(pts.shape[0], -1)

            subnet = "network input (flattened) -> model output"
    elif module is None and layer < 0:
        raise ConfigError(f"lmn: layer must be -1 (the input) or a hidden layer >= 0, got {layer}")
    elif module is None and _has_hidden(model):
        with torch.no_grad():
            h = model.hidden(xs, layer)
        h = h.reshape(h.shape[0], -1)
        pushed = _push_through_linear(model, layer, h)
        if pushed is not None:
            return pushed

        def fn(pts: torch.Tensor, _anchor: torch.Tensor) -> torch.Tensor:
            return model.from_hidden(pts, layer).reshape(pts.shape[0], -1)

        subnet = f"hidden layer {layer} post-activation -> logits (model.hidden/from_hidden)"
    else:
        name = module if module is not None else _default_module(model, layer)
        if name is None:
            raise MeasureNotApplicable(
                f"lmn: the model has no hidden()/from_hidden() and no default cut for layer "
                f"{layer}; pass module='...' or layer=-1"
            )
        h, fn = _hook_subnetwork(model, name, xs)
        subnet = f"output of module {name!r} -> model output (forward hook) [ours]"
    return SubNetwork(h, fn, subnet, affine)


@register("lmn", kind="step", applies=_applies)
def lmn(
    ckpt: Checkpoint,
    *,
    n_samples: int = 100,
    layer: int = 0,
    module: str | None = None,
    split: str = "train",
    seed: int = 0,
    n_points: int = 21,
    chunk: int = 1024,
) -> xr.Dataset:
    """Linear mapping number of the sub-network after a hidden layer (Liu et al. 2023).

    Parameters
    ----------
    ckpt : Checkpoint
    n_samples : int
        ``N``, samples drawn (seeded, without replacement) from ``split``. LMN is comparable
        only at equal ``N``; the number actually used (fewer when the split is smaller) is
        stored as ``n_samples``.
    layer : int
        ``>= 0``: for models with ``hidden(x, layer)``/``from_hidden(h, layer)`` (the MLP),
        ``g`` maps the post-activation of hidden layer ``layer`` to the logits [ours]; for the
        last hidden layer that ``g`` is the affine read-out, so LMN = 1 by construction (a
        depth-1 MLP: use ``layer=-1``). For models without ``hidden`` (the transformer) the cut
        is at the output of ``blocks.{layer}.mlp.W_in`` (the MLP neurons' pre-activation: the
        rest of a one-block transformer after the activation is affine) [ours], else
        (layer 0) the first nn.Linear.
        ``-1``: ``g`` is the whole network from its input after embedding
        (``embed_inputs``/``forward_from_input``; the flattened float input otherwise).
    module : str, optional
        Cut the network at this module instead (a forward hook replaces its output; ``layer``
        is then ignored); the rest of the model sees the other inputs (e.g. the residual
        stream) of the segment's first sample [ours].
    split : {"train", "test"}
    seed : int
        Seed of the sample choice (deterministic).
    n_points : int
        Points per segment (21: ``t = 0, 0.05, ..., 1``).
    chunk : int
        Pairs per batched evaluation (bounds memory at ``chunk * n_points`` rows).

    Returns
    -------
    xr.Dataset
        ``lmn`` and ``lmn_entropy`` (bits) scalars, ``n_samples`` scalar, ``sample_index``
        (dim ``sample``) the row indices of ``split`` used.
    """
    if n_samples < 2:
        raise ConfigError(f"lmn: n_samples must be >= 2, got {n_samples}")
    x, _y = ckpt.data.split(split)
    n_avail = x.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(n_avail, generator=gen)[: min(n_samples, n_avail)].sort().values
    if idx.numel() < 2:
        raise MeasureNotApplicable(f"lmn needs at least 2 samples; split {split!r} has {n_avail}")
    xs = x[idx.to(x.device)]
    sub = subnetwork(ckpt.model, xs, layer=layer, module=module)
    L = sub.linearity(n_points, chunk)
    s_bits = _entropy_bits(L)
    return xr.Dataset(
        {
            "lmn": ((), 2.0**s_bits),
            "lmn_entropy": ((), s_bits),
            "n_samples": ((), int(idx.numel())),
            "sample_index": (("sample",), idx.cpu().numpy().astype(np.int64)),
        },
        attrs={
            "subnetwork": sub.description,
            "method": "batched pairs; r^2 per output in float64; LMN = 2^S over |eigvals| of L",
            "constant_output": "an output constant along a segment counts as linear (r^2 = 1) [ours]",
            "lmn_entropy_units": "bits",
            "note": "g is the affine read-out of the last hidden layer, so LMN = 1 by "
            "construction; use layer=-1 (the input) or an earlier layer"
            if sub.affine
            else "",
        },
    )
