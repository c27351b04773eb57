"""Detect a model's anatomy from one probe forward pass.

Every module is hooked once on a few inputs; what it receives and returns (and in which order
modules are called) is all detection uses, plus module types for ``nn.Linear`` /
``nn.Embedding`` and parameter names for raw-parameter models. Every inferred fact that could
be wrong is checked numerically against that forward pass: an activation is accepted only if
it reproduces the next layer's input, a raw weight's orientation only if it reproduces the
module's output, a readout only if its output equals the logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ._roles import Anatomy
from ._view import _ACTIVATIONS, activation_fn, model_output_tensor

__all__ = ["detect"]

_SKIP_TYPES = (nn.Embedding, nn.LayerNorm, nn.BatchNorm1d, nn.GroupNorm)
_ACT_ORDER = ("relu", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid", "quadratic", "erf",
              "leaky_relu", "elu", "softplus", "identity")
assert set(_ACT_ORDER) == set(_ACTIVATIONS)


@dataclass
class _Call:
    """What one module saw in the probe pass (its first call)."""

    order: int
    calls: int = 0
    inp: torch.Tensor | None = None
    out: torch.Tensor | None = None
    children: list[str] = field(default_factory=list)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    a, b = a.double(), b.double()
    scale = float(b.abs().max()) + 1e-12 if b.numel() else 1.0
    return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5 * scale))


def _probe(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, _Call], torch.Tensor]:
    calls: dict[str, _Call] = {}
    counter = [0]
    handles = []

    def pre(name: str):
        def hook(_m, args, kwargs):
            c = calls.get(name)
            if c is None:
                c = calls[name] = _Call(order=counter[0])
                counter[0] += 1
                for a in (*args, *kwargs.values()):
                    if isinstance(a, torch.Tensor):
                        c.inp = a.detach()
                        break
            c.calls += 1

        return hook

    def post(name: str):
        def hook(_m, _args, out):
            c = calls[name]
            if c.out is None and isinstance(out, torch.Tensor):
                c.out = out.detach()

        return hook

    for name, mod in model.named_modules():  # "" is the model itself (raw parameters at its root)
        handles.append(mod.register_forward_pre_hook(pre(name), with_kwargs=True))
        handles.append(mod.register_forward_hook(post(name)))
    try:
        with torch.no_grad():
            out = model_output_tensor(model(x)).detach()
    finally:
        for h in handles:
            h.remove()
    for name in calls:
        parent = name.rpartition(".")[0]
        if name and parent in calls:
            calls[parent].children.append(name)
    return calls, out


def _prefix(name: str) -> str:
    """The key prefix of module ``name``'s own parameters (none for the model itself)."""
    return name + "." if name else ""


def _matching_act(z: torch.Tensor, target: torch.Tensor) -> str | None:
    for name in _ACT_ORDER:
        if _close(activation_fn(name)(z.double()), target):
            return name
    return None


def _orient(w: torch.Tensor, d_in: int, leaf: str) -> str | None:
    """``"out_in"`` when ``w`` is ``(out, in)`` for inputs of size ``d_in``, ``"in_out"`` when
    ``(in, out)``, None when neither; a square weight follows the naming convention
    (TransformerLens ``W_*`` are ``(in, out)``, ``weight`` is PyTorch's ``(out, in)``)."""
    a, b = w.shape
    if b == d_in and a != d_in:
        return "out_in"
    if a == d_in and b != d_in:
        return "in_out"
    if a == b == d_in:
        return "in_out" if leaf.startswith("W_") else "out_in"
    return None


def _bias_key(mod: nn.Module, prefix: str, leaf: str) -> str | None:
    for cand in (("b_" + leaf[2:]) if leaf.startswith("W_") else None, "bias"):
        if cand and isinstance(getattr(mod, cand, None), torch.Tensor) and cand != leaf:
            return prefix + cand
    return None


def _apply(w: torch.Tensor, orientation: str, b: torch.Tensor | None,
           h: torch.Tensor) -> torch.Tensor | None:
    """``W h + b`` in float64, or None when the shapes do not fit."""
    w = w.double() if orientation == "out_in" else w.double().T
    if h.shape[-1] != w.shape[1] or (b is not None and tuple(b.shape) != (w.shape[0],)):
        return None
    z = h.double() @ w.T
    return z if b is None else z + b.double()


def _tokens_of(t: torch.Tensor, x: torch.Tensor) -> bool:
    """``t`` is (a column subset of) the raw tokens ``x``: same rows, each column one of x's."""
    if torch.is_floating_point(t) or t.ndim != 2 or t.shape[0] != x.shape[0] or x.ndim != 2:
        return False
    return all(any(torch.equal(t[:, j], x[:, k]) for k in range(x.shape[1]))
               for j in range(t.shape[1]))


def _token_embedding(model: nn.Module, calls: dict[str, _Call], x: torch.Tensor,
                     anat: Anatomy) -> None:
    """Find the module that maps the raw tokens to vectors, and its table."""
    if torch.is_floating_point(x):
        return
    for name, c in sorted(calls.items(), key=lambda kv: kv[1].order):
        if c.inp is None or c.out is None or not _tokens_of(c.inp, x):
            continue
        if not torch.is_floating_point(c.out) or c.out.shape[:-1] != c.inp.shape:
            continue
        mod = model.get_submodule(name)
        prefix = _prefix(name)
        cands = [("weight", mod.weight)] if isinstance(mod, nn.Embedding) else [
            (k, p) for k, p in mod.named_parameters(recurse=False) if p.ndim == 2]
        for leaf, w in cands:
            w = w.detach()
            tok = c.inp.long()
            if w.shape[0] > int(tok.max()) and _close(w[tok], c.out):
                anat.embedding = {"param": prefix + leaf, "orientation": "rows"}
            elif w.shape[1] > int(tok.max()) and _close(w[:, tok].permute(*range(1, tok.ndim + 1), 0), c.out):
                anat.embedding = {"param": prefix + leaf, "orientation": "columns"}
            if anat.embedding:
                anat.input = {"module": name}
                return


def _linear_maps(model: nn.Module, calls: dict[str, _Call], anat: Anatomy) -> dict[str, tuple]:
    """nn.Linear modules and raw 2-D weights applied to their module's input.

    A raw weight is kept only when the probe confirms it: the module's output equals ``W h + b``
    (a custom linear module, an unembedding), a child hook point outputs it (``hook_pre``), or
    it is the first map of a raw MLP (see :func:`_raw_mlps`). Unconfirmed ones carry
    ``"_verified": False`` until then.

    Returns ``{map name: (h, z)}``: each map's probe input and output.
    """
    seen: dict[str, tuple] = {}
    for name, c in sorted(calls.items(), key=lambda kv: kv[1].order):
        mod = model.get_submodule(name)
        if isinstance(mod, nn.Linear):
            if c.inp is None or c.out is None or not name:  # a bare nn.Linear: no anatomy
                continue
            anat.linear.append({
                "name": name, "weight": f"{name}.weight",
                "bias": f"{name}.bias" if mod.bias is not None else None,
                "module": name, "orientation": "out_in", "output": name,
                **({"shared": True} if c.calls > 1 else {}),
            })
            seen[name] = (c.inp, c.out)
            continue
        if isinstance(mod, _SKIP_TYPES) or c.inp is None or not torch.is_floating_point(c.inp):
            continue
        if anat.embedding and anat.embedding["param"].startswith(name + "."):
            continue
        d_in = c.inp.shape[-1]
        for leaf, w in mod.named_parameters(recurse=False):
            if w.ndim != 2 or "pos" in leaf.lower() or leaf == "W_E":
                continue
            orient = _orient(w, d_in, leaf)
            if orient is None:
                continue
            key = _prefix(name) + leaf
            bias = _bias_key(mod, _prefix(name), leaf)
            b = None if bias is None else getattr(mod, bias.rpartition(".")[2]).detach()
            z = _apply(w.detach(), orient, b, c.inp)
            if z is None:
                continue
            entry = {"name": key, "weight": key, "bias": bias, "module": name,
                     "orientation": orient, "output": None, "_verified": False}
            if c.out is not None and _close(z, c.out):
                entry.update(output=name, _verified=True)
            for child in c.children:  # a hook point whose output is z (TransformerLens hook_pre)
                cc = calls[child]
                if not entry["_verified"] and cc.out is not None and _close(z, cc.out):
                    entry.update(output=child, _verified=True)
            anat.linear.append(entry)
            seen[key] = (c.inp, z)
    return seen


def _second_map(model: nn.Module, mod_name: str, c: _Call, first: dict, z: torch.Tensor,
                calls: dict[str, _Call]) -> tuple[dict, dict, tuple] | None:
    """``(out map, hidden layer, (act(z), out))`` when module ``mod_name`` computes
    ``W2 act(z) + b2``."""
    mod = model.get_submodule(mod_name)
    width, d_out = z.shape[-1], c.out.shape[-1]
    for leaf, w in mod.named_parameters(recurse=False):
        key = _prefix(mod_name) + leaf
        if w.ndim != 2 or key == first["weight"]:
            continue
        bias = _bias_key(mod, _prefix(mod_name), leaf)
        b = None if bias is None else getattr(mod, bias.rpartition(".")[2]).detach()
        for orient, shape in (("out_in", (d_out, width)), ("in_out", (width, d_out))):
            if tuple(w.shape) != shape:
                continue
            for act in _ACT_ORDER:
                post = activation_fn(act)(z)
                y = _apply(w.detach(), orient, b, post)
                if y is None or not _close(y, c.out):
                    continue
                capture = None
                for child in c.children:  # a hook point whose output is the post-activation
                    cc = calls[child]
                    if cc.out is not None and _close(post, cc.out):
                        capture = {"module": child, "at": "output"}
                out_map = {"name": key, "weight": key, "bias": bias, "module": None,
                           "orientation": orient, "output": None}
                hidden = {"name": mod_name or first["name"], "in": first["name"], "out": key,
                          "activation": act, "capture": capture}
                return out_map, hidden, (post, y)
    return None


def _raw_mlps(model: nn.Module, calls: dict[str, _Call], anat: Anatomy,
              maps: dict[str, tuple]) -> None:
    """Modules ``out = W_out act(W_in h + b_in) + b_out`` built from raw parameters; then
    drop the raw weights nothing confirmed."""
    for lin in list(anat.linear):
        if "_verified" not in lin or lin["output"] == lin["module"]:
            continue  # nn.Linear, or a module that is just this map
        c = calls[lin["module"]]
        if c.out is None:
            continue
        found = _second_map(model, lin["module"], c, lin, maps[lin["name"]][1], calls)
        if found is not None:
            lin["_verified"] = True
            anat.linear = [m for m in anat.linear if m["weight"] != found[0]["weight"]]
            anat.linear.append(found[0])
            anat.hidden.append(found[1])
            maps[found[0]["name"]] = found[2]  # the readout when its output is the logits
    dropped = [lin["name"] for lin in anat.linear if lin.get("_verified") is False]
    anat.linear = [lin for lin in anat.linear if lin.get("_verified") is not False]
    for lin in anat.linear:
        lin.pop("_verified", None)
    if dropped:
        anat.notes.append(
            f"raw weights {dropped} could not be confirmed as maps of their module's input "
            "(the module does more than multiply); name them in anatomy={'linear': [...]} "
            "to use them"
        )


def _linear_stacks(calls: dict[str, _Call], anat: Anatomy, maps: dict[str, tuple]) -> None:
    """Consecutive nn.Linear A, B with B's input = act(A's output): a hidden layer."""
    linear = [lin for lin in anat.linear if lin["module"] is not None
              and lin["output"] == lin["module"] and not lin.get("shared") and lin["name"] in maps]
    for a, b in zip(linear[:-1], linear[1:]):
        (_, za), (hb, _) = maps[a["name"]], maps[b["name"]]
        act = _matching_act(za, hb) if za.shape == hb.shape else None
        if act is not None:
            anat.hidden.append({"name": a["name"], "in": a["name"], "out": b["name"],
                                "activation": act, "capture": {"module": b["name"], "at": "input"}})


def _output_role(logits: torch.Tensor, x: torch.Tensor, n_classes: int | None, anat: Anatomy) -> torch.Tensor:
    pos = None
    if logits.ndim == 3 and x.ndim >= 2 and logits.shape[1] == x.shape[1]:
        pos = -1
    anat.output = {"position": pos, "classes": None}
    sel = logits[:, pos] if pos is not None else logits
    sel = sel.reshape(sel.shape[0], -1)
    if n_classes is not None and sel.shape[1] > n_classes:
        anat.output["classes"] = [0, int(n_classes)]
        anat.notes.append(
            f"the model has {sel.shape[1]} outputs and the data {n_classes} classes: logits "
            f"0..{n_classes - 1} are used"
        )
    return sel


def _readout(anat: Anatomy, maps: dict[str, tuple], logits: torch.Tensor) -> None:
    """The last map whose output, read like the logits, equals them; its table is the
    unembedding."""
    for lin in reversed(anat.linear):
        if lin["name"] not in maps:
            continue
        z = maps[lin["name"]][1]
        pos = anat.output["position"]
        if pos is not None and z.ndim == 3:
            z = z[:, pos]
        z = z.reshape(z.shape[0], -1)
        if z.shape[1] >= logits.shape[1] and _close(z[:, : logits.shape[1]], logits.double()):
            anat.readout = lin["name"]
            anat.unembedding = {"param": lin["weight"],
                                "orientation": "rows" if lin["orientation"] == "out_in" else "columns"}
            return


def detect(model: nn.Module, x: torch.Tensor, *, n_classes: int | None = None) -> Anatomy:
    """The anatomy of ``model`` from a probe forward pass on ``x`` (a few raw inputs).

    Parameters
    ----------
    model : nn.Module
    x : tensor, shape ``(n, *input_shape)``
        A few inputs the model takes (2 to 8 rows are plenty).
    n_classes : int, optional
        Classes of the task: a model with more outputs (e.g. a vocabulary with "=") is read on
        the first ``n_classes``.

    Returns
    -------
    Anatomy
    """
    was_training = model.training
    model.eval()
    try:
        calls, out = _probe(model, x)
    finally:
        model.train(was_training)
    anat = Anatomy()
    _token_embedding(model, calls, x, anat)
    if anat.input["module"] is None and not torch.is_floating_point(x):
        anat.notes.append("integer inputs and no token embedding found: no input role")
    logits = _output_role(out, x, n_classes, anat)
    maps = _linear_maps(model, calls, anat)
    _raw_mlps(model, calls, anat, maps)
    _linear_stacks(calls, anat, maps)
    order = {lin["name"]: i for i, lin in enumerate(anat.linear)}
    anat.hidden.sort(key=lambda h: order.get(h["in"], 0))
    _readout(anat, maps, logits)
    _one_hot_embedding(anat, maps, x)
    return anat


def _one_hot_embedding(anat: Anatomy, maps: dict[str, tuple], x: torch.Tensor) -> None:
    """With one-hot (or multi-hot) float inputs, the first map on the raw input is a token
    embedding: its column ``k`` is what input unit ``k`` adds."""
    if anat.embedding is not None or not torch.is_floating_point(x) or x.ndim != 2:
        return
    if not bool(((x == 0) | (x == 1)).all()):
        return
    for lin in anat.linear:
        h = maps.get(lin["name"], (None,))[0]
        if h is not None and h.shape == x.shape and torch.equal(h.to(x.dtype), x):
            anat.embedding = {"param": lin["weight"],
                              "orientation": "columns" if lin["orientation"] == "out_in" else "rows"}
            anat.notes.append(
                f"one-hot inputs: the embedding is the first layer {lin['name']!r} (row k of the "
                "table is what input unit k adds)"
            )
            return
