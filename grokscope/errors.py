"""The one exception hierarchy of grokscope.

Every error a user can trigger is a :class:`GrokscopeError`; its message says what was
wrong and what to do. The CLI prints the message (no traceback) and exits non-zero.
"""

from __future__ import annotations


class GrokscopeError(Exception):
    """Base class of every grokscope error."""


class ConfigError(GrokscopeError, ValueError):
    """A bad argument or configuration value."""


class DataError(GrokscopeError, ValueError):
    """A data split with inconsistent shapes, lengths or dtypes."""


class UnknownNameError(GrokscopeError, KeyError):
    """A task, model or measure name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class StoreError(GrokscopeError):
    """Something is wrong with a trajectory store."""


class NotAStoreError(StoreError):
    """The path is not a grokscope store."""


class SchemaVersionError(StoreError):
    """The store was written by a newer grokscope schema."""


class CorruptStoreError(StoreError):
    """An array or metadata document of the store is unreadable or inconsistent."""


class StepOrderError(StoreError, ValueError):
    """A recorded step is not strictly greater than the last committed one."""


class StoreWriteError(StoreError, OSError):
    """Writing to the store failed (disk full, permissions); the store keeps its last commit."""


class ModelMismatchError(GrokscopeError):
    """A state dict does not match the model (missing/unexpected keys or shapes)."""


class UntrustedCodeError(GrokscopeError):
    """A store names code (``module:qualname``) that is imported only when trusted."""


class CheckpointFormatError(GrokscopeError):
    """A foreign checkpoint file could not be understood."""


class UnsafeCheckpointError(CheckpointFormatError):
    """A checkpoint needs arbitrary pickled code to load (``weights_only=True`` refused it)."""


class MeasureNotApplicable(GrokscopeError):
    """A measure does not apply to this run (the message says why)."""
