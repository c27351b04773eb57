"""Recording and live logging from the frameworks people train with.

Every framework is imported lazily: ``import grokscope`` never needs Lightning, transformers,
TensorBoard or W&B; using one of them without its package raises
:class:`MissingFrameworkError` naming the extra that installs it.

=========================================  ===============================================
name                                       what
=========================================  ===============================================
``GrokscopeCallback``                      a Lightning ``Callback`` recording into a store
``GrokscopeTrainerCallback``               a Hugging Face ``TrainerCallback`` doing the same
``LiveLog``                                cheap measures + a curves figure every K records
``TensorBoardSink``, ``WandbSink``         where ``LiveLog`` sends them
``metric_name``                            the logged-name -> grokscope-name rule
=========================================  ===============================================

See docs/integrations.md.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._core import MissingFrameworkError, metric_name

_LAZY = {
    "GrokscopeCallback": "grokscope.integrations.lightning",
    "GrokscopeTrainerCallback": "grokscope.integrations.hf",
    "LiveLog": "grokscope.integrations.live",
    "TensorBoardSink": "grokscope.integrations.live",
    "WandbSink": "grokscope.integrations.live",
}

__all__ = ["MissingFrameworkError", "metric_name", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'grokscope.integrations' has no attribute {name!r}")
