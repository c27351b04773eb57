"""Analysis results inside a run's store: ``results/<measure>`` groups of labelled xarray data.

A result group is written whole (``mode="w"``) and marked complete by a ``grokscope_complete``
attribute written with it; a group without the marker (an analysis killed mid-write) is
treated as absent and recomputed. Parameters live in the attrs (``params`` as JSON, and each
parameter on its own), so two numbers computed differently are never mistaken for each other.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from ._version import __version__

RESULTS_GROUP = "results"
COMPLETE_ATTR = "grokscope_complete"


def jsonable(value: Any) -> Any:
    """``value`` converted to plain JSON types (tuples to lists, numpy scalars to Python)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def params_key(params: Mapping[str, Any], context: Mapping[str, Any] | None = None) -> str:
    """A stable hash of a measure's resolved parameters and the context its values depend on
    (e.g. the steps of the reference checkpoints it compares with)."""
    text = json.dumps(jsonable({"params": params, "context": context or {}}), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def annotate(ds: xr.Dataset, name: str, params: Mapping[str, Any], *,
             context: Mapping[str, Any] | None = None, **extra: Any) -> xr.Dataset:
    """``ds`` with the measure name, parameters, context and grokscope version in its attrs."""
    ds = ds.copy()
    attrs = {k: jsonable(v) for k, v in ds.attrs.items()}
    attrs.update(
        measure=name,
        params=json.dumps(jsonable(params), sort_keys=True),
        params_key=params_key(params, context),
        grokscope_version=__version__,
    )
    for k, v in params.items():
        attrs[f"param_{k}"] = jsonable(v)
    attrs.update({k: jsonable(v) for k, v in {**(context or {}), **extra}.items()})
    ds.attrs = attrs
    return ds


def _group(name: str) -> str:
    return f"{RESULTS_GROUP}/{name}"


def write_result(path: str, name: str, ds: xr.Dataset, *, storage_options: dict | None = None) -> None:
    """Write ``ds`` as the complete result ``name`` of the store at ``path`` (replacing it).

    On a local store the new version is written beside the old one (``results/.<name>.new-*``),
    marked complete, and swapped in by directory renames, so a kill at any moment leaves the
    last complete version in place. On other stores the group is rewritten in place and a kill
    mid-write leaves it incomplete (recomputed by the next analysis).
    """
    from .store._io import _local_path

    ds = ds.copy()
    ds.attrs = {**ds.attrs, COMPLETE_ATTR: False}
    for vname, var in list(ds.variables.items()):
        var.encoding = {}
        if var.dtype.kind == "O":  # variable-length strings: store as fixed-width unicode
            fixed = np.asarray(var.values, dtype=str)
            if vname in ds.indexes:  # an index coordinate cannot be assigned in place
                ds = ds.assign_coords({vname: (var.dims, fixed, var.attrs)})
            else:
                var.values = fixed
    local = _local_path(path)
    tag = uuid.uuid4().hex[:8]
    group = _group(name) if local is None else _group(f".{name}.new-{tag}")
    with warnings.catch_warnings():
        # fixed-width unicode (labels, layer names) has no zarr v3 spec yet; we read it back ourselves
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
        ds.to_zarr(
            path, group=group, mode="w", consolidated=False, zarr_format=3,
            storage_options=storage_options,
        )
    import zarr

    grp = zarr.open_group(path, path=group, mode="r+", storage_options=storage_options)
    grp.attrs[COMPLETE_ATTR] = True
    if local is not None:
        results = local / RESULTS_GROUP
        final, old = results / name, results / f".{name}.old-{tag}"
        if final.exists():
            os.replace(final, old)
        os.replace(results / f".{name}.new-{tag}", final)
        shutil.rmtree(old, ignore_errors=True)


def read_result(path: str, name: str, *, storage_options: dict | None = None) -> xr.Dataset | None:
    """The stored result ``name`` (loaded into memory), or None when absent or incomplete."""
    import zarr

    try:
        grp = zarr.open_group(path, path=_group(name), mode="r", storage_options=storage_options)
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        return None
    if not grp.attrs.get(COMPLETE_ATTR, False):
        return None
    ds = xr.open_zarr(
        path, group=_group(name), consolidated=False, zarr_format=3, storage_options=storage_options
    ).load()
    ds.attrs.pop(COMPLETE_ATTR, None)
    return ds


def list_results(path: str, *, storage_options: dict | None = None) -> list[str]:
    """Names of the result groups stored at ``path``."""
    import zarr

    try:
        grp = zarr.open_group(path, path=RESULTS_GROUP, mode="r", storage_options=storage_options)
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        return []
    return sorted(name for name, _ in grp.groups() if not name.startswith("."))
