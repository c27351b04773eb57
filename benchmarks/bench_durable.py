"""What durability against a power cut costs: ``fsync`` at compaction and close, and the
durable fallback root (``grokscope.store._durable``).

Rows (temp dir on local disk; medians of interleaved recordings):

- a whole recording (every ``record``, the compactions, ``close``) per step, durable (the
  default) vs the same code with durability switched off (no ``fsync``, no fallback root:
  what the store did before); (measured): the claim against ``torch.save`` lives in
  ``bench_files`` (target <= 3x there); ``torch.save`` does not ``fsync`` either;
- the time of one compaction (shards, scalar chunks, metadata, root, fallback), durable vs
  not; (measured): it runs once per 128 steps.

For a small MLP (1000 steps, ~9.6k parameters) and a ~1M-parameter MLP (256 steps).
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from ._common import Row
from .bench_files import _data, _large, _small, _step


@contextlib.contextmanager
def _not_durable() -> Iterator[None]:
    """The store without durability: no fsync before publishing, no fallback root."""
    from grokscope.store import _durable, _io

    saved = (_durable.sync_written, _durable.write_fallback, _io.put_file)
    put_file = _io.put_file
    _durable.sync_written = lambda store, skip=frozenset(): 0
    _durable.write_fallback = lambda store, raw: False
    _io.put_file = lambda path, data, *, durable=False, sync_over=False: put_file(path, data)
    try:
        yield
    finally:
        _durable.sync_written, _durable.write_fallback, _io.put_file = saved


def _record(path: Path, model: nn.Module, data, n: int) -> tuple[float, list[float]]:
    """Seconds per step of a whole recording, and the seconds of each compaction."""
    from grokscope.store import Recorder

    compactions: list[float] = []
    real = Recorder._compact

    def timed(self, upto, **kw):
        t0 = time.perf_counter()
        out = real(self, upto, **kw)
        compactions.append(time.perf_counter() - t0)
        return out

    Recorder._compact = timed
    try:
        t0 = time.perf_counter()
        with Recorder(path, model, data, export_program=False) as rec:
            for step in range(n):
                _step(model)
                rec.record(step, metrics={"train_loss": 1.0 / (step + 1)})
        return (time.perf_counter() - t0) / n, compactions
    finally:
        Recorder._compact = real


def _compare(tmp: Path, name: str, factory, d_in: int, n: int, rep: int) -> list[Row]:
    data = _data(d_in)
    _record(tmp / f"{name}-warm.zarr", factory(), data, 3)
    per_step: dict[str, list[float]] = {"durable": [], "plain": []}
    compaction: dict[str, list[float]] = {"durable": [], "plain": []}
    for r in range(rep):  # interleaved, so a busy moment hits both alike
        for kind in ("durable", "plain"):
            ctx = contextlib.nullcontext() if kind == "durable" else _not_durable()
            with ctx:
                s, c = _record(tmp / f"{name}-{kind}-{r}.zarr", factory(), data, n)
            per_step[kind].append(s)
            compaction[kind].extend(c[:-1])  # the last one is close()'s
    label = f"durable: {name}, {n} steps"
    med = {k: statistics.median(v) for k, v in per_step.items()}
    cmed = {k: statistics.median(v) for k, v in compaction.items()}
    return [
        Row(f"{label}: record, s/step incl. compaction+close", "durable (fsync + fallback)",
            med["durable"], "no fsync, no fallback", med["plain"], "(measured)"),
        Row(f"{label}: one compaction of 128 steps", "durable (fsync + fallback)",
            cmed["durable"], "no fsync, no fallback", cmed["plain"], "(measured)"),
    ]


def run(quick: bool = False) -> list[Row]:
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows = _compare(tmp, "small MLP", _small, 64, 300 if quick else 1000, 1 if quick else 3)
        rows += _compare(tmp, "1M-param MLP", _large, 1000, 256, 1 if quick else 3)
    return rows
