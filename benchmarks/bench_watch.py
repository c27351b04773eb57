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

Each row's ratio is ``baseline / with watcher``: >= 0.91 means the writer is at most 10%
slower. The machine this runs on is shared (load 4-9 on 2 cores was seen: the same writer
alone then varies by 30-60% between runs a minute apart, and a thread that only polls
``zarr.json`` twice a second, 0.05 ms of CPU a poll, "cost" 34% in one run), so the modes run
in rounds, the order rotating from round to round, and the reported time of a mode is
``median(alone) / median(paired ratio)``: each round's ratio compares runs made within a minute
of each other, which cancels the slow drift of the load. Each row also says how many analysis
passes the watcher made during the loop and the CPU seconds the watcher itself used in it (from
``/proc``: noise-free, unlike wall times), so a watcher that did nothing cannot pass for a
cheap one.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from grokscope._threads import torch_threads

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


def _cpu_seconds(pid: int, tid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by a process (all its threads) or, with
    ``tid``, by one thread of it (Linux ``/proc``); NaN elsewhere."""
    stat = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    try:
        with open(stat) as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _watcher_cpu(mode: str, proc: subprocess.Popen | None) -> float:
    if mode == "process" and proc is not None:
        return _cpu_seconds(proc.pid)
    if mode == "thread":
        th = next((t for t in threading.enumerate() if t.name == "grokscope-watch"), None)
        return _cpu_seconds(os.getpid(), th.native_id) if th is not None else float("nan")
    return 0.0


def _writer(path: Path, data, *, width: int, steps: int, every: int, mode: str = "alone",
            out: Path | None = None) -> tuple[float, float, float, int, float]:
    """One recording: step 0 is recorded and the watcher (``mode`` "process" or "thread")
    makes its first pass (imports, the model, every measure on step 0) before the timed loop
    of steps 1..``steps``. Returns the loop's seconds, the first pass's seconds (0 alone),
    the seconds ``close`` took (a thread's final pass), the watcher's passes during the loop
    and the CPU seconds the watcher used during the loop."""
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
    passes0 = _passes(out) if out is not None else 0
    cpu0 = _watcher_cpu(mode, proc)
    t0 = time.perf_counter()
    for step in range(1, steps):
        loss = _train_step(model, opt, data)
        if step % every == 0 or step == steps - 1:
            rec.record(step, metrics={"train_loss": loss})
    loop = time.perf_counter() - t0
    cpu = _watcher_cpu(mode, proc) - cpu0
    passes = (_passes(out) if out is not None else 0) - passes0
    t1 = time.perf_counter()
    rec.close()
    closing = time.perf_counter() - t1
    if proc is not None:
        proc.wait(timeout=600)
    return loop, first, closing, passes, cpu


def _passes(out: Path) -> int:
    """Analysis passes the watcher made (one row of forecast.csv each)."""
    f = out / "forecast.csv"
    return max(0, len(f.read_text().splitlines()) - 1) if f.exists() else 0


def run(quick: bool = False) -> list[Row]:
    from grokscope.tasks import make_task

    p, width, steps, every, repeat = (23, 64, 1500, 10, 1) if quick else (59, 256, 1500, 10, 4)
    data = make_task("modular", p=p, train_frac=0.45)
    modes = ("alone", "process", "thread")
    times: dict[str, list[float]] = {m: [] for m in modes}
    info: dict[str, list[tuple[float, float, int, float]]] = {"process": [], "thread": []}
    kw = {"width": width, "steps": steps, "every": every}
    with torch_threads(1):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            _writer(tmp / "warm", data, **kw)  # imports and first-touch costs
            for i in range(repeat):  # rounds; the order rotates so no mode always goes first
                for mode in modes[i % 3:] + modes[:i % 3]:
                    loop, *rest = _writer(tmp / f"{mode}{i}", data, **kw, mode=mode,
                                          out=tmp / f"{mode}{i}-live")
                    times[mode].append(loop)
                    if mode != "alone":
                        info[mode].append(tuple(rest))
    alone = statistics.median(times["alone"])
    label = f"p={p}, width {width}, {steps} steps, record every {every}"

    def paired(mode: str) -> float:
        """The mode's time as ``median(alone) / median(per-round alone/mode ratio)``."""
        ratio = statistics.median(a / b for a, b in zip(times["alone"], times[mode],
                                                         strict=True))
        return alone / ratio

    def about(mode: str) -> str:
        first, closing, n, cpu = (statistics.median(x) for x in zip(*info[mode], strict=True))
        loop = statistics.median(times[mode])
        return (f"{n:g} passes and {cpu:.2f} s of watcher CPU ({cpu / loop:.0%} of the loop) "
                f"during the loop; not timed: its first pass {first:.1f} s before the loop, "
                f"close {closing:.1f} s; per-round ratios "
                + " ".join(f"{a / b:.2f}" for a, b in zip(times["alone"], times[mode],
                                                           strict=True)))

    return [
        Row(f"writer with a watcher process ({label})",
            f"+ grokscope watch process ({about('process')})", paired("process"),
            "writer alone", alone, ">= 0.91x"),
        Row(f"writer with a watcher thread ({label})",
            f"+ Recorder(watch=...) thread ({about('thread')})", paired("thread"),
            "writer alone", alone, ">= 0.91x"),
    ]

if __name__ == "__main__":
    from ._common import format_table

    print(format_table(run(quick="--quick" in sys.argv)))
