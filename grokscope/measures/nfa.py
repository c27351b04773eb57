"""Neural feature ansatz: NFM vs AGOP (Radhakrishnan et al.; Beaglehole et al. 2024).

METHODS.md section 5. For a linear layer ``W`` (``(out, in)``) with input ``h`` and
pre-activation ``z = W h (+ b)``:

- ``NFM = W^T W`` (``in x in``);
- ``AGOP G = (1/n) sum_x J_h(x)^T J_h(x) = W^T K W`` with ``K = (1/n) sum_x J_z(x)^T J_z(x)``,
  each output differentiated separately. ``J_h`` is the derivative *through this layer*
  (``J_z W``): this is the AGOP of the layer's input whenever ``h`` feeds only this layer
  (every MLP), and the per-linear-map AGOP otherwise (e.g. attention's ``W_Q``, ``W_K``, ``W_V``
  share one input);
- ``nfa_corr_sqrt`` = Pearson(NFM, G^{1/2}), ``nfa_corr`` = Pearson(NFM, G) (``s = 1``);
- ``nfa_corr_centred`` = Pearson(NFM, G_c^{1/2}) with the gradient-centred AGOP
  ``G_c = (1/n) sum_x (J_h(x) - Jbar)^T (J_h(x) - Jbar)``, ``Jbar`` the mean Jacobian;
- ``cnfa`` (C-NFA) = Pearson(``(W-W0)^T K (W-W0)``, ``(W-W0)^T (W-W0)``), ``W0`` the first
  stored step. At ``W = W0`` both matrices vanish and C-NFA is undefined: NaN;
- ``agop_alignment`` = cosine(G_t, G_final), the final step's AGOP cached in ``ckpt.state``.

"Pearson" of two matrices subtracts each one's scalar mean of entries, then takes the cosine;
matrix powers use ``eigh`` in float64 with negative eigenvalues clipped to 0.

Two exact ways to get ``K``:

closed form
    when the rest of the network after the layer is ``readout(act(z))`` with an elementwise
    ``act`` (the last hidden layer of grokscope's MLP, or ``nn.Sequential(..., Linear, act,
    Linear)``): ``J_z(x) = W2 diag(act'(z_x))`` so ``K = (W2^T W2) * (M^T M / n)``, rows of ``M``
    the ``act'(z_x)``. Checked numerically against the model's logits before use.
general
    any layer of any model: a forward hook captures ``z``; per-sample gradients of every output
    w.r.t. ``z`` come from class-batched backward passes (samples must be independent).

Layers with a position axis (transformers: ``z`` of shape ``(n, T, out)``) use the last
position by default (``position="last"``, METHODS: "the MLP's W_in acting on the last-position
residual"); ``position="all"`` sums the per-position AGOPs over positions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..data import Data
from ..errors import ConfigError
from ._jacobian import (
    JacobianError,
    chunks,
    evaluation_inputs,
    input_view,
    preactivation_jacobians,
)
from .registry import Checkpoint, register

__all__ = [
    "LayerAGOP",
    "agop",
    "default_layers",
    "layer_agops",
    "matrix_power_psd",
    "nfa",
    "pearson",
]

_METHODS = ("auto", "closed_form", "general")
_POSITIONS = ("last", "all")
_ELEMENTWISE = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.SiLU,
    nn.GELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.ELU,
    nn.Softplus,
    nn.Identity,
    nn.Mish,
    nn.Hardtanh,
)


# ------------------------------------------------------------------------ matrix helpers
def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two matrices: subtract each one's scalar mean, then cosine.

    NaN when either centred matrix is zero.
    """
    a = a.double().flatten()
    b = b.double().flatten()
    return _cosine(a - a.mean(), b - b.mean())


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.double().flatten()
    b = b.double().flatten()
    denom = float(a.norm() * b.norm())
    if not np.isfinite(denom) or denom == 0.0:
        return float("nan")
    return float((a @ b) / denom)


def matrix_power_psd(g: torch.Tensor, s: float) -> torch.Tensor:
    """``g^s`` of a symmetric PSD matrix by ``eigh`` in float64 (negative eigenvalues -> 0).

    Parameters
    ----------
    g : tensor, shape ``(m, m)``
    s : float

    Returns
    -------
    tensor, shape ``(m, m)``, float64
    """
    if s == 1:
        return g.double()
    g = g.double()
    vals, vecs = torch.linalg.eigh((g + g.T) / 2)
    vals = vals.clamp_min(0.0) ** s
    return (vecs * vals) @ vecs.T


# ------------------------------------------------------------------------ layer selection
def _linear_call_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the nn.Linear modules in the order they are first called on ``x[:2]``.

    A module called more than once per forward pass appears with a ``"*"`` suffix.
    """
    order: list[str] = []
    named = {m: k for k, m in model.named_modules() if isinstance(m, nn.Linear)}
    handles = [
        m.register_forward_hook(lambda mod, _a, _o: order.append(named[mod])) for m in named
    ]
    try:
        view = input_view(model)
        with torch.no_grad():
            view.forward(view.embed(x[:2]))
    finally:
        for h in handles:
            h.remove()
    seen: list[str] = []
    for k in order:
        if k not in seen:
            seen.append(k)
    return [k if order.count(k) == 1 else k + "*" for k in seen]


def default_layers(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Every nn.Linear the forward pass calls, except the readout (the last one called).

    Modules called more than once per forward pass (shared weights) are left out too: their
    AGOP has no single input ``h``.

    Parameters
    ----------
    model : nn.Module
    x : tensor, shape ``(n, *input_shape)``
        Inputs (two are run through the model to find the call order).

    Returns
    -------
    list of str
        Module names in call order.
    """
    order = _linear_call_order(model, x)
    chosen = [k for k in order[:-1] if not k.endswith("*")]
    if not chosen:
        raise ConfigError(
            f"the model calls {len(order)} nn.Linear module(s) ({order}; '*' = called more than "
            "once); the default leaves out the readout (the last one called) and shared modules, "
            "so no layer remains: pass layers=[...] explicitly"
        )
    return chosen


def _resolve_layers(model: nn.Module, x: torch.Tensor, layers: str | Sequence[str] | None) -> list[str]:
    if layers is None:
        return default_layers(model, x)
    names = [layers] if isinstance(layers, str) else list(layers)
    mods = dict(model.named_modules())
    linear = [k for k, m in mods.items() if isinstance(m, nn.Linear)]
    bad = [k for k in names if not isinstance(mods.get(k), nn.Linear)]
    if bad or not names:
        raise ConfigError(
            f"layers {bad or names} are not nn.Linear modules of the model; choose among {linear}"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"layers {names} has duplicates")
    return names


def _closed_form_parts(model: nn.Module, name: str) -> tuple[Callable, nn.Linear] | None:
    """``(act, readout)`` when the network after layer ``name`` is ``readout(act(z))``."""
    layers = getattr(model, "layers", None)
    act = getattr(model, "act", None)
    if (
        isinstance(layers, nn.ModuleList)
        and len(layers) >= 2
        and callable(act)
        and isinstance(layers[-1], nn.Linear)
        and name == f"layers.{len(layers) - 2}"
    ):
        return act, layers[-1]
    if isinstance(model, nn.Sequential) and len(model) >= 3:
        kids = list(model.named_children())
        (k3, m3), (_, m2), (_, m1) = kids[-3:]
        if (
            k3 == name
            and isinstance(m3, nn.Linear)
            and isinstance(m2, _ELEMENTWISE)
            and isinstance(m1, nn.Linear)
        ):
            return m2, m1
    return None


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the wanted activation is captured."""


def _capture(
    model: nn.Module, x: torch.Tensor, name: str, *, logits: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(z, logits)``: the output of module ``name`` and the logits on ``x``.

    With ``logits=False`` the forward pass stops right after module ``name`` (logits None).
    """
    module = dict(model.named_modules())[name]
    got: list[torch.Tensor] = []

    def hook(_m: nn.Module, _a: tuple, o: torch.Tensor) -> None:
        got.append(o.detach())
        if not logits:
            raise _StopForward

    handle = module.register_forward_hook(hook)
    out = None
    try:
        view = input_view(model)
        with torch.no_grad():
            out = view.forward(view.embed(x))
    except _StopForward:
        pass
    finally:
        handle.remove()
    if len(got) != 1:
        raise JacobianError(f"module {name!r} was called {len(got)} times in one forward pass")
    return got[0], out


def _closed_form_ok(model: nn.Module, x: torch.Tensor, name: str) -> bool:
    parts = _closed_form_parts(model, name)
    if parts is None:
        return False
    act, readout = parts
    z, logits = _capture(model, x[:8], name)
    if z.ndim != 2:
        return False
    with torch.no_grad():
        again = readout(act(z)).reshape(logits.shape)
    scale = float(logits.abs().max()) + 1e-6
    return bool(torch.allclose(again, logits, rtol=1e-4, atol=1e-5 * scale))


# ------------------------------------------------------------------------ AGOP computation
@dataclass
class LayerAGOP:
    """The AGOP quantities of one linear layer.

    Attributes
    ----------
    weight : tensor ``(out, in)``, float64
    agop : tensor ``(in, in)``, float64
        ``G = W^T K W``.
    agop_centred : tensor ``(in, in)``, float64
        Gradient-centred AGOP ``G_c``.
    cnfa_matrix : tensor ``(in, in)`` float64, or None
        ``(W-W0)^T K (W-W0)`` when a reference weight was given and ``W != W0``.
    method : str
        ``"closed_form"`` or ``"general"``.
    """

    weight: torch.Tensor
    agop: torch.Tensor
    agop_centred: torch.Tensor
    cnfa_matrix: torch.Tensor | None
    method: str


def _gram(m: torch.Tensor, block: int = 128) -> torch.Tensor:
    """``m^T m`` for ``m`` of shape ``(n, k)``, computing only the upper block triangle.

    Saves up to half the flops of ``m.T @ m`` (what BLAS ``syrk`` does) with plain matmuls.
    """
    k = m.shape[1]
    if k < 2 * block:
        return m.T @ m
    out = torch.empty(k, k, dtype=m.dtype, device=m.device)
    for i in range(0, k, block):
        rows = m[:, i : i + block].T @ m[:, i:]  # (b, k - i)
        out[i : i + block, i:] = rows
        out[i + block :, i : i + block] = rows[:, block:].T
    return out


def _closed_form_k(
    model: nn.Module, x: torch.Tensor, name: str, chunk: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``K`` and the centred ``K_c`` of layer ``name`` by the closed form (float64)."""
    act, readout = _closed_form_parts(model, name)  # type: ignore[misc]
    w2 = readout.weight.detach().double()
    mtm = None
    msum = None
    for sl in chunks(x.shape[0], chunk):
        z, _ = _capture(model, x[sl], name, logits=False)
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            (m,) = torch.autograd.grad(act(zz).sum(), zz)
        m = m.detach()
        part = _gram(m).double()
        mtm = part if mtm is None else mtm + part
        s = m.sum(0).double()
        msum = s if msum is None else msum + s
    n = x.shape[0]
    gram = w2.T @ w2
    second = mtm / n
    mbar = msum / n
    return gram * second, gram * (second - torch.outer(mbar, mbar))


def _general(
    model: nn.Module,
    x: torch.Tensor,
    weights: dict[str, torch.Tensor],
    deltas: dict[str, torch.Tensor | None],
    chunk: int | None,
    position: str,
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """``(G, G_c, (W-W0)^T K (W-W0))`` per layer by the general (hooked backward) path.

    Accumulates in the cheaper space: either ``K`` itself (``out x out``) or the Jacobian
    projected on ``W`` (and ``W - W0``) when ``in`` is small enough that projecting first
    costs fewer flops.
    """
    mods = dict(model.named_modules())
    modules = {k: mods[k] for k in weights}
    plan: dict[str, list[tuple[str, torch.Tensor | None]]] = {}
    for k, w in weights.items():
        out_dim, in_dim = w.shape
        projs: list[tuple[str, torch.Tensor | None]] = [("W", w)]
        if deltas[k] is not None:
            projs.append(("D", deltas[k]))
        cost_proj = sum(out_dim * in_dim + in_dim * in_dim for _ in projs)
        plan[k] = [("I", None)] if out_dim * out_dim <= cost_proj else projs
    gram: dict[tuple[str, str], torch.Tensor] = {}
    mean: dict[tuple[str, str], dict[int, torch.Tensor]] = {}  # class -> (T, k) sums
    for _samples, classes, grads, _inputs in preactivation_jacobians(model, x, modules, chunk=chunk):
        for k, g in grads.items():  # g: (c, n, *z.shape[1:])
            if g.ndim == 3:
                g = g.unsqueeze(2)  # no position axis: T = 1
            elif g.ndim > 4:
                g = g.flatten(2, -2)
            if position == "last":
                g = g[:, :, -1:, :]
            for tag, p in plan[k]:
                gp = g if p is None else g @ p.to(g.dtype)
                rows = gp.reshape(-1, gp.shape[-1])
                part = (rows.T @ rows).double()
                key = (k, tag)
                gram[key] = part if key not in gram else gram[key] + part
                s = gp.sum(1).double()  # (c, T, k): sum over the samples of this block
                per_class = mean.setdefault(key, {})
                for i, c in enumerate(range(classes.start, classes.stop)):
                    per_class[c] = s[i] if c not in per_class else per_class[c] + s[i]
    n = x.shape[0]
    result = {}
    for k, w in weights.items():
        w64 = w.double()
        tag = plan[k][0][0]
        second = gram[(k, tag)] / n
        jbar = torch.stack([mean[(k, tag)][c] for c in sorted(mean[(k, tag)])]) / n
        jbar = jbar.reshape(-1, jbar.shape[-1])  # (C*T, k): sum over classes and positions
        centred = second - jbar.T @ jbar
        if tag == "I":
            g_full = w64.T @ second @ w64
            g_c = w64.T @ centred @ w64
            d = deltas[k]
            h = None if d is None else d.double().T @ second @ d.double()
        else:
            g_full, g_c = second, centred
            h = gram[(k, "D")] / n if (k, "D") in gram else None
        result[k] = (g_full, g_c, h)
    return result


def layer_agops(
    model: nn.Module,
    x: torch.Tensor,
    *,
    layers: str | Sequence[str] | None = None,
    method: str = "auto",
    chunk: int | None = 1024,
    position: str = "last",
    reference: nn.Module | None = None,
) -> dict[str, LayerAGOP]:
    """The exact AGOP (plain and gradient-centred) of each chosen linear layer.

    Parameters
    ----------
    model : nn.Module
    x : tensor, shape ``(n, *input_shape)``
        Raw inputs over which the AGOP averages.
    layers : str, list of str or None
        Module names of nn.Linear layers; None = :func:`default_layers`.
    method : {"auto", "closed_form", "general"}
        ``"auto"`` uses the closed form where it applies, the general path elsewhere.
    chunk : int or None
        Samples per forward/backward pass.
    position : {"last", "all"}
        For layers with a position axis: the last position, or the sum over positions.
    reference : nn.Module, optional
        The model at initialisation; when given and ``W != W0``, ``(W-W0)^T K (W-W0)`` is
        also computed (``cnfa_matrix``; None where ``W = W0``).

    Returns
    -------
    dict of str to LayerAGOP
        In the order of ``layers``.
    """
    if method not in _METHODS:
        raise ConfigError(f"method must be one of {_METHODS}, got {method!r}")
    if position not in _POSITIONS:
        raise ConfigError(f"position must be one of {_POSITIONS}, got {position!r}")
    names = _resolve_layers(model, x, layers)
    mods = dict(model.named_modules())
    ref_mods = dict(reference.named_modules()) if reference is not None else {}
    weights = {k: mods[k].weight.detach() for k in names}
    deltas: dict[str, torch.Tensor | None] = {}
    for k in names:
        if reference is None:
            deltas[k] = None
            continue
        w0 = getattr(ref_mods.get(k), "weight", None)
        if w0 is None or w0.shape != weights[k].shape:
            raise ConfigError(
                f"the reference model has no weight {k!r} of shape {tuple(weights[k].shape)}: "
                "it must be the same architecture"
            )
        delta = weights[k] - w0.detach().to(weights[k])
        deltas[k] = delta if bool(delta.any()) else None  # W = W0: C-NFA undefined
    closed = {k: method != "general" and _closed_form_ok(model, x, k) for k in names}
    if method == "closed_form" and not all(closed.values()):
        bad = [k for k, ok in closed.items() if not ok]
        raise ConfigError(
            f"the closed form does not apply to layer(s) {bad}: it needs the rest of the network "
            "to be readout(act(z)) with an elementwise act (the last hidden layer of an MLP). "
            "Use method='auto' or 'general'"
        )
    out: dict[str, LayerAGOP] = {}
    general = [k for k in names if not closed[k]]
    gen = (
        _general(model, x, {k: weights[k] for k in general}, deltas, chunk, position)
        if general
        else {}
    )
    for k in names:
        w64 = weights[k].double()
        if closed[k]:
            kmat, kc = _closed_form_k(model, x, k, chunk)
            d = deltas[k]
            out[k] = LayerAGOP(
                w64,
                w64.T @ kmat @ w64,
                w64.T @ kc @ w64,
                None if d is None else d.double().T @ kmat @ d.double(),
                "closed_form",
            )
        else:
            g_full, g_c, h = gen[k]
            out[k] = LayerAGOP(w64, g_full, g_c, h, "general")
    return out


def agop(
    model: nn.Module,
    x: torch.Tensor,
    layer: str,
    *,
    method: str = "auto",
    chunk: int | None = 1024,
    position: str = "last",
) -> torch.Tensor:
    """The AGOP ``G`` (float64, ``(in, in)``) of one linear layer over inputs ``x``."""
    res = layer_agops(model, x, layers=[layer], method=method, chunk=chunk, position=position)
    return res[layer].agop


# ------------------------------------------------------------------------ the measure
def _applies(model: nn.Module, data: Data) -> str | None:
    n_linear = sum(isinstance(m, nn.Linear) for m in model.modules())
    if n_linear < 2:
        return f"the model has {n_linear} nn.Linear module(s): no linear layer besides the readout"
    has_convention = hasattr(model, "embed_inputs") and hasattr(model, "forward_from_input")
    if not has_convention and not torch.is_floating_point(data.x_train):
        return "integer inputs and no embed_inputs/forward_from_input on the model"
    return None


@register("nfa", kind="step", applies=_applies, references=("first", "last"))
def nfa(
    ckpt: Checkpoint,
    *,
    layers: list[str] | None = None,
    split: str = "train",
    max_points: int | None = None,
    method: str = "auto",
    position: str = "last",
    chunk: int = 1024,
    store_matrices: bool = False,
) -> xr.Dataset:
    """Neural feature ansatz: Pearson(NFM, AGOP^s), centred variants, C-NFA, AGOP alignment.

    Parameters
    ----------
    ckpt : Checkpoint
        Needs references ``"first"`` (C-NFA) and ``"last"`` (AGOP alignment).
    layers : list of str or None
        nn.Linear module names; None = every nn.Linear the forward pass calls except the
        readout (the last one called).
    split : {"train", "test", "all"}
        The inputs the AGOP averages over.
    max_points : int or None
        First ``max_points`` inputs of the split; None = all.
    method : {"auto", "closed_form", "general"}
    position : {"last", "all"}
        Layers with a position axis: last position only, or the sum over positions.
    chunk : int
        Samples per forward/backward pass.
    store_matrices : bool
        Also return ``nfm`` and ``agop`` with dims ``(layer, in_i, in_j)`` (all chosen layers
        must have the same input size).

    Returns
    -------
    xr.Dataset
        Dim ``layer`` (module names): ``nfa_corr_sqrt`` (s=1/2), ``nfa_corr`` (s=1),
        ``nfa_corr_centred`` (gradient-centred AGOP, s=1/2), ``cnfa`` (NaN where W = W0),
        ``agop_alignment`` (cosine with the final step's AGOP); scalar ``n_points``.
    """
    x = evaluation_inputs(ckpt.data, split, max_points).to(ckpt.device)
    first = ckpt.reference("first")
    res = layer_agops(
        ckpt.model, x, layers=layers, method=method, chunk=chunk, position=position,
        reference=first,
    )
    names = list(res)
    key = ("nfa_final_agop", tuple(names), split, max_points, method, position)
    if key not in ckpt.state:
        last = ckpt.reference("last")
        final = layer_agops(last, x, layers=names, method=method, chunk=chunk, position=position)
        ckpt.state[key] = {k: v.agop.cpu() for k, v in final.items()}
    finals = ckpt.state[key]

    cols: dict[str, list[float]] = {
        k: []
        for k in ("nfa_corr_sqrt", "nfa_corr", "nfa_corr_centred", "cnfa", "agop_alignment")
    }
    for k, r in res.items():
        nfm = r.weight.T @ r.weight
        cols["nfa_corr_sqrt"].append(pearson(nfm, matrix_power_psd(r.agop, 0.5)))
        cols["nfa_corr"].append(pearson(nfm, r.agop))
        cols["nfa_corr_centred"].append(pearson(nfm, matrix_power_psd(r.agop_centred, 0.5)))
        if r.cnfa_matrix is None:
            cols["cnfa"].append(float("nan"))
        else:
            d = r.weight - first.get_submodule(k).weight.detach().double().to(r.weight.device)
            cols["cnfa"].append(pearson(r.cnfa_matrix, d.T @ d))
        cols["agop_alignment"].append(_cosine(r.agop.cpu(), finals[k]))

    coords = {"layer": np.array(names, dtype=object).astype(str)}
    ds = xr.Dataset(
        {k: ("layer", np.asarray(v, dtype=np.float64)) for k, v in cols.items()}, coords=coords
    )
    ds["in_dim"] = ("layer", np.array([r.weight.shape[1] for r in res.values()], dtype=np.int64))
    ds["n_points"] = xr.DataArray(np.int64(x.shape[0]))
    if store_matrices:
        sizes = {r.weight.shape[1] for r in res.values()}
        if len(sizes) != 1:
            raise ConfigError(
                f"store_matrices=True needs layers with one input size, got sizes "
                f"{ {k: r.weight.shape[1] for k, r in res.items()} }: choose layers of equal input size"
            )
        nfm = np.stack([(r.weight.T @ r.weight).cpu().numpy() for r in res.values()])
        ag = np.stack([r.agop.cpu().numpy() for r in res.values()])
        ds["nfm"] = (("layer", "in_i", "in_j"), nfm)
        ds["agop"] = (("layer", "in_i", "in_j"), ag)
    ds["nfa_corr_sqrt"].attrs["long_name"] = "Pearson(W^T W, AGOP^(1/2))"
    ds["nfa_corr"].attrs["long_name"] = "Pearson(W^T W, AGOP)"
    ds["nfa_corr_centred"].attrs["long_name"] = "Pearson(W^T W, gradient-centred AGOP^(1/2))"
    ds["cnfa"].attrs["long_name"] = "Pearson((W-W0)^T K (W-W0), (W-W0)^T (W-W0))"
    ds["agop_alignment"].attrs["long_name"] = "cosine(AGOP_t, AGOP_final)"
    ds.attrs.update(
        method_per_layer=[r.method for r in res.values()],
        layers_default="every nn.Linear called in forward except the readout (the last one called)",
        agop_definition="W^T K W, K = mean_x J_z^T J_z (each output separately), J through this layer",
        position_rule="z with a position axis: 'last' = last position, 'all' = sum over positions",
        cnfa_at_init="NaN (W = W0 makes both matrices zero)",
        matrix_power="eigh in float64, negative eigenvalues clipped to 0",
    )
    return ds
