"""Many runs as one labelled dataset: a sweep folder, a folder of stores or any list of runs.

>>> ds = gs.open_runs("sweeps/wd", results=["nfa"])                   # doctest: +SKIP
>>> ds["test_acc"].sel(run=ds.run[ds.seed == 0])                      # doctest: +SKIP

Every run's recorded metrics (and the scalar variables of the results asked for, named
``<result>.<variable>``) are aligned on the union of their steps (NaN where a run has no value)
and stacked along a ``run`` dimension. Coordinates along ``run``: ``path``, ``seed`` (when the
configs hold one) and every hyperparameter that differs between the runs (the sweep's grid axes
when ``runs`` is a sweep folder, else the config values that differ), so that
``ds.groupby("weight_decay")`` or ``ds.where(ds.seed == 0, drop=True)`` read as they say.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from .errors import ConfigError

#: config entries that identify a run's settings but are not hyperparameters to compare
_NOT_HYPER = {"anatomy", "import", "num_threads", "created", "versions"}


def _flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Scalar config values by dotted name (``task.p``, ``model.kwargs.width``, ``lr``)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if not prefix and k in _NOT_HYPER:
            continue
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat_config(v, name + "."))
        elif v is None or isinstance(v, bool | int | float | str):
            out[name] = v
    return out


def _short(name: str, taken: set[str]) -> str:
    """The last dotted part of ``name`` when that is unambiguous (``weight_decay``, ``p``)."""
    leaf = name.rsplit(".", 1)[-1]
    return leaf if leaf not in taken else name


def _scalar_vars(ds: xr.Dataset, prefix: str) -> dict[str, xr.DataArray]:
    out = {}
    for name, var in ds.data_vars.items():
        if var.dims == ("step",) and var.dtype.kind in "fiub":
            out[f"{prefix}{name}"] = var.astype(float)
        elif set(var.dims) == {"step", "layer"} and var.dtype.kind in "fiu":
            for layer in var["layer"].values:
                out[f"{prefix}{name}[{layer}]"] = var.sel(layer=layer, drop=True).astype(float)
    return out


def _config_values(runs: Sequence[Any], name: str) -> list[Any]:
    """Hyperparameter ``name`` of each run (:func:`grokscope.sweep.config_value`), None where
    a run's config lacks it."""
    from .sweep import config_value

    out = []
    for r in runs:
        try:
            out.append(config_value(r.config or {}, name))
        except KeyError:
            out.append(None)
    return out


def open_runs(
    runs: Any,
    *,
    results: Sequence[str] = (),
    hyperparameters: Sequence[str] | None = None,
    storage_options: dict | None = None,
) -> xr.Dataset:
    """Several runs as one Dataset with dims ``(run, step)``.

    Parameters
    ----------
    runs : sweep folder, folder of run stores, or list of Runs / paths
    results : names of stored results whose scalar variables to include (``"nfa"`` gives
        ``nfa.nfa_corr_sqrt[fc1]``...; a run without that result gets NaN)
    hyperparameters : config names to put on the ``run`` axis (dotted names as in
        :func:`grokscope.phase_diagram`); default: the sweep's grid axes, else every config
        value that differs between the runs
    storage_options : for URLs

    Returns
    -------
    xr.Dataset
        Variables ``(run, step)``: every recorded metric and the requested results' scalar
        variables. Coordinates: ``run`` (a name per run), ``path``, ``seed`` when known, and
        one coordinate per hyperparameter along ``run``.
    """
    from .store.run import Run, open_run
    from .sweep import _collect_runs

    items, manifest = _collect_runs(runs, storage_options)
    if isinstance(results, str):
        results = [results]
    opened: list[Run] = [r if isinstance(r, Run) else open_run(r, storage_options=storage_options)
                         for r in items]
    if not opened:
        raise ConfigError("open_runs: no runs given")
    per_run = []
    for run in opened:
        vars_ = _scalar_vars(run.metrics, "")
        for name in results:
            ds = run.results.get(name)
            if ds is not None and "step" in ds.dims:
                vars_.update(_scalar_vars(ds, f"{name}."))
        per_run.append(xr.Dataset(vars_) if vars_ else xr.Dataset(coords={"step": run.steps}))
    steps = np.unique(np.concatenate([np.asarray(r.steps) for r in opened]))
    aligned = [ds.reindex(step=steps) for ds in per_run]
    out = xr.concat(aligned, dim="run", join="outer", data_vars="all", coords="minimal",
                    compat="override", fill_value=np.nan)

    configs = [_flat_config(r.config or {}) for r in opened]
    if hyperparameters is None:
        grid = [g for g in (manifest or {}).get("grid") or {} if g not in ("seed", "train.seed")]
        if not grid:  # no sweep manifest: every config value that differs between the runs
            keys = sorted(set().union(*configs))
            grid = [k for k in keys
                    if k != "seed" and len({repr(c.get(k)) for c in configs}) > 1]
            columns = {k: [c.get(k) for c in configs] for k in grid}
        else:
            columns = {g: _config_values(opened, g) for g in grid}
    else:
        columns = {h: _config_values(opened, h) for h in hyperparameters}
    names = [os.path.basename(os.fspath(r.path).rstrip("/")) or str(i) for i, r in enumerate(opened)]
    if len(set(names)) < len(names):
        names = [f"{i}:{n}" for i, n in enumerate(names)]
    coords: dict[str, Any] = {"run": names, "path": ("run", [os.fspath(r.path) for r in opened])}
    seeds = [c.get("seed") for c in configs]
    if any(s is not None for s in seeds):
        coords["seed"] = ("run", np.array([-1 if s is None else int(s) for s in seeds]))
    taken: set[str] = set(coords) | set(out.data_vars)
    for name, vals in columns.items():
        short = _short(name, taken)
        taken.add(short)
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
            arr = np.asarray(vals, dtype=float)
        else:
            arr = np.asarray([str(v) for v in vals])
        coords[short] = ("run", arr)
    out = out.assign_coords(coords)
    out.attrs["description"] = "grokscope.open_runs: runs stacked along 'run', aligned on 'step'"
    return out


def seed_groups(ds: xr.Dataset) -> Iterable[tuple[dict[str, Any], xr.Dataset]]:
    """``(hyperparameters, runs)`` for each setting of the hyperparameter coordinates (the
    runs that differ only by seed)."""
    hyper = [c for c in ds.coords if c not in ("run", "path", "seed", "step")
             and ds[c].dims == ("run",)]
    if not hyper:
        yield {}, ds
        return
    keys = [tuple(ds[c].values[i].item() for c in hyper) for i in range(ds.sizes["run"])]
    for key in sorted(set(keys), key=repr):
        idx = [i for i, k in enumerate(keys) if k == key]
        yield dict(zip(hyper, key, strict=True)), ds.isel(run=idx)
