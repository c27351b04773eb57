"""The trajectory store: one zarr v3 group per training run.

- :class:`Recorder` writes committed checkpoints (crash-safe, append-only);
- :func:`open_run` reads them back as a :class:`Run` (lazy xarray views, models at a step);
- :class:`Schedule` says which steps to record;
- :mod:`grokscope.store.schema` documents the layout.
"""

from __future__ import annotations

from .recorder import Recorder
from .run import Run, StepNotFoundError, open_run
from .schedule import Schedule
from .schema import SCHEMA_VERSION

__all__ = ["Recorder", "Run", "Schedule", "StepNotFoundError", "open_run", "SCHEMA_VERSION"]
