"""What a live watcher costs the writer: training + recording with ``grokscope watch`` running.

The writer trains the demo's MLP on modular addition (smaller with ``quick``), full-batch
AdamW, one torch thread, recording every ``every``-th step through a :class:`Recorder`; the
time of its loop (training + recording, from the first step to the last record, before
``close``) is measured

- alone (the baseline),
- with a watcher **process** (``grokscope watch STORE --threads 1``, what a user running the
  command in a second terminal gets),
- with a watcher **thread** (``Recorder(..., watch={...})``; ``close`` then waits for its
  final pass, reported separately, not in the loop time).

The timed loop is the steady state of a long run: step 0 is recorded and the watcher's first
pass (imports, rebuilding the model, every measure at step 0: a one-time cost of a few
seconds of one core, reported in the row) is over before the loop starts.

Each row's ratio is ``baseline / with watcher`` (medians of interleaved repeats): >= 0.91
means the writer is at most 10% slower. Each row also says how many analysis passes the
watcher made during the run, so a watcher that did nothing cannot pass for a cheap one.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ._common import Row


def _train_step(model, opt, data) -> float:
    loss = F.cross_entropy(model(data.x_train), data.y_train)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def _first_pass(out: Path, proc: subprocess.Popen | None = None) -> None:
    """Wait until the watcher writing ``out`` finished its first pass (its page exists)."""
    for _ in range(6000):
        if (out / "index.html").exists():
            time.sleep(1.0)  # the pass's last lines (the progress line, the lock release)
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the watcher process exited with {proc.returncode}")
        time.sleep(0.1)
    raise RuntimeError(f"the watcher wrote no pass into {out} in 10 minutes")


def _writer(path: Path, data, *, width: int, steps: int, every: int, mode: str = "alone",
            out: Path | None = None) -> tuple[float, float, float, int]:
    """One recording: step 0 is recorded and the watcher (``mode`` "process" or "thread")
    makes its first pass (imports, the model, every measure on step 0) before the timed loop
    of steps 1..``steps``. Returns the loop's seconds, the first pass's seconds (0 alone),
    the seconds ``close`` took (a thread's final pass) and the watcher's passes."""
    from grokscope.models import model_for
    from grokscope.store import Recorder

    torch.manual_seed(0)
    model = model_for("mlp", data, width=width)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=1.0, betas=(0.9, 0.98))
    watch = {"out": str(out), "interval": 0.5} if mode == "thread" else None
    rec = Recorder(str(path), model, data, overwrite=True, watch=watch)
    rec.record(0, metrics={"train_loss": _train_step(model, opt, data)})
    t0, proc = time.perf_counter(), None
    if mode == "process":
        from grokscope.watch import CLI_COMMAND

        proc = subprocess.Popen(
            [*CLI_COMMAND, "watch", str(path), "--out", str(out), "--interval", "0.5",
             "--threads", "1", "--quiet"], stdout=subprocess.DEVNULL)
    if mode != "alone":
        _first_pass(out, proc)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for step in range(1, steps):
        loss = _train_step(model, opt, data)
        if step % every == 0 or step == steps - 1:
            rec.record(step, metrics={"train_loss": loss})
    loop = time.perf_counter() - t0
    t1 = time.perf_counter()
    rec.close()
    closing = time.perf_counter() - t1
    if proc is not None:
        proc.wait(timeout=600)
    return loop, first, closing, _passes(out) if out is not None else 0


def _passes(out: Path) -> int:
    """Analysis passes the watcher made (one row of forecast.csv each)."""
    f = out / "forecast.csv"
    return max(0, len(f.read_text().splitlines()) - 1) if f.exists() else 0


def run(quick: bool = False) -> list[Row]:
    from grokscope.tasks import make_task

    p, width, steps, every, repeat = (23, 64, 1500, 10, 1) if quick else (59, 256, 1500, 10, 3)
    data = make_task("modular", p=p, train_frac=0.45)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {"alone": [], "process": [], "thread": []}
    info: dict[str, list[tuple[float, float, int]]] = {"process": [], "thread": []}
    kw = {"width": width, "steps": steps, "every": every}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            _writer(tmp / "warm", data, **kw)  # imports and first-touch costs
            for i in range(repeat):  # interleaved: drifting machine load hits every mode alike
                for mode in ("alone", "process", "thread"):
                    loop, first, closing, n = _writer(tmp / f"{mode}{i}", data, **kw, mode=mode,
                                                      out=tmp / f"{mode}{i}-live")
                    times[mode].append(loop)
                    if mode != "alone":
                        info[mode].append((first, closing, n))
    finally:
        torch.set_num_threads(previous)
    med = {k: statistics.median(v) for k, v in times.items()}
    label = f"p={p}, width {width}, {steps} steps, record every {every}"

    def about(mode: str) -> str:
        first, closing, n = (statistics.median(x) for x in zip(*info[mode], strict=True))
        return (f"{n:g} passes; not timed: its first pass {first:.1f} s before the loop, "
                f"close {closing:.1f} s")

    return [
        Row(f"writer with a watcher process ({label})",
            f"+ grokscope watch process ({about('process')})", med["process"],
            "writer alone", med["alone"], ">= 0.91x"),
        Row(f"writer with a watcher thread ({label})",
            f"+ Recorder(watch=...) thread ({about('thread')})", med["thread"],
            "writer alone", med["alone"], ">= 0.91x"),
    ]

if __name__ == "__main__":
    from ._common import format_table

    print(format_table(run(quick="--quick" in sys.argv)))
