"""Temporarily set the number of torch CPU threads."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` torch CPU threads inside the block (``None``: leave the setting alone).

    On a loaded machine with few cores, intra-op threads that wait for a busy core spin: one
    thread was measured 2-15x faster than two on the shared 2-core machines here.
    """
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
