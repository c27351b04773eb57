"""Linear mapping number (Liu, Zhong, Tegmark 2023; docs/methods.md section 4).

For a sub-network ``g`` and ``N`` fixed samples ``h_1..h_N`` at its input, the linearity
matrix ``L`` holds, for every pair ``i < j``, the mean over outputs ``k`` of the squared
Pearson correlation between ``t`` and ``g_k(h_i + t (h_j - h_i))`` over ``n_points`` values
of ``t`` in ``[0, 1]``; ``L_ii = 1``. With ``p_i = |lambda_i| / sum |lambda|`` over the
eigenvalues of ``L``, ``S = -sum p_i log2 p_i`` and ``LMN = 2^S``: 1 for an affine ``g``,
``c`` when the samples fall into ``c`` mutually non-linear groups.

The cut comes from the model's anatomy (:mod:`grokscope.anatomy`): by default (``cut="auto"``,
docs/methods.md) the post-activation of the first hidden layer, or the input role where the rest of
the network after it is affine by construction (a one-hidden-layer MLP, a one-block
transformer), so no default is constant; ``cut="pre"`` takes the pre-activation, interpolated at
the input of that layer's linear map (exact, since interpolation commutes with an affine map;
see :func:`lmn`), ``cut="post"`` the post-activation, ``layer=-1`` the input role,
``module=`` any module's output.

All pairs are evaluated in batches (``chunk`` pairs, i.e. ``chunk * n_points`` rows per call
of ``g``); the correlations are accumulated in float64. ``weighting="variance"`` [ours,
docs/methods.md's option] weights each output's ``r^2`` by its variance along the segment.

The paper's claim (LMN falls during the generalising phase and is roughly linear in the test
loss there) is tested by :func:`lmn_test_loss_fit` over :func:`generalising_window`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr
from torch import nn
from torch.nn import functional as F

from ..anatomy import ModelView, activation_fn, detect, missing_role
from ..errors import ConfigError, MeasureNotApplicable
from .registry import Checkpoint, register

#: An output is "constant along the segment" when its spread is below this many machine
#: epsilons (of the dtype ``g`` computed in) times its RMS along the segment [ours].
_CONST_EPS = 64.0

#: every ``L_ij`` at least ``1 - _AFFINE_TOL``: the result notes that ``g`` is affine there
_AFFINE_TOL = 1e-5

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


#: how the per-output ``r_k^2`` of a segment are combined into ``L_ij``
WEIGHTINGS = ("uniform", "variance")


def _pair_r2(
    y: torch.Tensor, t: torch.Tensor, eval_dtype: torch.dtype, weighting: str = "uniform"
) -> torch.Tensor:
    """``L_ij`` per pair from ``r^2(t, y_k)``: ``y (P, T, K)`` -> ``(P,)`` float64.

    ``weighting="uniform"``: the mean over outputs (docs/methods.md section 4). ``"variance"``
    [ours]: each output weighted by its variance along the segment,
    ``sum_k var_k r_k^2 / sum_k var_k`` (the share of the segment's total output variance a
    straight line in ``t`` explains), so a negligible output does not count as much as a
    dominant one; a segment along which every output is constant gives 1.

    In float64 with ``y`` centred per output before its moments are taken (a one-pass
    ``sum y^2 - (sum y)^2 / T`` loses every digit when an output's mean dwarfs its change).
    An output whose spread is below ``_CONST_EPS`` machine epsilons (of ``eval_dtype``) of its
    RMS is constant: ``r^2 = 1`` (uniform) or weight 0 (variance).
    """
    f64 = torch.float64
    y = y.to(f64, copy=True)  # centred in place below
    tc = t.to(f64) - t.to(f64).mean()
    mean = y.mean(dim=1, keepdim=True)
    yc = y.sub_(mean)
    cov = yc.transpose(1, 2) @ tc  # (P, K); matmul, not einsum (several times slower here)
    ss_y = (yc * yc).sum(dim=1)
    s2 = ss_y + y.shape[1] * mean.squeeze(1) ** 2  # sum_t y^2 without a second pass over y
    r2 = cov * cov / (ss_y * (tc * tc).sum()).clamp_min(torch.finfo(f64).tiny)
    eps = torch.finfo(eval_dtype).eps if eval_dtype.is_floating_point else 0.0
    constant = ss_y <= (_CONST_EPS * eps) ** 2 * s2
    r2 = torch.where(constant, torch.ones_like(r2), r2.clamp(0.0, 1.0))
    if weighting == "uniform":
        return r2.mean(dim=-1)
    w = torch.where(constant, torch.zeros_like(ss_y), ss_y)
    total = w.sum(dim=-1)
    weighted = (w * r2).sum(dim=-1) / total.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(total > 0, weighted, torch.ones_like(weighted))


def _linearity(
    fn: PairFn, h: torch.Tensor, n_points: int, chunk: int, weighting: str = "uniform"
) -> np.ndarray:
    """Linearity matrix where ``fn(points (m, d), anchor (m,)) -> (m, K)``."""
    if weighting not in WEIGHTINGS:
        raise ConfigError(f"lmn: weighting must be one of {list(WEIGHTINGS)}, got {weighting!r}")
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
            vals[s : s + chunk] = _pair_r2(y, t, out.dtype, weighting)
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
    chunk: int = 256,
    weighting: str = "uniform",
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
    weighting : {"uniform", "variance"}
        ``L_ij = mean_k r_k^2`` (uniform, the paper's), or weighted by each output's variance
        along the segment [ours] (see :func:`lmn`).

    Returns
    -------
    ndarray, shape ``(N, N)``, float64
        ``L_ij`` for ``i != j``, ``L_ii = 1``; a constant output counts as ``r^2 = 1``
        (uniform) or not at all (variance).
    """

    def fn(pts: torch.Tensor, _anchor: torch.Tensor) -> torch.Tensor:
        out = g(pts)
        return out.reshape(pts.shape[0], -1)

    return _linearity(fn, h, n_points, chunk, weighting)


# --------------------------------------------------------------------------- sub-networks
CUTS = ("auto", "pre", "post")


def _applies(view: ModelView, _data: object) -> str | None:
    if view.anatomy.hidden:
        return None
    return str(missing_role(
        "hidden", "lmn", "its default cut is a hidden layer's pre-activation; with no hidden "
        "layer, pass layer=-1 (the input) or module='...'"
    ))


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

    def linearity(
        self, n_points: int = 21, chunk: int = 256, weighting: str = "uniform"
    ) -> np.ndarray:
        """The linearity matrix ``(N, N)`` of this cut (all pairs batched, ``chunk`` at a time)."""
        return _linearity(self.fn, self.h, n_points, chunk, weighting)


def _hook_route(view: ModelView, xs: torch.Tensor, path: str, at: str, what: str) -> SubNetwork:
    """Samples at ``path``'s input or output and ``fn`` replacing them for the rest of the model.

    The rest of the model sees the other inputs (e.g. the residual stream) of sample
    ``anchor`` while the tensor at the cut is replaced by ``points`` [ours].
    """
    mod = view.module(path)  # ConfigError naming the modules when there is no such module
    kinds: list[type] = []

    def check(_m: nn.Module, _args: object, out: object) -> None:
        if not kinds:
            kinds.append(type(out))

    handle = mod.register_forward_hook(check) if at == "output" else None
    try:
        with torch.no_grad():
            (full,) = view.capture(xs, [(path, at)])
    finally:
        if handle is not None:
            handle.remove()
    if kinds and not issubclass(kinds[0], torch.Tensor):
        raise ConfigError(
            f"lmn: module {path!r} returns {kinds[0].__name__}, not a tensor; cut the network "
            "at a module with a tensor output"
        )
    if not torch.is_floating_point(full):
        raise ConfigError(f"lmn: the {at} of module {path!r} is {full.dtype}, not floats")
    h = full.detach().reshape(full.shape[0], -1)

    def fn(pts: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        return view.replace(xs[anchor], path, at, pts)

    return SubNetwork(h, fn, f"{what} -> logits ({at} of module {path!r} replaced by a forward "
                             f"hook; the rest of the model sees the segment's first sample) [ours]")


def _map_fn(view: ModelView, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``h -> W h + b`` of linear map ``name`` (``F.linear``: what ``nn.Linear`` computes)."""
    w = view.weight(name).contiguous()
    b = view.bias(name)
    return lambda h: F.linear(h, w, b)


def _chain_from_pre(view: ModelView, k: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The network from hidden layer ``k``'s pre-activation to the logits as the anatomy's
    maps alone: ``z -> act -> out map -> act -> ... -> readout``, or None when the anatomy does
    not say the layers form such a chain (each out map the next layer's in map, the last the
    readout, logits without a position axis). The caller checks it against the model."""
    anat = view.anatomy
    if anat.readout is None or anat.output.get("position") is not None:
        return None
    hidden = anat.hidden
    ops = []
    for j in range(k, len(hidden)):
        hj = hidden[j]
        if not hj.get("activation") or not hj.get("out"):
            return None
        ops.append((activation_fn(hj["activation"]), _map_fn(view, hj["out"])))
        if hj["out"] == anat.readout:
            break
        if j + 1 >= len(hidden) or hidden[j + 1].get("in") != hj["out"]:
            return None
    else:
        return None
    cls_ = anat.output.get("classes")

    def g(z: torch.Tensor) -> torch.Tensor:
        for act, lin in ops:
            z = lin(act(z))
        return z if cls_ is None else z[:, int(cls_[0]) : int(cls_[1])]

    return g


def _agrees(direct: SubNetwork, hooked: SubNetwork) -> bool:
    """``direct`` reproduces ``hooked`` on interpolated points of a few pairs (each route
    interpolating its own samples; exact when they differ by an affine map)."""
    n = direct.h.shape[0]
    m = min(4, n - 1)
    if m < 1:
        return True
    i = torch.arange(m, device=direct.h.device)
    t = 0.375
    with torch.no_grad():
        want = hooked.fn(hooked.h[i] + t * (hooked.h[i + 1] - hooked.h[i]), i)
        try:
            got = direct.fn(direct.h[i] + t * (direct.h[i + 1] - direct.h[i]), i)
        except RuntimeError:  # shapes the anatomy's maps do not fit: use the hooks
            return False
    if got.shape != want.shape or not (torch.isfinite(got).all() and torch.isfinite(want).all()):
        return False
    tol = 1e-9 if want.dtype == torch.float64 else 1e-3
    atol = tol * float(want.abs().max().clamp_min(1.0))
    return bool(torch.allclose(got.to(want.dtype), want, rtol=tol, atol=atol))


def _layer_index(view: ModelView, layer: int) -> int:
    view.hidden_layer(layer)  # missing role / out of range errors
    return layer % len(view.anatomy.hidden)


def _pre_route(view: ModelView, xs: torch.Tensor, layer: int) -> SubNetwork:
    """Hidden layer ``layer``'s pre-activation ``z = W h + b`` (see :func:`lmn`)."""
    k = _layer_index(view, layer)
    hid = view.anatomy.hidden[k]
    if not hid.get("in"):
        raise missing_role("hidden", "lmn (cut='pre')",
                           f"hidden layer {hid['name']!r} names no in map, so its pre-activation "
                           "is unknown; use cut='post' or module='...'")
    lin = view.anatomy.linear_map(hid["in"])
    what = f"hidden layer {k} ({hid['name']!r}) pre-activation"
    if lin.get("output"):
        hooked = _hook_route(view, xs, lin["output"], "output", what)
        hooked.description += f"; z read at the output of {lin['output']!r}"
    elif lin.get("module") is not None:  # "" is the model itself
        hooked = _hook_route(view, xs, lin["module"], "input", what)
        hooked.description += (
            f"; segments interpolated at the input h of {lin['module']!r}, identical to "
            f"interpolating z = W h + b (map {hid['in']!r}; interpolation commutes with an "
            "affine map)"
        )
    else:
        raise missing_role("linear", "lmn (cut='pre')",
                           f"map {hid['in']!r} names neither the module whose input it "
                           "multiplies nor a module outputting z")
    g = _chain_from_pre(view, k)
    if g is None:
        return hooked
    if lin.get("output"):
        z = hooked.h
    else:
        with torch.no_grad():
            (hin,) = view.capture(xs, [(lin["module"], "input")])
            z = _map_fn(view, hid["in"])(hin.to(view.dtype)).reshape(xs.shape[0], -1)
    if z.shape[1] != view.weight(hid["in"]).shape[0]:
        return hooked  # a position axis: the chain reads one vector per sample
    direct = SubNetwork(
        z, lambda pts, _anchor: g(pts),
        f"{what} -> logits, computed directly from the anatomy's maps and activations "
        f"(checked against the model; no forward pass before the cut) [ours]",
    )
    return direct if _agrees(direct, hooked) else hooked


def _post_route(view: ModelView, xs: torch.Tensor, layer: int) -> SubNetwork:
    """Hidden layer ``layer``'s post-activation (see :func:`lmn`)."""
    k = _layer_index(view, layer)
    hid = view.anatomy.hidden[k]
    cap = hid.get("capture")
    what = f"hidden layer {k} ({hid['name']!r}) post-activation"
    if not cap:
        raise missing_role(
            "hidden", "lmn (cut='post')",
            f"the post-activation of hidden layer {hid['name']!r} is computed, not read at a "
            "module, so it cannot be replaced; use cut='pre' or name a hook point as its capture",
        )
    hooked = _hook_route(view, xs, cap["module"], cap["at"], what)
    out = hid.get("out")
    affine = out is not None and out == view.anatomy.readout
    hooked.affine = affine
    if out is None:
        return hooked
    # segments mapped through the out map first (exact: interpolation commutes with an affine
    # map), then the rest of the chain computed directly
    if affine:
        if view.anatomy.output.get("position") is not None:
            return hooked
        cls_ = view.anatomy.output.get("classes")

        def g(z: torch.Tensor) -> torch.Tensor:
            return z if cls_ is None else z[:, int(cls_[0]) : int(cls_[1])]
    else:
        nxt = k + 1
        if nxt >= len(view.anatomy.hidden) or view.anatomy.hidden[nxt].get("in") != out:
            return hooked
        g = _chain_from_pre(view, nxt)
        if g is None:
            return hooked
    if hooked.h.shape[1] != view.weight(out).shape[1]:
        return hooked  # a position axis: the chain reads one vector per sample
    with torch.no_grad():
        z = _map_fn(view, out)(hooked.h.to(view.dtype))
    direct = SubNetwork(
        z, lambda pts, _anchor: g(pts),
        f"{what} -> logits; segments mapped through {out} first (exact: interpolation commutes "
        "with an affine map), the rest computed from the anatomy's maps and activations "
        "(checked against the model) [ours]",
        affine=affine,
    )
    return direct if _agrees(direct, hooked) else hooked


def _input_route(view: ModelView, xs: torch.Tensor) -> SubNetwork:
    with torch.no_grad():
        h = view.embed(xs)
    where = ("the raw input (flattened)" if view.input_module is None
             else f"the output of the input module {view.input_module!r}")

    def fn(pts: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        return view.forward_from_input(pts, xs[anchor])

    return SubNetwork(h, fn, f"network input ({where}; the input role) -> logits")


def subnetwork(
    view: ModelView | nn.Module,
    xs: torch.Tensor,
    *,
    layer: int = 0,
    module: str | None = None,
    cut: str = "auto",
) -> SubNetwork:
    """The samples at the cut and the rest of the network (see :func:`lmn` for the rules).

    Parameters
    ----------
    view : ModelView or nn.Module
        The model with its anatomy (an ``nn.Module`` is probed on ``xs``: its anatomy is
        detected, without the task's class count).
    xs : tensor, shape ``(N, *input_shape)``
        The chosen samples' inputs.
    layer, module, cut
        As in :func:`lmn`.
    """
    if not isinstance(view, ModelView):
        if not isinstance(view, nn.Module):
            raise ConfigError(f"lmn: expected a ModelView or an nn.Module, got {type(view).__name__}")
        view = ModelView(view, detect(view, xs[: min(8, xs.shape[0])]))
    if cut not in CUTS:
        raise ConfigError(f"lmn: cut must be one of {list(CUTS)}, got {cut!r}")
    if module is not None:
        return _hook_route(view, xs, module, "output", f"output of module {module!r}")
    if layer == -1:
        return _input_route(view, xs)
    if layer < 0:
        raise ConfigError(f"lmn: layer must be -1 (the input) or a hidden layer >= 0, got {layer}")
    if cut == "auto":
        return _auto_route(view, xs, layer)
    return _pre_route(view, xs, layer) if cut == "pre" else _post_route(view, xs, layer)


def _auto_route(view: ModelView, xs: torch.Tensor, layer: int) -> SubNetwork:
    """docs/methods.md's default: the post-activation of hidden layer ``layer``, unless the rest of
    the network after it is affine by construction (no hidden layer follows it: an MLP's last
    hidden layer before the read-out, a one-block transformer's MLP before ``W_out``, the
    residual sum and the unembedding) or the post-activation cannot be replaced (a
    raw-parameter MLP block): then the input role, so no default is constant by construction.
    The rule is structural, so every step of a run uses the same cut."""
    k = _layer_index(view, layer)
    hid = view.anatomy.hidden[k]
    if k + 1 < len(view.anatomy.hidden) and hid.get("capture"):
        sub = _post_route(view, xs, layer)
        sub.description = f"cut='auto' -> post-activation: {sub.description}"
        return sub
    why = ("no hidden layer follows it, so the rest of the network after its post-activation "
           "is affine" if hid.get("capture") else "its post-activation is computed inside a "
           "module and cannot be replaced")
    sub = _input_route(view, xs)
    sub.description = (f"cut='auto' -> the input role, since hidden layer {k} "
                       f"({hid['name']!r}): {why}; {sub.description}")
    return sub


@register("lmn", kind="step", applies=_applies)
def lmn(
    ckpt: Checkpoint,
    *,
    n_samples: int = 100,
    layer: int = 0,
    cut: str = "auto",
    module: str | None = None,
    split: str = "train",
    seed: int = 0,
    n_points: int = 21,
    chunk: int = 256,
    weighting: str = "uniform",
) -> xr.Dataset:
    """Linear mapping number of the sub-network after a cut (Liu et al. 2023).

    The cut comes from the model's anatomy (``ckpt.view``): its hidden layers, their linear
    maps and its input role; ``g`` runs from the cut to the logits (the output role: a
    transformer's read-out position and class slice).

    Parameters
    ----------
    ckpt : Checkpoint
    n_samples : int
        ``N``, samples drawn (seeded, without replacement) from ``split``. LMN is comparable
        only at equal ``N``; the number actually used (fewer when the split is smaller) is
        stored as ``n_samples``.
    layer : int
        ``>= 0``: hidden layer ``layer`` of the anatomy (its ``cut``). ``-1``: ``g`` is the
        whole network from the input role (``view.embed``: a token embedding's output, or the
        raw float input flattened) to the logits.
    cut : {"auto", "pre", "post"}
        Where in hidden layer ``layer`` [ours: the paper leaves it open].
        ``"auto"`` (default, docs/methods.md section 4): ``"post"`` unless the rest of the network
        after the post-activation is affine by construction (no hidden layer follows: a
        one-hidden-layer MLP, a one-block transformer) or cannot be replaced (a raw-parameter
        MLP block), and then the input role (``layer=-1``); the rule is structural, so every
        step of a run uses the same cut, and the result's ``subnetwork`` attr says which.
        ``"pre"``: the pre-activation ``z = W h + b`` of the layer's in map. It is
        realised by interpolating at the *input* ``h`` of that map's module (a forward
        pre-hook replaces it): interpolation commutes with an affine map, ``W (h_i + t (h_j -
        h_i)) + b = z_i + t (z_j - z_i)``, so every point, and so ``r^2`` along each segment,
        is identical to interpolating ``z`` itself. This works for ``nn.Linear`` and for raw
        parameter maps (a Nanda-style ``blocks.0.mlp`` with ``W_in``). Where ``z`` is a
        module's output (``nn.Linear``, a ``hook_pre``) it is read and replaced there instead;
        and where the anatomy says the rest of the network is a chain of its maps and
        activations ending at the readout (an MLP), that chain is evaluated directly (checked
        against the model on a few interpolated points first; no forward pass before the cut).
        ``"post"``: the post-activation, read and replaced where the anatomy captures it (the
        input of the out map's module, or a hook point's output); a layer without such a
        point raises MeasureNotApplicable. When the out map is the readout (the last hidden
        layer of an MLP) ``g`` is affine and LMN = 1 by construction: the result's ``note``
        says so.
    module : str, optional
        Cut the network at this module's output instead (a forward hook replaces it;
        ``layer`` and ``cut`` are then ignored).
        With any hook-based cut the rest of the model sees the other inputs (e.g. the residual
        stream) of the segment's first sample [ours].
        For a raw-input MLP, ``layer=0, cut="pre"`` and ``layer=-1`` are the same ``g`` up to
        rounding (the first map is affine, so interpolating its input or its output agree).
    split : {"train", "test"}
    seed : int
        Seed of the sample choice (deterministic).
    n_points : int
        Points per segment (21: ``t = 0, 0.05, ..., 1``).
    chunk : int
        Pairs per batched evaluation (bounds memory at ``chunk * n_points`` rows).
    weighting : {"uniform", "variance"}
        How the outputs' ``r_k^2`` along a segment make ``L_ij``: ``"uniform"`` (default, the
        paper's) is their mean; ``"variance"`` [ours, docs/methods.md section 4's option] weights
        each output by its variance along the segment, ``L_ij = sum_k var_k r_k^2 / sum_k
        var_k``, so a negligible output (e.g. a logit that barely moves) does not count as
        much as a dominant one. Stored in the attrs.

    Returns
    -------
    xr.Dataset
        ``lmn`` and ``lmn_entropy`` (bits) scalars, ``n_samples`` scalar, ``sample_index``
        (dim ``sample``) the row indices of ``split`` used. Attrs: ``subnetwork`` (the cut and
        how ``g`` is evaluated), ``note`` ("affine by construction" when it is; "every segment
        is linear" when all ``r^2 = 1`` up to ``1e-5``, e.g. ``cut="post"`` on a one-block
        transformer; else empty).

    Raises
    ------
    MeasureNotApplicable
        The cut needs a role the anatomy lacks (the message names it and the ``anatomy=``
        key that supplies it).
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
    if torch.is_floating_point(xs):
        xs = xs.to(ckpt.view.dtype)  # float inputs in the model's precision (e.g. float64)
    sub = subnetwork(ckpt.view, xs, layer=layer, module=module, cut=cut)
    L = sub.linearity(n_points, chunk, weighting)
    s_bits = _entropy_bits(L)
    if sub.affine:
        note = ("affine by construction: g is the affine read-out of the last hidden layer's "
                "post-activation, so LMN = 1; use cut='auto' (the default), cut='pre', layer=-1 (the input) "
                "or an earlier layer")
    elif float(L.min()) >= 1.0 - _AFFINE_TOL:
        note = ("every segment is linear (all r^2 = 1 up to rounding): g is affine on these "
                "samples, e.g. after the post-activation of a one-block transformer (W_out, the "
                "residual sum and the unembedding are affine); use cut='pre'")
    else:
        note = ""
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
            "constant_output": "an output constant along a segment counts as linear (r^2 = 1) "
            "[ours]; with weighting='variance' it has weight 0",
            "weighting": weighting,
            "weighting_definition": "uniform: L_ij = mean_k r_k^2 (the paper's); variance: "
            "L_ij = sum_k var_k r_k^2 / sum_k var_k, var_k the variance of output k along the "
            "segment [ours]",
            "test_loss_fit": "grokscope.measures.lmn.lmn_test_loss_fit fits LMN against the "
            "test loss over the generalising phase (the paper's linear relation)",
            "lmn_entropy_units": "bits",
            "note": note,
        },
    )


# --------------------------------------------------------------------------- LMN vs test loss
def _series(obj: xr.Dataset | xr.DataArray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of ``name`` (a Dataset holding it, or a DataArray with ``step``)."""
    if isinstance(obj, xr.Dataset):
        if name not in obj:
            raise ConfigError(f"the dataset has no {name!r} variable (has {list(obj.data_vars)})")
        obj = obj[name]
    if not isinstance(obj, xr.DataArray) or "step" not in obj.coords:
        raise ConfigError(f"{name}: expected an xarray object with a 'step' coordinate")
    return (np.asarray(obj["step"].values, dtype=np.float64),
            np.asarray(obj.values, dtype=np.float64).reshape(-1))


def generalising_window(
    metrics: xr.Dataset, t_train: float | None = None, *, test_acc: float = 0.99
) -> tuple[float, float]:
    """``(start, end)`` steps of the generalising phase [ours], where Liu et al. report LMN
    roughly linear in the test loss.

    ``start``: the step of the largest test loss at or after ``t_train`` (memorisation drives
    the test loss up, generalisation brings it down; the first step when ``t_train`` is None);
    ``end``: the first later step with test accuracy >= ``test_acc``, else the last step.

    Parameters
    ----------
    metrics : xr.Dataset
        ``test_loss`` and ``test_acc`` with a ``step`` coordinate (the ``curves`` result or the
        run's metrics).
    """
    s, loss = _series(metrics, "test_loss")
    s_acc, acc = _series(metrics, "test_acc")
    if not np.array_equal(s, s_acc):
        raise ConfigError("test_loss and test_acc must share their steps")
    after = s >= (t_train if t_train is not None else s[0])
    i0 = int(np.nanargmax(np.where(after, loss, -np.inf)))
    hit = np.flatnonzero((s > s[i0]) & (acc >= test_acc))
    return float(s[i0]), float(s[hit[0]] if hit.size else s[-1])


def lmn_test_loss_fit(
    lmn_result: xr.Dataset | xr.DataArray,
    test_loss: xr.Dataset | xr.DataArray,
    *,
    start: float | None = None,
    end: float | None = None,
) -> dict[str, float | int]:
    """LMN against test loss at the same steps: least-squares line, Pearson r and Spearman rho
    over the steps in ``[start, end]`` (Liu, Zhong, Tegmark 2023: during the generalising phase
    LMN falls and is roughly linear in the test loss; :func:`generalising_window` gives that
    phase).

    Parameters
    ----------
    lmn_result : xr.Dataset or xr.DataArray
        The ``lmn`` result (``lmn`` with a ``step`` coordinate).
    test_loss : xr.Dataset or xr.DataArray
        ``test_loss`` with a ``step`` coordinate (the run's metrics or the ``curves`` result).
    start, end : float, optional
        The step window (inclusive); None = from the first / to the last common step.

    Returns
    -------
    dict
        ``n_points``, ``start``, ``end``; when at least 3 finite points vary in both:
        ``pearson_r``, ``r2``, ``slope``, ``intercept`` (LMN = slope * loss + intercept),
        ``spearman_rho``, ``lmn_start``/``lmn_end``, ``test_loss_start``/``test_loss_end``;
        ``pearson_r_from_start_to_last`` over every step from ``start`` on.
    """
    from scipy.stats import spearmanr

    s_l, v_l = _series(lmn_result, "lmn")
    s_t, v_t = _series(test_loss, "test_loss")
    steps, i, j = np.intersect1d(s_l, s_t, return_indices=True)
    if steps.size == 0:
        raise ConfigError("the LMN and the test loss have no step in common")
    lmn_v, loss = v_l[i], v_t[j]
    lo = steps[0] if start is None else start
    hi = steps[-1] if end is None else end
    ok = np.isfinite(lmn_v) & np.isfinite(loss)
    sel = (steps >= lo) & (steps <= hi) & ok
    out: dict[str, float | int] = {"n_points": int(sel.sum()), "start": float(lo), "end": float(hi)}
    x, y = loss[sel], lmn_v[sel]
    if x.size >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        slope, icpt = np.polyfit(x, y, 1)
        r = float(np.corrcoef(x, y)[0, 1])
        out.update(pearson_r=r, r2=r * r, slope=float(slope), intercept=float(icpt),
                   spearman_rho=float(spearmanr(x, y).statistic),
                   lmn_start=float(y[0]), lmn_end=float(y[-1]),
                   test_loss_start=float(x[0]), test_loss_end=float(x[-1]))
    allsel = (steps >= lo) & ok
    if allsel.sum() >= 3 and np.ptp(loss[allsel]) > 0 and np.ptp(lmn_v[allsel]) > 0:
        out["pearson_r_from_start_to_last"] = float(np.corrcoef(loss[allsel], lmn_v[allsel])[0, 1])
    return out
