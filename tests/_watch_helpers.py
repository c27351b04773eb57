"""A real writer for the watch tests: trains a small nn.Sequential MLP on modular addition
with plain torch and records it through a Recorder, run in a child process
(``python -c "from tests._watch_helpers import write; write(...)"``)."""

from __future__ import annotations

import os
import signal
import sys
import time

import torch
from torch import nn


def make_model(p: int = 11, width: int = 24) -> nn.Sequential:
    """The way researchers write it: an nn.Sequential, no grokscope model class."""
    return nn.Sequential(nn.Linear(2 * p, width), nn.ReLU(), nn.Linear(width, p))


def write(path: str, *, steps: int = 40, every: int = 2, sleep: float = 0.05,
          p: int = 11, kill_after: int | None = None, watch: object = None,
          builtin: bool = False) -> None:
    """Train ``steps`` full-batch AdamW steps, recording every ``every``-th (and sleeping
    ``sleep`` seconds after each record, so a watcher sees the run grow). With
    ``kill_after`` the process SIGKILLs itself after that many records (a killed writer:
    the store is never closed). ``builtin``: grokscope's registered MLP (rebuilt by name,
    no exported program: the fast tests) instead of the nn.Sequential."""
    import grokscope as gs
    from grokscope.store import Recorder

    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = gs.make_task("modular", p=p, train_frac=0.5)
    model = gs.models.model_for("mlp", data, width=24) if builtin else make_model(p)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1.0)
    n = 0
    with Recorder(path, model, data, config={"lr": 1e-2}, watch=watch) as rec:
        for step in range(steps):
            loss = nn.functional.cross_entropy(model(data.x_train), data.y_train)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % every == 0:
                with torch.no_grad():
                    acc = {f"{split}_acc": (model(x).argmax(1) == y).float().mean().item()
                           for split, x, y in (("train", data.x_train, data.y_train),
                                               ("test", data.x_test, data.y_test))}
                rec.record(step, metrics={"train_loss": loss.item(), **acc})
                n += 1
                if kill_after is not None and n >= kill_after:
                    sys.stdout.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(sleep)
