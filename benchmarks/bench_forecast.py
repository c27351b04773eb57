"""gs.forecast on a long run: norms read at the first step and the trend window only.

The forecast's weight-norm signals need the parameter norm at step 0 and over the window
(the latest 30% of the steps seen). The naive alternative reads every checkpoint up to
``upto``, as the first version did. A synthetic store (weights and metrics written through
``gs.Recorder``, no training) with ``N`` linearly spaced checkpoints of a two-layer MLP is
forecast at its last step both ways; the row reports the median times and their ratio.
"""

from __future__ import annotations

import importlib
import math
import tempfile
from pathlib import Path

import torch
from torch import nn

from grokscope._threads import torch_threads

from ._common import Row, median_time


def _store(path: Path, n_ckpt: int, width: int):
    import grokscope as gs
    from grokscope.data import Data

    g = torch.Generator().manual_seed(0)
    data = Data(torch.randn(32, 128, generator=g), torch.randint(0, 8, (32,), generator=g),
                torch.randn(16, 128, generator=g), torch.randint(0, 8, (16,), generator=g))
    model = nn.Sequential(nn.Linear(128, width), nn.ReLU(), nn.Linear(width, 8))
    with gs.Recorder(path, model, data, export_program=False) as rec:
        for i in range(n_ckpt):
            t = 20 * i
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(0.999)
            rec.record(t, model, {"train_acc": 1.0, "test_acc": 0.1, "train_loss": 0.01,
                                  "test_loss": 3.0 * math.exp(-t / 4000)})
    return gs.open_run(path)


def run(quick: bool = False) -> list[Row]:
    import grokscope as gs

    fc = importlib.import_module("grokscope.forecast")
    n_ckpt, width = (60, 128) if quick else (300, 1024)
    with torch_threads(1):
        with tempfile.TemporaryDirectory() as tmp:
            r = _store(Path(tmp) / "run.zarr", n_ckpt, width)

            def naive() -> None:
                fc.forecast_signals(fc._series(r, None, all_norms=True))

            ours = median_time(lambda: gs.forecast(r), repeat=5)
            full = median_time(naive, repeat=5)
    n_params = 128 * width + width + width * 8 + 8
    return [Row(f"forecast at the last of {n_ckpt} checkpoints ({n_params:,} parameters)",
                "gs.forecast (norms: step 0 + window)", ours,
                "norms of every checkpoint", full, "> 2x (reads ~30% of the checkpoints)")]
