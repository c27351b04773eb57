"""Grids of training runs, and the phase-diagram dataset built from their stores.

>>> import grokscope as gs
>>> paths = gs.sweep("modular", "mlp", grid={"weight_decay": [0, 0.1, 1],
...                                          "train_frac": [0.2, 0.3, 0.5]},
...                  seeds=3, out="sweeps/wd_frac", steps=2000, p=23)  # doctest: +SKIP
>>> ds = gs.phase_diagram("sweeps/wd_frac", x="weight_decay", y="train_frac")  # doctest: +SKIP

Where a grid or fixed key goes
------------------------------
``task.NAME`` goes into ``task_kwargs``, ``model.NAME`` into ``model_kwargs`` and
``train.NAME`` to :func:`grokscope.train`. A bare ``NAME`` goes to the trainer when
:func:`grokscope.train` has that parameter (``lr``, ``weight_decay``, ``steps``, ``seed`` ...),
else to the task when the task's factory has it (``train_frac``, ``p``, ``op`` ...), else to
the model when the model's constructor has it (``width``, ``depth``, ``init_scale`` ...); a
name none of them takes is a :class:`~grokscope.errors.ConfigError`. So ``seed`` is the
trainer's seed (initialisation and batch order); vary the task's split with ``task.seed``.

Runs, resumption, parallelism
-----------------------------
One store per (grid cell, seed) under ``out/``; its directory name is for humans only (the
phase diagram reads every hyperparameter from the store's config). A store already trained to
the requested ``steps`` is skipped (after checking that its config holds the requested
values); a partial one is continued by the trainer. ``out/sweep.json`` records the grid, the
seeds, the fixed arguments and the run paths; it accumulates over calls into the same
folder (a grid extended later keeps its earlier runs listed). Runs go serially in-process, on a local Dask
cluster (``workers=N``) or on an existing one (``scheduler="tcp://..."``), see
:mod:`grokscope.distributed`.

Phase diagram
-------------
:func:`phase_diagram` labels every run with
:func:`grokscope.measures.phases.phase_summary` (docs/methods.md section 1) and lays the labels
out on a grid whose dims are the two hyperparameters and ``seed``, with aggregates over
seeds. :func:`grokscope.plot.phase.plot_phase_diagram` draws it.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import math
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .errors import ConfigError, GrokscopeError, NotAStoreError

__all__ = ["MANIFEST", "config_value", "phase_diagram", "plan_sweep", "sweep"]

#: the manifest file a sweep writes into its folder
MANIFEST = "sweep.json"
#: labels a phase diagram cell can hold (``missing``: no finished run for that cell and seed)
MISSING = "missing"
#: arguments of :func:`grokscope.train` that a sweep sets itself or that make no sense per run
_RESERVED = frozenset({"task", "model", "out", "progress", "overwrite", "task_kwargs",
                       "model_kwargs"})
#: trainer arguments that do not describe the run (not compared when skipping a finished run)
_NOT_IN_CONFIG = frozenset({"steps", "progress", "device", "eval_every", "num_threads",
                            "compression", "storage_options", "stop_when"})
_SAFE = re.compile(r"[^A-Za-z0-9._+=-]")
_PREFIXES = ("task.", "model.", "train.")


# ----------------------------------------------------------------------------- routing
def _trainer_params() -> set[str]:
    from .train import train

    return set(inspect.signature(train).parameters) - _RESERVED


def _task_params(task: Any) -> set[str]:
    from . import tasks

    name = task.get("name") if isinstance(task, Mapping) else task
    factory = tasks._TASKS.get(name) if isinstance(name, str) else None
    if factory is None:
        return set()
    return set(inspect.signature(factory).parameters)


def _model_params(model: Any) -> set[str]:
    from . import models

    name = model.get("name") if isinstance(model, Mapping) else model
    try:
        factory = models._factory(name)
    except GrokscopeError:
        return set()
    try:
        return set(inspect.signature(factory).parameters) - {"self"}
    except (TypeError, ValueError):
        return set()


@dataclass
class _Router:
    """Decides whether a key is a trainer, task or model parameter (see the module doc)."""

    task: Any
    model: Any
    trainer: set[str] = field(default_factory=_trainer_params)

    def __post_init__(self) -> None:
        self.task_names = _task_params(self.task)
        self.model_names = _model_params(self.model)

    def route(self, key: str) -> tuple[str, str]:
        if not isinstance(key, str) or not key:
            raise ConfigError(f"sweep: hyperparameter names must be non-empty strings, got {key!r}")
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                where, name = prefix[:-1], key[len(prefix):]
                if not name:
                    raise ConfigError(f"sweep: {key!r} names no parameter after {prefix!r}")
                if where == "train" and name not in self.trainer:
                    raise ConfigError(
                        f"sweep: grokscope.train has no parameter {name!r} (it takes "
                        f"{sorted(self.trainer)})"
                    )
                return where, name
        if key in _RESERVED:
            raise ConfigError(
                f"sweep: {key!r} is set by the sweep itself: pass task=/model=/out= to sweep(), "
                "vary task or model arguments with 'task.NAME'/'model.NAME' keys, and delete a "
                "run's folder to retrain it from scratch"
            )
        if key in self.trainer:
            return "train", key
        if key in self.task_names:
            return "task", key
        if key in self.model_names:
            return "model", key
        raise ConfigError(
            f"sweep: {key!r} is neither a parameter of grokscope.train, of task "
            f"{_name_of(self.task)!r} ({sorted(self.task_names)}) nor of model "
            f"{_name_of(self.model)!r} ({sorted(self.model_names)}); prefix it with 'task.' or "
            "'model.' to pass it there anyway"
        )


def _name_of(spec: Any) -> Any:
    return spec.get("name") if isinstance(spec, Mapping) else spec


# ----------------------------------------------------------------------------- planning
@dataclass
class RunPlan:
    """One run of a sweep: where it goes and the full arguments of :func:`grokscope.train`."""

    path: str
    name: str
    cell: dict[str, Any]
    seed: int
    kwargs: dict[str, Any]


def _jsonable(value: Any, what: str) -> Any:
    if hasattr(value, "to_dict") and callable(value.to_dict):
        value = value.to_dict()
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"sweep: {what} must be JSON-serialisable (numbers, strings, lists, dicts), got "
            f"{value!r}"
        ) from exc


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _run_name(cell: Mapping[str, Any], seed: int) -> str:
    """A readable, deterministic directory name for a cell and seed (never parsed back)."""
    raw = "__".join([f"{k}={_fmt(v)}" for k, v in cell.items()] + [f"seed={seed}"])
    safe = _SAFE.sub("-", raw)
    if safe != raw or len(safe) > 150:
        digest = hashlib.sha1(raw.encode()).hexdigest()[:8]
        safe = f"{safe[:140]}~{digest}"
    return safe


def _join(out: str, name: str) -> str:
    return f"{out.rstrip('/')}/{name}" if "://" in out else str(Path(out) / name)


def _seed_list(seeds: Any) -> list[int]:
    if isinstance(seeds, bool):
        raise ConfigError(f"sweep: seeds must be a count or a list of integers, got {seeds!r}")
    if isinstance(seeds, int | np.integer):
        if seeds < 1:
            raise ConfigError(f"sweep: seeds={seeds} must be >= 1 (a count) or a list of seeds")
        return list(range(int(seeds)))
    if isinstance(seeds, Iterable) and not isinstance(seeds, str | bytes | Mapping):
        out = list(seeds)
        if not out or any(isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 0
                          for s in out):
            raise ConfigError(f"sweep: seeds must be non-negative integers, got {out!r}")
        if len(set(out)) != len(out):
            raise ConfigError(f"sweep: seeds {out!r} repeat a value")
        return [int(s) for s in out]
    raise ConfigError(f"sweep: seeds must be a count or a list of integers, got {seeds!r}")


def plan_sweep(
    task: Any = "modular",
    model: Any = "mlp",
    grid: Mapping[str, Sequence[Any]] | None = None,
    seeds: int | Sequence[int] = 1,
    out: str | os.PathLike | None = None,
    **fixed: Any,
) -> list[RunPlan]:
    """The runs :func:`sweep` would train (nothing is written).

    Returns
    -------
    list of RunPlan
        Cells in grid order (the last key varies fastest), seeds innermost.
    """
    if out is None:
        raise ConfigError("sweep: out= is required (the folder that holds the sweep's runs)")
    out = os.fspath(out) if isinstance(out, os.PathLike) else str(out)
    if not isinstance(task, str | Mapping):
        raise ConfigError(
            "sweep: task must be a registered task name or a task spec dict (so every worker "
            f"can rebuild it and the manifest can record it), got {type(task).__name__}"
        )
    if not isinstance(model, str | Mapping):
        raise ConfigError(
            "sweep: model must be a registered model name or a model spec dict, got "
            f"{type(model).__name__}"
        )
    grid = dict(grid or {})
    for key, values in grid.items():
        if isinstance(values, str | bytes | Mapping) or not isinstance(values, Iterable):
            raise ConfigError(
                f"sweep: grid[{key!r}] must be a list of values, got {values!r}; a single value "
                "belongs in the fixed arguments"
            )
        values = list(values)
        if not values:
            raise ConfigError(f"sweep: grid[{key!r}] is empty")
        grid[key] = [_jsonable(v, f"grid[{key!r}] value") for v in values]
    seed_list = _seed_list(seeds)
    router = _Router(task, model)
    base_task = dict(fixed.pop("task_kwargs", None) or {})
    base_model = dict(fixed.pop("model_kwargs", None) or {})
    routed_fixed = {k: router.route(k) for k in fixed}
    routed_grid = {k: router.route(k) for k in grid}
    for key, (where, name) in routed_grid.items():
        if where == "train" and name == "seed":
            raise ConfigError("sweep: vary the trainer's seed with seeds=..., not in the grid")
        clash = [f for f, r in routed_fixed.items() if r == (where, name)]
        if clash:
            raise ConfigError(f"sweep: {key!r} is both in the grid and fixed ({clash[0]}=...)")
    if any(r == ("train", "seed") for r in routed_fixed.values()):
        raise ConfigError("sweep: pass the trainer's seeds with seeds=..., not as a fixed seed=")
    seen: dict[tuple[str, str], str] = {}
    for key, r in {**routed_grid, **routed_fixed}.items():
        if r in seen:
            raise ConfigError(f"sweep: {seen[r]!r} and {key!r} set the same {r[0]} parameter")
        seen[r] = key

    plans: list[RunPlan] = []
    names: dict[str, tuple] = {}
    keys = list(grid)
    for combo in itertools.product(*(grid[k] for k in keys)):
        cell = dict(zip(keys, combo))
        for seed in seed_list:
            kw: dict[str, Any] = {"task": task, "model": model}
            tk, mk = dict(base_task), dict(base_model)
            for key, value in [*fixed.items(), *cell.items()]:
                where, name = (routed_fixed | routed_grid)[key]
                {"train": kw, "task": tk, "model": mk}[where][name] = value
            kw.update(task_kwargs=tk, model_kwargs=mk, seed=seed)
            name = _run_name(cell, seed)
            if name in names:
                raise ConfigError(
                    f"sweep: cells {names[name]} and {(cell, seed)} give the same run name; "
                    "use distinct grid values"
                )
            names[name] = (cell, seed)
            path = _join(out, name)
            kw["out"] = path
            plans.append(RunPlan(path=path, name=name, cell=cell, seed=seed, kwargs=kw))
    return plans


# ----------------------------------------------------------------------------- run status
def _steps_of(kwargs: Mapping[str, Any]) -> int:
    if "steps" in kwargs:
        return int(kwargs["steps"])
    from .train import train

    return int(inspect.signature(train).parameters["steps"].default)


def _same(a: Any, b: Any) -> bool:
    a, b = json.loads(json.dumps(a, default=str)), json.loads(json.dumps(b, default=str))
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0) or a == b
    return a == b


def _train_defaults() -> dict[str, Any]:
    """Keyword defaults of :func:`grokscope.train.train` (JSON-comparable)."""
    from .train import train

    return {
        n: p.default for n, p in inspect.signature(train).parameters.items()
        if p.default is not inspect.Parameter.empty and n not in ("task", "model", "out")
    }


def _mismatches(config: Mapping[str, Any], kwargs: Mapping[str, Any]) -> list[str]:
    """Requested values that the stored config contradicts (keys it lacks are not checked)."""
    out = []
    for name, value in kwargs.items():
        if name in _NOT_IN_CONFIG or name in ("task", "model", "out", "task_kwargs",
                                               "model_kwargs"):
            continue
        if name in config and not _same(config[name], value):
            out.append(f"{name}: stored {config[name]!r}, requested {value!r}")
    # a hyperparameter left out of the request means train()'s default, not "anything"
    for name, default in _train_defaults().items():
        if name in kwargs or name in _NOT_IN_CONFIG or name not in config:
            continue
        if default is None or default == "auto":  # resolved at train time (loss, schedule, ...)
            continue
        if not _same(config[name], default):
            out.append(f"{name}: stored {config[name]!r}, requested the default {default!r}")
    for what in ("model", "task"):
        wanted = kwargs.get(what)
        stored = (config.get(what) or {}).get("name")
        if isinstance(wanted, str) and stored is not None and wanted != stored:
            out.append(f"{what}: stored {stored!r}, requested {wanted!r}")
    task_cfg = config.get("task") or {}
    for name, value in (kwargs.get("task_kwargs") or {}).items():
        if name in task_cfg and not _same(task_cfg[name], value):
            out.append(f"task.{name}: stored {task_cfg[name]!r}, requested {value!r}")
    model_cfg = (config.get("model") or {}).get("kwargs") or {}
    for name, value in (kwargs.get("model_kwargs") or {}).items():
        if name in model_cfg and not _same(model_cfg[name], value):
            out.append(f"model.{name}: stored {model_cfg[name]!r}, requested {value!r}")
    return out


def run_status(plan: RunPlan, storage_options: dict | None = None) -> str:
    """``"done"`` (trained to the requested steps, or stopped early by ``stop_when``),
    ``"partial"`` (to be continued) or ``"new"``.

    Raises
    ------
    ConfigError
        The store at ``plan.path`` holds a finished run with other settings.
    """
    from .store.run import open_run

    if "://" not in plan.path and not Path(plan.path).exists():
        return "new"
    try:
        run = open_run(plan.path, storage_options=storage_options)
    except NotAStoreError:
        return "new"
    if len(run.steps) == 0:
        return "partial"
    if int(run.steps[-1]) < _steps_of(plan.kwargs):
        return "partial"
    bad = _mismatches(run.config or {}, plan.kwargs)
    if bad:
        raise ConfigError(
            f"sweep: {plan.path} holds a finished run with other settings ({'; '.join(bad)}). "
            "Use another out folder, or delete that run to retrain it"
        )
    return "done"


def train_one(**kwargs: Any) -> dict[str, Any]:
    """Train (or continue) one run of a sweep; the task function sent to Dask workers.

    Returns
    -------
    dict
        ``{"path", "last_step", "seconds"}``.
    """
    from .train import train

    t0 = time.perf_counter()
    run = train(**kwargs, progress=False)
    return {"path": str(run.path), "last_step": int(run.steps[-1]),
            "seconds": time.perf_counter() - t0}


def _merge_manifest(old: dict | None, new: dict) -> dict:
    """``new`` plus the runs, grid values and seeds of an earlier call into the same folder."""
    if not old:
        return new
    runs = {r["path"]: r for r in old.get("runs", []) if isinstance(r, dict) and "path" in r}
    runs.update({r["path"]: r for r in new["runs"]})
    grid = {k: list(v) for k, v in (old.get("grid") or {}).items()}
    for key, values in new["grid"].items():
        known = grid.setdefault(key, [])
        known.extend(v for v in values if v not in known)
    seeds = sorted(set(old.get("seeds") or []) | set(new["seeds"]))
    return {**new, "grid": grid, "seeds": seeds, "runs": list(runs.values())}


def _write_manifest(out: str, doc: dict, storage_options: dict | None) -> None:
    text = json.dumps(doc, indent=2, sort_keys=False)
    if "://" in out:
        import fsspec

        with fsspec.open(_join(out, MANIFEST), "w", **(storage_options or {})) as fh:
            fh.write(text)
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    tmp = Path(out) / f".{MANIFEST}.tmp"
    tmp.write_text(text)
    os.replace(tmp, Path(out) / MANIFEST)


def sweep(
    task: Any = "modular",
    model: Any = "mlp",
    grid: Mapping[str, Sequence[Any]] | None = None,
    seeds: int | Sequence[int] = 1,
    out: str | os.PathLike | None = None,
    *,
    workers: int | None = None,
    scheduler: Any = None,
    progress: bool = True,
    **fixed: Any,
) -> list[str]:
    """Train one run per (grid cell, seed), resumably, serially or on Dask.

    Parameters
    ----------
    task : str or dict
        A registered task name or a task spec.
    model : str or dict
        A registered model name or a model spec.
    grid : dict, optional
        ``{hyperparameter: [values]}``; every combination is a cell. Keys are routed to the
        trainer, the task or the model as the module docstring says (``task.``/``model.``
        prefixes force the destination).
    seeds : int or list of int
        A count (seeds ``0..n-1``) or the trainer seeds to run in every cell.
    out : str or Path
        The sweep folder (local or fsspec URL); one store per run inside it, plus
        ``sweep.json``.
    workers : int, optional
        Train on a local Dask cluster of this many single-threaded worker processes.
    scheduler : str or distributed.Client, optional
        Train on an existing Dask cluster (stores must be reachable by every worker).
    progress : bool
        A bar over finished runs and a one-line plan.
    **fixed
        Arguments shared by every run, routed like grid keys (``steps=2000``, ``lr=1e-3``,
        ``p=23`` ...); ``task_kwargs``/``model_kwargs`` dicts are accepted too.

    Returns
    -------
    list of str
        The run stores, in grid order (seeds innermost), whether trained now or before.

    Raises
    ------
    ConfigError
        A bad grid, seed list or key; a finished run in ``out`` with other settings.
    DistributedError
        Some runs failed to train (the message lists them; the others are stored).
    """
    from .distributed import absolute, map_runs

    storage_options = fixed.get("storage_options")
    plans = plan_sweep(task, model, grid, seeds, out, **fixed)
    out_s = os.fspath(out) if isinstance(out, os.PathLike) else str(out)
    manifest = {
        "grokscope_sweep": 1,
        "task": _jsonable(task, "task"),
        "model": _jsonable(model, "model"),
        "grid": _jsonable(dict(grid or {}), "grid"),
        "seeds": _seed_list(seeds),
        "fixed": _jsonable({k: v for k, v in fixed.items() if k != "storage_options"},
                           "fixed arguments"),
        "runs": [{"path": p.name, "cell": p.cell, "seed": p.seed} for p in plans],
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    status = {p.path: run_status(p, storage_options) for p in plans}
    manifest = _merge_manifest(_read_manifest(out_s, storage_options), manifest)
    _write_manifest(out_s, manifest, storage_options)
    todo = [p for p in plans if status[p.path] != "done"]
    if progress:
        counts = Counter(status.values())
        print(f"sweep {out_s}: {len(plans)} runs ({counts['done']} done, "
              f"{counts['partial']} to continue, {counts['new']} new)")
    parallel = workers is not None or scheduler is not None
    tasks = {}
    for p in todo:
        kw = dict(p.kwargs, out=absolute(p.path))
        if parallel:
            kw.setdefault("num_threads", 1)
        tasks[p.path] = kw
    map_runs(train_one, tasks, workers=workers, scheduler=scheduler, progress=progress,
             desc="sweep runs")
    return [p.path for p in plans]


# ----------------------------------------------------------------------------- phase diagram
_ABSENT = object()


def config_value(config: Mapping[str, Any], name: str) -> Any:
    """The value of hyperparameter ``name`` in a run's config, or raise ``KeyError``.

    ``task.X`` reads ``config["task"]["X"]``; ``model.X`` reads
    ``config["model"]["kwargs"]["X"]`` (else ``config["model"]["X"]``); ``train.X`` and a
    bare ``X`` read ``config["X"]``, and a bare ``X`` absent there falls back to the task
    spec, then the model's kwargs. Any other dotted name walks nested dicts.
    """
    task = config.get("task") if isinstance(config.get("task"), Mapping) else {}
    model = config.get("model") if isinstance(config.get("model"), Mapping) else {}
    mkw = model.get("kwargs") if isinstance(model.get("kwargs"), Mapping) else {}
    if name.startswith("task."):
        found = task.get(name[5:], _ABSENT)
    elif name.startswith("model."):
        found = mkw.get(name[6:], model.get(name[6:], _ABSENT))
    elif name.startswith("train."):
        found = config.get(name[6:], _ABSENT)
    elif name in config:
        found = config[name]
    elif name in task:
        found = task[name]
    elif name in mkw:
        found = mkw[name]
    elif "." in name:
        found: Any = config
        for part in name.split("."):
            found = found.get(part, _ABSENT) if isinstance(found, Mapping) else _ABSENT
    else:
        found = _ABSENT
    if found is _ABSENT:
        raise KeyError(name)
    return found


def _read_manifest(folder: str, storage_options: dict | None) -> dict | None:
    """The ``sweep.json`` of a sweep folder (local or URL), or None when there is none."""
    if "://" not in folder:
        path = Path(folder) / MANIFEST
        return json.loads(path.read_text()) if path.is_file() else None
    import fsspec

    try:
        with fsspec.open(_join(folder, MANIFEST), "r", **(storage_options or {})) as fh:
            return json.loads(fh.read())
    except FileNotFoundError:
        return None


def _collect_runs(runs: Any, storage_options: dict | None = None) -> tuple[list[Any], dict | None]:
    """Run objects or paths, plus the sweep manifest when ``runs`` is a sweep folder."""
    from .store.run import Run

    if isinstance(runs, Run):
        return [runs], None
    if isinstance(runs, str | os.PathLike):
        text = os.fspath(runs)
        manifest = _read_manifest(text, storage_options)
        if manifest is not None:
            paths = [r["path"] if "://" in r["path"] else _join(text, r["path"])
                     for r in manifest.get("runs", [])]
            return paths, manifest
        if "://" not in text and Path(text).is_dir() and not (Path(text) / "zarr.json").exists():
            children = sorted(c for c in Path(text).iterdir() if (c / "zarr.json").is_file())
            if not children:
                raise ConfigError(
                    f"phase_diagram: {text} is neither a run store, a sweep folder (with "
                    f"{MANIFEST}) nor a folder of run stores"
                )
            return [str(c) for c in children], None
        return [text], None
    if isinstance(runs, Iterable):
        items = list(runs)
        if not items:
            raise ConfigError("phase_diagram: no runs given")
        return items, None
    raise ConfigError(
        f"phase_diagram: runs must be a sweep folder, a run, or a list of runs/paths, got "
        f"{type(runs).__name__}"
    )


def _coord(values: list[Any], name: str) -> np.ndarray:
    if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
        return np.array(sorted(set(int(v) for v in values)), dtype=np.int64)
    if all(isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in values):
        return np.array(sorted(set(float(v) for v in values)), dtype=np.float64)
    return np.array(sorted(set(_fmt(v) for v in values)), dtype=str)


def _key(v: Any, coord: np.ndarray) -> Any:
    if coord.dtype.kind in "iuf":
        return float(v)
    return _fmt(v)


def _strip(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _manifest_values(manifest: dict | None, name: str) -> list[Any]:
    if not manifest:
        return []
    for key, values in (manifest.get("grid") or {}).items():
        if key == name or _strip(key) == _strip(name):
            return list(values)
    return []


def _accuracy_curves(run: Any, model: Any, anatomy: dict | None) -> tuple[np.ndarray, ...]:
    """``(steps, train_acc, test_acc)`` of a run: its recorded metrics, else its ``curves``
    result (computed with ``model``/``anatomy`` when absent)."""
    metrics = run.metrics
    if "train_acc" in metrics and "test_acc" in metrics:
        return (np.asarray(metrics["step"].values), np.asarray(metrics["train_acc"].values),
                np.asarray(metrics["test_acc"].values))
    if "curves" not in run.results:
        from .engine import analyze

        try:
            analyze(run, ["curves"], model=model, anatomy=anatomy, progress=False)
        except GrokscopeError as exc:
            raise ConfigError(
                f"phase_diagram: run {run.path} recorded no train_acc/test_acc metrics and its "
                f"accuracy could not be computed ({exc}); pass model=... (--model) or analyse "
                "it with 'curves' first"
            ) from exc
    cur = run.results["curves"]
    return (np.asarray(cur["step"].values), np.asarray(cur["train_acc"].values),
            np.asarray(cur["test_acc"].values))


def phase_diagram(
    runs: Any,
    x: str,
    y: str,
    *,
    threshold: float = 0.9,
    comprehension_gap: float = 1000,
    semi_rise: float = 0.2,
    ungrok_margin: float = 0.1,
    storage_options: dict | None = None,
    model: Any = None,
    anatomy: dict | None = None,
) -> xr.Dataset:
    """Label every run of a grid by its grokking phase and lay the labels out on ``x`` x ``y``.

    Parameters
    ----------
    runs : path, Run, or list of paths/Runs
        A sweep folder (its ``sweep.json`` lists the runs; without one, every store directly
        inside the folder), one store, or an explicit list.
    x, y : str
        Hyperparameter names, looked up in each store's config with :func:`config_value`
        (``weight_decay``, ``train_frac``, ``task.p``, ``model.width`` ...).
    threshold, comprehension_gap, semi_rise, ungrok_margin
        Passed to :func:`grokscope.measures.phases.phase_summary` (docs/methods.md section 1).
    storage_options : dict, optional
        fsspec options for URL stores.
    model, anatomy : optional
        For runs that recorded no ``train_acc``/``test_acc`` metrics (imported runs): the
        accuracies come from their stored ``curves`` result, computed first with this
        architecture and these roles when absent (as for :func:`grokscope.analyze`).

    Returns
    -------
    xr.Dataset
        Dims ``(x, y, "seed")`` named by the hyperparameters, coordinates read from the
        configs (the trainer's ``seed``; a config without one numbers its cell's runs 0, 1,
        ...). Per run: ``label`` (str, ``"missing"`` where no run with recorded steps exists),
        ``t_train``, ``t_test``, ``gap``, ``final_train_acc``, ``final_test_acc``,
        ``max_test_acc``, ``last_step`` (float, NaN where missing), ``path`` (str). Per cell,
        over seeds: ``label_mode`` (most common label among present runs, ties broken in the
        order of ``labels``; ``"missing"`` if none), ``label_agreement`` (fraction of present
        runs with that label), ``n_runs``, ``frac_<label>`` for every label
        (``frac_semi_grokking`` ...), ``final_test_acc_mean``/``_std``,
        ``final_train_acc_mean``, ``t_train_mean``, ``t_test_mean``, ``gap_mean``. Attrs:
        the thresholds, ``step_budget`` (the largest recorded step), ``x``, ``y``, ``task`` and
        ``model`` (JSON of the first run's specs), ``labels`` (comma-separated), ``n_runs``.

    Raises
    ------
    ConfigError
        A run's config lacks ``x`` or ``y``; a run lacks accuracy metrics; two runs share a
        cell and seed; ``x == y``.
    """
    from .measures.phases import LABELS, phase_summary
    from .store.run import Run, open_run

    for name, value in (("x", x), ("y", y)):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"phase_diagram: {name} must be a hyperparameter name, got {value!r}")
    if x == y:
        raise ConfigError(f"phase_diagram: x and y are both {x!r}; pick two hyperparameters")
    if "seed" in (x, y):
        raise ConfigError("phase_diagram: 'seed' is the third dim of the diagram; pick x and y "
                          "among the other hyperparameters")
    items, manifest = _collect_runs(runs, storage_options)
    records = []
    first_cfg: dict | None = None
    budget = -1
    for item in items:
        if isinstance(item, Run):
            run = item
        else:
            p = os.fspath(item) if isinstance(item, os.PathLike) else str(item)
            if "://" not in p and not Path(p).exists():
                continue  # listed in the manifest, not trained yet: its cell stays missing
            try:
                run = open_run(p, storage_options=storage_options)
            except NotAStoreError:
                continue
        cfg = dict(run.config or {})
        coords = {}
        for axis, name in (("x", x), ("y", y)):
            try:
                coords[axis] = config_value(cfg, name)
            except KeyError:
                task = cfg.get("task") if isinstance(cfg.get("task"), Mapping) else {}
                mkw = (cfg.get("model") or {}).get("kwargs") or {}
                raise ConfigError(
                    f"phase_diagram: the config of run {run.path} has no hyperparameter "
                    f"{name!r} (for {axis}). Its trainer keys are {sorted(cfg)}, its task's "
                    f"{sorted(task)}, its model's {sorted(mkw)}; use one of these (prefix "
                    "'task.' or 'model.' to be explicit)"
                ) from None
        seed = cfg.get("seed")
        if len(run.steps) == 0:
            continue  # created but nothing committed yet
        steps_, train_acc, test_acc = _accuracy_curves(run, model, anatomy)
        summ = phase_summary(
            steps_, train_acc, test_acc, threshold=threshold,
            comprehension_gap=comprehension_gap, semi_rise=semi_rise,
            ungrok_margin=ungrok_margin,
        )
        last = int(run.steps[-1])
        budget = max(budget, last)
        if first_cfg is None:
            first_cfg = cfg
        records.append((coords["x"], coords["y"], seed, summ, last, str(run.path)))
    if not records:
        raise ConfigError(
            "phase_diagram: none of the runs has recorded steps yet; train them first "
            "(grokscope sweep ...)"
        )

    xs = _coord([r[0] for r in records] + _manifest_values(manifest, x), x)
    ys = _coord([r[1] for r in records] + _manifest_values(manifest, y), y)
    # seeds: the config's seed, else the order within the cell
    per_cell: Counter = Counter()
    resolved = []
    for rx, ry, seed, summ, last, path in records:
        cell = (_key(rx, xs), _key(ry, ys))
        if seed is None or isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            seed = per_cell[cell]
        per_cell[cell] += 1
        resolved.append((cell, int(seed), summ, last, path))
    seeds = sorted({r[1] for r in resolved} | set((manifest or {}).get("seeds") or []))
    xi = {_key(v, xs): i for i, v in enumerate(xs.tolist())}
    yi = {_key(v, ys): i for i, v in enumerate(ys.tolist())}
    si = {s: i for i, s in enumerate(seeds)}
    shape = (len(xs), len(ys), len(seeds))
    floats = ("t_train", "t_test", "gap", "final_train_acc", "final_test_acc", "max_test_acc")
    arr = {k: np.full(shape, np.nan) for k in (*floats, "last_step")}
    label = np.full(shape, MISSING, dtype=object)
    paths = np.full(shape, "", dtype=object)
    for (cx, cy), seed, summ, last, path in resolved:
        idx = (xi[cx], yi[cy], si[seed])
        if paths[idx]:
            raise ConfigError(
                f"phase_diagram: runs {paths[idx]} and {path} both have {x}={cx}, {y}={cy}, "
                f"seed={seed}; they differ in some other hyperparameter. Pass an explicit "
                "list of runs that vary only in x, y and the seed"
            )
        paths[idx] = path
        label[idx] = str(summ["label"].values)
        for k in floats:
            arr[k][idx] = float(summ[k].values)
        arr["last_step"][idx] = last

    dims = (x, y, "seed")
    ds = xr.Dataset(coords={x: xs, y: ys, "seed": np.array(seeds, dtype=np.int64)})
    ds["label"] = (dims, label.astype(str))
    for k, v in arr.items():
        ds[k] = (dims, v)
    ds["path"] = (dims, paths.astype(str))

    labels = list(LABELS)
    present = label != MISSING
    n = present.sum(axis=2)
    ds["n_runs"] = ((x, y), n.astype(np.int64))
    counts = {lab: (label == lab).sum(axis=2) for lab in labels}
    with np.errstate(invalid="ignore", divide="ignore"):
        for lab in labels:
            ds[f"frac_{lab.replace('-', '_')}"] = ((x, y), np.where(n > 0, counts[lab] / n,
                                                                    np.nan))
        stacked = np.stack([counts[lab] for lab in labels], axis=-1)
        best = stacked.argmax(axis=-1)  # first maximum: ties go to the earlier label
        mode = np.where(n > 0, np.array(labels, dtype=object)[best], MISSING)
        ds["label_mode"] = ((x, y), mode.astype(str))
        ds["label_agreement"] = ((x, y), np.where(n > 0, stacked.max(axis=-1) / n, np.nan))
    for k, agg in (("final_test_acc", "mean"), ("final_test_acc", "std"),
                   ("final_train_acc", "mean"), ("t_train", "mean"), ("t_test", "mean"),
                   ("gap", "mean")):
        v = arr[k]
        finite = np.isfinite(v).sum(axis=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            total = np.where(np.isfinite(v), v, 0.0).sum(axis=2)
            mean = np.where(finite > 0, total / np.maximum(finite, 1), np.nan)
            if agg == "std":
                dev = np.where(np.isfinite(v), (v - mean[..., None]) ** 2, 0.0).sum(axis=2)
                out = np.where(finite > 0, np.sqrt(dev / np.maximum(finite, 1)), np.nan)
            else:
                out = mean
        ds[f"{k}_{agg}"] = ((x, y), out)

    for k, text in (
        ("label", "grokking phase of each run (docs/methods.md section 1)"),
        ("t_train", "first recorded step with train accuracy >= threshold"),
        ("t_test", "first recorded step with test accuracy >= threshold"),
        ("gap", "t_test - t_train"),
        ("last_step", "last recorded step of the run"),
        ("label_mode", "most common label over seeds"),
    ):
        ds[k].attrs["long_name"] = text
    for k in ("t_train", "t_test", "gap", "last_step", "t_train_mean", "t_test_mean",
              "gap_mean"):
        ds[k].attrs["units"] = "steps"
    cfg = first_cfg or {}
    ds.attrs.update(
        x=x,
        y=y,
        threshold=float(threshold),
        comprehension_gap=float(comprehension_gap),
        semi_rise=float(semi_rise),
        ungrok_margin=float(ungrok_margin),
        step_budget=int(budget),
        n_runs=int(present.sum()),
        labels=",".join([*labels, MISSING]),
        task=json.dumps(cfg.get("task"), sort_keys=True, default=str),
        model=json.dumps(cfg.get("model"), sort_keys=True, default=str),
        description=(
            "grokking phase diagram: one run per cell and seed, labelled from its recorded "
            "train/test accuracy; hyperparameters read from each store's config"
        ),
    )
    return ds


def save_phase_diagram(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write a phase-diagram dataset to ``path`` (``.nc``: netCDF, ``.zarr``: zarr).

    Returns
    -------
    Path
        ``path``.
    """
    p = Path(path)
    if p.suffix == ".nc":
        ds.to_netcdf(p)
    elif p.suffix == ".zarr":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr warns that fixed-width str is unspecified
            ds.to_zarr(p, mode="w", consolidated=False)
    else:
        raise ConfigError(f"phase diagram data must be saved as .nc or .zarr, got {p.name!r}")
    return p
