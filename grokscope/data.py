"""The train/test split every run carries.

``Data`` holds tensors: inputs ``x_*`` of shape ``(n, *input_shape)`` (float features or
integer tokens) and targets ``y_*`` of shape ``(n,)`` (integer class labels) or ``(n, k)``
(float regression targets). ``task`` is the task's spec (a JSON-able dict with at least
``name``); ``extras`` holds named tensors a measure may need (e.g. the teacher ``w_star``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import DataError

_SPLITS = ("x_train", "y_train", "x_test", "y_test")


def _as_tensor(name: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as exc:
        raise DataError(f"Data.{name} must be an array or tensor, got {type(value).__name__}") from exc


@dataclass
class Data:
    """A train/test split.

    Parameters
    ----------
    x_train, x_test : tensor, shape ``(n, *input_shape)``
    y_train, y_test : tensor, shape ``(n,)`` integer labels or ``(n, k)`` float targets
    task : dict, optional
        The task spec, e.g. ``{"name": "modular", "p": 97, "op": "+", ...}``.
    extras : dict of str to tensor, optional
        Named tensors kept with the split (e.g. ``w_star`` for teacher-student runs).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    task: dict[str, Any] | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _SPLITS:
            setattr(self, name, _as_tensor(name, getattr(self, name)))
        self.extras = {k: _as_tensor(k, v) for k, v in (self.extras or {}).items()}
        if self.task is not None and not isinstance(self.task, dict):
            raise DataError(f"Data.task must be a dict (the task spec), got {type(self.task).__name__}")
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
                raise DataError(
                    f"x_{split} has shape {tuple(x.shape)} and y_{split} {tuple(y.shape)}: "
                    "both need the same number of rows (samples first)"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(
                f"train inputs have shape {tuple(self.x_train.shape[1:])} per sample but test inputs "
                f"{tuple(self.x_test.shape[1:])}: they must match"
            )
        if self.x_train.shape[0] == 0:
            raise DataError("the training split is empty")

    # ------------------------------------------------------------------ properties
    @property
    def is_classification(self) -> bool:
        """True when targets are integer class labels."""
        return not torch.is_floating_point(self.y_train) and self.y_train.ndim == 1

    @property
    def n_classes(self) -> int | None:
        """Number of classes (from the task spec, else the largest label + 1)."""
        if not self.is_classification:
            return None
        if self.task and "n_classes" in self.task:
            return int(self.task["n_classes"])
        return int(max(self.y_train.max(), self.y_test.max() if len(self.y_test) else 0)) + 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def task_name(self) -> str | None:
        return None if not self.task else self.task.get("name")

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of split ``name`` (``"train"`` or ``"test"``)."""
        if name not in ("train", "test"):
            raise DataError(f"unknown split {name!r}: use 'train' or 'test'")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Data:
        """A copy on ``device``; floating tensors cast to ``dtype`` when given."""

        def move(t: torch.Tensor) -> torch.Tensor:
            if dtype is not None and torch.is_floating_point(t):
                return t.to(device=device, dtype=dtype)
            return t.to(device)

        return Data(
            *(move(getattr(self, n)) for n in _SPLITS),
            task=self.task,
            extras={k: move(v) for k, v in self.extras.items()},
        )

    def __repr__(self) -> str:
        return (
            f"Data(task={self.task_name!r}, train={tuple(self.x_train.shape)}, "
            f"test={tuple(self.x_test.shape)}, y={self.y_train.dtype})"
        )


def as_data(value: Any, *, what: str = "data") -> Data | None:
    """``value`` as a :class:`Data`: a ``Data``, a ``(x_train, y_train, x_test, y_test)``
    tuple or list, a mapping with those four keys (and optionally ``task``, ``extras``), or
    None (returned as is).

    Raises
    ------
    ConfigError
        Anything else, saying which forms are accepted.
    """
    from collections.abc import Mapping, Sequence

    from .errors import ConfigError

    if value is None or isinstance(value, Data):
        return value
    if isinstance(value, Mapping) and set(_SPLITS) <= set(value):
        return Data(**{k: value[k] for k in (*_SPLITS, "task", "extras") if k in value})
    if (isinstance(value, Sequence) and not isinstance(value, str | bytes)
            and len(value) == len(_SPLITS)):
        return Data(*value)
    raise ConfigError(
        f"{what} must be a grokscope.Data, a (x_train, y_train, x_test, y_test) tuple, a dict "
        f"with those keys, or None; got {type(value).__name__}"
        + (f" of length {len(value)}" if isinstance(value, Sequence) else "")
    )
