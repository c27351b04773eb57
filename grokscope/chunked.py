"""One run's steps across a Dask cluster: chunks of steps, one task each, merged and written once.

:func:`grokscope.analyze` with ``workers=N`` or ``scheduler=...`` splits the steps left to
compute into chunks of ``steps_per_task`` consecutive steps. Each chunk is one Dask task that
opens the run on its worker, loads each checkpoint of its chunk once, computes every requested
step measure on it and *returns* its part (per-step datasets); nothing is written by a worker.
When every task has finished, this process merges the parts of each result in step order with
the stored part and writes each result once, atomically, through the ordinary results writer
(:func:`grokscope.results_io.write_result`: writer lock held for the whole analysis, checksums,
attrs hash, "never replace without saying so"). A failed chunk raises :class:`ChunkError`
naming the run and the chunk's steps; nothing is written then.

**Stateful measures** (``mixture``'s warm start from the previous step's fit, its component
slots matched along the whole trajectory) cannot be cut into independent pieces: each chunk's
state depends on every step before it. They run as one *chain* of dependent tasks, one per
chunk, in step order; each receives the state the previous chunk ended with, so the result is
identical to the serial path's (the chain runs beside the stateless tasks, but is itself
sequential: a stateful measure gains no speed from more workers).

Identity with the serial path: every step is computed by the same function on the same
checkpoint with the same carried state, and the parts are stacked in the same step order, so
deterministic measures give bitwise-identical results (tested).
"""

from __future__ import annotations

import math
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr

from . import engine
from .errors import ConfigError, GrokscopeError
from .worker_setup import WorkerSetup, prepare_process

__all__ = ["ChunkError", "auto_steps_per_task", "compute_chunk", "split_steps"]

#: tasks per worker slot the default chunk size aims at: enough for load balancing (a slow
#: chunk does not leave the other workers idle at the end), few enough that the per-task cost
#: (opening the run, the split, the anatomy: ~0.1-0.5 s) stays small
TASKS_PER_WORKER = 4
#: bounds of the default chunk size (steps per task)
MIN_STEPS_PER_TASK, MAX_STEPS_PER_TASK = 4, 512


class ChunkError(GrokscopeError):
    """A chunk of one run's steps failed on a worker; nothing was written."""


def auto_steps_per_task(n_steps: int, slots: int) -> int:
    """Default chunk size: about :data:`TASKS_PER_WORKER` chunks per worker slot, within
    ``[MIN_STEPS_PER_TASK, MAX_STEPS_PER_TASK]``."""
    size = math.ceil(n_steps / max(1, TASKS_PER_WORKER * slots))
    return int(min(MAX_STEPS_PER_TASK, max(MIN_STEPS_PER_TASK, size)))


def split_steps(steps: Sequence[int], steps_per_task: int) -> list[list[int]]:
    """``steps`` (in order) cut into consecutive chunks of at most ``steps_per_task``."""
    steps = [int(s) for s in steps]
    return [steps[i : i + steps_per_task] for i in range(0, len(steps), steps_per_task)]


def check_steps_per_task(steps_per_task: Any) -> int | None:
    """``steps_per_task`` validated: a positive int or None (automatic)."""
    if steps_per_task is None:
        return None
    if isinstance(steps_per_task, bool) or not isinstance(steps_per_task, int | np.integer) \
            or steps_per_task < 1:
        raise ConfigError(
            f"steps_per_task must be a positive integer or None (automatic), got {steps_per_task!r}"
        )
    return int(steps_per_task)


def slots(client: Any) -> int:
    """Task slots of a Dask cluster (threads over all workers; at least 1)."""
    try:
        return max(1, int(sum(client.nthreads().values())))
    except (OSError, TimeoutError, AttributeError):  # pragma: no cover - a cluster going away
        return 1


# ----------------------------------------------------------------------------- the task
@dataclass
class RunSource:
    """How a worker opens the run: an absolute path or URL and the caller's overrides."""

    path: str
    storage_options: dict | None = None
    model: Any = None
    anatomy: dict | None = None
    trust_code: bool = False
    #: one per analysis: the chunks of one call share a worker's opened run (see ``open``)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def of(cls, run: Any) -> RunSource:
        from .distributed import absolute

        return cls(absolute(run.path), getattr(run, "storage_options", None),
                   getattr(run, "model_override", None), getattr(run, "anatomy_override", None),
                   bool(getattr(run, "trust_code", False)))

    def open(self) -> Any:
        """The run, opened once per worker thread and analysis: opening (metadata, the
        exported model, the anatomy) cost ~0.6 s, as much as several steps of a cheap measure,
        and every chunk of the call paid it again."""
        from .store.run import open_run

        key = (self.token, threading.get_ident())
        run = _OPENED.get(key)
        if run is None:
            run = open_run(self.path, model=self.model, anatomy=self.anatomy,
                           trust_code=self.trust_code, storage_options=self.storage_options)
            while len(_OPENED) >= _OPENED_MAX:  # the oldest analyses' runs go first
                _OPENED.pop(next(iter(_OPENED)))
            _OPENED[key] = run
        return run


#: runs opened by this worker process, by (analysis token, thread): the steps an analysis
#: reads were committed before it started, so one opening serves all its chunks
_OPENED: dict[tuple[str, int], Any] = {}
_OPENED_MAX = 4


@dataclass
class JobPart:
    """One measure's work in one chunk: the steps to compute, and for a stateful measure the
    stored steps (the serial path replays the last one before a step when no state is carried)."""

    spec: Any
    params: dict
    key: str
    steps: list[int]
    done_steps: np.ndarray | None = None


@dataclass
class ChunkResult:
    """What a chunk task returns: per-step datasets by result name, the carried state of each
    stateful measure, seconds per measure, and the steps with non-finite weights."""

    parts: dict[str, list[xr.Dataset]] = field(default_factory=dict)
    states: dict[str, dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    nonfinite: list[int] = field(default_factory=list)


def _describe(path: str, chunk: Sequence[int]) -> str:
    return f"run {path}, steps {chunk[0]}..{chunk[-1]} ({len(chunk)} steps)"


def compute_chunk(source: RunSource, jobs: list[JobPart], chunk: list[int], device: str,
                  anatomy: Any, previous: ChunkResult | None = None, *,
                  setup: WorkerSetup | None = None) -> ChunkResult:
    """Compute ``jobs`` on the steps of ``chunk`` (the Dask task; also callable directly).

    Parameters
    ----------
    source : RunSource
    jobs : list of JobPart
        The measures and which steps of ``chunk`` each computes.
    chunk : list of int
        The chunk's steps, increasing; each checkpoint is loaded once.
    device : str
    anatomy : Anatomy
        The roles resolved by the parent (the same for every chunk).
    previous : ChunkResult, optional
        The previous chunk of a stateful chain: its ``states`` continue here.
    setup : WorkerSetup, optional
        Applied to this worker process first (malloc thresholds, torch threads: see
        :mod:`grokscope.worker_setup`); None changes nothing.

    Returns
    -------
    ChunkResult

    Raises
    ------
    ChunkError
        A measure raised a GrokscopeError: the message names the run, the chunk's steps, the
        measure and the step.
    """
    prepare_process(setup)
    try:
        run = source.open()
    except GrokscopeError as exc:
        raise ChunkError(f"{_describe(source.path, chunk)}: could not open the run on the "
                         f"worker: {type(exc).__name__}: {exc} (every worker must reach the "
                         "store under the same path or URL)") from None
    dev = torch.device(device)
    data = run.data.to(dev)
    refs = engine._References(run, dev)
    config = dict(getattr(run, "config", {}) or {})
    out = ChunkResult()
    carried = dict(previous.states) if previous is not None else {}
    live = []
    for part in jobs:
        name = part.spec.result_name
        job = engine._Job(part.spec, part.params, part.key, None, set(part.steps),
                          state=carried.pop(name, {}))
        live.append((job, part))
        out.seconds[name] = 0.0
    wanted = set().union(*(set(p.steps) for p in jobs)) if jobs else set()
    for step in chunk:
        if step not in wanted:
            continue
        try:
            model = run.model_at(step, device=dev).eval()
        except GrokscopeError as exc:
            raise ChunkError(f"{_describe(source.path, chunk)}: could not load the checkpoint "
                             f"at step {step}: {type(exc).__name__}: {exc}") from None
        finite = engine._finite(model)
        if not finite:
            out.nonfinite.append(step)
        for job, part in live:
            if step not in job.todo:
                continue
            t0 = time.perf_counter()
            try:
                if job.spec.stateful and not job.state and part.done_steps is not None:
                    prev = engine.rewarm_step(part.done_steps, step)
                    if prev is not None:
                        engine.replay(run, job, prev, data, dev, refs, config, anatomy)
                # no warnings.catch_warnings here: it swaps process-wide state, and the
                # workers of an in-process cluster are threads of the caller's process
                engine.compute_step(job, step, model, finite, data, dev, refs, config, anatomy)
            except GrokscopeError as exc:
                raise ChunkError(
                    f"{_describe(source.path, chunk)}: measure {job.spec.result_name!r} failed "
                    f"at step {step}: {type(exc).__name__}: {exc}"
                ) from None
            out.seconds[job.spec.result_name] += time.perf_counter() - t0
    for job, _ in live:
        out.parts[job.spec.result_name] = job.new
        if job.spec.stateful:
            out.states[job.spec.result_name] = job.state
    out.states.update(carried)  # stateful measures with nothing to do here pass theirs on
    return out


# ----------------------------------------------------------------------------- the parent
def _merge(job: engine._Job, parts: list[xr.Dataset]) -> list[xr.Dataset]:
    """``parts`` in step order, with the serial path's template for a non-finite first step of
    a chunk: a measure that raised on non-finite weights at a chunk's first step had no earlier
    result in its task to copy the layout from (a dataset holding only ``nonfinite_weights``);
    serially the previous step's result (or the stored last step) is copied with NaN."""
    merged: list[xr.Dataset] = []
    for ds in parts:
        previous = merged[-1] if merged else (
            job.done.isel(step=[-1]) if job.done is not None else None)
        if (previous is not None and set(ds.data_vars) == {"nonfinite_weights"}
                and bool(ds["nonfinite_weights"].values.all())):
            template = previous.isel(step=0, drop=True)
            ds = engine._nan_like(template).assign(nonfinite_weights=((), True)).expand_dims(
                step=ds.step.values)
        merged.append(ds)
    return merged


def step_runner(client: Any, steps_per_task: int | None, *, describe_progress: str = "analyze",
                setup: WorkerSetup | None = None):
    """A ``step_runner`` for :func:`grokscope.engine._analyze_locked` that computes the jobs'
    missing steps as chunk tasks on ``client`` and writes each result once; ``setup`` is
    applied in each worker process (default: one torch thread per task slot)."""
    setup = WorkerSetup() if setup is None else setup

    def run_jobs(run: Any, loc: Any, jobs: list, selected: np.ndarray, data: Any,
                 dev: torch.device, refs: Any, progress: bool, flush_seconds: float,
                 anat: Any, timings: dict[str, float] | None = None) -> None:
        del data, refs, flush_seconds  # the workers load their own; results are written once
        timings = {} if timings is None else timings
        visit = [int(s) for s in selected if any(int(s) in j.todo for j in jobs)]
        if not visit:
            return
        size = steps_per_task or auto_steps_per_task(len(visit), slots(client))
        chunks = split_steps(visit, size)
        source = RunSource.of(run)
        futures = _submit(client, source, jobs, chunks, str(dev), anat, setup)
        results = _gather(client, futures, source.path, progress, describe_progress)
        t0 = time.perf_counter()
        nonfinite = sorted({s for r in results.values() for s in r.nonfinite})
        for step in nonfinite:
            warnings.warn(f"step {step} has non-finite weights: its results are NaN",
                          stacklevel=2)
        for job in jobs:
            name = job.spec.result_name
            parts = [ds for i in sorted(results) for ds in results[i].parts.get(name, [])]
            parts.sort(key=lambda ds: int(ds.step.values[0]))
            job.new = _merge(job, parts)
            for r in results.values():
                timings[name] = timings.get(name, 0.0) + r.seconds.get(name, 0.0)
        for job in jobs:
            t1 = time.perf_counter()
            engine._flush(loc, job, dev)
            name = job.spec.result_name
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - t1
        if progress:
            print(f"{describe_progress}: {len(futures)} tasks of <= {size} steps on "
                  f"{slots(client)} workers; merged and written in "
                  f"{time.perf_counter() - t0:.2f} s", file=sys.stderr, flush=True)

    return run_jobs


def _submit(client: Any, source: RunSource, jobs: list, chunks: list[list[int]], device: str,
            anat: Any, setup: WorkerSetup) -> dict[Any, tuple[int, list[int]]]:
    """Submit one stateless task per chunk and one chain of stateful tasks; returns
    ``{future: (index, chunk)}``."""
    futures: dict[Any, tuple[int, list[int]]] = {}
    stateless = [j for j in jobs if not j.spec.stateful]
    stateful = [j for j in jobs if j.spec.stateful]
    stamp = time.monotonic_ns()
    index = 0

    def parts_for(group: list, chunk: list[int]) -> list[JobPart]:
        members = set(chunk)
        out = []
        for j in group:
            steps = sorted(members & j.todo)
            if steps:
                done = None if j.done is None else np.asarray(j.done.step.values)
                out.append(JobPart(j.spec, j.params, j.key, steps,
                                   done if j.spec.stateful else None))
        return out

    for chunk in chunks:
        parts = parts_for(stateless, chunk)
        if parts:
            fut = client.submit(compute_chunk, source, parts, chunk, device, anat, None,
                                setup=setup, pure=False, key=f"grokscope-chunk-{stamp}-{index}")
            futures[fut] = (index, chunk)
            index += 1
    previous = None
    for chunk in chunks:
        parts = parts_for(stateful, chunk)
        if parts:
            previous = client.submit(compute_chunk, source, parts, chunk, device, anat, previous,
                                     setup=setup, pure=False,
                                     key=f"grokscope-chain-{stamp}-{index}")
            futures[previous] = (index, chunk)
            index += 1
    return futures


def _gather(client: Any, futures: dict, path: str, progress: bool,
            desc: str) -> dict[int, ChunkResult]:
    """Wait for every task; on the first failure cancel the rest and raise ChunkError."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    del client
    results: dict[int, ChunkResult] = {}
    bar = tqdm(total=len(futures), desc=desc, unit="task", disable=not progress, leave=False)
    try:
        for fut in as_completed(list(futures)):
            index, chunk = futures[fut]
            exc = fut.exception()
            if exc is None:
                results[index] = fut.result()
                bar.update(1)
                continue
            if isinstance(exc, ChunkError):
                raise ChunkError(f"{exc}; nothing was written") from exc
            if isinstance(exc, GrokscopeError):
                raise ChunkError(f"{_describe(path, chunk)}: {type(exc).__name__}: {exc}; "
                                 "nothing was written") from exc
            exc.add_note(f"grokscope: in the Dask task for {_describe(path, chunk)}; nothing "
                         "was written")
            raise exc
    finally:
        bar.close()
        for fut in futures:
            if not fut.done():
                fut.cancel()
    return results
