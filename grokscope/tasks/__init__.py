"""Built-in datasets, by name.

>>> from grokscope.tasks import make_task
>>> data = make_task("modular", p=13, op="+", encoding="tokens")

``make_task(name, **params) -> Data`` builds a task; its ``data.task`` spec records every
parameter, so :func:`from_spec` rebuilds the identical split. Register your own with
:func:`register_task`.

================  ========================================================================
``"modular"``     ``a op b mod p`` tables (:mod:`grokscope.tasks.modular`)
``"parity"``      sparse parity on ``{-1, +1}^n`` (:mod:`grokscope.tasks.parity`)
``"teacher"``     cubic Hermite teacher, MSE (:mod:`grokscope.tasks.teacher`)
``"digits"``      scikit-learn 8x8 digits (:mod:`grokscope.tasks.digits`)
================  ========================================================================
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ..data import Data
from ..errors import ConfigError, UnknownNameError
from .digits import make_digits
from .modular import make_modular
from .parity import make_parity
from .teacher import make_teacher

__all__ = ["from_spec", "make_task", "names", "register_task"]

#: spec keys that describe a task but are not parameters of its factory
DERIVED_KEYS = ("name", "n_classes", "vocab", "loss")

_TASKS: dict[str, Callable[..., Data]] = {}


def register_task(
    name: str, factory: Callable[..., Data] | None = None, *, overwrite: bool = False
) -> Any:
    """Register ``factory(**params) -> Data`` under ``name``.

    Usable directly (``register_task("mine", make_mine)``) or as a decorator
    (``@register_task("mine")``). The factory's ``Data.task`` should be a JSON-able dict
    with ``"name": name`` and every parameter, so :func:`from_spec` can rebuild it.
    Registering an existing name raises :class:`ConfigError` unless ``overwrite=True``.
    """

    def add(fn: Callable[..., Data]) -> Callable[..., Data]:
        if not callable(fn):
            raise ConfigError(f"register_task({name!r}): the factory must be callable, got {fn!r}")
        if name in _TASKS and not overwrite and _TASKS[name] is not fn:
            raise ConfigError(
                f"task {name!r} is already registered; pass overwrite=True to replace it"
            )
        _TASKS[name] = fn
        return fn

    return add if factory is None else add(factory)


def names() -> list[str]:
    """The registered task names, sorted."""
    return sorted(_TASKS)


def make_task(name: str, **params: Any) -> Data:
    """Build the registered task ``name`` with ``params``.

    Raises
    ------
    UnknownNameError
        ``name`` is not registered (the message lists the known names).
    ConfigError
        A parameter is unknown to the task or has a bad value.
    """
    if name not in _TASKS:
        raise UnknownNameError(f"unknown task {name!r}; known tasks: {', '.join(names())}")
    factory = _TASKS[name]
    sig = inspect.signature(factory)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    unknown = [k for k in params if k not in sig.parameters]
    if unknown and not takes_any:
        raise ConfigError(
            f"task {name!r} has no parameter(s) {unknown}; its parameters are "
            f"{list(sig.parameters)}"
        )
    return factory(**params)


def from_spec(spec: dict[str, Any]) -> Data:
    """Rebuild a task from its spec (``data.task``): ``make_task(**spec)`` minus the derived
    keys ``name``/``n_classes``/``vocab``/``loss``."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"a task spec must be a dict with a 'name' key, got {spec!r}")
    params = {k: v for k, v in spec.items() if k not in DERIVED_KEYS}
    return make_task(spec["name"], **params)


register_task("modular", make_modular)
register_task("parity", make_parity)
register_task("teacher", make_teacher)
register_task("digits", make_digits)
