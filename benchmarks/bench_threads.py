"""``num_threads="auto"`` vs fixed thread counts, for training and for analysis.

Jobs: the README's training example (modular addition ``p = 97``, the default MLP, full-batch
AdamW, recording step 0 and the last) and an analysis of a small recorded run (a few
per-step measures over log-spaced steps). Each job runs with ``num_threads="auto"`` (the
calibration included: the in-process cache is cleared before every auto run), with 1 thread,
and with torch's default (the count torch starts with: the CPU count). Settings are timed in
interleaved rounds (a burst of load from another process hits all of them alike); medians.

Rows: auto vs each fixed setting (speed-up = fixed / auto), and auto vs the best fixed
setting, whose speed-up is ``best / auto``: the issue's target is that auto stays within 1.2x
of the best (>= 0.83x here).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from ._common import Row

#: the count torch starts with (read at import, before anything sets it)
TORCH_DEFAULT = torch.get_num_threads()


def _interleaved(jobs: dict[str, callable], repeat: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for r in range(repeat):
        names = list(jobs)
        names = names[r % len(names):] + names[:r % len(names)]
        for name in names:
            t0 = time.perf_counter()
            jobs[name]()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _settings() -> dict[str, object]:
    out: dict[str, object] = {"auto": "auto", "1 thread": 1}
    if TORCH_DEFAULT != 1:
        out[f"torch default ({TORCH_DEFAULT} threads)"] = TORCH_DEFAULT
    return out


def _rows(job: str, medians: dict[str, float], chosen: list) -> list[Row]:
    auto = medians.pop("auto")
    picked = ",".join(str(c) for c in sorted(set(chosen))) or "?"
    label = f"num_threads='auto' (chose {picked})"
    rows = [Row(job, label, auto, name, t, "informative") for name, t in medians.items()]
    best_name = min(medians, key=medians.get)
    rows.append(Row(job, label, auto, f"best fixed: {best_name}", medians[best_name],
                    "auto within 1.2x of best (>= 0.83x)"))
    return rows


def _train_job(quick: bool, repeat: int) -> list[Row]:
    from grokscope import _threads
    from grokscope.store.schedule import Schedule
    from grokscope.train import train

    steps = 30 if quick else 300
    sched = Schedule(log_until=1, per_decade=1, every=10**9)  # records step 0 and the last
    chosen: list = []
    with tempfile.TemporaryDirectory() as tmp:
        def one(threads):
            def go():
                _threads._CACHE.clear()
                run = train(task="modular", task_kwargs={"p": 97}, model="mlp",
                            out=Path(tmp) / "run", steps=steps, lr=1e-3, weight_decay=1.0,
                            schedule=sched, progress=False, device="cpu", overwrite=True,
                            num_threads=threads)
                if threads == "auto":
                    chosen.append(run.config["num_threads"])
            return go

        medians = _interleaved({k: one(v) for k, v in _settings().items()}, repeat)
    return _rows(f"train p=97 MLP, {steps} full-batch steps (incl. calibration)", medians,
                 chosen)


def _analysis_job(quick: bool, repeat: int) -> list[Row]:
    from grokscope import _threads
    from grokscope.engine import analyze
    from grokscope.store.schedule import Schedule
    from grokscope.train import train

    measures = ["nfa", "kernel", "lmn", "rqi"] if quick else ["nfa", "kernel", "lmn", "rqi",
                                                              "fourier", "mixture"]
    n_steps = 3 if quick else 6
    chosen: list = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run"
        train(task="modular", task_kwargs={"p": 59, "train_frac": 0.45}, model="mlp",
              model_kwargs={"width": 128}, out=path, steps=300, lr=5e-3, weight_decay=1.0,
              schedule=Schedule(log_until=300, per_decade=4), progress=False, device="cpu",
              num_threads=1)

        def one(threads):
            def go():
                _threads._CACHE.clear()
                res = analyze(path, measures, steps=f"log:{n_steps}", progress=False,
                              recompute=True, num_threads=threads, device="cpu")
                if threads == "auto":
                    chosen.append(res.threads)
            return go

        medians = _interleaved({k: one(v) for k, v in _settings().items()}, repeat)
    return _rows(f"analyze p=59 MLP w128, {len(measures)} measures x {n_steps} steps", medians,
                 chosen)


def run(quick: bool = False) -> list[Row]:
    previous = torch.get_num_threads()
    try:
        repeat = 3 if quick else 5
        return _train_job(quick, repeat) + _analysis_job(quick, repeat)
    finally:
        torch.set_num_threads(previous)
