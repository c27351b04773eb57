"""Measures of the grokking literature, one module per family (see METHODS.md).

Each module registers its functions with :func:`grokscope.measures.registry.register`;
``names()`` lists them and ``get(name)`` returns a :class:`MeasureSpec`.
"""

from .registry import Checkpoint, MeasureSpec, get, names, register

__all__ = ["Checkpoint", "MeasureSpec", "get", "names", "register"]
