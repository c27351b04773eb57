"""Argument checks and the seeded generator shared by the built-in tasks."""

from __future__ import annotations

import numbers

import torch

from ..errors import ConfigError


def check_int(task: str, name: str, value: object, *, minimum: int) -> int:
    """``value`` as a plain ``int`` ``>= minimum``, else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(
            f"task {task!r}: {name} must be an integer, got {value!r} ({type(value).__name__})"
        )
    if int(value) < minimum:
        raise ConfigError(f"task {task!r}: {name} must be >= {minimum}, got {int(value)}")
    return int(value)


def check_float(task: str, name: str, value: object) -> float:
    """``value`` as a plain ``float``, else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(
            f"task {task!r}: {name} must be a number, got {value!r} ({type(value).__name__})"
        )
    return float(value)


def generator(task: str, seed: object) -> tuple[int, torch.Generator]:
    """The checked seed and a CPU ``torch.Generator`` seeded with it."""
    seed = check_int(task, "seed", seed, minimum=0)
    return seed, torch.Generator().manual_seed(seed)
