"""Reference networks by name, and the model spec stored with every run.

>>> from grokscope.models import build_model, model_for
>>> m = build_model("mlp", in_dim=10, out_dim=2, width=64)
>>> m.grokscope_spec
{'name': 'mlp', 'kwargs': {'in_dim': 10, 'out_dim': 2, 'width': 64, ...}}

A model built here carries ``grokscope_spec = {"name": ..., "kwargs": {...}}`` (every
constructor argument, defaults included), which :func:`build_from_spec` turns back into
the same architecture. Any other model is described by its class,
``{"factory": "module:qualname", "kwargs": {...} or None}`` (``kwargs`` known when the
recorder/importer is given ``model_kwargs``, or the model was built from a class here); such
code is imported only when the caller trusts the store (``trust_code=True``). A store also
keeps the architecture itself as a ``torch.export`` program (:mod:`grokscope.store.portable`),
which needs no code at all.

================  ==========================================================================
``"mlp"``         :class:`~grokscope.models.mlp.MLP` (two-layer quadratic / erf nets are
                  ``depth=1`` with ``activation="quadratic"`` / ``"erf"``)
``"transformer"`` :class:`~grokscope.models.transformer.Transformer` (Nanda et al. 2023)
================  ==========================================================================
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import Data
from ..errors import ConfigError, UnknownNameError, UntrustedCodeError
from .mlp import MLP
from .transformer import Transformer

__all__ = [
    "MLP",
    "Transformer",
    "build_from_spec",
    "build_model",
    "is_builtin",
    "model_for",
    "names",
    "register_model",
    "spec_of",
]

_MODELS: dict[str, Callable[..., nn.Module]] = {}

#: default ``embed_dim`` of an MLP on token inputs when :func:`model_for` is not given one
DEFAULT_EMBED_DIM = 32


def register_model(
    name: str, factory: Callable[..., nn.Module] | None = None, *, overwrite: bool = False
) -> Any:
    """Register ``factory(**kwargs) -> nn.Module`` (a class or function) under ``name``.

    Usable directly or as a decorator (``@register_model("mine")``). Its keyword arguments
    must be JSON-able for the spec to be stored. Registering a taken name raises
    :class:`ConfigError` unless ``overwrite=True``.
    """

    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not callable(fn):
            raise ConfigError(f"register_model({name!r}): the factory must be callable, got {fn!r}")
        if name in _MODELS and not overwrite and _MODELS[name] is not fn:
            raise ConfigError(
                f"model {name!r} is already registered; pass overwrite=True to replace it"
            )
        _MODELS[name] = fn
        return fn

    return add if factory is None else add(factory)


def names() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_MODELS)


def is_builtin(name: Any) -> bool:
    """Whether ``name`` is registered to a model that ships with grokscope (rebuilt by name in
    any process), as opposed to one a user's script registered."""
    fn = _MODELS.get(name) if isinstance(name, str) else None
    return fn is not None and getattr(fn, "__module__", "").startswith("grokscope.")


def _factory(name: str) -> Callable[..., nn.Module]:
    if not isinstance(name, str) or name not in _MODELS:
        raise UnknownNameError(f"unknown model {name!r}; known models: {', '.join(names())}")
    return _MODELS[name]


def _bind(name: str, factory: Callable[..., nn.Module], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every constructor argument (defaults filled in), checked against the signature."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature
        return dict(kwargs)
    try:
        bound = sig.bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"model {name!r}: {exc}; its parameters are {list(sig.parameters)}"
        ) from exc
    bound.apply_defaults()
    out: dict[str, Any] = {}
    for key, value in bound.arguments.items():
        kind = sig.parameters[key].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif kind is not inspect.Parameter.VAR_POSITIONAL:
            out[key] = value
    # numpy scalars (e.g. sizes computed with numpy) become plain Python values for JSON
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in out.items()}


def build_model(name_or_spec: str | dict[str, Any] | type, **kwargs: Any) -> nn.Module:
    """Build a model.

    Parameters
    ----------
    name_or_spec : str, dict or class
        A registered name; a spec ``{"name": ..., "kwargs": {...}}`` (``kwargs`` given here
        override the spec's); or an ``nn.Module`` class (then described by its
        ``module:qualname``).
    **kwargs
        Constructor arguments.

    Returns
    -------
    nn.Module
        With ``grokscope_spec`` set, so :func:`spec_of` / :func:`build_from_spec` round-trip.

    Raises
    ------
    UnknownNameError
        The name is not registered (the message lists the names).
    ConfigError
        A keyword is not accepted by the model.
    UntrustedCodeError
        A ``factory`` spec was given (use ``build_from_spec(spec, trust_code=True)``).
    """
    if isinstance(name_or_spec, dict):
        if "name" not in name_or_spec:
            return build_from_spec(
                {**name_or_spec, "kwargs": {**(name_or_spec.get("kwargs") or {}), **kwargs}}
            )
        name = name_or_spec["name"]
        kwargs = {**(name_or_spec.get("kwargs") or {}), **kwargs}
    elif isinstance(name_or_spec, type):
        return _call_factory(name_or_spec, _qualified(name_or_spec), kwargs)
    else:
        name = name_or_spec
    factory = _factory(name)
    full = _bind(name, factory, kwargs)
    model = factory(**full)
    model.grokscope_spec = {"name": name, "kwargs": full}
    return model


def _qualified(obj: Any) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def spec_of(model: nn.Module, kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """How to rebuild ``model``'s architecture.

    Parameters
    ----------
    model : nn.Module
    kwargs : dict, optional
        Its constructor arguments, when the caller knows them (``model_kwargs=``); they
        replace the kwargs of a stored spec.

    Returns
    -------
    dict
        A copy of ``model.grokscope_spec`` when set (``{"name", "kwargs"}`` or
        ``{"factory", "kwargs"}``); otherwise ``{"factory": "module:qualname", "kwargs": ...}``
        of its class (``kwargs`` None when unknown: the class must then be constructible
        without arguments, or the caller passes the model itself).
    """
    spec = getattr(model, "grokscope_spec", None)
    if isinstance(spec, dict):
        spec = copy.deepcopy(spec)
    else:
        spec = {"factory": _qualified(type(model)), "kwargs": None}
    if kwargs is not None:
        if not isinstance(kwargs, dict):
            raise ConfigError(f"model_kwargs must be a dict, got {type(kwargs).__name__}")
        spec["kwargs"] = dict(kwargs)
    return spec


def _import_factory(path: str) -> Callable[..., nn.Module]:
    if not isinstance(path, str) or ":" not in path:
        raise ConfigError(f"a model factory must be 'module:qualname', got {path!r}")
    module_name, qualname = path.split(":", 1)
    if "<locals>" in qualname:
        raise ConfigError(
            f"model factory {path!r} is defined inside a function and cannot be imported; "
            "pass the model class or instance yourself"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import module {module_name!r} of model factory {path!r} ({exc}); install "
            "it or pass the model class or instance yourself"
        ) from exc
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigError(
                f"model factory {path!r}: {module_name} has no {qualname!r}; pass the model "
                "class or instance yourself"
            ) from exc
    if not callable(obj):
        raise ConfigError(f"model factory {path!r} is not callable")
    return obj


def _call_factory(factory: Callable[..., nn.Module], path: str, kwargs: dict | None) -> nn.Module:
    try:
        model = factory(**(kwargs or {}))
    except TypeError as exc:
        raise ConfigError(
            f"model factory {path!r} rejected kwargs {kwargs!r}: {exc}. Pass the model class or "
            "instance yourself"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {path!r} returned {type(model).__name__}, not nn.Module")
    if kwargs is not None:
        model.grokscope_spec = {"factory": path, "kwargs": dict(kwargs)}
    return model


def build_from_spec(spec: dict[str, Any], *, trust_code: bool = False) -> nn.Module:
    """Rebuild a model from :func:`spec_of` output (e.g. a store's ``config["model"]``).

    Registered names are always built. A ``{"factory": "module:qualname", "kwargs": ...}``
    spec imports and calls that code, so only with ``trust_code=True``.

    Raises
    ------
    UntrustedCodeError
        A factory spec without ``trust_code=True``.
    ConfigError
        A malformed spec, or a factory that cannot be imported or called.
    UnknownNameError
        An unregistered name.
    """
    if not isinstance(spec, dict):
        raise ConfigError(f"a model spec must be a dict, got {type(spec).__name__}")
    if "name" in spec:
        return build_model(spec["name"], **(spec.get("kwargs") or {}))
    if "factory" not in spec:
        raise ConfigError(
            f"a model spec needs 'name' (registered) or 'factory' ('module:qualname'), got {spec!r}"
        )
    path = spec["factory"]
    if not trust_code:
        raise UntrustedCodeError(
            f"the model spec names code {path!r}, which grokscope imports only when trusted: pass "
            "trust_code=True if you trust this store, or pass the model class/instance yourself"
        )
    return _call_factory(_import_factory(path), path, spec.get("kwargs"))


# --------------------------------------------------------------------------- model_for
def _out_dim(data: Data) -> int:
    if data.is_classification:
        return int(data.n_classes)
    y = data.y_train
    return 1 if y.ndim == 1 else int(math.prod(y.shape[1:]))


def _is_tokens(data: Data) -> bool:
    x = data.x_train
    return not torch.is_floating_point(x) and x.dtype != torch.bool and x.ndim == 2


def _vocab(data: Data) -> int:
    if data.task and "vocab" in data.task:
        return int(data.task["vocab"])
    top = data.x_train.max()
    if data.x_test.numel():
        top = torch.maximum(top, data.x_test.max())
    return int(top) + 1


def model_for(name: str | dict[str, Any], data: Data, **kwargs: Any) -> nn.Module:
    """Build model ``name`` with its sizes inferred from ``data``; ``kwargs`` win.

    - ``"mlp"``: ``in_dim`` = flattened input size, ``out_dim`` = classes or regression
      width; on integer token inputs ``(n, n_tokens)`` also ``vocab`` (the task's ``vocab``
      or the largest token + 1), ``n_tokens`` and ``embed_dim`` (default 32).
    - ``"transformer"``: ``vocab``, ``n_ctx`` (sequence length), ``out_dim``.
    - another registered model: whichever of ``in_dim``, ``out_dim``, ``vocab``, ``n_ctx``,
      ``n_tokens`` its signature accepts.

    Raises
    ------
    ConfigError
        The model cannot take this data (e.g. a transformer on float features).
    """
    if isinstance(name, dict):
        if "name" not in name:
            raise ConfigError("model_for needs a registered model name or {'name', 'kwargs'} spec")
        kwargs = {**(name.get("kwargs") or {}), **kwargs}
        name = name["name"]
    factory = _factory(name)
    tokens = _is_tokens(data)
    inferred: dict[str, Any] = {"out_dim": _out_dim(data)}
    if tokens:
        n_tokens = int(data.x_train.shape[1])
        inferred.update(vocab=_vocab(data), n_ctx=n_tokens, n_tokens=n_tokens)
    if factory is MLP:
        if tokens:
            embed_dim = kwargs.get("embed_dim") or DEFAULT_EMBED_DIM
            inferred.update(embed_dim=embed_dim, in_dim=inferred["n_tokens"] * embed_dim)
            del inferred["n_ctx"]
        else:
            inferred["in_dim"] = int(math.prod(data.input_shape))
    elif factory is Transformer:
        if not tokens:
            raise ConfigError(
                f"the transformer needs integer token inputs (n, ctx), but this data has "
                f"{data.x_train.dtype} inputs of shape {data.input_shape}; use encoding='tokens' "
                "for modular tasks, or an 'mlp'"
            )
        del inferred["n_tokens"]
    else:
        inferred["in_dim"] = int(math.prod(data.input_shape))
        try:
            params = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            params = {}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            inferred = {k: v for k, v in inferred.items() if k in params}
    return build_model(name, **{**inferred, **kwargs})


register_model("mlp", MLP)
register_model("transformer", Transformer)
