"""Many runs at once: one task per run, serially or on a dask.distributed cluster (one long
run, or fewer runs than workers: each run's steps split into tasks, :mod:`grokscope.chunked`).

Training (:func:`grokscope.sweep`) and analysis (:func:`analyze_many`) both come down to
"call one function per run store"; every task writes only into its own store, so tasks never
share a file and need no locking. Three ways to run them:

``workers=None, scheduler=None``
    serially, in this process (the default; no Dask at all);
``workers=N``
    a private ``LocalCluster(n_workers=N, threads_per_worker=1, processes=True)``, started for
    the call and shut down afterwards (one process per worker: torch and Python's GIL never
    contend; Dask sets ``OMP_NUM_THREADS=1`` in each worker, and each task first sets the
    worker process's malloc thresholds: :mod:`grokscope.worker_setup`);
``scheduler="tcp://host:8786"`` (or a ``distributed.Client``)
    an existing cluster (``dask scheduler`` / ``dask worker``, see ``docs/distributed.md``).
    The stores must then live on storage every worker can reach (a shared filesystem or an
    fsspec URL); local paths are made absolute before they are sent.

A task that fails with a :class:`~grokscope.errors.GrokscopeError` does not stop the others:
when all tasks have finished, :class:`DistributedError` lists every failure (what did finish
is in the stores and in ``error.results``). Any other exception is a bug and is re-raised at
once (the remaining tasks are cancelled).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import ConfigError, GrokscopeError
from .worker_setup import WorkerSetup, prepare_process

__all__ = [
    "DistributedError",
    "add_distributed_arguments",
    "analyze_many",
    "analyze_one",
    "dask_client",
    "map_runs",
]


class DistributedError(GrokscopeError):
    """Some per-run tasks failed; ``failures`` maps each key to its error message and
    ``results`` holds what the other tasks returned."""

    def __init__(self, message: str, failures: dict[str, str], results: dict[str, Any]) -> None:
        super().__init__(message)
        self.failures = failures
        self.results = results


def _check_workers(workers: Any, scheduler: Any) -> None:
    if workers is not None and scheduler is not None:
        raise ConfigError(
            "pass either workers=N (start a local Dask cluster) or scheduler=ADDRESS (use an "
            "existing one), not both"
        )
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise ConfigError(f"workers must be a positive integer or None, got {workers!r}")
    if scheduler is not None and not isinstance(scheduler, str) and not _is_client(scheduler):
        raise ConfigError(
            "scheduler must be an address such as 'tcp://10.0.0.1:8786' or a "
            f"distributed.Client, got {type(scheduler).__name__}"
        )


def _is_client(obj: Any) -> bool:
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return False
    return isinstance(obj, Client)


@contextmanager
def dask_client(workers: int | None = None, scheduler: Any = None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``workers``/``scheduler``, or None for serial work.

    Parameters
    ----------
    workers : int, optional
        Start a private ``LocalCluster(n_workers=workers, threads_per_worker=1,
        processes=True)`` (no dashboard), closed on exit.
    scheduler : str or distributed.Client, optional
        Connect to an existing scheduler (the client is closed on exit; a Client passed in is
        used as is and left open).

    Yields
    ------
    distributed.Client or None
    """
    _check_workers(workers, scheduler)
    if workers is None and scheduler is None:
        yield None
        return
    from distributed import Client, LocalCluster

    if _is_client(scheduler):
        yield scheduler
        return
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(
                f"could not connect to the Dask scheduler at {scheduler!r} ({exc}); start one "
                "with `dask scheduler` and pass the address it prints"
            ) from exc
        try:
            yield client
        finally:
            client.close()
        return
    import dask

    # Dask's statistical profiler samples every worker thread's stack every 10 ms: measured
    # here to cost ~1.4x CPU on torch-heavy steps (alignment with full Jacobians: 3.2-3.6 CPU
    # s in a worker with it, 2.5-2.6 s without, 1.9 s in a plain process; the rest of that
    # gap was glibc's fixed mmap threshold, which grokscope.worker_setup now removes)
    with nanny_environ_undone():
        with dask.config.set({"distributed.worker.profile.enabled": False}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None)
        try:
            client = Client(cluster)
            try:
                yield client
            finally:
                client.close()
        finally:
            cluster.close()


@contextmanager
def nanny_environ_undone() -> Iterator[None]:
    """This process's environment as it was before, for the variables Dask's nanny sets.

    A nanny writes its ``distributed.nanny.pre-spawn-environ`` variables
    (``MALLOC_TRIM_THRESHOLD_=65536``, ``OMP_NUM_THREADS=1`` ...) into the *caller's*
    ``os.environ`` before it starts a worker, and leaves them there: every process the caller
    starts afterwards (a training script, a notebook's ``!python ...``) would inherit one
    OpenMP thread and glibc's fixed 128 KiB mmap threshold (each step ~1.4x the CPU, see
    :mod:`grokscope.worker_setup`). On exit those variables get back their earlier values
    (or are removed).
    """
    import dask
    import distributed  # noqa: F401  (registers the nanny's defaults in dask.config)

    keys = set(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    keys |= {"PYTHONHASHSEED"}  # the nanny adds it too
    saved = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def map_runs(
    fn: Callable[..., Any],
    tasks: Mapping[str, Mapping[str, Any]],
    *,
    workers: int | None = None,
    scheduler: Any = None,
    progress: bool = True,
    desc: str = "runs",
) -> dict[str, Any]:
    """Call ``fn(**kwargs)`` for every ``key: kwargs`` of ``tasks``, serially or on Dask.

    Parameters
    ----------
    fn : callable
        A module-level (importable) function, so Dask workers can load it by reference.
    tasks : mapping
        ``{key: kwargs}``; keys are usually run paths and name the task in errors.
    workers, scheduler
        See :func:`dask_client`.
    progress : bool
        A tqdm bar over finished tasks.
    desc : str
        The bar's label.

    Returns
    -------
    dict
        ``{key: fn's return value}`` in the order of ``tasks``.

    Raises
    ------
    DistributedError
        One or more tasks raised a GrokscopeError (after all others have finished).
    """
    from tqdm.auto import tqdm

    results: dict[str, Any] = {}
    failures: dict[str, str] = {}
    first: BaseException | None = None
    if not tasks:
        return results
    with dask_client(workers, scheduler) as client:
        bar = tqdm(total=len(tasks), desc=desc, unit="run", disable=not progress,
                   dynamic_ncols=True)
        try:
            if client is None:
                for key, kwargs in tasks.items():
                    try:
                        results[key] = fn(**kwargs)
                    except GrokscopeError as exc:
                        failures[key] = f"{type(exc).__name__}: {exc}"
                        first = first or exc
                    bar.update(1)
            else:
                from distributed import as_completed

                futures = {}
                # malloc thresholds only: each task (training, analysis) sets its threads
                setup = WorkerSetup(threads=None)
                for key, kwargs in tasks.items():
                    fut = client.submit(_prepared_call, fn, setup, pure=False,
                                        key=f"grokscope-{_slug(key)}-{time.monotonic_ns()}",
                                        **kwargs)
                    futures[fut] = key
                try:
                    for fut in as_completed(list(futures)):
                        key = futures[fut]
                        exc = fut.exception()
                        if exc is None:
                            results[key] = fut.result()
                        elif isinstance(exc, GrokscopeError):
                            failures[key] = f"{type(exc).__name__}: {exc}"
                            first = first or exc
                        else:
                            raise exc
                        bar.update(1)
                finally:
                    for fut in futures:
                        if not fut.done():
                            fut.cancel()
        finally:
            bar.close()
    ordered = {k: results[k] for k in tasks if k in results}
    if failures:
        lines = [f"  {k}: {msg}" for k, msg in list(failures.items())[:10]]
        more = f"\n  ... and {len(failures) - 10} more" if len(failures) > 10 else ""
        raise DistributedError(
            f"{len(failures)} of {len(tasks)} {desc} failed (the others finished and are "
            "stored):\n" + "\n".join(lines) + more, failures, ordered
        ) from first
    return ordered


def _prepared_call(fn: Callable[..., Any], setup: WorkerSetup, **kwargs: Any) -> Any:
    """``fn(**kwargs)`` in a worker process prepared by
    :func:`grokscope.worker_setup.prepare_process` (the task :func:`map_runs` submits)."""
    prepare_process(setup)
    return fn(**kwargs)


def _slug(key: str) -> str:
    return "".join(c if c.isalnum() or c in "._=-" else "-" for c in str(key))[-80:]


def absolute(path: Any) -> str:
    """``path`` as a string: absolute for local paths, unchanged for fsspec URLs."""
    text = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    if "://" in text:
        return text
    return str(Path(text).expanduser().resolve())


# ----------------------------------------------------------------------------- analysis
def analyze_one(
    path: str,
    measures: Any = None,
    steps: Any = None,
    device: str = "auto",
    recompute: bool = False,
    trust_code: bool = False,
    progress: bool = False,
    model: Any = None,
    anatomy: dict | None = None,
    scheduler: Any = None,
    steps_per_task: int | None = None,
) -> dict[str, Any]:
    """Analyse one run (a task of :func:`analyze_many`, or, with ``scheduler``, one run whose
    steps are split into Dask tasks on that cluster); results go into its own store.

    Returns
    -------
    dict
        ``{"measures": [names computed or up to date], "skipped": {name: reason},
        "seconds": float}``.
    """
    from .engine import analyze

    t0 = time.perf_counter()
    # threads: the worker's own setting (Dask starts each worker process with one: the cluster
    # already uses every core); a calibration here would see the other workers as noise
    res = analyze(path, measures, steps=steps, device=device, progress=progress,
                  recompute=recompute, trust_code=trust_code, model=model, anatomy=anatomy,
                  num_threads=None, scheduler=scheduler, steps_per_task=steps_per_task)
    return {
        "measures": list(res),
        "skipped": dict(res.skipped),
        "seconds": time.perf_counter() - t0,
    }


def analyze_many(
    paths: Sequence[Any] | Any,
    measures: Any = None,
    *,
    steps: Any = None,
    device: str = "auto",
    workers: int | None = None,
    scheduler: Any = None,
    progress: bool = True,
    recompute: bool = False,
    trust_code: bool = False,
    model: Any = None,
    anatomy: dict | None = None,
    steps_per_task: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Run :func:`grokscope.analyze` over many stores: one task per store, or, when there are
    fewer stores than Dask workers (or ``steps_per_task`` is given), each store's steps split
    into tasks over all workers (:mod:`grokscope.chunked`), one store after the other.

    Parameters
    ----------
    paths : path, URL or sequence of them
        Run stores. Each task writes only into its own store (disjoint writes).
    measures, steps, device, recompute, trust_code, model, anatomy
        As for :func:`grokscope.analyze` (the same for every run; on a Dask cluster ``model``
        travels by pickle, so a class or factory the workers can import, or one cloudpickle
        can carry by value such as a class defined in ``__main__``).
    workers, scheduler
        ``None``/``None``: serially in this process; ``workers=N``: a local Dask cluster of N
        single-threaded processes; ``scheduler="tcp://..."``: an existing Dask cluster whose
        workers can all reach the stores.
    progress : bool
        Serial: the engine's per-step bar for each run; Dask: one bar over finished runs (or
        over each run's finished tasks when its steps are split).
    steps_per_task : int, optional
        Split every run's steps into Dask tasks of this many steps (default: split only when
        there are fewer runs than workers, about four tasks per worker).

    Returns
    -------
    dict
        ``{path: {"measures": [...], "skipped": {name: reason}, "seconds": float}}`` keyed by
        the paths as given (strings), in the given order.

    Raises
    ------
    ConfigError
        No paths, or bad ``workers``/``scheduler``.
    DistributedError
        Some runs failed (the message lists them; the other runs' results are stored and in
        ``error.results``).
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    paths = [os.fspath(p) if isinstance(p, os.PathLike) else str(p) for p in paths]
    if not paths:
        raise ConfigError("analyze_many: no run paths given")
    _check_workers(workers, scheduler)
    from .chunked import check_steps_per_task, slots

    steps_per_task = check_steps_per_task(steps_per_task)
    serial = workers is None and scheduler is None
    if serial and steps_per_task is not None:
        raise ConfigError("steps_per_task splits runs into Dask tasks: pass workers=N or "
                          "scheduler=ADDRESS too")
    tasks = {
        p: dict(path=absolute(p), measures=measures, steps=steps, device=device,
                recompute=recompute, trust_code=trust_code, progress=progress and serial,
                model=model, anatomy=anatomy)
        for p in paths
    }
    with dask_client(workers, scheduler) as client:
        if client is not None and (steps_per_task is not None or len(paths) < slots(client)):
            # few runs: each run's steps spread over every worker, one run after the other
            for kwargs in tasks.values():
                kwargs.update(scheduler=client, steps_per_task=steps_per_task, progress=progress)
            return map_runs(analyze_one, tasks, progress=False, desc="analyze runs")
        return map_runs(analyze_one, tasks, scheduler=client,
                        progress=progress and not serial, desc="analyze runs")


# ----------------------------------------------------------------------------- CLI helpers
def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the mutually exclusive ``--workers N`` / ``--scheduler ADDRESS`` options."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--workers", type=int, metavar="N",
                       help="run on a local Dask cluster of N single-threaded processes")
    group.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on an existing Dask cluster, e.g. tcp://10.0.0.1:8786 (the "
                       "stores must be on storage every worker can reach)")

