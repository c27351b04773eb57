"""Pointwise activations by name.

``relu``, ``silu``, ``tanh``, ``gelu``, ``quadratic`` (``x**2``, Gromov 2023), ``erf``
(``torch.erf``, Rubin et al. 2023), ``identity``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError


class Quadratic(nn.Module):
    """``x ** 2``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


class Erf(nn.Module):
    """``torch.erf(x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(x)


_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "quadratic": Quadratic,
    "erf": Erf,
    "identity": nn.Identity,
}


def activation_names() -> list[str]:
    """The known activation names, sorted."""
    return sorted(_ACTIVATIONS)


def get_activation(name: str) -> nn.Module:
    """A fresh activation module for ``name`` (:class:`ConfigError` if unknown)."""
    if name not in _ACTIVATIONS:
        raise ConfigError(
            f"unknown activation {name!r}; use one of {', '.join(activation_names())}"
        )
    return _ACTIVATIONS[name]()
