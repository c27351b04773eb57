"""The reference trainer vs a straightforward training loop.

Same task (modular addition, two-hot inputs), same MLP, full-batch AdamW, same number of
steps. The naive loop keeps the data as Python lists and converts them to tensors every step
and reads the loss back with ``.item()`` every step (a common pattern); ours keeps device
tensors, reads nothing back between recorded steps and records through the store (here only
step 0 and the last step, so the row measures the training loop itself).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from grokscope._threads import torch_threads

from ._common import Row, median_time


def _naive(data, width: int, steps: int, lr: float) -> None:
    from grokscope.models import model_for

    xs, ys = data.x_train.tolist(), data.y_train.tolist()
    torch.manual_seed(0)
    model = model_for("mlp", data, width=width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1.0, betas=(0.9, 0.98))
    losses = []
    for _ in range(steps):
        x = torch.tensor(xs, dtype=torch.float32)
        y = torch.tensor(ys, dtype=torch.long)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())


def run(quick: bool = False) -> list[Row]:
    from grokscope.store.schedule import Schedule
    from grokscope.tasks import make_task
    from grokscope.train import train

    p, width, steps = (23, 64, 100) if quick else (59, 256, 200)
    data = make_task("modular", p=p, train_frac=0.5)
    sched = Schedule(log_until=1, per_decade=1, every=10**9)  # records step 0 and the last
    with torch_threads(1):  # the same (and contention-proof) setting for both loops
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"

            def ours(n: int) -> float:
                return median_time(lambda: train(
                    data, "mlp", out, model_kwargs={"width": width}, steps=n, lr=3e-3,
                    schedule=sched, progress=False, device="cpu", overwrite=True,
                    num_threads=1), repeat=3)

            def naive(n: int) -> float:
                return median_time(lambda: _naive(data, width, n, 3e-3), repeat=3)

            ours_1, ours_2 = ours(steps), ours(2 * steps)
            naive_1, naive_2 = naive(steps), naive(2 * steps)
    label = f"p={p}, width {width}, full batch"
    return [
        # marginal cost of one epoch (= one full-batch step): setup cancels out
        Row(f"train epoch ({label})", "gs.train: device tensors, no per-step sync",
            (ours_2 - ours_1) / steps, "lists->tensors + .item() every step",
            (naive_2 - naive_1) / steps, ">= 1x"),
        Row(f"train run, {steps} steps incl. store setup ({label})",
            "gs.train (records steps 0 and last)", ours_1, "naive loop, nothing saved",
            naive_1, "informative"),
    ]
