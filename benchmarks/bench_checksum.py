"""Chunk checksums (zarr's ``crc32c`` codec): what they cost to record and to read.

Rows (medians; a ~1M-parameter MLP with 6 tensors over 50 steps, temp dir on local disk):
``ours`` is the store with checksums (the default), ``naive`` the same store written with
``Recorder(checksum=False)`` (the format before checksums). The speed-up column is
``without / with``: 1.0x means free, 0.9x means checksums cost 10%.

- record one checkpoint (count commit), uncompressed and lz4;
- read one checkpoint (``Run.state_dict_at``);
- one tensor across all steps (``Run.trajectory``);
- one weight across all steps (``Run.trajectory(index=)``): a checksum covers a whole chunk, so
  a checksummed store reads each chunk whole where an old one reads 4 bytes of it;
- the metrics (``Run.metrics``, dask).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ._common import Row, median_time


def _model() -> nn.Module:
    torch.manual_seed(0)
    # 1000*800 + 800 + 800*256 + 256 + 256*10 + 10 = 1,008,426 parameters
    return nn.Sequential(nn.Linear(1000, 800), nn.ReLU(), nn.Linear(800, 256), nn.ReLU(),
                         nn.Linear(256, 10))


def _record(path: Path, model: nn.Module, n: int, **kw) -> float:
    """Median seconds of one ``record`` over ``n`` steps."""
    from grokscope.store import Recorder

    times = []
    with Recorder(path, model, None, export_program=False, **kw) as rec:
        for step in range(n):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1e-3)
            t0 = time.perf_counter()
            rec.record(step, metrics={"train_loss": 1.0 / (step + 1), "test_acc": 0.5})
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(quick: bool = False) -> list[Row]:
    from grokscope.store import open_run

    n_steps = 20 if quick else 50
    repeats = 2 if quick else 5
    rep = 3 if quick else 7
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gs-bench-crc-") as tmp:
        tmp = Path(tmp)
        model = _model()
        _record(tmp / "warm.zarr", model, 3)  # imports, page cache
        for compression in (None, "lz4"):
            on, off = [], []
            for r in range(repeats):  # interleaved, so drift on a shared machine hits both
                on.append(_record(tmp / f"on{r}{compression}.zarr", model, n_steps,
                                  compression=compression))
                off.append(_record(tmp / f"off{r}{compression}.zarr", model, n_steps,
                                   compression=compression, checksum=False))
            label = "uncompressed" if compression is None else "lz4+bitshuffle"
            rows.append(Row(f"checksum: record 1 ckpt (1M params, {label})", "crc32c",
                            statistics.median(on), "no checksum", statistics.median(off),
                            "cost <= 10%"))
        with_, without = open_run(tmp / "on0None.zarr"), open_run(tmp / "off0None.zarr")
        mid = int(with_.steps[n_steps // 2])
        key = "2.weight"  # (256, 800)
        cases = [
            ("read 1 ckpt", "Run.state_dict_at", lambda r: r.state_dict_at(mid)),
            (f"1 tensor x {n_steps} steps", "Run.trajectory", lambda r: r.trajectory(key)),
            (f"1 weight x {n_steps} steps", "Run.trajectory(index=)",
             lambda r: r.trajectory(key, index=(3, 7))),
            (f"metrics x {n_steps} steps", "Run.metrics (dask)",
             lambda r: r.metrics.compute()),
        ]
        for what, how, fn in cases:
            t_on = median_time(lambda fn=fn: fn(with_), repeat=rep)
            t_off = median_time(lambda fn=fn: fn(without), repeat=rep)
            rows.append(Row(f"checksum: {what}", f"{how}, crc32c", t_on, "no checksum", t_off,
                            "(measured)"))
    return rows


if __name__ == "__main__":
    from ._common import format_table

    print(format_table(run()))
