"""Small image classification: scikit-learn's bundled 8x8 digits (1797 images, no download).

Pixels are divided by 16 (to ``[0, 1]``) and flattened to 64 features; a seeded permutation
puts ``train_size`` images in the training split and the rest in the test split. At least a
fifth of the images are always kept for testing: a larger ``train_size`` is capped and the
spec records the size actually used.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ..data import Data
from ._common import check_int, generator


@functools.cache
def _load_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # lazy: sklearn is slow to import

    bunch = load_digits()
    return bunch.data, bunch.target


def _load() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 images: float32 ``(1797, 64)`` in ``[0, 1]`` and int64 labels ``(1797,)``."""
    data, target = _load_arrays()
    x = torch.tensor(data, dtype=torch.float32) / 16.0
    y = torch.tensor(target, dtype=torch.long)
    return x, y


def make_digits(train_size: int = 1000, seed: int = 0) -> Data:
    """The digits split.

    Parameters
    ----------
    train_size : int
        Training images (``>= 1``), capped at ``n - max(1, n // 5)`` (1438 of 1797).
    seed : int
        Seeds the permutation.

    Returns
    -------
    Data
        ``x`` float32 ``(n, 64)`` in ``[0, 1]``, ``y`` int64 ``(n,)`` in ``0..9``.
    """
    train_size = check_int("digits", "train_size", train_size, minimum=1)
    seed, g = generator("digits", seed)
    x, y = _load()
    n = x.shape[0]
    train_size = min(train_size, n - max(1, n // 5))
    perm = torch.randperm(n, generator=g)
    tr, te = perm[:train_size], perm[train_size:]
    spec = {"name": "digits", "train_size": train_size, "seed": seed, "n_classes": 10}
    return Data(x[tr], y[tr], x[te], y[te], task=spec)
