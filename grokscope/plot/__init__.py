"""Figures of grokscope results: ``plot_*(ds, ax=None, **kw) -> Axes`` functions.

Every function takes the data first, draws on ``ax`` or on a new
:class:`matplotlib.figure.Figure` (never pyplot: no global figure state, no backend switch),
and returns the Axes. Figures are titled (``title=""``: none), their axes labelled with units
(maths in mathtext), drawn in the Okabe-Ito colour-blind-safe palette, and the step axis is
log-scaled (symlog, step 0 shown) when training spans decades. Every per-step figure marks
``t_train`` / ``t_test`` (``marks=``, see :func:`milestone_marks`); figures of two quantities
take ``panels=True`` or ``ax=(top, bottom)`` (:func:`new_panels`) instead of a twin axis;
legends sit outside the data. See docs/figures.md.

:data:`PLOTS` maps each measure name to its plot functions (the first is the main figure);
the ``grok`` accessor uses it: ``run.results["nfa"].grok.plot()``. The plotting modules import
matplotlib, so they load on first use: ``import grokscope.plot`` itself only registers the
accessor.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import accessor  # noqa: F401  (registers ds.grok)
from .accessor import GrokAccessor

#: function name -> module of this package that defines it
_FUNCTIONS: dict[str, str] = {
    "plot_curves": "curves",
    "plot_norms": "curves",
    "plot_mixture": "mixture",
    "plot_mixture_k": "mixture",
    "plot_alignment": "alignment",
    "plot_lmn": "lmn",
    "plot_nfa": "nfa",
    "plot_fourier": "fourier",
    "plot_fourier_evolution": "fourier",
    "plot_fourier_losses": "fourier",
    "plot_kernel": "kernel",
    "plot_rqi": "scalars",
    "plot_scalars": "scalars",
    "plot_changepoints": "changepoints",
    "plot_runs": "runs",
    "save_figure": "save",
    "new_panels": "_style",
    "milestone_marks": "_style",
}

#: measure name -> plot function names, main figure first
_MEASURE_PLOTS: dict[str, tuple[str, ...]] = {
    "curves": ("plot_curves", "plot_norms"),
    "mixture": ("plot_mixture", "plot_mixture_k"),
    "alignment": ("plot_alignment",),
    "lmn": ("plot_lmn",),
    "nfa": ("plot_nfa",),
    "fourier": ("plot_fourier", "plot_fourier_evolution", "plot_fourier_losses"),
    "kernel": ("plot_kernel",),
    "rqi": ("plot_rqi",),
    "phases": ("plot_changepoints",),
}

__all__ = ["PLOTS", "GrokAccessor", "PlotDataError", "phase_diagram", "plot_phase_diagram",
           *_FUNCTIONS]


def _load(name: str) -> Any:
    if name in _FUNCTIONS:
        return getattr(importlib.import_module(f"{__name__}.{_FUNCTIONS[name]}"), name)
    if name == "PLOTS":
        return {m: [_load(f) for f in fs] for m, fs in _MEASURE_PLOTS.items()}
    if name == "PlotDataError":
        return importlib.import_module(f"{__name__}._style").PlotDataError
    if name in ("plot_phase_diagram", "phase_diagram"):
        try:
            mod = importlib.import_module(f"{__name__}.phase")
        except ImportError as exc:
            raise AttributeError(
                f"grokscope.plot.{name} is unavailable: grokscope.plot.phase failed to import "
                f"({exc})"
            ) from exc
        return mod.plot_phase_diagram
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __getattr__(name: str) -> Any:
    value = _load(name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
