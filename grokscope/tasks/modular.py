"""Modular arithmetic tables (Power et al. 2022; Nanda et al. 2023).

Every pair ``(a, b)`` of residues mod ``p`` (``b != 0`` for division) is one sample labelled
``a op b mod p``; a seeded permutation of the full table puts ``floor(train_frac * N)`` pairs
(at least 1, at most ``N - 1``) in the training split and the rest in the test split.

Encodings
---------
``"onehot"``
    float32 ``(n, 2p)``: one-hot(a) concatenated with one-hot(b) (the "two-hot" input of
    Gromov 2023 / Rubin et al. 2023).
``"tokens"``
    int64 ``(n, 3)``: ``(a, b, p)``, token ``p`` standing for "=" (Nanda et al. 2023); the
    vocabulary has ``p + 1`` tokens.
"""

from __future__ import annotations

import torch

from ..data import Data
from ..errors import ConfigError
from ._common import check_float, check_int, generator

OPS = ("+", "-", "*", "/", "x2+xy+y2")
ENCODINGS = ("onehot", "tokens")


def _is_prime(p: int) -> bool:
    if p < 2:
        return False
    i = 2
    while i * i <= p:
        if p % i == 0:
            return False
        i += 1
    return True


def _check(p: object, op: object) -> int:
    p = check_int("modular", "p", p, minimum=2)
    if op not in OPS:
        raise ConfigError(f"task 'modular': unknown op {op!r}; use one of {list(OPS)}")
    if op == "/" and not _is_prime(p):
        raise ConfigError(
            f"task 'modular': op '/' needs a prime modulus (every b != 0 invertible), got p={p}"
        )
    return p


def all_pairs(p: int, op: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The full operation table.

    Parameters
    ----------
    p : int
        The modulus (``>= 2``; prime for ``"/"``).
    op : str
        One of ``"+"``, ``"-"``, ``"*"``, ``"/"``, ``"x2+xy+y2"``.

    Returns
    -------
    pairs : LongTensor, shape ``(N, 2)``
        ``(a, b)`` in row-major order; ``N = p*p`` (``p*(p-1)`` for ``"/"``, ``b`` in
        ``1..p-1``).
    labels : LongTensor, shape ``(N,)``
        ``a op b mod p``; ``a / b = a * b^(p-2) mod p``; ``"x2+xy+y2"`` is
        ``(a^2 + a*b + b^2) mod p``.
    """
    p = _check(p, op)
    a = torch.arange(p, dtype=torch.long)
    b = torch.arange(1 if op == "/" else 0, p, dtype=torch.long)
    aa, bb = torch.meshgrid(a, b, indexing="ij")
    aa, bb = aa.reshape(-1), bb.reshape(-1)
    if op == "+":
        y = aa + bb
    elif op == "-":
        y = aa - bb
    elif op == "*":
        y = aa * bb
    elif op == "/":
        inverse = torch.tensor([0] + [pow(i, p - 2, p) for i in range(1, p)], dtype=torch.long)
        y = aa * inverse[bb]
    else:  # "x2+xy+y2"
        y = aa * aa + aa * bb + bb * bb
    return torch.stack([aa, bb], dim=1), torch.remainder(y, p)


def encode(pairs: torch.Tensor, p: int, encoding: str = "onehot") -> torch.Tensor:
    """Model inputs for ``pairs``.

    Parameters
    ----------
    pairs : LongTensor, shape ``(n, 2)``
    p : int
    encoding : ``"onehot"`` or ``"tokens"``

    Returns
    -------
    Tensor
        float32 ``(n, 2p)`` two-hot for ``"onehot"``; int64 ``(n, 3)`` ``(a, b, p)`` for
        ``"tokens"``.
    """
    pairs = torch.as_tensor(pairs, dtype=torch.long)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ConfigError(f"pairs must have shape (n, 2), got {tuple(pairs.shape)}")
    if encoding == "onehot":
        x = torch.zeros(pairs.shape[0], 2 * p, dtype=torch.float32)
        rows = torch.arange(pairs.shape[0])
        x[rows, pairs[:, 0]] = 1.0
        x[rows, p + pairs[:, 1]] = 1.0
        return x
    if encoding == "tokens":
        eq = torch.full((pairs.shape[0], 1), p, dtype=torch.long)
        return torch.cat([pairs, eq], dim=1)
    raise ConfigError(
        f"task 'modular': unknown encoding {encoding!r}; use one of {list(ENCODINGS)}"
    )


def make_modular(
    p: int = 97,
    op: str = "+",
    train_frac: float = 0.3,
    seed: int = 0,
    encoding: str = "onehot",
) -> Data:
    """The modular-arithmetic split.

    Parameters
    ----------
    p : int
        Modulus, ``>= 2`` (prime for ``"/"``).
    op : str
        ``"+"``, ``"-"``, ``"*"``, ``"/"`` or ``"x2+xy+y2"``.
    train_frac : float
        Fraction of the table used for training, in ``(0, 1)``.
    seed : int
        Seeds the permutation that splits the table.
    encoding : ``"onehot"`` or ``"tokens"``

    Returns
    -------
    Data
        ``x`` as in :func:`encode`, ``y`` int64 ``(n,)`` in ``[0, p)``;
        ``extras["pairs_train"]``, ``extras["pairs_test"]``: int64 ``(n, 2)``.
    """
    p = _check(p, op)
    train_frac = check_float("modular", "train_frac", train_frac)
    if not 0.0 < train_frac < 1.0:
        raise ConfigError(f"task 'modular': train_frac must be in (0, 1), got {train_frac}")
    if encoding not in ENCODINGS:
        raise ConfigError(
            f"task 'modular': unknown encoding {encoding!r}; use one of {list(ENCODINGS)}"
        )
    seed, g = generator("modular", seed)
    pairs, labels = all_pairs(p, op)
    n = pairs.shape[0]
    n_train = min(max(int(train_frac * n), 1), n - 1)
    perm = torch.randperm(n, generator=g)
    tr, te = perm[:n_train], perm[n_train:]
    spec = {
        "name": "modular",
        "p": p,
        "op": op,
        "train_frac": train_frac,
        "seed": seed,
        "encoding": encoding,
        "n_classes": p,
        "vocab": p + 1,
    }
    return Data(
        encode(pairs[tr], p, encoding),
        labels[tr],
        encode(pairs[te], p, encoding),
        labels[te],
        task=spec,
        extras={"pairs_train": pairs[tr], "pairs_test": pairs[te]},
    )
