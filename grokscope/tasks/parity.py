"""Sparse parity (Barak et al. 2022; Merrill et al. 2023).

Inputs are uniform in ``{-1, +1}^n_bits``; a seeded support ``S`` of ``k`` distinct bit indices
(sorted, kept in ``extras["support"]``) defines the label ``y = 1`` when
``prod_{i in S} x_i == -1`` (an odd number of ``-1`` bits on ``S``) and ``y = 0`` otherwise.
"""

from __future__ import annotations

import torch

from ..data import Data
from ..errors import ConfigError
from ._common import check_int, generator


def parity_labels(x: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Labels of ``x`` (float ``(n, n_bits)`` in ``{-1, +1}``): int64 ``(n,)``, 1 iff the
    product over ``support`` is ``-1``."""
    return (x[:, support].prod(dim=1) < 0).long()


def make_parity(
    n_bits: int = 40, k: int = 3, n_train: int = 1000, n_test: int = 1000, seed: int = 0
) -> Data:
    """The sparse-parity split.

    Parameters
    ----------
    n_bits : int
        Input dimension.
    k : int
        Support size, ``1 <= k <= n_bits``.
    n_train, n_test : int
        Samples per split (drawn independently; duplicates possible, as in the papers).
    seed : int
        Seeds the support, then the training inputs, then the test inputs.

    Returns
    -------
    Data
        ``x`` float32 ``(n, n_bits)`` in ``{-1, +1}``, ``y`` int64 ``(n,)`` in ``{0, 1}``,
        ``extras["support"]`` int64 ``(k,)``.
    """
    n_bits = check_int("parity", "n_bits", n_bits, minimum=1)
    k = check_int("parity", "k", k, minimum=1)
    if k > n_bits:
        raise ConfigError(f"task 'parity': k must be <= n_bits, got k={k} > n_bits={n_bits}")
    n_train = check_int("parity", "n_train", n_train, minimum=1)
    n_test = check_int("parity", "n_test", n_test, minimum=0)
    seed, g = generator("parity", seed)
    support = torch.randperm(n_bits, generator=g)[:k].sort().values
    x_train = torch.randint(0, 2, (n_train, n_bits), generator=g).float() * 2 - 1
    x_test = torch.randint(0, 2, (n_test, n_bits), generator=g).float() * 2 - 1
    spec = {
        "name": "parity",
        "n_bits": n_bits,
        "k": k,
        "n_train": n_train,
        "n_test": n_test,
        "seed": seed,
        "n_classes": 2,
    }
    return Data(
        x_train,
        parity_labels(x_train, support),
        x_test,
        parity_labels(x_test, support),
        task=spec,
        extras={"support": support},
    )
