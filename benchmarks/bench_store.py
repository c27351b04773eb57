"""The trajectory store vs a folder of ``torch.save`` files (one per checkpoint).

Rows (medians, temp dir on local disk, a ~1M-parameter MLP with 6 tensors):

- record one checkpoint: ``Recorder.record`` (committed-count commit) vs ``torch.save`` of the
  same state dict to a new file; target: ours at most 3x slower (ratio >= 0.33);
- the same with the consolidated-metadata commit;
- read one checkpoint: ``Run.state_dict_at`` vs ``torch.load`` of one file;
- one tensor across all steps: ``Run.trajectory(key)`` vs loading every file; target >= 3x;
- one scalar weight across all steps: ``Run.trajectory(key, index=...)`` vs every file.
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


def _perturb(model: nn.Module, step: int) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3 * step)


def _record_times(path: Path, model: nn.Module, n: int, commit: str) -> tuple[list[float], object]:
    from grokscope.store import Recorder

    times = []
    with Recorder(path, model, None, commit=commit) as rec:
        for step in range(n):
            _perturb(model, 1)
            t0 = time.perf_counter()
            rec.record(step, metrics={"train_loss": 1.0 / (step + 1), "test_acc": 0.5})
            times.append(time.perf_counter() - t0)
    return times, None


def _save_times(folder: Path, model: nn.Module, n: int) -> list[float]:
    folder.mkdir()
    times = []
    for step in range(n):
        _perturb(model, 1)
        t0 = time.perf_counter()
        torch.save(model.state_dict(), folder / f"step_{step:06d}.pt")
        times.append(time.perf_counter() - t0)
    return times


def run(quick: bool = False) -> list[Row]:
    from grokscope.store import open_run

    n_steps = 60 if quick else 500
    n_rec = 30 if quick else 100
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gs-bench-store-") as tmp:
        tmp = Path(tmp)
        model = _model()
        # warm-up (imports, page cache)
        _record_times(tmp / "warm.zarr", model, 3, "count")
        _save_times(tmp / "warm_pt", model, 3)

        ours, _ = _record_times(tmp / "count.zarr", model, n_rec, "count")
        cons, _ = _record_times(tmp / "cons.zarr", model, n_rec, "consolidated")
        naive = _save_times(tmp / "rec_pt", model, n_rec)
        t_save = statistics.median(naive)
        rows.append(Row("store: record 1 ckpt (1M params)", "record, count commit",
                        statistics.median(ours), "torch.save file", t_save, "ours <= 3x"))
        rows.append(Row("store: record 1 ckpt (1M params)", "record, consolidated commit",
                        statistics.median(cons), "torch.save file", t_save, "(measured)"))

        # a trajectory of n_steps checkpoints in both forms
        _record_times(tmp / "traj.zarr", model, n_steps, "count")
        files = tmp / "traj_pt"
        _save_times(files, model, n_steps)
        paths = sorted(files.glob("*.pt"))
        run_ = open_run(tmp / "traj.zarr")
        mid = int(run_.steps[n_steps // 2])

        def load_one():
            return torch.load(paths[n_steps // 2], weights_only=True, map_location="cpu")

        rows.append(Row("store: read 1 ckpt", "Run.state_dict_at",
                        median_time(lambda: run_.state_dict_at(mid), repeat=15),
                        "torch.load file", median_time(load_one, repeat=15), "(measured)"))

        key = "2.weight"  # (256, 800)

        def files_tensor():
            return torch.stack([torch.load(p, weights_only=True, map_location="cpu")[key]
                                for p in paths])

        rep = 3 if quick else 5
        rows.append(Row(f"store: 1 tensor x {n_steps} steps", "Run.trajectory",
                        median_time(lambda: run_.trajectory(key), repeat=rep),
                        f"load {n_steps} files", median_time(files_tensor, repeat=rep),
                        ">= 3x faster"))
        rows.append(Row(f"store: 1 tensor x {n_steps} steps", "Run.params[key].values (dask)",
                        median_time(lambda: run_.params[key].values, repeat=rep),
                        f"load {n_steps} files", median_time(files_tensor, repeat=rep),
                        "(measured)"))

        def files_scalar():
            return torch.stack([torch.load(p, weights_only=True, map_location="cpu")[key][3, 7]
                                for p in paths])

        rows.append(Row(f"store: 1 weight x {n_steps} steps", "Run.trajectory(index=)",
                        median_time(lambda: run_.trajectory(key, index=(3, 7)), repeat=rep),
                        f"load {n_steps} files", median_time(files_scalar, repeat=rep),
                        "(measured)"))
    return rows


if __name__ == "__main__":
    from ._common import format_table

    print(format_table(run()))
