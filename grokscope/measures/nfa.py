"""Neural feature ansatz: NFM vs AGOP (Radhakrishnan et al.; Beaglehole et al. 2024).

docs/methods.md section 5. For a linear map ``W`` (``(out, in)``, whatever the parameter's
orientation: ``view.weight(name)``) with input ``h`` and pre-activation ``z = W h (+ b)``:

- ``NFM = W^T W`` (``in x in``);
- ``AGOP G = (1/n) sum_x J_h(x)^T J_h(x) = W^T K W`` with ``K = (1/n) sum_x J_z(x)^T J_z(x)``,
  each output differentiated separately. ``J_h`` is the derivative *through this map*
  (``J_z W``): this is the AGOP of the map's input whenever ``h`` feeds only this map (every
  MLP), and the per-linear-map AGOP otherwise (e.g. attention's ``W_Q``, ``W_K``, ``W_V``
  share one input);
- ``nfa_corr_sqrt`` = Pearson(NFM, G^{1/2}), ``nfa_corr`` = Pearson(NFM, G) (``s = 1``);
- ``nfa_corr_centred`` = Pearson(NFM, G_c^{1/2}) with the gradient-centred AGOP
  ``G_c = (1/n) sum_x (J_h(x) - Jbar)^T (J_h(x) - Jbar)``, ``Jbar`` the mean Jacobian; NaN
  where ``G_c`` vanishes to rounding (``||G_c||_F <= 256 eps ||G||_F``: a Jacobian that is
  the same at every input, e.g. a one-layer transformer's ``W_out`` before a linear
  unembedding);
- ``cnfa`` (C-NFA) = Pearson(``(W-W0)^T K (W-W0)``, ``(W-W0)^T (W-W0)``), ``W0`` the first
  stored step. At ``W = W0`` both matrices vanish and C-NFA is undefined: NaN;
- ``agop_alignment`` = cosine(G_t, G_final), the final step's AGOP cached in ``ckpt.state``;
- the NFA authors' variants: ``nfa_cos_sqrt`` / ``nfa_cos`` = the uncentred cosine of NFM and
  ``G^{1/2}`` / ``G`` (Radhakrishnan et al.'s ``correlate``); ``nfa_init_removed_sqrt`` /
  ``nfa_init_removed`` = Pearson of the init-removed NFM ``(W-W0)^T (W-W0)`` and ``G^{1/2}`` /
  ``G``; ``nfa_cos_init_removed`` = cosine of ``(W-W0)^T (W-W0)`` and ``G`` (the default of
  their ``verify_deep_NFA.py``). NaN where ``W = W0``.

"Pearson" of two matrices subtracts each one's scalar mean of entries, then takes the cosine;
matrix powers use ``eigh`` in float64 with negative eigenvalues clipped to 0.

Layers are the model's ``linear`` maps (its anatomy), named as there: ``"layers.0"``,
``"blocks.0.mlp.W_in"``, ``"0"``. The default: the in-maps of the hidden layers plus every
other ``nn.Linear``-like map (applied to its module's input, which outputs it, called once),
except the readout.

Exact ways to get ``G``:

closed form
    when a hidden layer has this map as its ``in``, a known elementwise ``activation``, and its
    ``out`` map is the readout, with no position axis (the last hidden layer of an MLP):
    ``J_z(x) = W2 diag(act'(z_x))`` so ``K = (W2^T W2) * (M^T M / n)``, rows of ``M`` the
    ``act'(z_x)``. Checked numerically against the model's logits before use.
general, output space
    when ``z`` is the output of a module (an ``nn.Linear``, a ``hook_pre``): a forward hook
    captures ``z``; per-sample gradients of every logit w.r.t. ``z`` come from class-batched
    backward passes (samples must be independent); ``K`` (or ``J_z W`` when ``in`` is small)
    is accumulated, and C-NFA comes from ``K``.
general, input space
    a raw weight with no hook point for ``z`` (``blocks.0.mlp.W_in`` inside ``blocks.0.mlp``):
    the input of the map's module is replaced by ``h + delta`` (a forward pre-hook, ``delta``
    a zero leaf tensor) and ``J_h`` is the derivative w.r.t. ``delta``: the derivative of the
    logits through that *module*. It equals ``J_z W`` whenever ``h`` feeds only this map
    inside the module (a Nanda/TransformerLens MLP block: ``W_out act(W_in h + b_in) +
    b_out``); a module that also uses ``h`` elsewhere (a residual connection inside it)
    gives the module's AGOP instead. ``G`` and ``G_c`` are accumulated from ``J_h`` directly.
    C-NFA needs ``K``, i.e. ``J_z``: when the map has a bias ``b`` (``z = W h + b``), the bias
    is replaced (``functional_call``) by one copy per sample and position, whose gradient is
    exactly ``J_z``; it is used only if ``J_z W`` reproduces ``J_h`` (the accumulated
    ``W^T K W`` equals ``G`` to 1e-4 of its largest entry), so a bias used anywhere else is
    caught. Without a bias, or when the check fails, C-NFA is NaN and
    ``attrs["cnfa_skipped"]`` says why.

Maps with a position axis (transformers: ``z`` of shape ``(n, T, out)``) use the last position
by default (``position="last"``, docs/methods.md section 5: "the MLP's W_in acting on the
last-position residual"); ``position="all"`` sums the per-position AGOPs over positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..anatomy import ModelView, activation_fn, missing_role
from ..data import Data
from ..errors import ConfigError, GrokscopeError
from ._jacobian import (
    JacobianError,
    as_view,
    chunks,
    evaluation_inputs,
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
#: ``G_c`` is taken as 0 (Pearson undefined) below this many ``eps`` of ``||G||_F``: a layer
#: whose Jacobian is constant (a transformer's last W_out before a linear unembedding) leaves
#: rounding noise of ~3-20 eps there, which would otherwise be reported as a correlation
_CENTRED_TOL = 256
#: the per-layer outputs of the measure, in order
_OUTPUTS = ("nfa_corr_sqrt", "nfa_corr", "nfa_corr_centred", "cnfa", "agop_alignment",
            "nfa_cos_sqrt", "nfa_cos", "nfa_init_removed_sqrt", "nfa_init_removed",
            "nfa_cos_init_removed")
_NO_K = "its output z has no hook point (a raw weight inside its module) to read K = mean J_z^T J_z"


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
def _computable(lin: dict) -> bool:
    return lin.get("module") is not None or lin.get("output") is not None


def default_layers(model: ModelView | nn.Module, x: torch.Tensor | None = None) -> list[str]:
    """The in-maps of the hidden layers plus every other ``nn.Linear``-like map, except the
    readout.

    ``nn.Linear``-like: applied to its module's input, which outputs it (``module`` not None,
    ``output == module``), and called once per forward pass (a shared module has no single
    input ``h``). Maps in the anatomy's order (call order for ``nn.Linear``).

    Parameters
    ----------
    model : ModelView or nn.Module
        The model with its roles (a bare module gets its anatomy detected on ``x``).
    x : tensor, optional
        Inputs; needed only for a bare module.

    Returns
    -------
    list of str
        Linear map names.
    """
    view = model if isinstance(model, ModelView) else as_view(model, x)
    anat = view.anatomy
    hidden_in = {h["in"] for h in anat.hidden if h.get("in")}
    chosen = []
    for lin in anat.linear:
        if lin["name"] == anat.readout or not _computable(lin):
            continue
        linear_like = (lin.get("module") is not None and lin.get("output") == lin["module"]
                       and not lin.get("shared"))
        if lin["name"] in hidden_in or linear_like:
            chosen.append(lin["name"])
    if not chosen:
        raise missing_role(
            "linear", "nfa",
            f"the linear maps are {[lin['name'] for lin in anat.linear]} and the readout is "
            f"{anat.readout!r}; the default leaves out the readout, shared modules and maps "
            "with no hook point, so no layer remains: pass layers=[...] explicitly",
        )
    return chosen


def _resolve_layers(view: ModelView, layers: str | Sequence[str] | None) -> list[str]:
    if layers is None:
        return default_layers(view)
    names = [layers] if isinstance(layers, str) else list(layers)
    anat = view.anatomy
    known = [lin["name"] for lin in anat.linear]
    resolved, bad = [], []
    for k in names:
        try:
            resolved.append(anat.linear_map(k)["name"])
        except ConfigError:
            bad.append(k)
    if bad or not names:
        raise ConfigError(
            f"layers {bad or names} are not linear maps of the model; its linear maps "
            f"(anatomy 'linear') are {known}; name others with anatomy={{'linear': [...]}}"
        )
    if len(set(resolved)) != len(resolved):
        raise ConfigError(f"layers {names} has duplicates")
    internal = [k for k in resolved if not _computable(anat.linear_map(k))]
    if internal:
        raise ConfigError(
            f"linear map(s) {internal} multiply a tensor internal to their module and have no "
            "hook point for their output: their AGOP cannot be taken; give the map's module "
            "(anatomy={'linear': [{'weight': ..., 'module': ...}]}) or a hook point"
        )
    return resolved


def _closed_form_parts(view: ModelView, name: str) -> tuple[str, str] | None:
    """``(activation, readout)`` when a hidden layer computes ``readout(act(z))`` from map
    ``name``'s output ``z`` and the logits have no position axis."""
    anat = view.anatomy
    if anat.readout is None or anat.output.get("position") is not None:
        return None
    for h in anat.hidden:
        if h.get("in") == name and h.get("out") == anat.readout and h.get("activation"):
            try:
                activation_fn(h["activation"])
            except ConfigError:
                return None
            return h["activation"], anat.readout
    return None


def _map_output(view: ModelView, x: torch.Tensor, name: str) -> torch.Tensor:
    """``z = W h + b`` of map ``name`` on ``x`` (read at its hook point when it has one)."""
    lin = view.anatomy.linear_map(name)
    with torch.no_grad():
        if lin.get("output") is not None:
            (z,) = view.capture(x, [(lin["output"], "output")])
            return z.detach()
        return view.apply_map(name, view.map_input(x, name)).detach()


def _class_rows(view: ModelView, w: torch.Tensor) -> torch.Tensor:
    cls_ = view.anatomy.output.get("classes")
    return w if cls_ is None else w[int(cls_[0]) : int(cls_[1])]


def _closed_form_ok(view: ModelView, x: torch.Tensor, name: str) -> bool:
    parts = _closed_form_parts(view, name)
    lin = view.anatomy.linear_map(name)
    if parts is None or (lin.get("output") is None and lin.get("module") is None):
        return False
    act, readout = parts
    x = x[:8]
    z = _map_output(view, x, name)
    if z.ndim != 2:
        return False
    with torch.no_grad():
        logits = view.forward(x)
        again = _class_rows(view, view.apply_map(readout, activation_fn(act)(z)).T).T
    if again.shape != logits.shape:
        return False
    scale = float(logits.abs().max()) + 1e-6
    return bool(torch.allclose(again.to(logits.dtype), logits, rtol=1e-4, atol=1e-5 * scale))


# ------------------------------------------------------------------------ AGOP computation
@dataclass
class LayerAGOP:
    """The AGOP quantities of one linear map.

    Attributes
    ----------
    weight : tensor ``(out, in)``, float64
    agop : tensor ``(in, in)``, float64
        ``G = W^T K W``.
    agop_centred : tensor ``(in, in)``, float64
        Gradient-centred AGOP ``G_c``.
    cnfa_matrix : tensor ``(in, in)`` float64, or None
        ``(W-W0)^T K (W-W0)`` when a reference weight was given, ``W != W0`` and ``K`` is
        available.
    method : str
        ``"closed_form"`` or ``"general"``.
    space : str
        Where the general path differentiated: ``"output"`` (``z``, via ``K``) or ``"input"``
        (``h``, through the map's module); ``"output"`` for the closed form.
    cnfa_skipped : str or None
        Why C-NFA cannot be computed for this map (input space: no bias to give ``K``, or its
        per-sample gradients failed the check against ``J_h``).
    """

    weight: torch.Tensor
    agop: torch.Tensor
    agop_centred: torch.Tensor
    cnfa_matrix: torch.Tensor | None
    method: str
    space: str = "output"
    cnfa_skipped: str | None = None


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
    view: ModelView, x: torch.Tensor, name: str, chunk: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``K`` and the centred ``K_c`` of map ``name`` by the closed form (float64)."""
    act_name, readout = _closed_form_parts(view, name)  # type: ignore[misc]
    act = activation_fn(act_name)
    w2 = _class_rows(view, view.weight(readout)).double()
    mtm = None
    msum = None
    for sl in chunks(x.shape[0], chunk):
        z = _map_output(view, x[sl], name)
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


_BIAS = "#bias"  # suffix of a map's per-sample bias gradient in the general path


def _bias_probe(view: ModelView, x: torch.Tensor, name: str) -> tuple[str, tuple[int, ...]] | str:
    """``(bias key, position dims)`` when replacing map ``name``'s bias by one copy per sample
    (and position) leaves the logits unchanged; else why C-NFA is not available."""
    lin = view.anatomy.linear_map(name)
    key = lin.get("bias")
    if not key:
        return _NO_K + " and it has no bias to differentiate per sample"
    b = view.param(key)
    if tuple(b.shape) != (view.weight(name).shape[0],):
        return _NO_K + f" and its bias {key!r} of shape {tuple(b.shape)} is not (out,)"
    xs = x[:2]
    (h,) = view.capture(xs, [(lin["module"], "input")])
    dims = tuple(h.shape[1:-1])
    try:
        with torch.no_grad():
            copies = b.expand(xs.shape[0], *dims, *b.shape).clone()
            got = view.logits(torch.func.functional_call(view.model, {key: copies}, (xs,)))
            ref = view.forward(xs)
    except Exception as exc:  # noqa: BLE001 - any model code may reject a per-sample bias
        return _NO_K + f" and a per-sample copy of its bias {key!r} fails ({type(exc).__name__})"
    scale = float(ref.abs().max()) + 1e-12
    if got.shape != ref.shape or not torch.allclose(got, ref, rtol=1e-5, atol=1e-6 * scale):
        return _NO_K + f" and a per-sample copy of its bias {key!r} changes the logits"
    return key, dims


def _general(
    view: ModelView,
    x: torch.Tensor,
    weights: dict[str, torch.Tensor],
    deltas: dict[str, torch.Tensor | None],
    chunk: int | None,
    position: str,
    biases: dict[str, tuple[str, tuple[int, ...]]] | None = None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | str | None, str]]:
    """``(G, G_c, C, space)`` per map by the general path; ``C`` is ``(W-W0)^T K (W-W0)``,
    None (no reference, or ``W = W0``) or why it could not be had.

    A map whose output ``z`` has a hook point is differentiated there (output space) and
    accumulated in the cheaper space: either ``K`` itself (``out x out``) or the Jacobian
    projected on ``W`` (and ``W - W0``) when ``in`` is small enough that projecting first
    costs fewer flops. Any other map is differentiated at its module's input (input space):
    ``J_h`` is accumulated directly; with a reference and a bias (``biases``: from
    :func:`_bias_probe`), per-sample bias gradients ``J_z`` give ``(W-W0)^T K (W-W0)``, used
    only when ``J_z W`` reproduces the input-space AGOP.
    """
    biases = biases or {}
    points: dict[str, tuple[str, str]] = {}
    per_sample: dict[str, tuple[str, tuple[int, ...]]] = {}
    plan: dict[str, list[tuple[str, torch.Tensor | None]]] = {}
    width: dict[str, int] = {}  # the last dim each gradient must have
    for k, w in weights.items():
        lin = view.anatomy.linear_map(k)
        out_dim, in_dim = w.shape
        if lin.get("output") is None:
            points[k] = (lin["module"], "input")
            plan[k], width[k] = [("H", None)], in_dim
            if deltas[k] is not None and k in biases:
                per_sample[k + _BIAS] = biases[k]
                plan[k + _BIAS], width[k + _BIAS] = [("W", w), ("D", deltas[k])], out_dim
            continue
        points[k] = (lin["output"], "output")
        width[k] = out_dim
        projs: list[tuple[str, torch.Tensor | None]] = [("W", w)]
        if deltas[k] is not None:
            projs.append(("D", deltas[k]))
        cost_proj = sum(out_dim * in_dim + in_dim * in_dim for _ in projs)
        plan[k] = [("I", None)] if out_dim * out_dim <= cost_proj else projs
    gram: dict[tuple[str, str], torch.Tensor] = {}
    mean: dict[tuple[str, str], dict[int, torch.Tensor]] = {}  # class -> (T, k) sums
    blocks = preactivation_jacobians(view, x, points, chunk=chunk, per_sample=per_sample)
    for _samples, classes, grads in blocks:
        for k, g in grads.items():  # g: (c, n, *t.shape[1:]), t = z, h or a bias copy
            if g.shape[-1] != width[k]:
                base = k.removesuffix(_BIAS)
                raise JacobianError(
                    f"linear map {base!r}: the tensor at {points.get(k, per_sample.get(k))} has "
                    f"last dim {g.shape[-1]}, but the weight {tuple(weights[base].shape)} "
                    f"(out, in) needs {width[k]}: correct the anatomy's 'linear' entry"
                )
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
                if k.endswith(_BIAS):
                    continue  # only C-NFA and the check use these: no means needed
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
        h: torch.Tensor | str | None
        if tag == "I":
            g_full = w64.T @ second @ w64
            g_c = w64.T @ centred @ w64
            d = deltas[k]
            h = None if d is None else d.double().T @ second @ d.double()
        elif tag == "H":
            g_full, g_c, h = second, centred, None
            if (k + _BIAS, "W") in gram:
                again = gram[(k + _BIAS, "W")] / n  # W^T K W from the bias gradients
                scale = float(second.abs().max()) + 1e-300
                if float((again - second).abs().max()) <= 1e-4 * scale:
                    h = gram[(k + _BIAS, "D")] / n
                else:
                    h = (_NO_K + "; the per-sample bias gradients J_z do not reproduce "
                         "J_h = J_z W, so they are not the map's J_z")
        else:
            g_full, g_c = second, centred
            h = gram[(k, "D")] / n if (k, "D") in gram else None
        result[k] = (g_full, g_c, h, "input" if tag == "H" else "output")
    return result


def _reference_view(view: ModelView, reference: ModelView | nn.Module | None) -> ModelView | None:
    if reference is None or isinstance(reference, ModelView):
        return reference
    return ModelView(reference, view.anatomy)


def layer_agops(
    model: ModelView | nn.Module,
    x: torch.Tensor,
    *,
    layers: str | Sequence[str] | None = None,
    method: str = "auto",
    chunk: int | None = 1024,
    position: str = "last",
    reference: ModelView | nn.Module | None = None,
) -> dict[str, LayerAGOP]:
    """The exact AGOP (plain and gradient-centred) of each chosen linear map.

    Parameters
    ----------
    model : ModelView or nn.Module
        The model with its roles (a bare module gets its anatomy detected on ``x``).
    x : tensor, shape ``(n, *input_shape)``
        Raw inputs over which the AGOP averages.
    layers : str, list of str or None
        Linear map names (the anatomy's ``linear`` role: ``"layers.0"``,
        ``"blocks.0.mlp.W_in"``); None = :func:`default_layers`.
    method : {"auto", "closed_form", "general"}
        ``"auto"`` uses the closed form where it applies, the general path elsewhere.
    chunk : int or None
        Samples per forward/backward pass.
    position : {"last", "all"}
        For maps with a position axis: the last position, or the sum over positions.
    reference : ModelView or nn.Module, optional
        The model at initialisation (a module is read with ``model``'s anatomy); when given
        and ``W != W0``, ``(W-W0)^T K (W-W0)`` is also computed (``cnfa_matrix``; None where
        ``W = W0``, or where ``K`` is not available: ``cnfa_skipped`` says why).

    Returns
    -------
    dict of str to LayerAGOP
        In the order of ``layers``.
    """
    if method not in _METHODS:
        raise ConfigError(f"method must be one of {_METHODS}, got {method!r}")
    if position not in _POSITIONS:
        raise ConfigError(f"position must be one of {_POSITIONS}, got {position!r}")
    view = as_view(model, x)
    ref = _reference_view(view, reference)
    names = _resolve_layers(view, layers)
    weights = {k: view.weight(k) for k in names}
    deltas: dict[str, torch.Tensor | None] = {}
    for k in names:
        if ref is None:
            deltas[k] = None
            continue
        try:
            w0 = ref.weight(k)
        except GrokscopeError:
            w0 = None
        if w0 is None or w0.shape != weights[k].shape:
            raise ConfigError(
                f"the reference model has no weight {k!r} of shape {tuple(weights[k].shape)}: "
                "it must be the same architecture"
            )
        delta = weights[k] - w0.to(weights[k])
        deltas[k] = delta if bool(delta.any()) else None  # W = W0: C-NFA undefined
    closed = {k: method != "general" and _closed_form_ok(view, x, k) for k in names}
    if method == "closed_form" and not all(closed.values()):
        bad = [k for k, ok in closed.items() if not ok]
        raise ConfigError(
            f"the closed form does not apply to layer(s) {bad}: it needs a hidden layer with "
            "this map as its 'in', an elementwise activation and the readout as its 'out', "
            "with no position axis (the last hidden layer of an MLP). Use method='auto' or "
            "'general'"
        )
    out: dict[str, LayerAGOP] = {}
    general = [k for k in names if not closed[k]]
    # input-space maps: C-NFA needs K, which per-sample bias gradients give (when they can)
    probes = {k: _bias_probe(view, x, k) for k in general
              if view.anatomy.linear_map(k).get("output") is None}
    biases = {k: v for k, v in probes.items() if not isinstance(v, str)}
    gen = (
        _general(view, x, {k: weights[k] for k in general}, deltas, chunk, position, biases)
        if general
        else {}
    )
    for k in names:
        w64 = weights[k].double()
        if closed[k]:
            kmat, kc = _closed_form_k(view, x, k, chunk)
            d = deltas[k]
            out[k] = LayerAGOP(
                w64,
                w64.T @ kmat @ w64,
                w64.T @ kc @ w64,
                None if d is None else d.double().T @ kmat @ d.double(),
                "closed_form",
            )
        else:
            g_full, g_c, h, space = gen[k]
            skipped = probes.get(k) if isinstance(probes.get(k), str) else None
            if isinstance(h, str):
                skipped, h = h, None
            out[k] = LayerAGOP(w64, g_full, g_c, h, "general", space, skipped)
    return out


def agop(
    model: ModelView | nn.Module,
    x: torch.Tensor,
    layer: str,
    *,
    method: str = "auto",
    chunk: int | None = 1024,
    position: str = "last",
) -> torch.Tensor:
    """The AGOP ``G`` (float64, ``(in, in)``) of one linear map over inputs ``x``."""
    res = layer_agops(model, x, layers=[layer], method=method, chunk=chunk, position=position)
    return next(iter(res.values())).agop


# ------------------------------------------------------------------------ the measure
def _applies(view: ModelView, data: Data) -> str | None:
    try:
        default_layers(view)
    except GrokscopeError as exc:
        return str(exc)
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
        Linear map names (the anatomy's ``linear`` role: ``"layers.0"``,
        ``"blocks.0.mlp.W_in"``); None = the in-maps of the hidden layers plus every other
        nn.Linear-like map, except the readout (:func:`default_layers`).
    split : {"train", "test", "all"}
        The inputs the AGOP averages over.
    max_points : int or None
        First ``max_points`` inputs of the split; None = all.
    method : {"auto", "closed_form", "general"}
    position : {"last", "all"}
        Maps with a position axis: last position only, or the sum over positions.
    chunk : int
        Samples per forward/backward pass.
    store_matrices : bool
        Also return ``nfm`` and ``agop`` with dims ``(layer, in_i, in_j)`` (all chosen layers
        must have the same input size).

    Returns
    -------
    xr.Dataset
        Dim ``layer`` (linear map names): ``nfa_corr_sqrt`` (s=1/2), ``nfa_corr`` (s=1),
        ``nfa_corr_centred`` (gradient-centred AGOP, s=1/2), ``cnfa`` (NaN where W = W0, and
        where ``K`` is not available: ``attrs["cnfa_skipped"]`` says why),
        ``agop_alignment`` (cosine with the final step's AGOP), the authors' variants
        ``nfa_cos_sqrt``, ``nfa_cos`` (uncentred cosine), ``nfa_init_removed_sqrt``,
        ``nfa_init_removed`` (Pearson with ``(W-W0)^T (W-W0)``), ``nfa_cos_init_removed``
        (NaN where W = W0); scalar ``n_points``.
    """
    x = evaluation_inputs(ckpt.data, split, max_points).to(ckpt.device)
    view = ckpt.view
    first = ckpt.reference_view("first")
    res = layer_agops(
        view, x, layers=layers, method=method, chunk=chunk, position=position, reference=first,
    )
    names = list(res)
    key = ("nfa_final_agop", tuple(names), split, max_points, method, position)
    if key not in ckpt.state:
        last = ckpt.reference_view("last")
        final = layer_agops(last, x, layers=names, method=method, chunk=chunk, position=position)
        ckpt.state[key] = {k: v.agop.cpu() for k, v in final.items()}
    finals = ckpt.state[key]

    cols: dict[str, list[float]] = {k: [] for k in _OUTPUTS}
    eps = torch.finfo(view.dtype).eps
    for k, r in res.items():
        nfm = r.weight.T @ r.weight
        root = matrix_power_psd(r.agop, 0.5)
        d = r.weight - first.weight(k).double().to(r.weight.device)
        dnfm = d.T @ d  # the init-removed NFM; 0 at W = W0, where its correlations are NaN
        cols["nfa_corr_sqrt"].append(pearson(nfm, root))
        cols["nfa_corr"].append(pearson(nfm, r.agop))
        if float(r.agop_centred.norm()) <= _CENTRED_TOL * eps * float(r.agop.norm()):
            cols["nfa_corr_centred"].append(float("nan"))  # G_c = 0 up to rounding
        else:
            cols["nfa_corr_centred"].append(pearson(nfm, matrix_power_psd(r.agop_centred, 0.5)))
        cols["cnfa"].append(float("nan") if r.cnfa_matrix is None
                            else pearson(r.cnfa_matrix, dnfm))
        cols["agop_alignment"].append(_cosine(r.agop.cpu(), finals[k]))
        cols["nfa_cos_sqrt"].append(_cosine(nfm, root))
        cols["nfa_cos"].append(_cosine(nfm, r.agop))
        cols["nfa_init_removed_sqrt"].append(pearson(dnfm, root))
        cols["nfa_init_removed"].append(pearson(dnfm, r.agop))
        cols["nfa_cos_init_removed"].append(_cosine(dnfm, r.agop))

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
    ds["nfa_cos_sqrt"].attrs["long_name"] = "cosine(W^T W, AGOP^(1/2)) (uncentred)"
    ds["nfa_cos"].attrs["long_name"] = "cosine(W^T W, AGOP) (uncentred)"
    ds["nfa_init_removed_sqrt"].attrs["long_name"] = "Pearson((W-W0)^T (W-W0), AGOP^(1/2))"
    ds["nfa_init_removed"].attrs["long_name"] = "Pearson((W-W0)^T (W-W0), AGOP)"
    ds["nfa_cos_init_removed"].attrs["long_name"] = "cosine((W-W0)^T (W-W0), AGOP)"
    ds.attrs.update(
        method_per_layer=[r.method for r in res.values()],
        layers_default="the hidden layers' in-maps and every other nn.Linear-like map (applied "
        "to its module's input, called once), except the readout",
        space_per_layer=[r.space for r in res.values()],
        cnfa_skipped="; ".join(f"{k}: {r.cnfa_skipped}" for k, r in res.items() if r.cnfa_skipped),
        agop_definition="W^T K W, K = mean_x J_z^T J_z (each output separately), J through this "
        "map; input space: mean_x J_h^T J_h, J_h through the map's module",
        position_rule="z with a position axis: 'last' = last position, 'all' = sum over positions",
        cnfa_at_init="NaN (W = W0 makes both matrices zero); so are the init-removed variants",
        authors_variants="the NFA authors' variants: nfa_cos(_sqrt) = uncentred cosine instead "
        "of Pearson (Radhakrishnan et al.'s correlate); nfa_init_removed(_sqrt) = Pearson of the "
        "init-removed NFM (W-W0)^T (W-W0) with AGOP^s; nfa_cos_init_removed = cosine of "
        "(W-W0)^T (W-W0) with AGOP (s = 1), the default of their verify_deep_NFA.py; W0 = the "
        "first stored step",
        centred_undefined=f"nfa_corr_centred is NaN where ||G_c||_F <= {_CENTRED_TOL} eps "
        "||G||_F (eps of the model's dtype): the Jacobian is the same at every input and G_c "
        "is 0 up to rounding",
        matrix_power="eigh in float64, negative eigenvalues clipped to 0",
    )
    return ds
