"""Teacher-student regression with a cubic teacher (Rubin, Seroussi, Ringel 2023).

``x ~ N(0, I_d)``, a seeded unit-norm teacher ``w*``, ``z = w*.x`` and
``y = H1(z) + eps * H3(z)`` with the Hermite polynomials ``H1(z) = z``, ``H3(z) = z^3 - 3z``.
"""

from __future__ import annotations

import torch

from ..data import Data
from ._common import check_float, check_int, generator


def teacher_targets(x: torch.Tensor, w_star: torch.Tensor, eps: float) -> torch.Tensor:
    """``H1(z) + eps*H3(z)`` with ``z = x @ w_star``: float ``(n, 1)``."""
    z = x @ w_star
    return (z + eps * (z**3 - 3 * z)).unsqueeze(1)


def make_teacher(
    d: int = 150, n_train: int = 3000, n_test: int = 1000, eps: float = -0.3, seed: int = 0
) -> Data:
    """The teacher-student split.

    Parameters
    ----------
    d : int
        Input dimension.
    n_train, n_test : int
        Samples per split.
    eps : float
        Weight of the cubic Hermite term.
    seed : int
        Seeds ``w*``, then the training inputs, then the test inputs.

    Returns
    -------
    Data
        ``x`` float32 ``(n, d)``, ``y`` float32 ``(n, 1)``, ``extras["w_star"]`` float32
        ``(d,)`` of unit norm; the spec has ``"loss": "mse"``.
    """
    d = check_int("teacher", "d", d, minimum=1)
    n_train = check_int("teacher", "n_train", n_train, minimum=1)
    n_test = check_int("teacher", "n_test", n_test, minimum=0)
    eps = check_float("teacher", "eps", eps)
    seed, g = generator("teacher", seed)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    w_star = (w / w.norm()).float()
    x_train = torch.randn(n_train, d, generator=g)
    x_test = torch.randn(n_test, d, generator=g)
    spec = {
        "name": "teacher",
        "d": d,
        "n_train": n_train,
        "n_test": n_test,
        "eps": eps,
        "seed": seed,
        "loss": "mse",
    }
    return Data(
        x_train,
        teacher_targets(x_train, w_star, eps),
        x_test,
        teacher_targets(x_test, w_star, eps),
        task=spec,
        extras={"w_star": w_star},
    )
