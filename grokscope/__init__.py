"""grokscope: record training trajectories into one zarr store and analyse grokking offline.

The public API (see DESIGN.md)::

    import grokscope as gs
    gs.Recorder, gs.open_run, gs.import_checkpoints, gs.train, gs.analyze, gs.report,
    gs.forecast, gs.watch, gs.Data, gs.GrokscopeError
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .data import Data
from .errors import GrokscopeError

# Functions that share their module's name (``grokscope.train`` the module vs ``gs.train`` the
# function) are bound eagerly: a lazy binding would be shadowed by the submodule once anything
# imports it.
from .forecast import forecast  # noqa: E402
from .plot import accessor as _accessor  # noqa: E402,F401  (registers ds.grok; no matplotlib)
from .report import report  # noqa: E402
from .sweep import phase_diagram, sweep  # noqa: E402
from .train import train  # noqa: E402
from .watch import watch  # noqa: E402

_LAZY = {
    "Recorder": "grokscope.store.recorder",
    "Schedule": "grokscope.store.schedule",
    "open_run": "grokscope.store.run",
    "Run": "grokscope.store.run",
    "import_checkpoints": "grokscope.store.importers",
    "analyze": "grokscope.engine",
    "make_task": "grokscope.tasks",
    "build_model": "grokscope.models",
    "open_runs": "grokscope.many",
}

__all__ = ["Data", "GrokscopeError", "__version__", "forecast", "phase_diagram", "report", "sweep",
           "train", "watch", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in ("plot", "measures", "tasks", "models", "store"):
        return importlib.import_module(f"grokscope.{name}")
    raise AttributeError(f"module 'grokscope' has no attribute {name!r}")
