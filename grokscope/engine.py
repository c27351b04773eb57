"""Run measures over a stored trajectory.

The engine, not the measure, loads checkpoints (one at a time: memory stays bounded on long
trajectories), picks the device, selects steps, shows progress, skips steps already computed
with the same parameters, writes results into the store as it goes (an interrupted analysis
resumes), and handles measures that do not apply (skipped with a one-line reason) and
non-finite weights (NaN results with a ``nonfinite_weights`` flag).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr

from . import results_io
from ._device import pick_device
from ._threads import auto_threads, check_threads, torch_threads
from .anatomy import Anatomy, ModelView, resolve
from .errors import ConfigError, GrokscopeError, StoreWriteError
from .measures import registry
from .measures._variables import annotate_variables
from .measures.registry import Checkpoint, MeasureSpec
from .steps import StepSpec, select_steps

MeasureSelection = None | str | Iterable[str] | Mapping[str, Mapping[str, Any] | None]


class Results(dict):
    """``{measure name: xr.Dataset}`` plus ``skipped``: ``{measure name: reason}``,
    ``timings``: ``{measure name: seconds}`` spent computing and writing each measure in this
    call (0.0 when nothing was left to compute), and ``threads``: the torch CPU thread count
    used (None: torch's setting was left alone)."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self.threads: int | None = None


def resolve_measures(selection: MeasureSelection) -> list[tuple[MeasureSpec, dict[str, Any]]]:
    """Measures to run with their resolved parameters, dependencies first.

    ``selection``: None (every registered measure), a name, a list of names, or
    ``{name: {param: value}}``. A key that is not a measure's name names a parameterisation
    of the measure given as ``"measure"``: ``{"nfa_fc1": {"measure": "nfa", "layers":
    ["fc1"]}}`` stores its result as ``results/nfa_fc1``, beside ``results/nfa``.
    """
    if selection is None:
        wanted: dict[str, dict[str, Any]] = {n: {} for n in registry.names()}
    elif isinstance(selection, str):
        wanted = {selection: {}}
    elif isinstance(selection, Mapping):
        wanted = {n: dict(p or {}) for n, p in selection.items()}
    else:
        wanted = {n: {} for n in selection}
    if not wanted:
        raise ConfigError("no measures selected: pass None for all, or a list of names")
    ordered: list[tuple[MeasureSpec, dict[str, Any]]] = []
    seen: set[str] = set()

    def visit(name: str, params: dict[str, Any], chain: tuple[str, ...]) -> None:
        if name in seen:
            return
        if name in chain:
            raise ConfigError(f"measures depend on each other in a cycle: {' -> '.join(chain + (name,))}")
        params = dict(params)
        measure = params.pop("measure", None)
        if measure is not None and measure != name:
            _check_result_name(name)
            spec = dataclasses.replace(registry.get(measure), result=name)
        else:
            spec = registry.get(name)
        for dep in spec.after:
            visit(dep, wanted.get(dep, {}), chain + (name,))
        seen.add(name)
        ordered.append((spec, spec.resolve(params)))

    for name, params in wanted.items():
        visit(name, params, ())
    return ordered


@dataclass
class _Job:
    """One step measure's progress on one run."""

    spec: MeasureSpec
    params: dict[str, Any]
    key: str
    done: xr.Dataset | None
    todo: set[int]
    new: list[xr.Dataset] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)


def _finite(model: torch.nn.Module) -> bool:
    """True when every floating parameter is finite. Buffers are not weights: a constant such
    as TransformerLens's attention fill ``IGNORE = -inf`` must not turn every result into NaN."""
    return all(bool(torch.isfinite(t).all()) for t in model.parameters() if t.is_floating_point())


def _nan_like(template: xr.Dataset) -> xr.Dataset:
    out = template.copy(deep=True)
    for name, var in out.data_vars.items():
        if var.dtype.kind == "f":
            out[name] = xr.full_like(var, np.nan)
    return out


def _stack(parts: list[xr.Dataset]) -> xr.Dataset:
    """Concatenate per-step datasets along ``step`` (variables missing somewhere become NaN)."""
    names = set().union(*(p.data_vars for p in parts))
    full = []
    for p in parts:
        missing = names - set(p.data_vars)
        if missing:
            template = next(q for q in parts if missing <= set(q.data_vars))
            for m in missing:
                p = p.assign({m: xr.full_like(template[m].isel(step=0, drop=True), np.nan).expand_dims(step=p.step.values)})
        full.append(p)
    return xr.concat(full, dim="step", join="outer", data_vars="all", coords="minimal", compat="override").sortby("step")


def open_for_analysis(run_or_path: Any, *, model: Any = None, anatomy: dict | None = None,
                      trust_code: bool = False, results: Any = None) -> Any:
    """A Run from a Run or a path, with the caller's ``model``/``anatomy``/``results`` store
    attached."""
    from .store.run import Run, open_run

    if isinstance(run_or_path, Run):
        run = run_or_path
        if model is not None:
            run.model_override = model
        if anatomy is not None:
            run.anatomy_override = anatomy
        if results is not None:
            run.results_path = results
            results_io.location_for(run)  # refuse a results store of another run
        return run
    return open_run(run_or_path, model=model, anatomy=anatomy, trust_code=trust_code,
                    results=results)


def run_anatomy(run: Any, model: torch.nn.Module, data: Any) -> Anatomy:
    """The roles measures use on ``run``: the caller's override over the stored (or detected)
    anatomy, checked against ``model``."""
    return resolve(model, data, stored=(getattr(run, "config", None) or {}).get("anatomy"),
                   override=getattr(run, "anatomy_override", None))


class _References:
    """Models at the first and last stored steps, loaded once and shared by all measures."""

    def __init__(self, run: Any, device: torch.device) -> None:
        self._run, self._device, self._cache = run, device, {}

    def loader(self, which: str) -> Callable[[], torch.nn.Module]:
        def load() -> torch.nn.Module:
            if which not in self._cache:
                step = int(self._run.steps[0] if which == "first" else self._run.steps[-1])
                self._cache[which] = self._run.model_at(step, device=self._device).eval()
            return self._cache[which]

        return load


def _check_result_name(name: Any) -> None:
    if (not isinstance(name, str) or not name or "/" in name or name.startswith(".")
            or name in registry.names()):
        raise ConfigError(
            f"{name!r} cannot name a parameterisation: use a new name that is not a measure's, "
            "without '/' or a leading '.' (e.g. 'nfa_fc1')"
        )


def _replacing(name: str, stored: xr.Dataset, params: dict[str, Any], progress: bool) -> None:
    """Say so when a stored result computed with other parameters is about to be replaced."""
    before = stored.attrs.get("params")
    new = results_io.jsonable(params)
    if before is None or before == json.dumps(new, sort_keys=True):
        return  # same parameters, other reference steps: the run grew
    try:
        old = json.loads(before)
        diff = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}
    except (TypeError, ValueError, AttributeError):
        diff = {}
    shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items()) or "parameters"
    msg = (f"replacing results/{name}, computed with other parameters ({shown}); to keep "
           f"both, name this parameterisation, e.g. measures={{'{name}_2': {{'measure': "
           f"'{stored.attrs.get('measure', name)}', ...}}}}")
    warnings.warn(msg, UserWarning, stacklevel=4)
    if progress:
        print(f"analyze: {msg}", file=sys.stderr, flush=True)


def analyze(
    run_or_path: Any,
    measures: MeasureSelection = None,
    *,
    model: Any = None,
    anatomy: dict | None = None,
    steps: StepSpec = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    recompute: bool = False,
    trust_code: bool = False,
    flush_seconds: float = 30.0,
    num_threads: int | str | None = "auto",
    results: Any = None,
    workers: int | None = None,
    scheduler: Any = None,
    steps_per_task: int | None = None,
) -> Results:
    """Compute measures over a stored run and persist them in its store (or in ``results``).

    Parameters
    ----------
    run_or_path : Run or str
        A run, or a path/URL to open with :func:`grokscope.open_run`.
    measures : None, str, list of str or dict
        None runs every registered measure that applies; ``{name: {param: value}}`` overrides
        parameters (a changed parameter recomputes that measure, with a warning that the
        stored result is replaced). Several parameterisations of one measure live side by
        side under names you choose: ``{"nfa_fc1": {"measure": "nfa", "layers": ["fc1"]}}``
        is stored as ``results/nfa_fc1``.
    model : nn.Module, class, zero-argument factory or registered name, optional
        The architecture to load the stored weights into (an instance is copied, never
        mutated). Default: what the store carries (registered name, exported program, or a
        trusted ``module:qualname``).
    anatomy : dict, optional
        Roles that override the stored or detected ones (see :mod:`grokscope.anatomy`), e.g.
        ``{"input": "embed", "hidden": ["blocks.0.mlp.hook_post"]}``.
    steps : see :func:`grokscope.steps.select_steps`
    device : "auto", "cpu", "cuda", ...
    progress : bool
        Show a progress bar (and print skipped measures).
    recompute : bool
        Ignore stored results and compute everything again.
    flush_seconds : float
        Write partial results at least this often, so an interrupted analysis resumes.
    num_threads : "auto", int or None
        torch (and numpy's BLAS) CPU threads during the analysis. ``"auto"`` (default) times
        about a second of forward+backward passes of the first analysed checkpoint on the
        training inputs at 1, 2, 4, ... threads and keeps the fastest (see
        :mod:`grokscope._threads`; on a GPU torch's setting is left alone); an int sets the
        count; None leaves the settings alone. Default threads were measured 3.3x slower than
        one on a busy 2-core machine. With ``workers``/``scheduler`` it is the torch thread
        count of each worker process (per task slot; see :mod:`grokscope.worker_setup`):
        ``"auto"`` one (two threads made an alignment step 3-5x slower on a busy 2-core
        machine, and one thread gives a serial ``num_threads=1`` analysis's bits), an int
        that many, None the worker's own setting.
    results : str or PathLike, optional
        A separate results store to write (and read) the results in instead of the run's own
        store, e.g. for a read-only run; created when absent, refused (StoreError) when it
        belongs to another run. It is attached to the run, so ``run.results`` reads it.
    workers : int, optional
        Spread the steps over a private ``LocalCluster`` of this many single-threaded worker
        processes (see :mod:`grokscope.chunked` and ``docs/distributed.md``): chunks of
        ``steps_per_task`` steps, one Dask task each, merged here and each result written
        once. Results are identical to the serial path's.
    scheduler : str or distributed.Client, optional
        The same on an existing Dask cluster (``"tcp://host:8786"``); the run must be on
        storage every worker reaches under the same path or URL.
    steps_per_task : int, optional
        Steps per Dask task; default about four tasks per worker (4 to 512 steps).

    On a local store, two analyses of the same measure never interleave: the second waits for
    the first, then computes only the steps still missing. A read-only store is detected
    before anything is computed; it and a failed write (disk full) raise StoreWriteError,
    leaving the last complete version of every result in place.

    Returns
    -------
    Results
        ``{name: xr.Dataset}`` of every measure that ran (the whole stored result), with
        ``.skipped`` giving the reason for each measure that did not apply, ``.timings`` the
        seconds each measure took in this call and ``.threads`` the CPU thread count used.
        With ``progress`` the bar names the measure computing, and a line per measure with
        its seconds is printed at the end.
    """
    num_threads = check_threads(num_threads, "analyze: num_threads")
    if workers is not None or scheduler is not None:
        from .chunked import check_steps_per_task, step_runner
        from .distributed import dask_client
        from .worker_setup import WorkerSetup

        steps_per_task = check_steps_per_task(steps_per_task)
        # this process waits, merges and writes; each worker process sets its own threads
        setup = WorkerSetup(threads=1 if num_threads == "auto" else num_threads)
        with dask_client(workers, scheduler) as client:
            return _analyze(run_or_path, measures, model=model, anatomy=anatomy, steps=steps,
                            device=device, progress=progress, recompute=recompute,
                            trust_code=trust_code, flush_seconds=flush_seconds,
                            results=results, num_threads=None,
                            step_runner=step_runner(client, steps_per_task, setup=setup))
    if steps_per_task is not None:
        raise ConfigError("steps_per_task applies to Dask analyses: pass workers=N or "
                          "scheduler=ADDRESS too")
    return _analyze(run_or_path, measures, model=model, anatomy=anatomy, steps=steps,
                    device=device, progress=progress, recompute=recompute,
                    trust_code=trust_code, flush_seconds=flush_seconds, results=results,
                    num_threads=num_threads)


def _analyze(
    run_or_path: Any,
    measures: MeasureSelection,
    *,
    model: Any,
    anatomy: dict | None,
    steps: StepSpec,
    device: str | torch.device,
    progress: bool,
    recompute: bool,
    trust_code: bool,
    flush_seconds: float,
    results: Any,
    num_threads: int | str | None = None,
    step_runner: Callable[..., None] | None = None,
) -> Results:
    run = open_for_analysis(run_or_path, model=model, anatomy=anatomy, trust_code=trust_code,
                            results=results)
    dev = pick_device(device)
    selected = select_steps(run.steps, steps)
    plan = resolve_measures(measures)
    loc = results_io.location_for(run, write=True)
    results_io.prepare_write(loc)  # a read-only store is refused before anything is computed
    threads = _choose_threads(num_threads, run, selected, dev, progress, len(plan))
    with torch_threads(threads, blas=True), results_io.writing(
            loc, [spec.result_name for spec, _ in plan],
            note=lambda msg: print(msg, file=sys.stderr, flush=True)):
        t0 = time.perf_counter()
        out = _analyze_locked(run, loc, plan, selected, dev, progress=progress,
                              recompute=recompute, flush_seconds=flush_seconds,
                              step_runner=step_runner)
    out.threads = threads
    if progress and out.timings:
        _print_timings(out.timings, time.perf_counter() - t0)
    return out


#: rows of the training inputs the thread calibration runs on (bounds its cost)
CALIBRATION_ROWS = 4096


def _choose_threads(num_threads: int | str | None, run: Any, selected: np.ndarray,
                    dev: torch.device, progress: bool, n_measures: int = 1) -> int | None:
    """The thread count for this analysis: ``"auto"`` calibrates on the first analysed
    checkpoint and the training inputs (see :func:`grokscope._threads.auto_threads`), for at
    most ~2% of the analysis (a measure costs roughly ten forward+backward passes a step)."""
    if num_threads != "auto" or dev.type != "cpu" or not len(selected):
        return None if num_threads == "auto" else num_threads
    model = run.model_at(int(selected[0]), device=dev)
    x = run.data.to(dev).x_train
    try:
        threads, cal = auto_threads("auto", model, x, device=dev, max_rows=CALIBRATION_ROWS,
                                    key_extra=("analyze",),
                                    expected_calls=10 * len(selected) * max(1, n_measures))
    except (RuntimeError, TypeError, ValueError) as exc:  # the plain forward is not how this
        # model runs (measures reach it through its anatomy): one thread, the safe choice
        warnings.warn(f"analyze: could not time the model to choose threads ({exc}); using 1",
                      stacklevel=3)
        return 1
    if progress and cal is not None:
        print(f"analyze: {cal.summary()}", file=sys.stderr, flush=True)
    return threads


def _print_timings(timings: dict[str, float], total: float) -> None:
    """One line per measure: seconds and share of the analysis, slowest first."""
    width = max(len(n) for n in timings)
    print(f"analysis took {total:.1f} s:", file=sys.stderr)
    for name, sec in sorted(timings.items(), key=lambda kv: -kv[1]):
        share = 100 * sec / total if total > 0 else 0.0
        print(f"  {name:<{width}}  {sec:8.2f} s  {share:5.1f}%", file=sys.stderr)
    sys.stderr.flush()


def plan_jobs(run: Any, plan: list, selected: np.ndarray, dev: torch.device, data: Any, *,
              progress: bool, recompute: bool) -> tuple[list[_Job], list, dict[str, str], Anatomy]:
    """What is left to compute on ``run``: one :class:`_Job` per step measure (its stored
    result and missing steps), the trajectory measures, the skipped measures with their
    reasons, and the run's anatomy (resolved on the first selected checkpoint)."""
    first_model = run.model_at(int(selected[0]), device=dev).eval()
    anat = run_anatomy(run, first_model, data)
    first_view = ModelView(first_model, anat)
    skipped: dict[str, str] = {}
    step_jobs: list[_Job] = []
    traj: list[tuple[MeasureSpec, dict[str, Any]]] = []
    for spec, params in plan:
        reason = spec.applies(first_view, data)
        if reason:
            skipped[spec.result_name] = reason
            if progress:
                print(f"skipped {spec.result_name}: {reason}")
            continue
        if spec.kind == "trajectory":
            traj.append((spec, params))
            continue
        # values compared with the first/last checkpoint change when the run grows: the
        # reference steps are part of the key, so a stale part is recomputed, never mixed in
        context = {f"reference_{w}_step": int(run.steps[0] if w == "first" else run.steps[-1])
                   for w in spec.references_for(params)}
        key = results_io.params_key(params, context)
        stored = None if recompute else _read(run, spec.result_name)
        if stored is not None and stored.attrs.get("params_key") != key:
            _replacing(spec.result_name, stored, params, progress)
            stored = None
        done_steps = set() if stored is None else set(stored.step.values.tolist())
        todo = {int(s) for s in selected} - done_steps
        step_jobs.append(_Job(spec, params, key, stored, todo, context=context))
    return step_jobs, traj, skipped, anat


def _analyze_locked(run: Any, loc: results_io.ResultsLocation, plan: list, selected: np.ndarray,
                    dev: torch.device, *, progress: bool, recompute: bool,
                    flush_seconds: float, step_runner: Callable[..., None] | None = None) -> Results:
    """Compute and store ``plan`` on ``run``: step measures through ``step_runner`` (default
    :func:`_run_step_jobs`, one checkpoint at a time here; :mod:`grokscope.chunked` passes one
    that spreads the steps over Dask tasks), then the trajectory measures."""
    data = run.data.to(dev)
    refs = _References(run, dev)
    step_jobs, traj, skipped, anat = plan_jobs(run, plan, selected, dev, data,
                                               progress=progress, recompute=recompute)
    out = Results()
    out.skipped.update(skipped)

    for job in step_jobs:
        out.timings[job.spec.result_name] = 0.0
    (step_runner or _run_step_jobs)(run, loc, step_jobs, selected, data, dev, refs, progress,
                                    flush_seconds, anat, timings=out.timings)
    for job in step_jobs:
        ds = _read(run, job.spec.result_name)
        if ds is not None:
            out[job.spec.result_name] = ds

    for spec, params in traj:
        key = results_io.params_key(params)
        stored = None if recompute else _read(run, spec.result_name)
        if stored is not None and stored.attrs.get("params_key") != key:
            _replacing(spec.result_name, stored, params, progress)
        fresh = stored is not None and stored.attrs.get("params_key") == key and np.array_equal(
            np.asarray(stored.attrs.get("steps_analyzed", [])), selected
        )
        t0 = time.perf_counter()
        if not fresh:
            if progress:
                print(f"analyze: {spec.result_name} (over the whole trajectory) ...", file=sys.stderr,
                      flush=True)
            ds = spec.fn(run, selected, **params)
            ds = results_io.annotate(ds, spec.name, params, steps_analyzed=selected, device=str(dev))
            results_io.write_result(loc, spec.result_name, ds)
            stored = _read(run, spec.result_name)
        out.timings[spec.result_name] = time.perf_counter() - t0 if not fresh else 0.0
        out[spec.result_name] = stored
    return out


def _read(run: Any, name: str) -> xr.Dataset | None:
    ds = run.results.get(name)
    return None if ds is None else ds.load()


def _flush(loc: results_io.ResultsLocation, job: _Job, dev: torch.device) -> None:
    if not job.new:
        return
    parts = ([job.done] if job.done is not None else []) + job.new
    ds = annotate_variables(_stack(parts), job.spec.name, job.params)
    ds = results_io.annotate(ds, job.spec.name, job.params, context=job.context, device=str(dev))
    results_io.write_result(loc, job.spec.result_name, ds)
    job.done, job.new = ds, []


def _run_step_jobs(
    run: Any,
    loc: results_io.ResultsLocation,
    jobs: list[_Job],
    selected: np.ndarray,
    data: Any,
    dev: torch.device,
    refs: _References,
    progress: bool,
    flush_seconds: float,
    anat: Anatomy,
    timings: dict[str, float] | None = None,
) -> None:
    """Compute every job's missing steps, one checkpoint at a time. The bar's description
    names the measure computing; ``timings[name]`` accumulates each measure's seconds
    (computing and writing its result)."""
    timings = {} if timings is None else timings

    def flush(job: _Job) -> None:
        t0 = time.perf_counter()
        _flush(loc, job, dev)
        timings[job.spec.result_name] = (timings.get(job.spec.result_name, 0.0)
                                         + time.perf_counter() - t0)

    visit = [int(s) for s in selected if any(int(s) in j.todo for j in jobs)]
    if not visit:
        return
    from tqdm.auto import tqdm

    bar = tqdm(visit, desc="analyze", unit="step", disable=not progress, leave=False)
    last_flush = time.monotonic()
    config = dict(getattr(run, "config", {}) or {})
    try:
        for step in bar:
            model = run.model_at(step, device=dev).eval()
            finite = _finite(model)
            if not finite:
                warnings.warn(f"step {step} has non-finite weights: its results are NaN", stacklevel=2)
            for job in jobs:
                if step not in job.todo:
                    continue
                bar.set_description(job.spec.result_name)  # refreshed now: names what computes
                t0 = time.perf_counter()
                if job.spec.stateful and not job.state and job.done is not None:
                    _rewarm(run, job, step, data, dev, refs, config, anat)
                compute_step(job, step, model, finite, data, dev, refs, config, anat)
                timings[job.spec.result_name] = (timings.get(job.spec.result_name, 0.0)
                                          + time.perf_counter() - t0)
            if time.monotonic() - last_flush > flush_seconds:
                for job in jobs:
                    flush(job)
                last_flush = time.monotonic()
    except BaseException as exc:
        bar.close()
        if not isinstance(exc, StoreWriteError):  # keep what was computed (an interrupt, a bug)
            for job in jobs:
                try:
                    _flush(loc, job, dev)
                except Exception:  # noqa: BLE001 - the original error is the one to report
                    pass
        raise
    bar.close()
    for job in jobs:
        flush(job)


def compute_step(job: _Job, step: int, model: torch.nn.Module, finite: bool, data: Any,
                 dev: torch.device, refs: _References, config: dict, anat: Anatomy) -> None:
    """Compute ``job``'s measure on the checkpoint ``model`` at ``step`` and append the result
    (with its ``step`` dim) to ``job.new``; ``job.state`` carries over to the next step."""
    ckpt = Checkpoint(
        step=step, model=model, data=data, device=dev,
        references={w: refs.loader(w) for w in job.spec.references_for(job.params)},
        state=job.state, config=config, anatomy=anat,
    )
    ds = _compute(job, ckpt, finite)
    if ds is not None:
        job.new.append(ds.expand_dims(step=np.array([step], dtype=np.int64)))


def rewarm_step(done_steps: np.ndarray | None, step: int) -> int | None:
    """The stored step a stateful measure replays before computing ``step`` (the last of
    ``done_steps`` before it), or None."""
    if done_steps is None:
        return None
    steps = np.asarray(done_steps)
    earlier = steps[steps < step]
    return None if earlier.size == 0 else int(earlier.max())


def _rewarm(run: Any, job: _Job, step: int, data: Any, dev: torch.device, refs: _References,
            config: dict, anat: Anatomy) -> None:
    """Replay the last stored step before ``step`` (output discarded) to restore a stateful
    measure's carried state, so an extended result continues instead of starting cold."""
    prev = rewarm_step(None if job.done is None else job.done.step.values, step)
    if prev is not None:
        replay(run, job, prev, data, dev, refs, config, anat)


def replay(run: Any, job: _Job, step: int, data: Any, dev: torch.device, refs: _References,
           config: dict, anat: Anatomy) -> None:
    """Run ``job``'s measure at ``step`` for its side effect on ``job.state`` only."""
    model = run.model_at(step, device=dev).eval()
    job.spec.fn(
        Checkpoint(step=step, model=model, data=data, device=dev,
                   references={w: refs.loader(w) for w in job.spec.references_for(job.params)},
                   state=job.state, config=config, anatomy=anat),
        **job.params,
    )


def _compute(job: _Job, ckpt: Checkpoint, finite: bool) -> xr.Dataset | None:
    template = job.new[-1].isel(step=0, drop=True) if job.new else (
        job.done.isel(step=-1, drop=True) if job.done is not None else None
    )
    try:
        ds = job.spec.fn(ckpt, **job.params)
    except (GrokscopeError, ValueError, RuntimeError, np.linalg.LinAlgError):
        if finite:
            raise
        if template is None:
            return xr.Dataset({"nonfinite_weights": ((), True)})
        ds = _nan_like(template)
    if not isinstance(ds, xr.Dataset):
        raise GrokscopeError(
            f"measure {job.spec.name!r} returned {type(ds).__name__}, not an xarray Dataset"
        )
    if "step" in ds.dims:
        raise GrokscopeError(f"step measure {job.spec.name!r} returned a 'step' dim; the engine adds it")
    if not finite and template is not None:
        ds = _nan_like(ds)
    return ds.assign(nonfinite_weights=((), not finite))
