"""The measure registry and the context a measure receives.

A measure is a function registered under a name. Two kinds exist:

``kind="step"``
    ``fn(ckpt: Checkpoint, **params) -> xr.Dataset`` computes the measure at one checkpoint.
    The returned dataset has **no** ``step`` dim; the engine adds it and concatenates steps.
    Dims like ``layer``, ``component``, ``sample`` are the measure's own.
``kind="trajectory"``
    ``fn(run: Run, steps: np.ndarray, **params) -> xr.Dataset`` computes over several steps at
    once (e.g. ``phases`` from the accuracy curves). The dataset has a ``step`` dim (or, for a
    run-level summary, no step dim and the step values in variables).

Every parameter is an explicit keyword argument with a default; the registry reads them from
the signature, so each default lives in exactly one place. ``applies(view, data)`` (``view`` a
:class:`~grokscope.anatomy.ModelView`: the model with its roles) returns ``None`` when the
measure applies, or a one-line reason naming the missing role and the ``anatomy`` key that
supplies it (the engine then skips it). Measures see models only through the anatomy.
``references`` names the other checkpoints a step measure uses (``"first"``, ``"last"``);
``after`` names measures whose stored results this one reads (the engine runs them first).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..anatomy import Anatomy, ModelView, resolve
from ..data import Data
from ..errors import ConfigError, UnknownNameError


@dataclass
class Checkpoint:
    """What a step measure sees.

    Attributes
    ----------
    step : int
        The training step of this checkpoint.
    model : torch.nn.Module
        The model at ``step``, in eval mode, on ``device``.
    data : Data
        The run's split, on ``device``.
    device : torch.device
    references : dict
        Models at other steps, by key: ``"first"`` (step 0, or the first stored step) and
        ``"last"`` (the final stored step). Use :meth:`reference`.
    state : dict
        Scratch space that persists across the steps of one measure on one run, visited in
        increasing step order (warm starts). Empty for the first visited step.
    config : dict
        The run's config (task, model spec, optimiser settings), possibly empty.
    anatomy : Anatomy or None
        The model's roles (the engine resolves them once per run); None: detected on first use.
    """

    step: int
    model: torch.nn.Module
    data: Data
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    references: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    anatomy: Anatomy | None = None

    @property
    def view(self) -> ModelView:
        """The model at this step with its roles."""
        if self.anatomy is None:
            self.anatomy = resolve(self.model, self.data)
        return ModelView(self.model, self.anatomy)

    def reference_view(self, which: str) -> ModelView:
        """:meth:`reference` with the same roles."""
        return ModelView(self.reference(which), self.view.anatomy)

    def reference(self, which: str) -> torch.nn.Module:
        """The model at another step: ``"first"`` or ``"last"`` (loaded lazily, cached)."""
        if which not in self.references:
            raise ConfigError(
                f"this measure needs the model at the {which!r} step, but none was provided"
            )
        ref = self.references[which]
        if callable(ref) and not isinstance(ref, torch.nn.Module):
            ref = ref()
            self.references[which] = ref
        return ref


@dataclass(frozen=True)
class MeasureSpec:
    """A registered measure: its function, kind, default parameters and applicability test."""

    name: str
    fn: Callable[..., Any]
    kind: Literal["step", "trajectory"]
    defaults: dict[str, Any]
    applies: Callable[[Any, Any], str | None]
    references: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    description: str = ""
    stateful: bool = False
    #: the name its result is stored under when not the measure's own (a named
    #: parameterisation, e.g. ``{"nfa_fc1": {"measure": "nfa", "layers": ["fc1"]}}``)
    result: str = ""
    #: ``params -> the references used`` when a parameter decides it (a subset of
    #: ``references``); None: all of them, whatever the parameters
    references_used: Callable[[dict[str, Any]], tuple[str, ...]] | None = None

    @property
    def result_name(self) -> str:
        return self.result or self.name

    def references_for(self, params: dict[str, Any]) -> tuple[str, ...]:
        """The references a step measure uses with ``params`` (the engine loads those, and a
        stored result stays valid while their steps do not change)."""
        if self.references_used is None:
            return self.references
        return tuple(r for r in self.references_used(params) if r in self.references)

    def resolve(self, params: dict[str, Any] | None) -> dict[str, Any]:
        """Defaults overridden by ``params``; unknown names are an error."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ConfigError(
                f"measure {self.name!r} has no parameter(s) {unknown}; "
                f"its parameters are {sorted(self.defaults)}"
            )
        return {**self.defaults, **params}


_REGISTRY: dict[str, MeasureSpec] = {}


def _always(_model: Any, _data: Any) -> None:
    return None


def register(
    name: str,
    *,
    kind: Literal["step", "trajectory"] = "step",
    applies: Callable[[Any, Any], str | None] | None = None,
    references: tuple[str, ...] = (),
    after: tuple[str, ...] = (),
    stateful: bool = False,
    references_used: Callable[[dict[str, Any]], tuple[str, ...]] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a measure function under ``name``.

    Parameters
    ----------
    kind : {"step", "trajectory"}
    applies : callable, optional
        ``applies(view, data) -> None | str``: None when the measure applies to this model
        (a :class:`~grokscope.anatomy.ModelView`) and data, else a one-line reason.
    references : tuple of str
        Reference models a step measure uses (``"first"``, ``"last"``); the engine provides them.
    after : tuple of str
        Measures whose stored results this one reads; the engine runs them first.
    stateful : bool
        The measure carries ``ckpt.state`` from step to step (e.g. warm starts). When an
        analysis extends a stored result, the engine first replays the last stored step before
        the new ones (output discarded) so the state continues instead of starting cold.
    references_used : callable, optional
        ``references_used(params) -> tuple`` when a parameter decides which of
        ``references`` are used (fourier's ``keys="step"`` needs no ``"last"``, so a growing
        run is extended, not recomputed); default: all of them.
    """
    if kind not in ("step", "trajectory"):
        raise ConfigError(f"measure kind must be 'step' or 'trajectory', got {kind!r}")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)
        defaults = {}
        for p in list(sig.parameters.values())[(1 if kind == "step" else 2):]:
            if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.default is inspect.Parameter.empty:
                raise ConfigError(
                    f"measure {name!r}: parameter {p.name!r} must be keyword-only with a default"
                )
            defaults[p.name] = p.default
        doc = (inspect.getdoc(fn) or "").split("\n\n")[0]
        _REGISTRY[name] = MeasureSpec(
            name, _with_variable_attrs(fn, name, defaults), kind, defaults, applies or _always,
            tuple(references), tuple(after), doc, stateful, references_used=references_used,
        )
        fn.measure_name = name  # type: ignore[attr-defined]
        return fn

    return deco


def _with_variable_attrs(fn: Callable[..., Any], name: str,
                         defaults: dict[str, Any]) -> Callable[..., Any]:
    """``fn`` whose result's variables get their ``long_name``, ``units`` and ``description``
    (:mod:`grokscope.measures._variables`; attrs the measure set itself are kept). The spec
    holds this wrapper, so every result the engine computes is annotated in one place."""
    from ._variables import annotate_variables

    @functools.wraps(fn)
    def wrapper(*args: Any, **params: Any) -> Any:
        return annotate_variables(fn(*args, **params), name, {**defaults, **params})

    return wrapper


def _load_all() -> None:
    from . import _discover  # noqa: F401  (imports every measure module once)


def get(name: str) -> MeasureSpec:
    """The registered measure ``name``."""
    _load_all()
    if name not in _REGISTRY:
        raise UnknownNameError(f"unknown measure {name!r}; registered measures: {names()}")
    return _REGISTRY[name]


def names() -> list[str]:
    """Names of all registered measures, in registration order."""
    _load_all()
    return list(_REGISTRY)
