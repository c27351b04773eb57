"""Analysis results inside a run's store: ``results/<measure>`` groups of labelled xarray data.

A result group is written whole (``mode="w"``) and marked complete by a ``grokscope_complete``
attribute written with it; a group without the marker (an analysis killed mid-write) is
treated as absent and recomputed. Parameters live in the attrs (``params`` as JSON, and each
parameter on its own), so two numbers computed differently are never mistaken for each other.
Attributes are stored as netCDF can hold them (strings, numbers, lists of numbers); any other
value (None, a bool, a dict, a list of strings) is its JSON text, named in the
``grokscope_json_attrs`` attribute (``decoded_attrs`` gives the values back), so a result read
with grokscope or plain ``xr.open_zarr`` exports with ``to_netcdf``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ._version import __version__
from .errors import CorruptStoreError, StoreError, StoreWriteError

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


#: attribute naming (as a JSON list) the attributes stored as JSON text: netCDF attributes are
#: strings and numbers, so None, bools, dicts and lists that are not all numbers are kept as
#: their JSON (``decoded_attrs`` gives the values back)
JSON_ATTRS = "grokscope_json_attrs"
_INT64 = (-(2**63), 2**63)


def _number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return _INT64[0] <= v < _INT64[1]
    return isinstance(v, float)


def _netcdf_value(v: Any) -> bool:
    """A value netCDF keeps as it is: a string, a number, a non-empty list of numbers."""
    return (isinstance(v, str) or _number(v)
            or (isinstance(v, list) and bool(v) and all(_number(x) for x in v)))


def decoded_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``attrs`` with the values listed in ``grokscope_json_attrs`` decoded from their JSON
    text (None, bools, dicts, lists of strings ...); the list itself is dropped. Attributes
    without the list (results written before it) are returned as they are."""
    out = {k: v for k, v in attrs.items() if k != JSON_ATTRS}
    names = attrs.get(JSON_ATTRS)
    try:
        names = json.loads(names) if isinstance(names, str) else []
    except ValueError:
        names = []
    for k in names if isinstance(names, list) else []:
        if isinstance(k, str) and isinstance(out.get(k), str):
            with contextlib.suppress(ValueError):
                out[k] = json.loads(out[k])
    return out


def netcdf_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``attrs`` as netCDF can store them: strings and numbers (and lists of numbers) as they
    are, every other value (None, bools, dicts, lists of strings) as its JSON text, with the
    names of those listed in ``grokscope_json_attrs`` (a JSON list). Inverse:
    :func:`decoded_attrs`. Idempotent."""
    out: dict[str, Any] = {}
    encoded = []
    for k, v in decoded_attrs(attrs).items():
        v = jsonable(v)
        if _netcdf_value(v):
            out[str(k)] = v
        else:
            out[str(k)] = json.dumps(v, sort_keys=True)
            encoded.append(str(k))
    if encoded:
        out[JSON_ATTRS] = json.dumps(sorted(encoded))
    return out


def netcdf_safe(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` (a copy) with its own and every variable's attributes in :func:`netcdf_attrs`
    form, so ``ds.to_netcdf(...)`` accepts them."""
    ds = ds.copy()
    ds.attrs = netcdf_attrs(ds.attrs)
    for var in ds.variables.values():
        var.attrs = netcdf_attrs(var.attrs)
    return ds


def params_key(params: Mapping[str, Any], context: Mapping[str, Any] | None = None) -> str:
    """A stable hash of a measure's resolved parameters and the context its values depend on
    (e.g. the steps of the reference checkpoints it compares with)."""
    text = json.dumps(jsonable({"params": params, "context": context or {}}), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def annotate(ds: xr.Dataset, name: str, params: Mapping[str, Any], *,
             context: Mapping[str, Any] | None = None, **extra: Any) -> xr.Dataset:
    """``ds`` with the measure name, parameters, context and grokscope version in its attrs."""
    ds = ds.copy()
    attrs = {k: jsonable(v) for k, v in decoded_attrs(ds.attrs).items()}
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


# ---------------------------------------------------------------------------- where results live
RESULTS_STORE_ATTR = "grokscope_results"
LOCKS = ".locks"
_GROUP_DOC = b'{"zarr_format": 3, "node_type": "group", "attributes": {}}'
_ORPHAN = re.compile(r"^\.(?P<name>.+)\.(?:new|old)-[0-9a-f]{8}$")
_ADVICE = ("write the results to a separate results store instead: gs.analyze(run, ..., "
           "results='PATH') or `grokscope analyze RUN --results PATH`, and read them back with "
           "gs.open_run(RUN, results='PATH') / gs.report(..., results='PATH') / --results PATH")


def _group(name: str) -> str:
    return f"{RESULTS_GROUP}/{name}"


def run_identity(run: Any) -> dict[str, Any]:
    """What ties a results store to its run: the run's creation time, first step, tensor
    shapes and a hash of its smallest tensor at the first step (a run that grows keeps its
    identity; a re-recorded or different run does not)."""
    cached = getattr(run, "_results_identity", None)
    if cached is not None:
        return cached
    meta = getattr(run, "meta", None) or {}
    params = meta.get("params") or {}
    shapes = {k: (v or {}).get("shape") for k, v in params.items()} if isinstance(params, Mapping) else {}
    steps = getattr(run, "steps", None)
    first = None
    if steps is not None and len(steps) and shapes:
        key = min(shapes, key=lambda k: (int(np.prod(shapes[k] or [1])), k))
        try:
            row = np.ascontiguousarray(run.params[key].isel(step=0).values)
            first = hashlib.sha1(row.tobytes()).hexdigest()[:16]
        except Exception:  # noqa: BLE001 - an unreadable row: the other fields still identify
            first = None
    ident = {
        "created": meta.get("created"),
        "first_step": int(steps[0]) if steps is not None and len(steps) else None,
        "tensors": hashlib.sha1(json.dumps(jsonable(shapes), sort_keys=True).encode()).hexdigest()[:16],
        "first_weights": first,
    }
    if first is not None:
        with contextlib.suppress(AttributeError):
            run._results_identity = ident
    return ident


class ResultsLocation:
    """Where a run's results live: ``results/<name>`` groups under ``root``, which is the run's
    own store or a separate results store (``results=``)."""

    def __init__(self, root: Any, *, storage_options: dict | None = None, separate: bool = False,
                 store: Any = None) -> None:
        from .store._io import _local_path

        self.root = os.fspath(root)
        self.storage_options = storage_options
        self.separate = separate
        local = _local_path(self.root)
        self.local: Path | None = None if local is None else local.expanduser().absolute()
        self._store = store

    @property
    def label(self) -> str:
        return str(self.local) if self.local is not None else self.root

    @property
    def results_dir(self) -> Path | None:
        return None if self.local is None else self.local / RESULTS_GROUP

    def store(self) -> Any:
        """A read-only zarr store of ``root``."""
        if self._store is None:
            from .store._io import open_store

            self._store = open_store(self.root, read_only=True, storage_options=self.storage_options)
        return self._store

    def lock_path(self, name: str, kind: str = "read") -> Path:
        """The lock file of result ``name`` (a valid empty zarr group document, so zarr and
        xarray never trip over it): ``read`` guards the swap, ``write`` one analysis at a time."""
        assert self.results_dir is not None
        sub = Path(LOCKS) / name if kind == "read" else Path(LOCKS) / name / "writer"
        return self.results_dir / sub / "zarr.json"

    def __repr__(self) -> str:
        return f"<results at {self.label}{' (separate store)' if self.separate else ''}>"


def _same_place(a: Any, b: Any) -> bool:
    from .store._io import _local_path

    la, lb = _local_path(os.fspath(a)), _local_path(os.fspath(b))
    if la is None or lb is None:
        return os.fspath(a).rstrip("/") == os.fspath(b).rstrip("/")
    return os.path.realpath(la.expanduser()) == os.path.realpath(lb.expanduser())


def location_for(run: Any, results: Any = None, *, write: bool = False) -> ResultsLocation:
    """The results location of ``run``: ``results`` (or ``run.results_path``) when given, else
    the run's own store. A separate results store is checked to belong to ``run`` (StoreError
    otherwise) and, with ``write=True``, created when absent."""
    results = results if results is not None else getattr(run, "results_path", None)
    so = getattr(run, "storage_options", None)
    if results is None or _same_place(results, run.path):
        return ResultsLocation(run.path, storage_options=so, store=getattr(run, "store", None))
    sep_so = so if "://" in os.fspath(results) and not os.fspath(results).startswith("file://") else None
    loc = ResultsLocation(results, storage_options=sep_so, separate=True)
    _check_results_store(loc, run, create=write)
    return loc


def _check_results_store(loc: ResultsLocation, run: Any, *, create: bool) -> None:
    from .store import _io, schema

    ident = run_identity(run)
    try:
        doc = _io.read_json(loc.store(), "zarr.json", what="the results store's root metadata")
    except FileNotFoundError:
        doc = None
    if doc is None:
        if loc.local is not None and loc.local.is_dir() and any(loc.local.iterdir()):
            raise StoreError(
                f"{loc.label} is not empty and is not a grokscope results store; pass results= "
                "a new folder, or the results store an earlier analysis of this run made"
            )
        if create:
            info = {"run": str(run.path), **ident,
                    "committed": int(len(getattr(run, "steps", ()))), "grokscope_version": __version__}
            body = json.dumps({"zarr_format": 3, "node_type": "group",
                               "attributes": {RESULTS_STORE_ATTR: jsonable(info)}}).encode()
            try:
                if loc.local is not None:
                    loc.local.mkdir(parents=True, exist_ok=True)
                _io.put_bytes(_io.open_store(loc.root, read_only=False,
                                             storage_options=loc.storage_options), "zarr.json", body)
            except OSError as exc:
                raise _write_error(exc, loc, None) from exc
        return
    attrs = doc.get("attributes", {}) or {}
    info = attrs.get(RESULTS_STORE_ATTR)
    if not isinstance(info, Mapping):
        what = ("a grokscope run store, not a results store" if schema.META_KEY in attrs
                else "not a grokscope results store")
        raise StoreError(
            f"{loc.label} is {what}; results= / --results must name a separate results store "
            "(a new folder, or the one an earlier analysis of this run made)"
        )
    for key in ("created", "first_step", "tensors", "first_weights"):
        mine, theirs = ident.get(key), info.get(key)
        if mine is not None and theirs is not None and mine != theirs:
            raise StoreError(
                f"the results store {loc.label} belongs to another run ({info.get('run')}: "
                f"{key} {theirs!r}), not to {run.path} ({key} {mine!r}); give this run its own "
                "results store (a new folder)"
            )


# ---------------------------------------------------------------------------- errors
def _read_only_error(exc: BaseException) -> bool:
    if isinstance(exc, PermissionError):
        return True
    if isinstance(exc, OSError):
        return exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
    return isinstance(exc, ValueError) and "read-only" in str(exc).replace("read_only", "read-only")


def _write_error(exc: BaseException, loc: ResultsLocation, name: str | None) -> StoreWriteError:
    what = f"result {name!r}" if name else "the results store"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return StoreWriteError(
            f"no space left on the device of {loc.label} while writing {what} ({exc}). Free some "
            "space (or pass results='PATH' / --results PATH to write to another disk) and run the "
            "analysis again: the results already stored are kept and their steps are not "
            "recomputed; nothing half-written was left behind"
        )
    if _read_only_error(exc):
        return StoreWriteError(f"cannot write {what}: {loc.label} is read-only ({exc}); {_ADVICE}")
    return StoreWriteError(
        f"writing {what} to {loc.label} failed ({type(exc).__name__}: {exc}); the last complete "
        "version is kept. Fix the cause (or pass results='PATH' / --results PATH) and run the "
        "analysis again"
    )


# ---------------------------------------------------------------------------- locks (local stores)
def _open_lock(path: Path, *, create: bool) -> int | None:
    """An open descriptor of lock file ``path`` (created, as an empty zarr group document, when
    ``create``); None when it does not exist and ``create`` is False."""
    if not create:
        try:
            return os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
    try:
        return os.open(path, os.O_RDWR)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = path.parent.parent  # every folder up to .locks is a zarr group too
    while folder.name and folder.name != RESULTS_GROUP:
        _create_group_doc(folder / "zarr.json")
        if folder.name == LOCKS:
            break
        folder = folder.parent
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:  # another process created it first: lock the same file
        return os.open(path, os.O_RDWR)
    os.write(fd, _GROUP_DOC)
    return fd


def _create_group_doc(path: Path) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return
    try:
        os.write(fd, _GROUP_DOC)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _flock(path: Path, *, exclusive: bool, create: bool,
           on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold a ``flock`` on ``path`` (shared or exclusive) for the ``with`` body; waits for it."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no coordination
        yield
        return
    fd = _open_lock(path, create=create)
    if fd is None:  # readers: no lock file yet, so no locking writer ever swapped this result
        yield
        return
    try:
        op = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, op)
        yield
    finally:
        os.close(fd)


def _try_flock(path: Path) -> int | None:
    """A descriptor holding an exclusive lock on ``path``, or None when someone holds it."""
    import fcntl

    fd = _open_lock(path, create=True)
    assert fd is not None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def prepare_write(loc: ResultsLocation) -> None:
    """Check, before anything is computed, that results can be written at ``loc``: a local
    store is probed (``results/`` created, a file created and removed). StoreWriteError naming
    ``results=`` / ``--results`` when it is read-only or full."""
    if loc.local is None:
        return
    from .store._io import check_links_inside

    check_links_inside(loc.local, RESULTS_GROUP)  # never write through a link leaving the store
    results = loc.local / RESULTS_GROUP
    try:
        results.mkdir(parents=True, exist_ok=True)
        _create_group_doc(results / "zarr.json")
        probe = results / f".probe-{uuid.uuid4().hex[:8]}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _write_error(exc, loc, None) from exc


def _remove_orphans(loc: ResultsLocation, name: str) -> int:
    """Delete the half-written ``.<name>.new-*`` / ``.<name>.old-*`` folders of ``name`` (call
    with its writer lock held: then no live writer owns them)."""
    n = 0
    for entry in _orphans(loc):
        if entry[0] == name:
            shutil.rmtree(entry[1], ignore_errors=True)
            n += 1
    return n


def _orphans(loc: ResultsLocation) -> list[tuple[str, Path]]:
    results = loc.results_dir
    if results is None:
        return []
    try:
        names = os.listdir(results)
    except OSError:
        return []
    out = []
    for entry in names:
        m = _ORPHAN.match(entry)
        if m:
            out.append((m.group("name"), results / entry))
    return out


def remove_stale_orphans(loc: ResultsLocation, *, skip: Iterable[str] = ()) -> int:
    """Delete the orphaned write folders of every result that no live writer holds; returns
    how many were removed."""
    if loc.local is None:
        return 0
    skip, n = set(skip), 0
    for name in sorted({name for name, _ in _orphans(loc)} - skip):
        try:
            fd = _try_flock(loc.lock_path(name, "write"))
        except (OSError, ImportError):
            continue
        if fd is None:  # a live analysis is writing it
            continue
        try:
            n += _remove_orphans(loc, name)
        finally:
            os.close(fd)
    return n


@contextlib.contextmanager
def writing(loc: ResultsLocation, names: Iterable[str], *,
            note: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the writer lock of each result in ``names`` for the ``with`` body (one analysis of
    a result at a time on a local store: a second one waits, then finds the steps the first
    stored). Orphaned write folders of those results, and of any result nobody is writing,
    are removed."""
    names = sorted(set(names))
    if loc.local is None:
        yield
        return
    with contextlib.ExitStack() as stack:
        for name in names:  # sorted: two analyses never wait for each other in a cycle
            def waiting(name: str = name) -> None:
                if note is not None:
                    note(f"waiting for another analysis writing result {name!r} in {loc.label}; "
                         "its steps will be reused")
            try:
                stack.enter_context(_flock(loc.lock_path(name, "write"), exclusive=True,
                                           create=True, on_wait=waiting))
            except OSError as exc:
                raise _write_error(exc, loc, name) from exc
            _remove_orphans(loc, name)
        remove_stale_orphans(loc, skip=names)
        yield


# ---------------------------------------------------------------------------- write and read
def _fixed_width(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.copy()
    for vname, var in list(ds.variables.items()):
        var.encoding = {}
        if var.dtype.kind == "O":  # variable-length strings: store as fixed-width unicode
            fixed = np.asarray(var.values, dtype=str)
            if vname in ds.indexes:  # an index coordinate cannot be assigned in place
                ds = ds.assign_coords({vname: (var.dims, fixed, var.attrs)})
            else:
                var.values = fixed
    return ds


#: attribute holding a SHA-256 of the result's attributes and its variables' attributes (zarr
#: v3 checksums chunks, not metadata documents: this catches an edited parameter or label)
ATTRS_HASH = "grokscope_attrs_sha256"


def _attrs_digest(ds: xr.Dataset) -> str:
    """SHA-256 of the attributes' values (decoded: the same for a result stored before and
    after JSON-encoding of attributes)."""
    attrs = {k: v for k, v in decoded_attrs(ds.attrs).items() if k not in (COMPLETE_ATTR, ATTRS_HASH)}
    doc = {"attrs": jsonable(attrs),
           "variables": {str(k): jsonable(decoded_attrs(v.attrs)) for k, v in ds.variables.items()},
           # the dimension names too: zarr keeps them in metadata, which it does not checksum
           "dims": {str(k): [str(d) for d in v.dims] for k, v in ds.variables.items()}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _encoding(ds: xr.Dataset) -> dict[str, dict]:
    """Every variable's chunks zstd-compressed and CRC32C-checksummed (verified on read)."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return {str(v): {"compressors": (ZstdCodec(), Crc32cCodec())} for v in ds.variables}


def _as_location(where: Any, storage_options: dict | None) -> ResultsLocation:
    if isinstance(where, ResultsLocation):
        return where
    return ResultsLocation(where, storage_options=storage_options)


def write_result(where: Any, name: str, ds: xr.Dataset, *, storage_options: dict | None = None) -> None:
    """Write ``ds`` as the complete result ``name`` at ``where`` (a store path/URL or a
    :class:`ResultsLocation`), replacing it.

    On a local store the new version is written beside the old one (``results/.<name>.new-*``),
    marked complete, and swapped in (one atomic ``renameat2`` exchange on Linux, else two
    renames) under the result's exclusive read lock (readers take it shared), so a reader always sees the last complete version and a
    kill at any moment leaves it in place. A failed write removes what it wrote and raises
    StoreWriteError. On other stores the group is rewritten in place: a kill mid-write leaves it
    incomplete (recomputed by the next analysis) and a reader during the rewrite may find it
    absent.
    """
    import zarr

    loc = _as_location(where, storage_options)
    ds = _fixed_width(ds)
    digest = _attrs_digest(ds)
    ds = netcdf_safe(ds)  # plain xarray reads values netCDF can hold (to_netcdf works)
    ds.attrs = {**ds.attrs, COMPLETE_ATTR: False, ATTRS_HASH: digest}
    tag = uuid.uuid4().hex[:8]
    group = _group(name) if loc.local is None else _group(f".{name}.new-{tag}")
    new = None if loc.local is None else loc.local / group
    try:
        with warnings.catch_warnings():
            # fixed-width unicode (labels, layer names) has no zarr v3 spec yet; we read it back ourselves
            warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
            ds.to_zarr(loc.root, group=group, mode="w", consolidated=False, zarr_format=3,
                       storage_options=loc.storage_options, encoding=_encoding(ds),
                       write_empty_chunks=True)  # every chunk exists: a missing one is damage
        grp = zarr.open_group(loc.root, path=group, mode="r+", storage_options=loc.storage_options)
        grp.attrs[COMPLETE_ATTR] = True
        if loc.local is not None:
            results = loc.local / RESULTS_GROUP
            final, old = results / name, results / f".{name}.old-{tag}"
            from .store._io import exchange

            with _flock(loc.lock_path(name), exclusive=True, create=True):
                if final.exists() and exchange(new, final):
                    old = new  # the old version now sits at the new one's name
                else:
                    if final.exists():
                        os.replace(final, old)
                    try:
                        os.replace(new, final)
                    except BaseException:
                        if old.exists() and not final.exists():
                            os.replace(old, final)
                        raise
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        if new is not None:
            shutil.rmtree(new, ignore_errors=True)
        if isinstance(exc, StoreWriteError):
            raise
        if isinstance(exc, OSError) or _read_only_error(exc):
            raise _write_error(exc, loc, name) from exc
        raise




class ResultsView(Mapping):
    """``name -> xr.Dataset`` (loaded into memory) over the complete results at a location.

    A group whose ``grokscope_complete`` attribute is not true (an analysis killed while
    writing it on a non-local store) is not listed: the engine recomputes it. On a local store
    each read holds the result's shared lock, so a concurrent rewrite is never seen half-done.
    """

    def __init__(self, loc: ResultsLocation) -> None:
        self.location = loc

    def _complete(self, name: str) -> bool:
        from .store import _io

        doc = _io.read_json(self.location.store(), f"{_group(name)}/zarr.json", what=f"result {name!r}")
        return bool(doc and doc.get("attributes", {}).get(COMPLETE_ATTR, False))

    def _listed(self) -> list[str]:
        from .store import _io

        loc = self.location
        if loc.results_dir is not None:
            try:
                return [n for n in os.listdir(loc.results_dir) if (loc.results_dir / n).is_dir()]
            except OSError:
                return []
        store = loc.store()
        if not _io.exists(store, f"{RESULTS_GROUP}/zarr.json"):
            return []
        return _io.list_dir(store, RESULTS_GROUP)

    def _names(self) -> list[str]:
        return sorted(n for n in self._listed() if not n.startswith(".") and self._has(n))

    def _has(self, name: str) -> bool:
        if self.location.local is None:
            return self._complete(name)
        with self._read_lock(name):
            return self._complete(name)

    def _read_lock(self, name: str) -> Any:
        if self.location.local is None or "/" in name or name.startswith("."):
            return contextlib.nullcontext()
        return _flock(self.location.lock_path(name), exclusive=False, create=False)

    def _load(self, name: str) -> xr.Dataset:
        if not self._complete(name):
            raise KeyError(
                f"no result {name!r} in {self.location.label} (have {self._names()}); compute "
                "it with grokscope.analyze"
            )
        import zarr

        try:
            ds = xr.open_zarr(self.location.store(), group=_group(name), consolidated=False,
                              zarr_format=3).load()
        except (ValueError, RuntimeError, OSError, TypeError, EOFError, KeyError,
                zarr.errors.BaseZarrError) as exc:
            raise CorruptStoreError(
                f"result {name!r} in {self.location.label} is damaged ({type(exc).__name__}: "
                f"{exc}); compute it again with gs.analyze(..., recompute=True) or `grokscope "
                "analyze --recompute`, which replaces it"
            ) from exc
        ds.attrs.pop(COMPLETE_ATTR, None)
        stored = ds.attrs.pop(ATTRS_HASH, None)  # results written before hashes have none
        if stored is not None:
            self._check_chunks(name)
        if stored is not None and stored != _attrs_digest(ds):
            raise CorruptStoreError(
                f"result {name!r} in {self.location.label} is damaged: its attributes (parameters, "
                "labels, units) changed after it was written; compute it again with "
                "gs.analyze(..., recompute=True) or `grokscope analyze --recompute`, which "
                "replaces it"
            )
        return netcdf_safe(ds)  # results stored before JSON-encoded attributes too

    def _check_chunks(self, name: str) -> None:
        """Every chunk of every array of the result is stored (they are all written, NaN ones
        included): a missing chunk would otherwise read as its fill value."""
        import zarr

        grp = zarr.open_group(self.location.store(), path=_group(name), mode="r")
        for aname, arr in grp.arrays():
            if arr.size and arr.nchunks_initialized != arr.nchunks:
                raise CorruptStoreError(
                    f"result {name!r} in {self.location.label} is damaged: array {aname!r} has "
                    f"{arr.nchunks_initialized} of its {arr.nchunks} chunks; compute it again "
                    "with gs.analyze(..., recompute=True) or `grokscope analyze --recompute`"
                )

    def __getitem__(self, name: str) -> xr.Dataset:
        if self.location.local is not None:
            with self._read_lock(name):
                return self._load(name)
        for attempt in range(4):  # no locks on object stores: retry a read torn by a rewrite
            try:
                return self._load(name)
            except CorruptStoreError:
                if attempt == 3:
                    raise
                time.sleep(0.25 * (attempt + 1))
        raise AssertionError("unreachable")

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._listed() and self._has(name)

    def __repr__(self) -> str:
        return f"<results: {self._names()}>"


def read_result(where: Any, name: str, *, storage_options: dict | None = None) -> xr.Dataset | None:
    """The stored result ``name`` at ``where`` (a store path/URL or a ResultsLocation, loaded
    into memory), or None when absent or incomplete."""
    return ResultsView(_as_location(where, storage_options)).get(name)


def list_results(where: Any, *, storage_options: dict | None = None) -> list[str]:
    """Names of the complete result groups stored at ``where``."""
    return list(ResultsView(_as_location(where, storage_options)))
