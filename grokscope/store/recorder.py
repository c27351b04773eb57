"""The writer: :class:`Recorder` appends committed checkpoints to a trajectory store.

Commit protocol (see :mod:`grokscope.store.schema`): arrays are pre-allocated with a capacity
along ``step`` that doubles when full (a metadata-only resize, O(log n) times). One record
writes each tensor's chunk (raw little-endian bytes and their CRC32C straight to the chunk key
when uncompressed, exactly as zarr's ``bytes`` + ``crc32c`` codecs encode it), every scalar
array's current chunk (metrics, ``nonfinite``, ``step``), the
resume state when given, and finally the root ``zarr.json`` carrying the committed count.
Every write is atomic, so a killed writer leaves the store at its last commit; readers use
only the first ``count`` rows.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch import nn

from ..data import Data, as_data
from ..errors import (
    ConfigError,
    CorruptStoreError,
    GrokscopeError,
    ModelMismatchError,
    NotAStoreError,
    StepOrderError,
    StoreError,
    StoreWriteError,
)
from . import _durable, _io, _scalar_tail, _shards, schema
from .schedule import Schedule

_COMMITS = ("count", "consolidated")

#: rows per shard of a new store's tensors (see :class:`Recorder`, ``steps_per_shard``)
DEFAULT_STEPS_PER_SHARD = 128
#: environment variable naming the compaction kill point to stop at (tests only: the crash
#: tests kill a writer at every numbered point inside a compaction)
KILL_ENV = "GROKSCOPE_TEST_COMPACTION_KILL"
_kill_hits = 0


def _kill_point() -> None:
    """Exit the process at once (``os._exit(77)``) when this is the ``$GROKSCOPE_TEST_COMPACTION_
    KILL``-th kill point reached in it (tests only; nothing happens when the variable is unset)."""
    global _kill_hits
    want = os.environ.get(KILL_ENV)
    if not want:
        return
    _kill_hits += 1
    if _kill_hits == int(want):
        os._exit(77)


def _shard_settings(steps_per_shard: Any, compact_every: Any) -> dict | None:
    """``{"steps_per_shard", "compact_every"}`` checked, or None (per-step layout)."""
    limit = schema.MAX_STEPS_PER_SHARD
    for name, v in (("steps_per_shard", steps_per_shard), ("compact_every", compact_every)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | np.integer)
                              or not 1 <= v <= limit):
            raise ConfigError(f"{name}={v!r}: use an integer from 1 to {limit} (or None)")
    if steps_per_shard is None:
        return None
    n = int(steps_per_shard)
    return {"steps_per_shard": n,
            "compact_every": n if compact_every is None else int(compact_every)}


# ---------------------------------------------------------------------------- helpers
def _jsonable(obj: Any, where: str) -> Any:
    """``obj`` as plain JSON types (numpy scalars, tuples, Paths, dtypes converted)."""
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.dtype | Path):
        return str(obj)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ConfigError(f"{where}: keys must be strings, got {k!r}")
            out[k] = _jsonable(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, list | tuple):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise ConfigError(
        f"{where} holds a {type(obj).__name__}, which cannot be stored as JSON; pass plain "
        "numbers, strings, lists and dicts"
    )


def _model_spec(model: nn.Module, kwargs: dict | None = None) -> dict:
    from ..models import spec_of

    return spec_of(model, kwargs)


def _wants_program(spec: dict, export_program: bool | None) -> bool:
    """Whether to store a torch.export program: always/never when told; by default for every
    model except grokscope's own registered ones (rebuilt by name anywhere)."""
    if export_program is not None:
        return bool(export_program)
    from ..models import is_builtin

    return not ("name" in spec and is_builtin(spec["name"]))


def _describe(model: nn.Module, data: Data) -> dict | None:
    """The model's anatomy (roles) as a JSON-able dict, or None."""
    try:
        from ..anatomy import describe
    except ImportError:  # pragma: no cover - the anatomy ships with grokscope
        return None
    return describe(model, data)


def _tensor_numpy(t: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """A C-contiguous little-endian numpy copy/view of ``t`` in ``dtype``."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    a = t.numpy() if not t.is_conj() else t.resolve_conj().numpy()
    return np.ascontiguousarray(a, dtype=dtype.newbyteorder("<"))


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"expected a torch nn.Module (the model whose weights are recorded), got "
            f"{type(model).__name__}"
        )
    return {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def mismatch_message(
    expected: Mapping[str, tuple[int, ...]], got: Mapping[str, tuple[int, ...]], what: str
) -> str | None:
    """A message naming missing/unexpected keys and shape differences, or None when equal."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [
        f"{k}: stored {tuple(expected[k])} vs model {tuple(got[k])}"
        for k in expected
        if k in got and tuple(expected[k]) != tuple(got[k])
    ]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if missing:
        parts.append(f"missing keys {missing}")
    if unexpected:
        parts.append(f"unexpected keys {unexpected}")
    if shapes:
        parts.append("shape differences [" + "; ".join(shapes) + "]")
    return f"{what}: " + ", ".join(parts)


_GROUP_DOC = {"zarr_format": 3, "node_type": "group", "attributes": {}}


class _Scalar:
    """A root array of one value per row, written chunk by chunk from an in-memory buffer."""

    def __init__(self, name: str, array: zarr.Array) -> None:
        self.name = name
        self.array = array
        self.dtype = np.dtype(array.dtype).newbyteorder("<")
        self.fill = schema.fill_value(self.dtype)
        self.chunk = -1
        self.buf = np.full(schema.SCALAR_CHUNK, self.fill, dtype=self.dtype)
        self.raw, self.checksummed = _io.codec_layout(array)
        if not self.raw:
            raise CorruptStoreError(
                f"scalar array {name!r} has codecs {array.metadata.codecs} that grokscope does not "
                "write; the store is damaged or was not written by grokscope: restore it from a "
                "copy or re-record the run"
            )

    def key(self, chunk: int) -> str:
        return f"{self.name}/{self.array.metadata.encode_chunk_key((chunk,))}"

    def load(self, store: Any, row: int) -> None:
        """Load the chunk holding ``row``; entries at and after ``row`` reset to the fill.

        The committed entries are verified (a missing chunk of a checksummed array, a length
        or checksum mismatch: CorruptStoreError), so a re-opened writer never rewrites damaged
        committed values as if they were fill.
        """
        chunk = row // schema.SCALAR_CHUNK
        self.buf = np.full(schema.SCALAR_CHUNK, self.fill, dtype=self.dtype)
        start = chunk * schema.SCALAR_CHUNK
        if row > start:
            raw = _io.get_bytes(store, self.key(chunk))
            if raw is None and self.checksummed:
                raise self._damaged(chunk, "the chunk of committed rows is missing")
            if raw is not None:
                n = self.buf.nbytes
                if len(raw) != n + (_io.CRC_NBYTES if self.checksummed else 0):
                    raise self._damaged(chunk, f"the chunk holds {len(raw)} bytes")
                if self.checksummed and not _io.check_crc(raw[:n], raw[n:]):
                    raise self._damaged(chunk, "its CRC32C checksum does not match its bytes")
                self.buf[: row - start] = np.frombuffer(raw, dtype=self.dtype, count=row - start)
        self.chunk = chunk

    def _damaged(self, chunk: int, detail: str) -> CorruptStoreError:
        return CorruptStoreError(
            f"array {self.name!r} is damaged at rows {chunk * schema.SCALAR_CHUNK}.. (chunk "
            f"{chunk}: {detail}); restore the store from a copy or re-record the run (a writer "
            "does not repair committed data)"
        )

    def start_empty(self, store: Any, row: int) -> None:
        """A new array whose first value is at ``row``: write the fill chunks before it (so
        every chunk of a committed row exists) and start a buffer of fill at ``row``'s chunk."""
        chunk = row // schema.SCALAR_CHUNK
        fill = memoryview(np.full(schema.SCALAR_CHUNK, self.fill, dtype=self.dtype)).cast("B")
        for c in range(chunk):
            _io.put_bytes(store, self.key(c), fill, checksum=self.checksummed)
        self.buf = np.full(schema.SCALAR_CHUNK, self.fill, dtype=self.dtype)
        self.chunk = chunk

    def set(self, store: Any, row: int, value: Any) -> None:
        chunk = row // schema.SCALAR_CHUNK
        if chunk != self.chunk:
            self.load(store, row)
        self.buf[row - chunk * schema.SCALAR_CHUNK] = value
        _io.put_bytes(store, self.key(chunk), memoryview(self.buf).cast("B"),
                      checksum=self.checksummed)

    def reset(self, row: int) -> None:
        if row // schema.SCALAR_CHUNK == self.chunk:
            self.buf[row - self.chunk * schema.SCALAR_CHUNK] = self.fill

    def flush(self, store: Any, start: int, values: np.ndarray) -> None:
        """Write ``values`` (rows ``start..start+len-1``, the scalar tail being moved into the
        array: :mod:`grokscope.store._scalar_tail`) into their chunks, each touched chunk once
        (atomically, earlier rows kept); the buffer then holds the chunk of the row after them."""
        size = schema.SCALAR_CHUNK
        row, i, n = start, 0, len(values)
        while i < n:
            chunk = row // size
            if chunk != self.chunk:
                self.load(store, row)  # the chunk's earlier rows (none at a chunk boundary)
            lo = chunk * size
            k = min(n - i, lo + size - row)
            self.buf[row - lo:row - lo + k] = values[i:i + k]
            _io.put_bytes(store, self.key(chunk), memoryview(self.buf).cast("B"),
                          checksum=self.checksummed)
            row, i = row + k, i + k
        if row // size != self.chunk:
            self.buf = np.full(size, self.fill, dtype=self.dtype)
            self.chunk = row // size


class _RowTail:
    """The row files of a sharded store (root metadata ``shards.tail == "rows"``): each
    uncompacted row's sharded tensors in one file, ``_tail/rows/c.<row>.0`` (a chunk of the
    uint8 array ``_tail/rows``, ``(rows, n)``), each tensor's stored chunk (raw bytes and their
    CRC32C) at its ``entries[key] = (offset, nbytes)``, one after the other in the params'
    order. One file per committed step instead of one per tensor."""

    def __init__(self, array: zarr.Array, entries: dict[str, tuple[int, int]]) -> None:
        self.array = array
        self.entries = dict(sorted(entries.items(), key=lambda kv: kv[1][0]))
        self.path = array.path
        self.nbytes = int(array.shape[1])

    def key(self, row: int) -> str:
        return f"{self.path}/{self.array.metadata.encode_chunk_key((row, 0))}"


class _Param:
    """A root array holding one tensor per row.

    Per-step layout (``layout`` None): one chunk per row in the array itself. Sharded layout
    (:mod:`grokscope.store._shards`): the array holds shards of ``layout.steps`` rows up to
    the compacted boundary; each new row is first committed as one chunk of the per-step
    ``tail`` array (``_tail/<name>``, same codecs, absolute row numbers).
    """

    def __init__(self, name: str, array: zarr.Array, tail: zarr.Array | None = None) -> None:
        self.name = name
        self.array = array
        self.shape = tuple(array.shape[1:])
        self.dtype = np.dtype(array.dtype).newbyteorder("<")
        self.layout = _shards.layout_of(array)
        self.tail = tail
        #: the row files holding this sharded tensor's uncompacted rows (instead of ``tail``)
        self.row_tail: _RowTail | None = None
        if self.layout is not None:
            self.raw, self.checksummed = True, self.layout.checksummed
        else:
            self.raw, self.checksummed = _io.codec_layout(array)
        self._zeros = (0,) * len(self.shape)

    @property
    def rows_array(self) -> zarr.Array:
        """The array each new row is written to (the tail when sharded)."""
        if self.row_tail is not None:
            return self.row_tail.array
        return self.tail if self.layout is not None else self.array

    def row_key(self, row: int) -> str:
        """The key of row ``row``'s per-step chunk (its row file's, see :class:`_RowTail`)."""
        if self.row_tail is not None:
            return self.row_tail.key(row)
        arr = self.rows_array
        return f"{arr.path}/{arr.metadata.encode_chunk_key((row, *self._zeros))}"

    def shard_key(self, shard: int) -> str:
        return f"{self.name}/{self.array.metadata.encode_chunk_key((shard, *self._zeros))}"

    def write(self, store: Any, row: int, a: np.ndarray) -> None:
        if self.raw:
            _io.put_bytes(store, self.row_key(row), memoryview(a.reshape(-1)).cast("B"),
                          checksum=self.checksummed)
        else:
            self.array[row] = a


# ---------------------------------------------------------------------------- Recorder
def _writer_lock(path: Any) -> Any:
    """An exclusive lock beside a local store (``.<name>.lock``), held while a Recorder is open.

    Two writers on one store would each commit from their own count and silently drop the
    other's steps; the second one gets a StoreError instead. The OS releases the lock when the
    process dies, so a killed writer never blocks the next. Remote stores (URLs) take no lock.

    A holder may delete the lock file (:func:`_drop_lock_file`, for targets it refused), so a
    lock counts only when the file locked is still the one at the path; otherwise the newer
    file is locked instead.
    """
    import fcntl

    local = _io._local_path(path)
    if local is None:
        return None
    local = local.expanduser().absolute()
    local.parent.mkdir(parents=True, exist_ok=True)
    lock_path = local.with_name(f".{local.name}.lock")
    while True:
        fh = open(lock_path, "a+")  # noqa: SIM115 (held open)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise StoreError(
                f"{local} is already being written by another Recorder (another process, or an "
                "unclosed Recorder in this one); close it first, or record into another path"
            ) from None
        try:
            st = os.stat(lock_path)
            held = os.fstat(fh.fileno())
            if (st.st_ino, st.st_dev) == (held.st_ino, held.st_dev):
                return fh
        except FileNotFoundError:
            pass
        fh.close()  # the file was deleted by its holder after we opened it: lock the new one


def _drop_lock_file(fh: Any) -> None:
    """Delete a held lock file, then release it (no other writer can be using that file)."""
    try:
        os.unlink(fh.name)
    except OSError:
        pass
    fh.close()


def remove_lock_file(path: Any) -> None:
    """Delete the lock file beside ``path`` when no writer holds it (a path grokscope wrote
    into and then removed, or never used); a held lock is left alone."""
    local = _io._local_path(path)
    if local is None:
        return
    local = local.expanduser().absolute()
    if not local.with_name(f".{local.name}.lock").is_file():
        return
    try:
        fh = _writer_lock(path)
    except (StoreError, OSError):
        return
    if fh is not None:
        _drop_lock_file(fh)


class Recorder:
    """Record a training trajectory into a zarr store, one committed checkpoint at a time.

    Parameters
    ----------
    path : str or PathLike
        Local folder, ``file://`` URL or any fsspec URL (``memory://run``, ...).
    model : nn.Module
        The model whose ``state_dict()`` is recorded (its keys and shapes fix the store's
        arrays). Its spec (``grokscope.models.spec_of``) goes into ``config["model"]``.
    data : Data, tuple, dict or None
        The train/test split, stored once in the ``data/`` group (its task spec becomes
        ``config["task"]``). A ``(x_train, y_train, x_test, y_test)`` tuple or a dict with
        those keys is made a :class:`~grokscope.data.Data`.
    config : dict, optional
        JSON-able run settings (seeds, optimizer, hyper-parameters); kept as ``run.config``.
    schedule : Schedule, optional
        Which steps :meth:`due` selects; default ``Schedule()``.
    compression : {None, "lz4"}
        None (default, fastest) or Blosc lz4 with bit-shuffle for tensors.
    overwrite : bool
        Delete an existing store at ``path`` and start over. Otherwise an existing store is
        re-opened and appended to (its uncommitted tail trimmed).
    storage_options : dict, optional
        Passed to fsspec for URLs.
    commit : {"count", "consolidated"}
        How a record is published: ``"count"`` (default) rewrites the root attributes with the
        committed row count; ``"consolidated"`` also writes consolidated metadata whose shapes
        are the committed length (so plain ``xr.open_zarr`` sees exactly the committed prefix
        while recording, at some extra cost per step).
    checksum : bool
        End every array's codec chain with zarr's ``crc32c`` codec (default), so every read
        (grokscope's and plain zarr's) detects changed, truncated or missing chunks. False
        writes stores as grokscope did before checksums (for benchmarks and compatibility
        tests). A re-opened store keeps the choice it was created with.
    steps_per_shard : int or None
        Compact committed steps into zarr v3 shards of this many steps per tensor (default
        128; see docs/store.md, "Files per step"): each step is first committed as one file
        per tensor, and every ``compact_every`` steps, and on :meth:`close`, the committed
        steps move into one shard file per tensor (atomically: a kill at any moment loses no
        committed step). A closed 1000-step run then holds 8 files per tensor instead of
        1000. None: the per-step layout (one file per tensor per step, as stores written
        before). Uncompressed stores with the ``"count"`` commit only: ``compression="lz4"``
        and ``commit="consolidated"`` keep the per-step layout. A re-opened store keeps the
        layout and settings it was created with (stored in its metadata).
    compact_every : int or None
        Compact whenever this many committed steps beyond the compacted ones fill whole
        shards (default: ``steps_per_shard``, so every step is copied once and fewer than
        ``2 * steps_per_shard`` steps per tensor are single files while recording).
    consolidate : bool
        Write zarr consolidated metadata into the root on :meth:`close` (after trimming).
        Default False: the root's consolidated metadata would go stale as soon as an analysis
        adds ``results/<name>`` (zarr then refuses ``xr.open_zarr(path,
        group="results/<name>")``: "not found in consolidated metadata"), and the results
        writer never rewrites the root (it holds the commit). Without it plain
        ``xr.open_zarr(path)`` reads each array's own metadata (measured ~5-10% slower to
        open, 200 tensors: ~150 ms instead of ~140 ms; xarray says so in a RuntimeWarning
        unless given ``consolidated=False``). A ``commit="consolidated"`` recording drops its
        consolidated metadata on close too.
    model_kwargs : dict, optional
        The model's constructor arguments (JSON-able), stored with its class as
        ``config["model"] = {"factory": "module:qualname", "kwargs": model_kwargs}``, so a
        process that trusts the code can rebuild it (``trust_code=True``).
    export_program : bool or None
        Keep the architecture in the store as a ``torch.export`` program
        (:mod:`grokscope.store.portable`; traced on a few training inputs when the store is
        created), so any process rebuilds the model without its code. None (default): for
        every model except grokscope's own registered ones, which are rebuilt by name. When
        the model cannot be exported (e.g. data-dependent control flow) one warning says why
        and the class spec is kept.
    watch : bool or dict, optional
        Follow the store with :func:`grokscope.watch` while recording: True (defaults), or a
        dict of its options plus ``"mode"``: ``"thread"`` (default, a background thread of
        this process) or ``"process"`` (a ``grokscope watch`` subprocess). It starts when
        the Recorder opens and :meth:`close` waits for its final pass; a thread's
        ``"close_wait"`` (True, False or seconds) bounds that wait, the pass then finishing in
        the background (before the interpreter exits); ``rec.watcher.join()`` waits for it
        (see docs/watch.md).

    Notes
    -----
    When the store is created, the model's anatomy (:func:`grokscope.anatomy.describe`:
    which modules are the input, hidden layers, linear maps, embedding ...) is detected on
    the original model and stored as ``config["anatomy"]``.

    Examples
    --------
    >>> with Recorder("run.zarr", model, data, config={"lr": 1e-3}) as rec:  # doctest: +SKIP
    ...     for step in range(10_000):
    ...         train_step()
    ...         if rec.due(step):
    ...             rec.record(step, metrics={"train_loss": loss}, optimizer=opt)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        model: nn.Module,
        data: Data | None,
        *,
        config: dict | None = None,
        schedule: Schedule | None = None,
        compression: str | None = None,
        overwrite: bool = False,
        storage_options: dict | None = None,
        commit: str = "count",
        consolidate: bool = False,
        model_kwargs: dict | None = None,
        export_program: bool | None = None,
        checksum: bool = True,
        steps_per_shard: int | None = DEFAULT_STEPS_PER_SHARD,
        compact_every: int | None = None,
        watch: bool | dict | None = None,
    ) -> None:
        if compression not in (None, "lz4"):
            raise ConfigError(f"compression={compression!r}: use None or 'lz4'")
        if commit not in _COMMITS:
            raise ConfigError(f"commit={commit!r}: use one of {_COMMITS}")
        data = as_data(data)
        if schedule is not None and not isinstance(schedule, Schedule):
            raise ConfigError(f"schedule must be a Schedule, got {type(schedule).__name__}")
        self._shard_settings = _shard_settings(steps_per_shard, compact_every)
        if compression is not None or commit != "count":
            self._shard_settings = None  # per-step layout (see the docstring)
        self._compacted = 0
        #: sharded stores: the step/nonfinite/metric values of rows ``_tail_start..count-1``,
        #: committed in the root document (grokscope.store._scalar_tail); None: per-step layout
        self._tail: dict[str, np.ndarray] | None = None
        self._tail_start = 0
        self._row_tail: _RowTail | None = None
        #: the row files this writer committed and has not compacted yet, as written (when
        #: they fit ROW_CACHE_NBYTES), so a compaction does not read them back
        self._row_cache: dict[int, bytes] = {}
        self.path = path
        self.schedule = schedule or Schedule()
        self.compression = compression
        self.commit_mode = commit
        self.consolidate = consolidate
        self.checksum = bool(checksum)
        self._model = model
        sd = _state_dict(model)
        if model_kwargs is not None and not isinstance(model_kwargs, dict):
            raise ConfigError(f"model_kwargs must be a dict, got {type(model_kwargs).__name__}")
        self._model_kwargs = model_kwargs
        self._export_program = export_program
        self._store = _io.open_store(path, read_only=False, storage_options=storage_options)
        if isinstance(self._store, _io.AtomicLocalStore):  # synced before durable commits
            self._store.written = set()
        self._where = _io.store_label(self._store)
        #: when the last durable fallback root was written (time.monotonic), and the resume
        #: state it names (kept on disk until a newer fallback names another)
        self._fallback_at = time.monotonic()
        self._fallback_resume: str | None = None
        self._lock = _writer_lock(path)
        self._closed = False
        self._params: dict[str, _Param] = {}
        self._scalars: dict[str, _Scalar] = {}
        self._metric_names: list[str] = []
        self._static_nodes: dict[str, dict] = {}
        self._warned_nonfinite = False
        try:
            root = self._existing_root(overwrite)
            if root is None:
                self._create(sd, data, config)
            else:
                self._reopen(root, sd, data, config)
        except BaseException as exc:
            self._release_lock(drop=True)  # a refused target keeps no lock file of ours
            if not isinstance(exc, OSError):
                raise
            raise StoreWriteError(
                f"could not set up the store at {self._where}: {exc}. Check free space and "
                "permissions"
            ) from exc
        self._watcher = None
        #: the watcher started by ``watch=`` (None without one); kept after :meth:`close`, so
        #: ``rec.watcher.join()`` can wait for a final pass that ``close_wait`` left running
        self.watcher = None
        if watch:  # a live analysis of this store (grokscope.watch), stopped by close()
            from ..watch import start_watcher

            self._watcher = self.watcher = start_watcher(path, watch,
                                                         storage_options=storage_options)

    # ------------------------------------------------------------------ open / create
    def _existing_root(self, overwrite: bool) -> dict | None:
        store = self._store
        root = None if overwrite else self._recovered_root()
        if root is None:
            root = _io.read_json(store, "zarr.json", what="the root metadata document")
        if root is not None and not isinstance(root.get("attributes", {}), dict):
            raise CorruptStoreError(
                f"the root metadata of {self._where} is damaged (its attributes are not an "
                "object), so grokscope cannot tell whether it wrote it and will not touch it; "
                "restore it from a copy or record into another path"
            )
        is_ours = root is not None and schema.SCHEMA_KEY in root.get("attributes", {})
        if root is not None and not is_ours:
            raise NotAStoreError(
                f"{self._where} holds a zarr group that is not a grokscope store; choose another "
                "path (grokscope will not delete it, even with overwrite=True)"
            )
        if root is None:
            leftovers = _io.unfinished_store_files(store)
            if leftovers:  # killed before its first commit: only our temp files, no data
                if not overwrite:
                    warnings.warn(
                        f"{self._where} is an unfinished grokscope store (a writer was stopped "
                        "before its first commit; it holds no data, only temporary files): "
                        "starting the run in it afresh", UserWarning, stacklevel=3,
                    )
                _io.clear_unfinished_store(store, leftovers)
            local_file = (isinstance(store, _io.LocalStore) and store.root.exists()
                          and not store.root.is_dir())
            if local_file or _io.list_dir(store, ""):  # any store kind: a local folder or a URL prefix
                raise ConfigError(
                    f"{self._where} exists and is not a grokscope store; choose another path "
                    "(grokscope will not delete it, even with overwrite=True)"
                )
        if root is not None and overwrite:
            return None  # _create replaces the root document first, then deletes the rest
        if root is not None:
            schema.check_version(root["attributes"], self._where)
            meta = schema.check_meta(root["attributes"].get(schema.META_KEY), self._where)
            if meta["commit"]["count"] == 0:
                return None  # nothing committed: start afresh
        return root

    def _recovered_root(self) -> dict | None:
        """After a power cut: when the root document is empty or not a JSON object (what a
        power cut leaves) and the durable fallback (grokscope.store._durable) is valid, restore the
        root from the fallback (durably, with a warning) and return it; else None (the
        caller reads the root as before, and raises as before)."""
        store = self._store
        if not isinstance(store, _io.AtomicLocalStore):
            return None
        try:
            _doc, what = _durable.root_problem(store)
        except GrokscopeError:
            return None
        if what is None:
            return None
        fallback = _durable.read_fallback(store, self._where)
        if fallback is None:
            return None
        warnings.warn(_durable.recovery_message(self._where, what, fallback, writer=True),
                      UserWarning, stacklevel=4)
        raw = json.dumps(fallback, allow_nan=True, separators=(",", ":")).encode()
        _io.put_file(Path(store.root) / "zarr.json", raw, durable=True)
        resume = fallback["attributes"][schema.META_KEY]["commit"].get("resume")
        self._fallback_resume = resume["key"] if resume else None
        return fallback

    def _new_array(self, name: str, shape: tuple, chunks: tuple, dtype: np.dtype, dims: tuple,
                   *, compress: bool, shards: tuple | None = None,
                   one_file_per_chunk: bool = False) -> zarr.Array:
        """A new array; ``shards`` (a shard shape) makes it sharded (grokscope.store._shards:
        chunk keys ``c.<k>.0...``, one file per shard, index ``bytes -> crc32c`` at the end)."""
        compressors: list = []
        if compress:
            compressors.append(zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"))
        extra: dict[str, Any] = {}
        if shards is not None or one_file_per_chunk:
            extra["chunk_key_encoding"] = _shards.KEY_ENCODING
        if shards is not None:
            extra["shards"] = shards
        return zarr.create_array(
            store=self._store,
            name=name,
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            fill_value=schema.fill_value(dtype),
            dimension_names=dims,
            compressors=self._codecs(*compressors),
            filters=None,
            zarr_format=3,
            overwrite=True,
            write_data=False,
            **extra,
        )

    def _new_tail(self, key: str, shape: tuple, dtype: np.dtype, dims: tuple | None,
                  rows: int | None = None) -> zarr.Array:
        """The per-step array ``_tail/<key>`` of a sharded tensor (rows not yet compacted)."""
        rows = self._capacity if rows is None else rows
        return self._new_array(f"{schema.TAIL_GROUP}/{key}", (rows, *shape),
                               (1, *shape), dtype, dims, compress=False, one_file_per_chunk=True)

    def _new_row_tail(self, layouts: dict[str, _shards.ShardLayout], rows: int) -> _RowTail:
        """A new, empty row-file array ``_tail/rows`` for the sharded tensors ``layouts``."""
        entries = _shards.row_entries(layouts)
        nbytes = sum(n for _, n in entries.values())
        arr = zarr.create_array(
            store=self._store, name=f"{schema.TAIL_GROUP}/{_shards.ROWS_NAME}",
            shape=(rows, nbytes), chunks=(1, nbytes), dtype="uint8", fill_value=0,
            dimension_names=(schema.STEP, "byte"), compressors=(), filters=None,
            zarr_format=3, overwrite=True, write_data=False,
            chunk_key_encoding=_shards.KEY_ENCODING,
            attributes={_shards.ROWS_ATTR: [[k, off, n] for k, (off, n) in entries.items()]},
        )
        return _RowTail(arr, entries)

    def _attach_row_tail(self, row_tail: _RowTail) -> None:
        self._row_tail = row_tail
        for key in row_tail.entries:
            self._params[key].row_tail = row_tail

    def _codecs(self, *compressors: Any) -> tuple:
        """``compressors`` followed by the ``crc32c`` codec when checksums are on (bytes ->
        [blosc ->] crc32c: the checksum covers the stored, possibly compressed, bytes)."""
        return (*compressors, zarr.codecs.Crc32cCodec()) if self.checksum else compressors

    def _create(self, sd: dict[str, torch.Tensor], data: Data | None, config: dict | None) -> None:
        cfg = dict(_jsonable(config or {}, "config"))
        spec = _jsonable(_model_spec(self._model, self._model_kwargs), "model spec")
        cfg.setdefault("model", spec)
        if data is not None and data.task is not None:
            cfg.setdefault("task", _jsonable(data.task, "data.task"))
        cfg.setdefault("schedule", self.schedule.to_dict())
        if data is not None and "anatomy" not in cfg:
            cfg["anatomy"] = _jsonable(_describe(self._model, data), "anatomy")
        program, export_error = self._export(cfg["model"], data)
        params = {}
        for key, t in sd.items():
            schema.check_param_name(key)
            params[key] = {
                "shape": list(t.shape),
                "dtype": schema.storage_dtype(t.dtype).name,
                "source_dtype": str(t.dtype),
            }
        self._meta = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": schema.package_versions(),
            "config": cfg,
            "params": params,
            "metrics": [],
            "compression": self.compression,
            "commit": {"count": 0, "last_step": None, "resume": None},
            "program": None,
            schema.DIMS_KEY: schema.DIMS_IDENTIFIER,
        }
        if self._shard_settings is not None:
            self._meta[schema.SHARDS_KEY] = dict(self._shard_settings)
            self._meta["commit"]["compacted"] = 0
        if export_error is not None:
            self._meta["export_error"] = export_error
        # the root document first (count 0, no arrays yet), so a crash during set-up leaves a
        # store that a new Recorder recognises and restarts, and readers see an empty run
        self._write_root({**self._meta, "params": {}, "initialized": False})
        for name in _io.list_dir(self._store, ""):
            if name != "zarr.json":
                _io.delete_entry(self._store, name)
        self._capacity = schema.INITIAL_CAPACITY
        dims = schema.tensor_dims({k: len(info["shape"]) for k, info in params.items()})
        if self._shard_settings is not None:
            _io.write_json(self._store, f"{schema.TAIL_GROUP}/zarr.json", _GROUP_DOC)
        for key, info in params.items():
            shape = tuple(info["shape"])
            dtype = np.dtype(info["dtype"])
            if self._shard_settings is not None and all(n > 0 for n in shape):
                arr = self._new_array(key, (0, *shape), (1, *shape), dtype, dims[key],
                                      compress=False,
                                      shards=(self._shard_settings["steps_per_shard"], *shape))
                self._params[key] = _Param(key, arr)  # its rows go to the row files
                continue
            arr = self._new_array(
                key, (self._capacity, *shape), (1, *shape), dtype,
                dims[key], compress=self.compression is not None,
            )
            self._params[key] = _Param(key, arr)
        if self._shard_settings is not None:
            self._tail = {}
        layouts = {k: p.layout for k, p in self._params.items() if p.layout is not None}
        if layouts:  # one row file per step for every sharded tensor
            self._shard_settings = {**self._shard_settings, "tail": _shards.TAIL_ROWS}
            self._meta[schema.SHARDS_KEY] = dict(self._shard_settings)
            self._attach_row_tail(self._new_row_tail(layouts, self._capacity))
        for name, dtype in ((schema.STEP, "int64"), (schema.NONFINITE, "int64")):
            self._add_scalar(name, np.dtype(dtype))
        if self._tail is not None:
            self._tail = {n: np.empty(0, dtype=sc.dtype) for n, sc in self._scalars.items()}
        if data is not None:
            self._write_data(data)
        if program is not None:
            self._meta["program"] = self._write_program(program)
        self._count = 0
        self._last_step: int | None = None
        self._resume: dict | None = None
        self._collect_static_nodes()
        # durable from the start: a power cut before the first compaction keeps the store
        # (with no steps) instead of leaving only an empty root
        self._publish_durably(self._meta)

    def _export(self, spec: dict, data: Data | None) -> tuple[bytes | None, str | None]:
        """The model as a torch.export program, or ``(None, reason)`` (warned once)."""
        if not _wants_program(spec, self._export_program):
            return None, None
        if data is None:
            return None, "recorded without data: no inputs to trace the model on"
        from .portable import export_model

        x = data.x_train if data.x_train.shape[0] else data.x_test
        raw, reason = export_model(self._model, x)
        if raw is None:
            warnings.warn(
                f"the model's architecture could not be stored as a torch.export program "
                f"({reason}); a process without its code will need model=... or trust_code "
                f"(the class spec {spec.get('factory') or spec.get('name')!r} is kept)",
                RuntimeWarning,
                stacklevel=4,
            )
        return raw, reason

    def _write_program(self, raw: bytes) -> dict:
        """Write the program bytes as one zstd-compressed uint8 chunk; its metadata record."""
        import hashlib

        _io.write_json(self._store, f"{schema.MODEL_GROUP}/zarr.json",
                       {"zarr_format": 3, "node_type": "group", "attributes": {}})
        key = schema.PROGRAM_KEY
        arr = zarr.create_array(
            store=self._store, name=key, shape=(len(raw),), chunks=(len(raw),), dtype="uint8",
            fill_value=0, zarr_format=3, overwrite=True, dimension_names=("byte",),
            compressors=self._codecs(
                zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="noshuffle")),
            attributes={"format": "torch.export.save", "torch": torch.__version__},
        )
        arr[...] = np.frombuffer(raw, dtype=np.uint8)
        return {"key": key, "nbytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
                "torch": torch.__version__, "format": "torch.export"}

    def _add_scalar(self, name: str, dtype: np.dtype, row: int = 0) -> _Scalar:
        """A new scalar array whose first row is ``row`` (earlier rows: the fill value)."""
        if _io.exists(self._store, f"{name}/zarr.json"):
            self._check_orphan(name, row)
        arr = self._new_array(name, (self._capacity,), (schema.SCALAR_CHUNK,), dtype,
                              (schema.STEP,), compress=False)
        sc = _Scalar(name, arr)
        if self._tail is None:
            sc.start_empty(self._store, row)
        else:  # rows from the tail's start on are committed in the root document
            start = self._tail_start
            sc.start_empty(self._store, start)
            if start % schema.SCALAR_CHUNK:  # committed rows before it share this chunk
                _io.put_bytes(self._store, sc.key(sc.chunk), memoryview(sc.buf).cast("B"),
                              checksum=sc.checksummed)
        self._scalars[name] = sc
        return sc

    def _write_data(self, data: Data) -> None:
        zarr.create_group(
            store=self._store, path=schema.DATA_GROUP, zarr_format=3, overwrite=True,
            attributes={"task": _jsonable(data.task, "data.task")},
        )
        arrays = {n: getattr(data, n) for n in schema.SPLITS}
        arrays.update({schema.EXTRA_PREFIX + k: v for k, v in data.extras.items()})
        dims = schema.tensor_dims({n: t.dim() for n, t in arrays.items()}, leading=None)
        for name, t in arrays.items():
            a = _tensor_numpy(t, schema.storage_dtype(t.dtype))
            arr = zarr.create_array(
                store=self._store, name=f"{schema.DATA_GROUP}/{name}", shape=a.shape,
                chunks=a.shape if a.size else None, dtype=a.dtype,
                fill_value=schema.fill_value(a.dtype),
                dimension_names=dims[name],
                compressors=self._codecs(), zarr_format=3, overwrite=True,
                attributes={"torch_dtype": str(t.dtype)},
            )
            if a.size:
                arr[...] = a

    def _reopen(self, root: dict, sd: dict[str, torch.Tensor], data: Data | None,
                config: dict | None) -> None:
        store = self._store
        _io.check_links_inside(store)  # appending writes and deletes inside the store only
        meta = schema.check_meta(root.get("attributes", {}).get(schema.META_KEY), self._where)
        stored = {k: tuple(v["shape"]) for k, v in meta["params"].items()}
        msg = mismatch_message(stored, {k: tuple(v.shape) for k, v in sd.items()},
                               f"the model does not match the store at {self._where}")
        if msg:
            raise ModelMismatchError(
                msg + ". Pass the same architecture to continue this run, or overwrite=True "
                "(or another path) to start a new one"
            )
        if data is not None:
            self._check_same_data(data)
        if config is not None:
            given = _jsonable(config, "config")
            stored = meta["config"]
            diff = sorted(k for k in given if k not in stored or stored[k] != given[k])
            if diff:
                # appending under other settings would mix two runs in one trajectory
                raise ConfigError(
                    f"re-opening {self._where}: the config differs from the stored one in "
                    f"{diff} (stored {[stored.get(k) for k in diff]}, given "
                    f"{[given[k] for k in diff]}); record into another path, pass "
                    "overwrite=True to start again, or pass config=None to continue the stored run"
                )
        if self._model_kwargs is not None:
            stored_kwargs = (meta["config"].get("model") or {}).get("kwargs")
            if _jsonable(self._model_kwargs, "model_kwargs") != stored_kwargs:
                raise ConfigError(
                    f"re-opening {self._where}: model_kwargs {self._model_kwargs!r} differ from "
                    f"the stored ones {stored_kwargs!r}; record into another path, or "
                    "overwrite=True to start again"
                )
        self.compression = meta.get("compression")
        meta.pop(schema.CLOSED_KEY, None)  # open again: readers see it is being written
        self._meta = meta
        self._shard_settings = meta.get(schema.SHARDS_KEY)  # the store's layout wins
        self._compacted = int(meta["commit"].get("compacted", 0))
        self._count = int(meta["commit"]["count"])
        self._last_step = meta["commit"]["last_step"]
        self._resume = meta["commit"].get("resume")  # checked by schema.check_meta
        _io.remove_stale_tmp(store)
        # invalidate consolidated metadata before anything changes
        self._write_root(meta)
        for key in meta["params"]:
            self._params[key] = self._open_param(key)
        layouts = {k: p.layout for k, p in self._params.items() if p.layout is not None}
        if self._row_files() and layouts:
            self._attach_row_tail(self._open_row_tail(layouts))
        self._metric_names = list(meta["metrics"])
        for name in (schema.STEP, schema.NONFINITE, *self._metric_names):
            arr = _io.open_zarr_array(store, name, what="scalar array")
            self._scalars[name] = _Scalar(name, arr)
        from .run import _corrupt

        for item in (*self._params.values(), *self._scalars.values()):
            arr = item.rows_array if isinstance(item, _Param) else item.array
            if arr.ndim < 1 or arr.shape[0] < self._count:  # never grow to a count
                raise _corrupt(self._where, item.name, f"it has {arr.shape[0] if arr.ndim else 0} "
                               f"rows but {self._count} are committed")
        # keep the store's choice: new arrays (metrics, resume states) match its step array
        self.checksum = self._scalars[schema.STEP].checksummed
        start = self._count
        if self._shard_settings is not None:  # the scalar tail (none in stores written before)
            start, self._tail = _scalar_tail.read(
                meta["commit"], {n: sc.dtype for n, sc in self._scalars.items()}, self._where)
            self._tail_start = start
        self._drop_orphan_resume()
        self._drop_compacted_tail_rows()
        # trim the uncommitted tail (deletes its chunks), then pre-allocate again
        self._capacity = self._count
        self._resize_all(self._count)
        self._resize_all(max(schema.INITIAL_CAPACITY, 1 << math.ceil(math.log2(self._count + 1))))
        for sc in self._scalars.values():
            sc.load(store, start)
        self._check_last_step()
        self._collect_static_nodes()

    def _open_param(self, key: str) -> _Param:
        """A stored tensor's arrays: the array itself and, when sharded, its per-step tail
        (opened when it holds committed rows; created afresh when it does not)."""
        from .run import _corrupt

        store = self._store
        arr = _io.open_zarr_array(store, key, what="parameter")
        layout = _shards.layout_of(arr)
        if layout is None:
            return _Param(key, arr)
        settings = self._shard_settings
        if settings is None or layout.steps != settings["steps_per_shard"]:
            raise _corrupt(self._where, key, f"it is sharded by {layout.steps} steps but the "
                                             f"root metadata says {settings!r}")
        if arr.ndim < 1 or arr.shape[0] < self._compacted:
            raise _corrupt(self._where, key, f"its shards hold {arr.shape[0] if arr.ndim else 0} "
                                             f"rows but {self._compacted} are compacted")
        if arr.shape[0] > self._compacted:  # a compaction killed before its commit
            arr.resize((self._compacted, *arr.shape[1:]))
        if self._row_files():
            return _Param(key, arr)  # its rows are in the row files (_open_row_tail)
        tail_path = f"{schema.TAIL_GROUP}/{key}"
        if self._compacted < self._count:  # committed rows live there: never re-created
            tail = _io.open_zarr_array(store, tail_path, what="parameter tail")
            if (_io.codec_layout(tail) != (True, layout.checksummed)
                    or tuple(tail.shape[1:]) != tuple(arr.shape[1:]) or tail.chunks[0] != 1
                    or np.dtype(tail.dtype) != np.dtype(arr.dtype)):
                raise _corrupt(self._where, tail_path, "its layout is not the per-step layout "
                                                       f"of the sharded tensor {key!r}")
        else:
            if not _io.exists(store, f"{schema.TAIL_GROUP}/zarr.json"):
                _io.write_json(store, f"{schema.TAIL_GROUP}/zarr.json", _GROUP_DOC)
            tail = self._new_tail(key, tuple(arr.shape[1:]), np.dtype(arr.dtype),
                                  tuple(arr.metadata.dimension_names or ()) or None,
                                  rows=self._count)
        return _Param(key, arr, tail)

    def _row_files(self) -> bool:
        """Whether the store keeps uncompacted rows in row files (:class:`_RowTail`; stores
        written before keep one per-step array per tensor, ``_tail/<key>``)."""
        return (self._shard_settings or {}).get("tail") == _shards.TAIL_ROWS

    def _open_row_tail(self, layouts: dict[str, _shards.ShardLayout]) -> _RowTail:
        """The row files of a re-opened store: opened and checked when they hold committed
        rows, else created afresh."""
        store = self._store
        path = f"{schema.TAIL_GROUP}/{_shards.ROWS_NAME}"
        if self._compacted < self._count:  # committed rows live there: never re-created
            arr = _io.open_zarr_array(store, path, what="per-step tail")
            return _RowTail(arr, _shards.check_rows_array(arr, layouts, self._where))
        if not _io.exists(store, f"{schema.TAIL_GROUP}/zarr.json"):
            _io.write_json(store, f"{schema.TAIL_GROUP}/zarr.json", _GROUP_DOC)
        return self._new_row_tail(layouts, self._count)

    def _drop_compacted_tail_rows(self, upto: int | None = None, start: int | None = None
                                  ) -> None:
        """Delete the tail chunks of rows ``start..upto-1``; without ``start``, every tail
        chunk of a row before ``upto`` (default: the compacted boundary): what a writer killed
        between a compaction's commit and its clean-up left."""
        upto = self._compacted if upto is None else upto
        tails = [p.tail for p in self._params.values() if p.layout is not None and p.tail]
        if self._row_tail is not None:
            tails.append(self._row_tail)
        for p in tails:
            if start is None:  # unknown which rows are left: look
                prefix = p.path
                for name in _io.list_dir(self._store, prefix):
                    parts = name.split(".")
                    if len(parts) >= 2 and parts[0] == "c" and parts[1].isdigit() \
                            and int(parts[1]) < upto:
                        _io.delete_entry(self._store, f"{prefix}/{name}")
                continue
            keys = [(p.key(row) if isinstance(p, _RowTail) else
                     f"{p.path}/{p.metadata.encode_chunk_key((row, *(0,) * (p.ndim - 1)))}")
                    for row in range(start, upto)]
            prefix = p.path
            for lo in range(0, len(keys), 64):  # in batches, so kills land in between
                _io.delete_keys(self._store, prefix,
                                [k[len(prefix) + 1:] for k in keys[lo:lo + 64]])
                _kill_point()

    def _check_orphan(self, name: str, row: int) -> None:
        """An array ``name`` the metadata does not list may be what a writer killed before it
        committed its first value left (fill only before ``row``: replaced); one holding values
        at committed rows means the metadata lost it (CorruptStoreError, never overwritten)."""
        try:
            arr = zarr.open_array(store=self._store, path=name, zarr_format=3, mode="r")
            held = np.asarray(arr[: min(row, arr.shape[0])]) if arr.ndim == 1 else None
        except (ValueError, TypeError, KeyError, OSError, RuntimeError) as exc:
            held = exc
        if isinstance(held, np.ndarray) and not (
                np.isnan(held).all() if held.dtype.kind == "f" else not held.any()):
            raise CorruptStoreError(
                f"{self._where} holds an array {name!r} with values at committed rows, but its "
                "metadata does not list it: the metadata is damaged. Restore the store from a "
                "copy; grokscope will not overwrite that array"
            )
        if not isinstance(held, np.ndarray):
            raise CorruptStoreError(
                f"{self._where} holds an unreadable array {name!r} its metadata does not list "
                f"({held!r}); restore the store from a copy or remove that folder"
            )

    def _check_last_step(self) -> None:
        """The metadata's ``last_step`` is the step array's last committed entry (appending
        after a wrong one would leave a gap or break the order)."""
        if not self._count:
            return
        from .run import _ArrayReader

        if self._tail is not None and self._tail_start < self._count:
            stored = int(self._tail[schema.STEP][-1])
        else:
            arr = self._scalars[schema.STEP].array
            stored = int(_ArrayReader(self._store, self._where, schema.STEP, arr, self._count)
                         [self._count - 1])
        if stored != self._last_step:
            raise CorruptStoreError(
                f"the root metadata of {self._where} says the last committed step is "
                f"{self._last_step}, but the step array holds {stored}; the store is damaged: "
                "restore it from a copy or re-record the run"
            )

    def _check_same_data(self, data: Data) -> None:
        from .run import read_data

        try:
            stored = read_data(self._store)
        except CorruptStoreError:
            raise  # a damaged split is reported, never skipped
        except StoreError:
            return  # the run was recorded without a split
        for name in schema.SPLITS:
            a, b = getattr(stored, name), getattr(data, name)
            if a.shape != b.shape or not torch.equal(a.to(b.dtype), b):
                raise ConfigError(
                    f"the data split passed differs from the one stored at {self._where} "
                    f"({name}: stored {tuple(a.shape)}, given {tuple(b.shape)}); pass the same "
                    "data to continue this run, or overwrite=True to start a new one"
                )

    def _drop_orphan_resume(self) -> None:
        keep = self._resume["key"] if self._resume else None
        if self._fallback_resume is None:  # the durable fallback root may name another
            fallback = _durable.read_fallback(self._store, self._where)
            resume = None if fallback is None else (
                fallback["attributes"][schema.META_KEY]["commit"].get("resume"))
            self._fallback_resume = resume["key"] if resume else None
        if not _io.exists(self._store, f"{schema.RESUME_GROUP}/zarr.json"):
            return
        for name in _io.list_dir(self._store, schema.RESUME_GROUP):
            full = f"{schema.RESUME_GROUP}/{name}"
            if name != "zarr.json" and full not in (keep, self._fallback_resume):
                _io.delete_entry(self._store, full)

    def _collect_static_nodes(self) -> None:
        """Metadata of the data group and its arrays, for consolidated commits."""
        if self.commit_mode != "consolidated":
            return
        nodes = {}
        doc = _io.read_json(self._store, f"{schema.DATA_GROUP}/zarr.json", what="data group")
        if doc is not None:
            doc = dict(doc)
            doc["consolidated_metadata"] = {"kind": "inline", "must_understand": False,
                                            "metadata": {}}
            nodes[schema.DATA_GROUP] = doc
            for name in _io.list_dir(self._store, schema.DATA_GROUP):
                sub = _io.read_json(self._store, f"{schema.DATA_GROUP}/{name}/zarr.json",
                                    what="data array")
                if sub is not None:
                    nodes[f"{schema.DATA_GROUP}/{name}"] = sub
        self._static_nodes = nodes

    # ------------------------------------------------------------------ root document
    def _root_doc(self, meta: dict, count: int | None = None) -> dict:
        doc: dict[str, Any] = {
            "zarr_format": 3,
            "node_type": "group",
            "attributes": {schema.SCHEMA_KEY: schema.SCHEMA_VERSION, schema.META_KEY: meta},
        }
        if count is not None:
            nodes = dict(self._static_nodes)
            for sc in self._scalars.values():
                nodes[sc.name] = sc.array.metadata.to_dict()
                nodes[sc.name]["shape"] = [count]
            for p in self._params.values():
                nodes[p.name] = p.array.metadata.to_dict()
                nodes[p.name]["shape"] = [count, *p.shape]
            doc["consolidated_metadata"] = {"kind": "inline", "must_understand": False,
                                            "metadata": nodes}
        return doc

    def _write_root(self, meta: dict, *, count: int | None = None) -> None:
        if count is not None:  # consolidated metadata: the whole document
            _io.write_json(self._store, "zarr.json", self._root_doc(meta, count))
            return
        _io.put_bytes(self._store, "zarr.json", self._root_json(meta))

    def _root_json(self, meta: dict) -> bytes:
        """:meth:`_root_doc` as JSON bytes. Only ``commit`` and ``metrics`` change from one
        record to the next; the rest (config, anatomy, params, versions ...) is serialised
        again only when one of its values is another object (the writer replaces a value,
        never changes one in place)."""
        static = {k: v for k, v in meta.items() if k not in ("commit", "metrics")}
        key = tuple((k, id(v)) for k, v in static.items())
        cached = getattr(self, "_static_json", None)
        if cached is None or cached[0] != key:
            body = json.dumps(static, allow_nan=True, separators=(",", ":"))
            cached = self._static_json = (key, body, tuple(static.values()))  # ids stay valid
        dyn = json.dumps({"metrics": meta["metrics"], "commit": meta["commit"]},
                         allow_nan=True, separators=(",", ":"))
        body = cached[1]
        meta_json = body[:-1] + ("," if len(body) > 2 else "") + dyn[1:]
        return (f'{{"zarr_format":3,"node_type":"group","attributes":{{"{schema.SCHEMA_KEY}":'
                f'{schema.SCHEMA_VERSION},"{schema.META_KEY}":{meta_json}}}}}').encode()

    def _publish_durably(self, meta: dict, *, skip: frozenset | set = frozenset()) -> None:
        """Publish ``meta`` as the root after ``fsync``-ing everything written before it
        (``skip``: files about to be deleted), ``fsync`` the root too, then write the durable
        fallback root (grokscope.store._durable). Compactions and close commit this way."""
        store = self._store
        _durable.sync_written(store, skip=skip)
        raw = self._root_json(meta)
        _io.put_bytes(store, "zarr.json", raw)
        _durable.sync_written(store)
        self._write_fallback(raw, meta)

    def _write_fallback(self, raw: bytes, meta: dict) -> None:
        """Write the durable fallback root ``raw`` (the root just published; every file it
        names already synced) and free the resume state the previous fallback named."""
        if not _durable.write_fallback(self._store, raw):
            return
        self._fallback_at = time.monotonic()
        resume = meta["commit"].get("resume")
        old, self._fallback_resume = self._fallback_resume, resume["key"] if resume else None
        current = self._resume["key"] if self._resume else None
        if old is not None and old not in (self._fallback_resume, current):
            try:
                _io.delete_entry(self._store, old)
            except OSError:
                pass  # an orphan the next writer deletes (_drop_orphan_resume)

    def _rows_to_drop(self, lo: int, hi: int) -> set[Path]:
        """The per-step files of the uncompacted rows ``lo..hi-1`` (deleted once compacted:
        never synced)."""
        if not isinstance(self._store, _io.AtomicLocalStore):
            return set()
        root = Path(self._store.root)
        return {root / p.row_key(row) for p in self._params.values()
                if p.layout is not None for row in range(lo, hi)}

    # ------------------------------------------------------------------ capacity
    def _resize_all(self, capacity: int, *, tails: bool = True) -> None:
        store = self._store
        jobs: list[tuple[zarr.Array, tuple[int, ...]]] = []
        for p in self._params.values():
            if p.row_tail is None and (tails or p.layout is None):
                jobs.append((p.rows_array, (capacity, *p.shape)))
        if self._row_tail is not None and tails:
            jobs.append((self._row_tail.array, (capacity, self._row_tail.nbytes)))
        for sc in self._scalars.values():
            jobs.append((sc.array, (capacity,)))
        growing = all(arr.shape[0] <= shape[0] for arr, shape in jobs)
        if growing and getattr(store, "written", None) is not None:
            # growing on local disk: each new metadata document is synced before it is
            # swapped in; all at once, so that their fsyncs share one journal commit
            _durable.run_concurrently([
                (lambda a=arr, s=shape: _io.grow_array(store, a, s)) for arr, shape in jobs])
        else:
            for arr, shape in jobs:
                _io.grow_array(store, arr, shape)
        self._capacity = capacity

    # ------------------------------------------------------------------ public API
    @property
    def last_step(self) -> int | None:
        """The last committed step (None when nothing is recorded)."""
        return self._last_step

    @property
    def count(self) -> int:
        """Number of committed checkpoints."""
        return self._count

    def due(self, step: int) -> bool:
        """Whether ``step`` is due under the schedule and after the last committed step."""
        return self.schedule.due(step) and (self._last_step is None or step > self._last_step)

    def record(
        self,
        step: int,
        model: nn.Module | None = None,
        metrics: Mapping[str, Any] | None = None,
        *,
        optimizer: torch.optim.Optimizer | dict | None = None,
        extra: Any = None,
    ) -> None:
        """Write one committed checkpoint.

        Parameters
        ----------
        step : int
            Training step; must be greater than the last committed one.
        model : nn.Module, optional
            Whose ``state_dict()`` to record (default: the Recorder's model). Keys and shapes
            must match the store's.
        metrics : mapping of str to float, optional
            Scalar metrics (``train_loss``, ``test_acc`` ...); one float64 array each.
        optimizer : Optimizer or dict, optional
            Saved (its ``state_dict``) with ``extra`` as the resume state of this step; only
            the latest is kept.
        extra : object, optional
            Anything ``torch.load(weights_only=True)`` can read back (RNG states, scheduler
            state, plain containers), saved with the optimizer state.

        Raises
        ------
        StepOrderError
            ``step`` is not greater than the last committed step (nothing is written).
        ModelMismatchError
            The model's keys or shapes differ from the store's.
        StoreWriteError
            A write failed; the store stays at its last commit.
        """
        self._check_open()
        if isinstance(step, torch.Tensor):
            step = step.item()
        if isinstance(step, bool) or not isinstance(step, int | np.integer):
            raise ConfigError(f"step must be an integer, got {step!r}")
        step = int(step)
        if step < 0:
            raise StepOrderError(f"step {step} is negative; steps count from 0")
        if self._last_step is not None and step <= self._last_step:
            raise StepOrderError(
                f"step {step} is not after the last committed step {self._last_step} of "
                f"{self._where}: steps must strictly increase (nothing was written)"
            )
        sd = _state_dict(model if model is not None else self._model)
        msg = mismatch_message(
            {k: p.shape for k, p in self._params.items()},
            {k: tuple(v.shape) for k, v in sd.items()},
            f"the model passed at step {step} does not match the store",
        )
        if msg:
            raise ModelMismatchError(msg + "; record the same architecture the store was made for")
        values = self._metric_values(metrics or {})
        arrays = {k: _tensor_numpy(sd[k], p.dtype) for k, p in self._params.items()}
        nonfinite, bad = 0, []
        # weights only: a buffer may hold a constant such as TransformerLens's IGNORE = -inf
        owner = model if model is not None else self._model
        weights = {n for n, _ in owner.named_parameters(remove_duplicate=False)} or set(arrays)
        for k, a in arrays.items():
            if a.dtype.kind in "fc" and k in weights:
                n = int(a.size - np.count_nonzero(np.isfinite(a)))
                if n:
                    nonfinite += n
                    bad.append(k)
        resume_bytes = None
        if optimizer is not None or extra is not None:
            resume_bytes = self._resume_bytes(optimizer, extra)
        if nonfinite and not self._warned_nonfinite:
            self._warned_nonfinite = True
            warnings.warn(
                f"step {step}: {nonfinite} non-finite parameter entries (in {bad}) recorded "
                "as they are; see the 'nonfinite' metric (warned once per Recorder)",
                RuntimeWarning,
                stacklevel=2,
            )
        self._write_record(step, arrays, values, nonfinite, resume_bytes)

    def _metric_values(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        values = {}
        for name, v in metrics.items():
            schema.check_metric_name(name, self._params)
            if isinstance(v, torch.Tensor):
                if v.numel() != 1:
                    raise ConfigError(f"metric {name!r} must be a scalar, got shape {tuple(v.shape)}")
                v = v.item()
            try:
                values[name] = float(v)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"metric {name!r} must be a number, got {v!r}") from exc
        return values

    def _resume_bytes(self, optimizer: Any, extra: Any) -> bytes:
        state = optimizer.state_dict() if hasattr(optimizer, "state_dict") else optimizer
        if state is not None and not isinstance(state, dict):
            raise ConfigError(
                f"optimizer must be a torch optimizer or its state_dict, got {type(state).__name__}"
            )
        buf = io.BytesIO()
        torch.save({"optimizer": state, "extra": extra}, buf)
        raw = buf.getvalue()
        try:
            torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
        except Exception as exc:  # noqa: BLE001 (any unpickling failure means: not loadable)
            raise ConfigError(
                f"the resume state (optimizer/extra) cannot be re-loaded with weights_only=True "
                f"({exc}); keep it to tensors, numbers, strings and plain containers"
            ) from exc
        return raw

    def _write_record(self, step: int, arrays: dict[str, np.ndarray], values: dict[str, float],
                      nonfinite: int, resume_bytes: bytes | None) -> None:
        store, row = self._store, self._count
        fixed = (schema.STEP, schema.NONFINITE)
        pending = [n for n in self._scalars if n not in fixed and n not in self._metric_names]
        new_metrics = [n for n in values if n not in self._scalars]
        resume = self._resume
        try:
            if row >= self._capacity:
                self._resize_all(max(schema.INITIAL_CAPACITY, 2 * self._capacity))
            for name in new_metrics:
                self._add_scalar(name, np.dtype("float64"), row)
            row_file = None
            if self._row_tail is not None:  # one file for every sharded tensor
                parts = []
                for key in self._row_tail.entries:
                    raw = memoryview(arrays[key].reshape(-1)).cast("B")
                    parts.append(raw)
                    if self._params[key].checksummed:
                        parts.append(_io.crc32c(raw))
                if self._caches_rows():  # kept for the compaction (one copy, small rows)
                    row_file = b"".join(parts)
                    parts = [row_file]
                _io.put_parts(store, self._row_tail.key(row), parts)
            for key, a in arrays.items():
                if self._params[key].row_tail is None:
                    self._params[key].write(store, row, a)
            names = self._metric_names + pending + new_metrics
            row_values = {**{n: values.get(n, np.nan) for n in names},
                          schema.NONFINITE: nonfinite, schema.STEP: step}
            tail_start, tail = self._tail_start, None
            if self._tail is None:  # the per-step layout: each scalar's chunk rewritten
                sets = [(lambda sc=self._scalars[n], v=row_values[n]: sc.set(store, row, v))
                        for n in (*names, schema.NONFINITE, schema.STEP)]
                if getattr(store, "written", None) is not None:
                    _durable.run_concurrently(sets)  # each synced before its swap: together
                else:
                    for fn in sets:
                        fn()
            else:  # committed with the root document below, not by rewriting their chunks
                tail = self._tail_with(row, row_values)
                if row + 1 - tail_start > _scalar_tail.MAX_ROWS:  # move it into the arrays
                    for name, sc in self._scalars.items():
                        sc.flush(store, tail_start, tail[name])
                    tail_start, tail = row + 1, {n: c[:0] for n, c in tail.items()}
            if resume_bytes is not None:
                resume = self._write_resume(step, resume_bytes)
            meta = dict(self._meta)
            meta["metrics"] = names
            meta["commit"] = {"count": row + 1, "last_step": step, "resume": resume}
            if self._shard_settings is not None:
                meta["commit"]["compacted"] = self._compacted
            if tail is not None:
                self._put_tail(meta["commit"], tail_start, tail, names)
            self._write_root(
                meta, count=row + 1 if self.commit_mode == "consolidated" else None
            )
        except OSError as exc:
            for sc in self._scalars.values():
                sc.reset(row)
            raise StoreWriteError(
                f"writing step {step} to {self._where} failed ({exc}); the store keeps its "
                f"{row} committed checkpoints. Free disk space or fix permissions, then record "
                "again"
            ) from exc
        old = self._resume
        self._meta = meta
        self._metric_names = meta["metrics"]
        if tail is not None:
            self._tail, self._tail_start = tail, tail_start
        if row_file is not None:
            self._row_cache[row] = row_file
        self._count = row + 1
        self._last_step = step
        self._resume = resume
        if (old is not None and resume is not None and old["key"] != resume["key"]
                and old["key"] != self._fallback_resume):  # the fallback may still need it
            try:
                _io.delete_entry(store, old["key"])
            except OSError:
                pass  # an orphan the next writer deletes (_drop_orphan_resume)
        compacting = False
        if self._shard_settings is not None:
            settings = self._shard_settings
            full = self._count // settings["steps_per_shard"] * settings["steps_per_shard"]
            compacting = full - self._compacted >= settings["compact_every"]
        if not compacting and time.monotonic() - self._fallback_at >= _durable.INTERVAL_S:
            try:  # a durable fallback of this commit: what a power cut can lose is bounded
                _durable.sync_written(store)
                self._write_fallback(self._root_json(meta), meta)
            except OSError as exc:
                raise StoreWriteError(
                    f"step {step} is committed to {self._where}, but writing its durable "
                    f"fallback root failed ({exc}); the store is intact. Free disk space or fix "
                    "permissions"
                ) from exc
        if compacting:
            try:
                self._compact(full)
            except OSError as exc:
                raise StoreWriteError(
                    f"step {step} is committed to {self._where}, but moving committed steps "
                    f"into shards failed ({exc}); the store is intact (every committed step "
                    "stays where it is) and compaction is tried again later. Free disk "
                    "space or fix permissions"
                ) from exc

    # ------------------------------------------------------------------ scalar tail
    def _tail_with(self, row: int, row_values: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The scalar tail with row ``row`` appended (a new dict; every scalar array, the ones
        first logged now with the fill value before ``row``)."""
        n = row - self._tail_start
        out = {}
        for name, sc in self._scalars.items():
            old = self._tail.get(name)
            if old is None or len(old) != n:
                old = np.full(n, sc.fill, dtype=sc.dtype)
            out[name] = np.append(old, np.asarray(row_values.get(name, sc.fill), dtype=sc.dtype))
        return out

    def _put_tail(self, commit: dict, start: int, tail: Mapping[str, np.ndarray],
                  metrics: list[str]) -> None:
        """Set ``commit["tail"]`` to the tail of the committed scalar arrays (step, nonfinite,
        ``metrics``), or drop it when the tail holds no rows."""
        names = (schema.STEP, schema.NONFINITE, *metrics)
        entry = _scalar_tail.entry(start, {n: tail[n] for n in names})
        commit.pop(_scalar_tail.TAIL_KEY, None)
        if entry is not None:
            commit[_scalar_tail.TAIL_KEY] = entry

    def _flush_tail(self, upto: int, commit: dict) -> tuple[int, dict[str, np.ndarray]]:
        """Write the scalar tail's rows before ``upto`` into the arrays' chunks (every scalar
        array, one not yet in the metadata too) and set ``commit``'s tail to the rest; the new
        ``(start, tail)``, which the caller keeps once it has written the root document."""
        start = self._tail_start
        k = upto - start
        rest = {}
        for name, sc in self._scalars.items():
            col = self._tail.get(name)
            if col is None or len(col) != self._count - start:
                col = np.full(self._count - start, sc.fill, dtype=sc.dtype)
            sc.flush(self._store, start, col[:k])
            rest[name] = col[k:]
        self._put_tail(commit, upto, rest, self._metric_names)
        return upto, rest

    # ------------------------------------------------------------------ compaction
    @property
    def compacted(self) -> int:
        """Number of committed checkpoints already moved into shards (0 for the per-step
        layout)."""
        return self._compacted

    def compact(self, upto: int | None = None) -> int:
        """Move the committed rows before ``upto`` (default: all) into shards; the new
        compacted count. Runs by itself every ``compact_every`` steps and on :meth:`close`.

        Order (each write atomic): every shard touched is written whole beside the old one and
        renamed into place (an earlier row keeps its bytes and its offset), the arrays'
        metadata grows to ``upto`` rows, the root document publishes ``compacted = upto``
        (the commit of the compaction), and only then are the per-step files of those rows
        deleted. A kill before the root is written leaves the old boundary (the new shards'
        extra rows are ignored and rewritten later); after it, leftover per-step files (removed
        by the next writer). Either way no committed step is lost.
        """
        self._check_open()
        return self._compact(self._count if upto is None else int(upto))

    def _compact(self, upto: int, *, drop_rows: bool = True) -> int:
        """:meth:`compact`; ``drop_rows`` False leaves the compacted rows' per-step files (the
        caller deletes the whole tail)."""
        settings = self._shard_settings
        if settings is None or upto <= self._compacted:
            return self._compacted
        if upto > self._count:
            raise ConfigError(f"cannot compact {upto} rows: only {self._count} are committed")
        c0 = self._compacted
        sharded = [p for p in self._params.values() if p.layout is not None]
        _kill_point()
        n = sharded[0].layout.steps if sharded else 1  # the same for every tensor
        for k in range(c0 // n, -(-upto // n)):
            rows = self._read_row_files(k * n, min(k * n + n, upto), c0)
            for p in sharded:
                self._write_shard(p, k, c0, upto, rows)
                _kill_point()
        for p in sharded:
            if p.array.shape[0] < upto:
                _io.grow_array(self._store, p.array, (upto, *p.shape))
                _kill_point()
        meta = dict(self._meta)
        meta["commit"] = {**meta["commit"], "compacted": upto}
        flushed = None
        if self._tail is not None and upto > self._tail_start:
            flushed = self._flush_tail(upto, meta["commit"])  # the scalars, with the shards
            _kill_point()
        self._publish_durably(meta, skip=self._rows_to_drop(c0, upto))
        self._meta, self._compacted = meta, upto
        for row in [r for r in self._row_cache if r < upto]:
            del self._row_cache[row]
        if flushed is not None:
            self._tail_start, self._tail = flushed
        _kill_point()
        if drop_rows:
            self._drop_compacted_tail_rows(upto, start=c0)
        return upto

    #: the most bytes of row files a compaction holds in memory at once (one shard's rows),
    #: so that each row file is read once for every tensor; beyond it each tensor's bytes are
    #: read from the row file on their own
    ROW_CACHE_NBYTES = 64 << 20

    def _caches_rows(self) -> bool:
        """Whether the row files of every uncompacted row fit :attr:`ROW_CACHE_NBYTES`."""
        settings = self._shard_settings or {}
        most = settings.get("steps_per_shard", 0) + settings.get("compact_every", 0)
        return self._row_tail is not None and most * self._row_tail.nbytes <= self.ROW_CACHE_NBYTES

    def _read_row_files(self, lo: int, hi: int, c0: int) -> dict[int, bytes | None] | None:
        """The whole row files of rows ``max(lo, c0)..hi-1`` (None for a missing one; the ones
        this writer committed from memory), when the store has row files and they fit
        :attr:`ROW_CACHE_NBYTES`; else None."""
        tail = self._row_tail
        lo = max(lo, c0)
        if tail is None or hi <= lo or (hi - lo) * tail.nbytes > self.ROW_CACHE_NBYTES:
            return None
        cache = self._row_cache
        return {row: cache[row] if row in cache else _io.get_bytes(self._store, tail.key(row))
                for row in range(lo, hi)}

    def _write_shard(self, p: _Param, k: int, c0: int, upto: int,
                     rows: dict[int, bytes | None] | None = None) -> None:
        """Write shard ``k`` of ``p`` holding its rows before ``upto``: rows before ``c0``
        copied from the shard already there, the others from their per-step chunks (``rows``:
        the row files already read, :meth:`_read_row_files`; stored bytes and checksums
        copied verbatim, so damage stays detectable)."""
        from .run import _corrupt

        layout, store = p.layout, self._store
        lo = k * layout.steps
        hi = min(lo + layout.steps, upto)
        key = p.shard_key(k)
        size = layout.stored_nbytes
        if lo < c0:  # the rows already compacted must sit where this writer puts them
            found = _shards.read_suffix(store, key, layout.index_nbytes)
            index = None if found is None else _shards.parse_index(found[0], layout)
            held = c0 - lo
            if index is None or not (
                    np.array_equal(index[:held, 0], np.arange(held, dtype=np.uint64) * size)
                    and np.all(index[:held, 1] == size)):
                raise _corrupt(self._where, p.name, f"shard {k} (rows {lo}..{c0 - 1}) is missing "
                                                    "or its index is damaged")

        def chunk(j: int) -> bytes:
            row = lo + j
            if row < c0:
                raw = _io.get_bytes(store, key, (j * size, (j + 1) * size))
            elif p.row_tail is not None:
                off, nbytes = p.row_tail.entries[p.name]
                if rows is not None:
                    whole = rows[row]
                    raw = None if whole is None else memoryview(whole)[off:off + nbytes]
                else:
                    raw = _io.get_bytes(store, p.row_key(row), (off, off + nbytes))
            else:
                raw = _io.get_bytes(store, p.row_key(row))
            if raw is None or len(raw) != size:
                raise _corrupt(self._where, p.name, f"the chunk of committed row {row} is "
                               f"{'missing' if raw is None else f'{len(raw)} bytes, not {size}'}")
            return raw

        _shards.write_shard(store, key, layout, hi - lo, chunk)

    def _write_resume(self, step: int, raw: bytes) -> dict:
        store = self._store
        group = f"{schema.RESUME_GROUP}/zarr.json"
        doc = _io.read_json(store, group, what="the resume group's metadata")
        if doc is None:
            _io.write_json(store, group, {"zarr_format": 3, "node_type": "group",
                                          "attributes": {}})
        elif doc.get("node_type") != "group" or doc.get("zarr_format") != 3:
            # zarr would raise its own error creating an array below it
            raise CorruptStoreError(
                f"the resume group's metadata ({group!r} in {self._where}) is not a zarr v3 "
                "group document: the store is damaged. Restore it from a copy, or re-record "
                "the run"
            )
        key = f"{schema.RESUME_GROUP}/s{step}"
        arr = zarr.create_array(
            store=store, name=key, shape=(len(raw),), chunks=(max(len(raw), 1),), dtype="uint8",
            fill_value=0, compressors=self._codecs(), zarr_format=3, overwrite=True,
            dimension_names=("byte",), write_data=False,
        )
        _io.put_bytes(store, f"{key}/{arr.metadata.encode_chunk_key((0,))}", raw,
                      checksum=self.checksum)
        return {"step": step, "key": key, "nbytes": len(raw)}

    def resume_state(self) -> dict | None:
        """``{"step", "optimizer", "extra"}`` saved with the last committed record that had
        one, or None."""
        self._check_open()
        from .run import load_resume

        return load_resume(self._store, self._resume)

    # ------------------------------------------------------------------ closing
    def _release_lock(self, *, drop: bool = False) -> None:
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None and drop:
            _drop_lock_file(lock)
        elif lock is not None:
            lock.close()  # closing the descriptor releases the flock

    def close(self) -> None:
        """Trim arrays to the committed length and (optionally) consolidate metadata."""
        if self._closed:
            return
        try:
            sharded = self._shard_settings is not None
            self._resize_all(self._count, tails=not sharded)  # the tails go whole, below
            if sharded:
                self._compact(self._count, drop_rows=False)
                if self._tail is not None and self._tail_start < self._count:
                    meta = {**self._meta, "commit": dict(self._meta["commit"])}
                    flushed = self._flush_tail(self._count, meta["commit"])
                    self._write_root(meta)
                    self._meta = meta
                    self._tail_start, self._tail = flushed
                _io.delete_entry(self._store, schema.TAIL_GROUP)  # every row is compacted
            # the closed marker: readers following the store (grokscope.watch) stop here
            self._meta = {**self._meta, schema.CLOSED_KEY: True}
            self._publish_durably(self._meta)  # no consolidated metadata: dropped on close
            self._closed = True
            if self.consolidate:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", category=UserWarning)
                    zarr.consolidate_metadata(self._store)
        except OSError as exc:
            raise StoreWriteError(
                f"closing {self._where} failed ({exc}); the {self._count} committed checkpoints "
                "are intact (re-open with a Recorder to trim again)"
            ) from exc
        except (ValueError, TypeError, KeyError) as exc:  # zarr: a node's metadata is unreadable
            raise CorruptStoreError(
                f"closing {self._where}: the metadata of a node in the store is damaged "
                f"({type(exc).__name__}: {exc}), so it cannot be consolidated; the "
                f"{self._count} committed checkpoints are intact. Restore the damaged node from a "
                "copy (or delete a damaged results/ group and analyse again)"
            ) from exc
        finally:
            self._closed = True
            self._release_lock()
            self._stop_watcher()

    def _stop_watcher(self) -> None:
        watcher, self._watcher = getattr(self, "_watcher", None), None
        if watcher is not None:
            watcher.close()  # its final pass (close_wait); a failure is warned, never raised

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the Recorder for {self._where} is closed; open a new one to append")

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except (OSError, GrokscopeError) as close_exc:
            warnings.warn(f"closing the store after an error also failed: {close_exc}",
                          RuntimeWarning, stacklevel=2)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"Recorder({self._where!r}, {self._count} checkpoints, last_step={self._last_step}, "
            f"{state})"
        )
