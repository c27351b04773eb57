"""Measures of the grokking literature, one module per family (see docs/methods.md).

Each module registers its functions with :func:`grokscope.measures.registry.register`;
``names()`` lists them and ``get(name)`` returns a :class:`MeasureSpec`. ``describe(measure,
variable)`` says what an output variable means (its ``long_name``, ``units`` and description).
"""

from ._variables import describe
from .registry import Checkpoint, MeasureSpec, get, names, register

__all__ = ["Checkpoint", "MeasureSpec", "describe", "get", "names", "register"]
