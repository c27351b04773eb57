"""Files per step: the sharded store layout vs the per-step layout and a ``torch.save`` folder.

Rows (temp dir on local disk; one run, medians of reads, means of whole recordings):

- files+folders per step after ``Recorder.close()`` of a 1000-step small MLP (4 tensors,
  ~9.6k parameters, with its data split): the default sharded layout (``steps_per_shard=128``)
  vs the per-step layout (``steps_per_shard=None``) and vs a ``torch.save`` folder (one file
  per step). These rows hold **files per step** in the "median s" columns, so the "speed-up"
  column is how many times fewer files ours leaves; target: ours <= 0.2 files per step;
- recording: the whole recording (every ``record`` plus periodic compaction plus ``close``)
  divided by the steps (median of 3 interleaved recordings), sharded vs ``torch.save`` of each
  state dict to its own file; target
  ours at most 3x slower (ratio >= 0.33); per-step layout vs ``torch.save`` for reference;
- reading one tensor across every step (``Run.trajectory``) and one checkpoint
  (``Run.state_dict_at``) from the compacted store vs the per-step store; target: no slower
  (ratio >= 1, within noise).

Each of the last two groups for the small MLP and for a ~1M-parameter MLP (256 steps: two
compactions while recording).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ._common import Row


def _small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def _large() -> nn.Module:
    torch.manual_seed(0)
    # 1000*800 + 800 + 800*256 + 256 + 256*10 + 10 = 1,008,426 parameters
    return nn.Sequential(nn.Linear(1000, 800), nn.ReLU(), nn.Linear(800, 256), nn.ReLU(),
                         nn.Linear(256, 10))


def _data(d_in: int):
    from grokscope.data import Data

    g = torch.Generator().manual_seed(0)
    return Data(torch.randn(64, d_in, generator=g), torch.randint(0, 10, (64,), generator=g),
                torch.randn(32, d_in, generator=g), torch.randint(0, 10, (32,), generator=g))


def _step(model: nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3)


def _record(path: Path, model: nn.Module, data, n: int, **kw) -> float:
    """Seconds per step of a whole recording (records, compactions, close)."""
    from grokscope.store import Recorder

    t0 = time.perf_counter()
    with Recorder(path, model, data, export_program=False, **kw) as rec:
        for step in range(n):
            _step(model)
            rec.record(step, metrics={"train_loss": 1.0 / (step + 1)})
    return (time.perf_counter() - t0) / n


def _save(folder: Path, model: nn.Module, n: int) -> float:
    folder.mkdir()
    t0 = time.perf_counter()
    for step in range(n):
        _step(model)
        torch.save(model.state_dict(), folder / f"step_{step:06d}.pt")
    return (time.perf_counter() - t0) / n


def _entries(path: Path) -> int:
    """Files and folders under ``path``, itself included (what an inode quota counts)."""
    return 1 + sum(len(dirs) + len(files) for _, dirs, files in os.walk(path))


def _compare(tmp: Path, name: str, factory, d_in: int, n: int, key: str, *, files: bool,
             rep: int, rec_rep: int) -> list[Row]:
    import shutil

    from grokscope.store import open_run

    data = _data(d_in)
    _record(tmp / f"{name}-warm.zarr", factory(), data, 3)  # imports, page cache
    sharded = tmp / f"{name}-sharded.zarr"
    per_step = tmp / f"{name}-per-step.zarr"
    times: dict[str, list[float]] = {"shard": [], "step": [], "save": []}
    for r in range(rec_rep):  # interleaved, so a busy moment hits all three alike
        if r:
            for old in (sharded, per_step, tmp / f"{name}-pt"):
                shutil.rmtree(old)
        times["shard"].append(_record(sharded, factory(), data, n))
        times["step"].append(_record(per_step, factory(), data, n, steps_per_shard=None))
        times["save"].append(_save(tmp / f"{name}-pt", factory(), n))
    t_shard, t_step, t_save = (statistics.median(times[k]) for k in ("shard", "step", "save"))
    rows: list[Row] = []
    label = f"files: {name}, {n} steps"
    if files:
        ours = _entries(sharded) / n
        rows.append(Row(f"{label}: files+folders/step after close (cols: files/step)",
                        "sharded (128 steps/shard)", ours, "per-step layout",
                        _entries(per_step) / n, "ours <= 0.2/step"))
        rows.append(Row(f"{label}: files+folders/step after close (cols: files/step)",
                        "sharded (128 steps/shard)", ours, "torch.save folder",
                        _entries(tmp / f"{name}-pt") / n, "ours <= 0.2/step"))
    rows.append(Row(f"{label}: record, s/step incl. compaction+close", "sharded", t_shard,
                    "torch.save file", t_save, "ours <= 3x"))
    rows.append(Row(f"{label}: record, s/step incl. close", "per-step layout", t_step,
                    "torch.save file", t_save, "(reference)"))
    a, b = open_run(sharded), open_run(per_step)
    ta, tb = _paired(lambda: a.trajectory(key), lambda: b.trajectory(key), rep)
    rows.append(Row(f"{label}: read 1 tensor x all steps", "Run.trajectory, sharded", ta,
                    "Run.trajectory, per-step", tb, ">= 1x (no slower)"))
    steps = [int(s) for s in a.steps[:: max(1, n // 15)]]

    def one(run):
        return lambda: [run.state_dict_at(s) for s in steps]

    k = len(steps)
    ta, tb = _paired(one(a), one(b), 3 * rep)
    rows.append(Row(f"{label}: read 1 ckpt (mean of {k} steps)", "Run.state_dict_at, sharded",
                    ta / k, "Run.state_dict_at, per-step", tb / k, ">= 1x (no slower)"))
    ta, tb = _paired(lambda: a.params[key].values, lambda: b.params[key].values, rep)
    rows.append(Row(f"{label}: read lazily, params[key].values", "dask view, sharded", ta,
                    "dask view, per-step", tb, "(measured)"))
    return rows


def _paired(fa, fb, repeat: int) -> tuple[float, float]:
    """Median seconds of ``fa()`` and ``fb()``, timed alternately (``repeat`` times each after
    a warm-up), so a busy moment of a shared machine hits both alike."""
    ta, tb = [], []
    for i in range(repeat + 1):
        for fn, out in ((fa, ta), (fb, tb)) if i % 2 else ((fb, tb), (fa, ta)):
            t0 = time.perf_counter()
            fn()
            if i:
                out.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def run(quick: bool = False) -> list[Row]:
    torch.set_num_threads(1)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gs-bench-files-") as tmp:
        tmp = Path(tmp)
        rows += _compare(tmp, "small MLP", _small, 64, 300 if quick else 1000, "2.weight",
                         files=True, rep=3 if quick else 5, rec_rep=1 if quick else 3)
        rows += _compare(tmp, "1M-param MLP", _large, 1000, 40 if quick else 256, "2.weight",
                         files=False, rep=3 if quick else 5, rec_rep=1 if quick else 3)
    return rows


if __name__ == "__main__":
    from ._common import format_table

    print(format_table(run(quick=bool(os.environ.get("QUICK")))))
