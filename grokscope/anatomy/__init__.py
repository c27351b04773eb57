"""Model anatomy: how every measure sees ANY model, by roles.

Measures never probe model attributes (``hasattr(model, "layers")``). They ask a
:class:`ModelView` (a model plus its :class:`Anatomy`) for a role: the differentiable
``input``, the ``output`` logits, the ``hidden`` neuron layers, the ``linear`` maps, the token
``embedding`` and ``unembedding`` tables, the ``readout``. Roles are

- **detected** (:func:`detect`) from one probe forward pass, for grokscope's models, stacks of
  ``nn.Linear`` under any names (``nn.Sequential`` or a custom class, functional activations
  included), ``nn.Embedding`` front ends, raw-parameter models in the Nanda /
  TransformerLens naming (``embed.W_E``, ``blocks.N.mlp.W_in``/``W_out``, ``unembed.W_U``, in
  either orientation) and Hugging Face style linear names; every inference is checked
  numerically against the probe pass;
- **stored** in a run's ``config["anatomy"]`` at record/import time (:func:`describe`), so a
  model rebuilt without its code keeps them;
- **overridden** with ``anatomy={...}`` wherever ``model=`` is accepted (:func:`resolve`).

>>> import torch, grokscope.anatomy as ga
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
>>> anat = ga.detect(net, torch.randn(4, 4))
>>> [h["name"] for h in anat.hidden], anat.readout
(['0'], '2')
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ._detect import _close, _orient, detect
from ._roles import ROLE_HELP, ROLES, Anatomy, missing_role
from ._view import ModelView, activation_fn, model_output_tensor

__all__ = [
    "ROLES",
    "ROLE_HELP",
    "Anatomy",
    "ModelView",
    "activation_fn",
    "describe",
    "detect",
    "missing_role",
    "model_output_tensor",
    "probe_inputs",
    "resolve",
]


def probe_inputs(data: Any, n: int = 4) -> torch.Tensor:
    """A few training inputs to probe a model with (``(min(n, n_train), *input_shape)``)."""
    return data.x_train[: max(2, n)]


def _probe_for(model: nn.Module, data: Any) -> torch.Tensor:
    """:func:`probe_inputs` as ``model`` takes them: float inputs in the dtype and on the
    device of its first floating parameter."""
    x = probe_inputs(data)
    if torch.is_floating_point(x):
        for p in model.parameters():
            if torch.is_floating_point(p):
                return x.to(device=p.device, dtype=p.dtype)
    return x


def _detect_for(model: nn.Module, data: Any) -> Anatomy:
    return detect(model, _probe_for(model, data), n_classes=getattr(data, "n_classes", None))


def describe(model: nn.Module, data: Any) -> dict[str, Any] | None:
    """The detected anatomy as a JSON-able dict, or None (with one warning) when the model
    cannot even be probed. Never raises: recording must not fail because of it."""
    try:
        return _detect_for(model, data).to_dict()
    except Exception as exc:  # noqa: BLE001 - any model code may fail; recording goes on
        warnings.warn(
            f"grokscope could not probe the model's anatomy ({type(exc).__name__}: {exc}); "
            "measures will detect it again at analysis time, or pass anatomy={...}",
            stacklevel=2,
        )
        return None


# --------------------------------------------------------------------------- overrides
def _module_input_dim(model: nn.Module, data: Any, path: str) -> int:
    view = ModelView(model, Anatomy())
    (h,) = view.capture(_probe_for(model, data), [(path, "input")])
    return int(h.shape[-1])


def _linear_entry(model: nn.Module, data: Any, item: Any) -> dict[str, Any]:
    if isinstance(item, dict):
        entry = {"bias": None, "module": None, "output": None, **item}
        entry.setdefault("name", entry.get("weight"))
        return entry
    if not isinstance(item, str):
        raise ConfigError(f"a linear map is a module path or a weight key, got {item!r}")
    mods = dict(model.named_modules())
    if isinstance(mods.get(item), nn.Linear):
        lin = mods[item]
        return {"name": item, "weight": f"{item}.weight",
                "bias": f"{item}.bias" if lin.bias is not None else None,
                "module": item, "orientation": "out_in", "output": item}
    parent, _, leaf = item.rpartition(".")
    w = getattr(mods.get(parent), leaf, None) if parent in mods else None
    if not isinstance(w, torch.Tensor) or w.ndim != 2:
        raise ConfigError(
            f"linear map {item!r} is neither an nn.Linear module nor a 2-D weight of the model"
        )
    orient = _orient(w, _module_input_dim(model, data, parent), leaf)
    if orient is None:
        raise ConfigError(
            f"weight {item!r} of shape {tuple(w.shape)} does not multiply the input of module "
            f"{parent!r}; give {{'weight': ..., 'module': ..., 'orientation': 'out_in'|'in_out'}}"
        )
    bias_leaf = "b_" + leaf[2:] if leaf.startswith("W_") else "bias"
    bias = f"{parent}.{bias_leaf}" if isinstance(getattr(mods[parent], bias_leaf, None), torch.Tensor) else None
    return {"name": item, "weight": item, "bias": bias, "module": parent,
            "orientation": orient, "output": None}


def _table(model: nn.Module, data: Any, role: str, item: Any, anat: Anatomy) -> dict | None:
    if item is None or isinstance(item, dict):
        return item
    if not isinstance(item, str):
        raise ConfigError(f"{role} is a module path or a parameter key, got {item!r}")
    mods = dict(model.named_modules())
    if isinstance(mods.get(item), nn.Embedding):
        return {"param": f"{item}.weight", "orientation": "rows"}
    parent, _, leaf = item.rpartition(".")
    w = getattr(mods.get(parent), leaf, None) if parent in mods else None
    if not isinstance(w, torch.Tensor) or w.ndim != 2:
        raise ConfigError(f"{role} {item!r} is not a 2-D parameter (or nn.Embedding) of the model")
    if role == "embedding":
        x = _probe_for(model, data)
        view = ModelView(model, anat)
        (out,) = view.capture(x, [(parent, "output")])
        tok = x.long()
        if w.shape[0] > int(tok.max()) and _close(w.detach()[tok], out):
            return {"param": item, "orientation": "rows"}
        return {"param": item, "orientation": "columns"}
    n_out = ModelView(model, anat).forward(_probe_for(model, data)[:2]).shape[1]
    if w.shape[0] == n_out and not (w.shape[1] == n_out and leaf.startswith("W_")):
        return {"param": item, "orientation": "rows"}
    return {"param": item, "orientation": "columns"}


def _output(value: Any, base: dict) -> dict:
    if value == "last":
        return {**base, "position": -1}
    if value == "all" or value is None:
        return {**base, "position": None}
    if isinstance(value, int):
        return {**base, "position": value}
    if isinstance(value, dict):
        return {"position": base.get("position"), "classes": base.get("classes"), **value}
    raise ConfigError(f"anatomy 'output' must be 'last', 'all', a position or a dict, got {value!r}")


def _hidden(item: Any) -> dict:
    if isinstance(item, str):
        return {"name": item, "in": None, "out": None, "activation": None,
                "capture": {"module": item, "at": "output"}}
    if isinstance(item, dict):
        entry = {"in": None, "out": None, "activation": None, "capture": None, **item}
        entry.setdefault("name", (entry["capture"] or {}).get("module") or entry["in"])
        return entry
    raise ConfigError(f"a hidden layer is a module path or a dict, got {item!r}")


def _apply_override(anat: Anatomy, override: dict, model: nn.Module, data: Any) -> Anatomy:
    unknown = sorted(set(override) - set(ROLES))
    if unknown:
        raise ConfigError(f"unknown anatomy role(s) {unknown}; the roles are {list(ROLES)}")
    doc = anat.to_dict()
    if "input" in override:
        v = override["input"]
        doc["input"] = v if isinstance(v, dict) else {"module": None if v in (None, "raw") else v}
    if "output" in override:
        doc["output"] = _output(override["output"], doc["output"])
    if "linear" in override:
        doc["linear"] = [_linear_entry(model, data, it) for it in override["linear"]]
    if "hidden" in override:
        doc["hidden"] = [_hidden(it) for it in override["hidden"]]
    if "readout" in override:
        doc["readout"] = override["readout"]
    out = Anatomy.from_dict(doc)
    for role in ("embedding", "unembedding"):
        if role in override:
            setattr(out, role, _table(model, data, role, override[role], out))
    out.notes.append(f"roles {sorted(override)} given by the user")
    return out


def check(anat: Anatomy, model: nn.Module) -> None:
    """Every module and parameter the anatomy names exists in ``model`` (else ConfigError
    naming the role)."""
    mods = dict(model.named_modules())
    view = ModelView(model, anat)

    def has_param(key: str) -> bool:
        try:  # by module path, as the view reads it (a wrapper may rename named_parameters)
            view.param(key)
        except ConfigError:
            return False
        return True

    def need_module(path: str | None, role: str) -> None:
        if path is not None and path not in mods:
            raise ConfigError(
                f"anatomy role {role!r} names module {path!r}, which the model does not have; "
                f"supply it with {ROLE_HELP[role]}"
            )

    def need_param(key: str | None, role: str) -> None:
        if key is not None and not has_param(key):
            raise ConfigError(
                f"anatomy role {role!r} names parameter {key!r}, which the model does not have; "
                f"supply it with {ROLE_HELP[role]}"
            )

    need_module(anat.input.get("module"), "input")
    for lin in anat.linear:
        need_param(lin["weight"], "linear")
        need_param(lin.get("bias"), "linear")
        need_module(lin.get("module"), "linear")
        need_module(lin.get("output"), "linear")
    names = {lin["name"] for lin in anat.linear}
    for h in anat.hidden:
        if h.get("capture"):
            need_module(h["capture"]["module"], "hidden")
        for k in ("in", "out"):
            if h.get(k) is not None and h[k] not in names:
                raise ConfigError(f"hidden layer {h['name']!r} names linear map {h[k]!r}, "
                                  f"which is not among the linear maps {sorted(names)}")
    for role in ("embedding", "unembedding"):
        t = getattr(anat, role)
        if t is not None:
            need_param(t["param"], role)
    if anat.readout is not None and anat.readout not in names:
        raise ConfigError(f"readout {anat.readout!r} is not among the linear maps {sorted(names)}")


def resolve(model: nn.Module, data: Any, *, stored: dict | None = None,
            override: dict | Anatomy | None = None) -> Anatomy:
    """The anatomy measures use for ``model``: ``override`` (the user's roles) over ``stored``
    (a run's ``config["anatomy"]``, detected on the original model) or, without one, over a
    fresh detection; checked against ``model``.
    """
    if isinstance(override, Anatomy):
        anat = override
    else:
        anat = Anatomy.from_dict(stored) if stored else _detect_for(model, data)
        if override:
            if not isinstance(override, dict):
                raise ConfigError(f"anatomy must be a dict of roles, got {type(override).__name__}")
            anat = _apply_override(anat, override, model, data)
    check(anat, model)
    return _adapt(anat, model, data)


def _adapt(anat: Anatomy, model: nn.Module, data: Any) -> Anatomy:
    """Fit a stored anatomy to the model in hand: a capture point or map output that this
    model never calls (an exported program skips TransformerLens's identity hook points) is
    dropped for the computed route (``activation(W_in h + b)``, the map applied to its input),
    with a note."""
    wanted = {h["capture"]["module"] for h in anat.hidden if h.get("capture")}
    wanted |= {lin["output"] for lin in anat.linear if lin.get("output")}
    if not wanted:
        return anat
    called: set[str] = set()
    handles = []
    try:
        for path in wanted:
            mod = model.get_submodule(path)
            handles.append(mod.register_forward_pre_hook(
                lambda _m, _a, path=path: called.add(path)))
        with torch.no_grad():
            model(_probe_for(model, data))
    except Exception:  # noqa: BLE001 - the measures will report a model that does not run
        return anat
    finally:
        for h in handles:
            h.remove()
    if wanted <= called:
        return anat
    out = Anatomy.from_dict(anat.to_dict())
    for h in out.hidden:
        cap = h.get("capture")
        if cap and cap["module"] not in called and h.get("in") and h.get("activation"):
            h["capture"] = None
            out.notes.append(f"hidden layer {h['name']!r}: {cap['module']!r} is not called by "
                             "this model; its activations are computed from its in map")
    for lin in out.linear:
        if lin.get("output") and lin["output"] not in called and lin["output"] != lin.get("module"):
            out.notes.append(f"linear map {lin['name']!r}: {lin['output']!r} is not called by "
                             "this model; its output is computed from its input")
            lin["output"] = None
    return out
