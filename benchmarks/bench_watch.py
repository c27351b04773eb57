"""What a live watcher costs the writer: training + recording with ``grokscope watch`` running.

The writer trains the demo's MLP on modular addition (smaller with ``quick``), full-batch
AdamW, one torch thread, recording every ``every``-th step through a :class:`Recorder`; the
time of its loop (training + recording, from the first step to the last record, before
``close``) is measured

- alone (the baseline),
- with a watcher **process** (``grokscope watch STORE --threads 1``, started and past its
  imports before the writer begins: what a user running the command in a second terminal
  gets; its first pass, which loads the measures and the model, happens during the run),
- with a watcher **thread** (``Recorder(..., watch={...})``, started when the Recorder opens;
  ``close`` then waits for its final pass, reported separately, not in the loop time).

Each row's ratio is ``baseline / with watcher`` (medians of interleaved repeats): >= 0.91
means the writer is at most 10% slower. Each row also says how many analysis passes the
watcher made during the run, so a watcher that did nothing cannot pass for a cheap one.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ._common import Row


def _writer(path: Path, data, *, width: int, steps: int, every: int,
            watch: dict | None = None) -> tuple[float, float]:
    """Seconds of the training+recording loop, and of ``close`` (joining a watcher)."""
    from grokscope.models import model_for
    from grokscope.store import Recorder

    torch.manual_seed(0)
    model = model_for("mlp", data, width=width)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=1.0, betas=(0.9, 0.98))
    rec = Recorder(str(path), model, data, overwrite=True, watch=watch)
    t0 = time.perf_counter()
    for step in range(steps):
        loss = F.cross_entropy(model(data.x_train), data.y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps - 1:
            rec.record(step, metrics={"train_loss": loss.item()})
    loop = time.perf_counter() - t0
    t1 = time.perf_counter()
    rec.close()
    return loop, time.perf_counter() - t1


def _passes(out: Path) -> int:
    """Analysis passes the watcher made (one row of forecast.csv each)."""
    f = out / "forecast.csv"
    return max(0, len(f.read_text().splitlines()) - 1) if f.exists() else 0


def _with_process(path: Path, out: Path, data, **kw) -> tuple[float, int]:
    from grokscope.watch import CLI_COMMAND

    proc = subprocess.Popen(
        [*CLI_COMMAND, "watch", str(path), "--out", str(out), "--interval", "0.5",
         "--threads", "1"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    first = proc.stderr.readline()  # "watch: following ...": the watcher is past its imports
    if not first.startswith("watch:"):
        proc.kill()
        raise RuntimeError(f"the watcher process did not start: {first}{proc.stderr.read()}")
    drain = threading.Thread(target=proc.stderr.read, daemon=True)
    drain.start()
    loop, _ = _writer(path, data, **kw)
    proc.wait(timeout=600)
    return loop, _passes(out)


def run(quick: bool = False) -> list[Row]:
    from grokscope.tasks import make_task

    p, width, steps, every, repeat = (23, 64, 300, 10, 2) if quick else (59, 256, 600, 10, 3)
    data = make_task("modular", p=p, train_frac=0.45)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {"alone": [], "process": [], "thread": []}
    passes: dict[str, list[int]] = {"process": [], "thread": []}
    joins: list[float] = []
    kw = {"width": width, "steps": steps, "every": every}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            _writer(tmp / "warm", data, **kw)  # imports and first-touch costs
            for i in range(repeat):  # interleaved: drifting machine load hits every mode alike
                times["alone"].append(_writer(tmp / f"a{i}", data, **kw)[0])
                loop, n = _with_process(tmp / f"p{i}", tmp / f"p{i}-live", data, **kw)
                times["process"].append(loop)
                passes["process"].append(n)
                loop, join = _writer(tmp / f"t{i}", data, **kw, watch={
                    "out": str(tmp / f"t{i}-live"), "interval": 0.5})
                times["thread"].append(loop)
                joins.append(join)
                passes["thread"].append(_passes(tmp / f"t{i}-live"))
    finally:
        torch.set_num_threads(previous)
    med = {k: statistics.median(v) for k, v in times.items()}
    label = f"p={p}, width {width}, {steps} steps, record every {every}"
    n_proc, n_thr = statistics.median(passes["process"]), statistics.median(passes["thread"])
    return [
        Row(f"writer with a watcher process ({label})",
            f"+ grokscope watch process ({n_proc:g} passes)", med["process"],
            "writer alone", med["alone"], ">= 0.91x"),
        Row(f"writer with a watcher thread ({label}; close then waited "
            f"{statistics.median(joins):.1f} s for the final pass)",
            f"+ Recorder(watch=...) thread ({n_thr:g} passes)", med["thread"],
            "writer alone", med["alone"], ">= 0.91x"),
    ]


if __name__ == "__main__":
    from ._common import format_table

    print(format_table(run(quick="--quick" in sys.argv)))
