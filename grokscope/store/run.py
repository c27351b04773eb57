"""The reader: :func:`open_run` returns a :class:`Run`, a consistent view of a store's committed
prefix (safe to open while a :class:`~grokscope.store.Recorder` is still appending)."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
import torch
import xarray as xr
import zarr
from torch import nn

from ..data import Data
from ..errors import (
    ConfigError,
    CorruptStoreError,
    GrokscopeError,
    ModelMismatchError,
    StoreError,
    UnknownNameError,
    UntrustedCodeError,
)
from . import _durable, _io, _scalar_tail, schema
from .recorder import mismatch_message

_READ_ERRORS = (ValueError, RuntimeError, TypeError, OSError, EOFError)


class StepNotFoundError(StoreError, KeyError):
    """A step that the run did not record."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def _corrupt(where: str, name: str, detail: str) -> CorruptStoreError:
    return CorruptStoreError(
        f"array {name!r} of the store at {where} is damaged ({detail}). Restore the store from a "
        "copy, or re-record/re-import the run; a writer re-opening it will not repair committed "
        "data"
    )


class _ArrayReader:
    """Read access to the first ``count`` rows of one root array, errors named.

    Uncompressed arrays are read as raw chunk bytes (length-checked, and CRC32C-checked when
    the array carries zarr's ``crc32c`` codec); compressed ones through zarr, whose codec
    verifies the checksum. A missing chunk of a committed row, a wrong length or a checksum
    mismatch raise CorruptStoreError naming the array and the rows/steps. Also a
    dask-compatible array-like.
    """

    def __init__(self, store: Any, where: str, name: str, array: zarr.Array, count: int,
                 source_dtype: str | None = None) -> None:
        self.store, self.where, self.name, self.array = store, where, name, array
        #: where the array lives in the store (``name``, or ``_tail/<name>`` for a tail)
        self.path = name
        self.inner = tuple(array.shape[1:])
        self.shape = (count, *self.inner)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)
        self.source_dtype = source_dtype
        self.raw, self.checksummed = _io.codec_layout(array)
        self.chunk_rows = array.chunks[0]
        self._chunk_shape = tuple(array.chunks)
        self._whole_rows = tuple(array.chunks[1:]) == self.inner
        self._per_row = array.chunks[0] == 1 and self._whole_rows
        self._nbytes_chunk = int(np.prod(array.chunks)) * self.dtype.itemsize
        self._crc = _io.CRC_NBYTES if self.checksummed else 0
        self._le = self.dtype.newbyteorder("<")
        # stores written before checksums leave the chunks of a metric's rows before its first
        # value unwritten (read as the fill value, as before); everywhere else a missing chunk
        # of a committed row is damage
        self._missing_ok = not self.checksummed and self.chunk_rows > 1
        #: the committed steps (set by the Run once read), to name steps in messages
        self.steps: np.ndarray | None = None

    def _key(self, chunk: int) -> str:
        zeros = (0,) * len(self.inner)
        return f"{self.path}/{self.array.metadata.encode_chunk_key((chunk, *zeros))}"

    def _rows_text(self, chunk: int) -> str:
        """``"row 3 (step 5)"`` or ``"rows 0..99 (steps 0..4000)"`` for a chunk."""
        lo = chunk * self.chunk_rows
        hi = min(lo + self.chunk_rows, self.shape[0]) - 1
        steps = self.steps
        if lo == hi:
            at = f" (step {int(steps[lo])})" if steps is not None and lo < len(steps) else ""
            return f"row {lo}{at}"
        at = (f" (steps {int(steps[lo])}..{int(steps[hi])})"
              if steps is not None and hi < len(steps) else "")
        return f"rows {lo}..{hi}{at}"

    def _damage(self, chunk: int, what: str) -> CorruptStoreError:
        return _corrupt(self.where, self.name, f"the chunk of {self._rows_text(chunk)} {what}")

    def _check(self, chunk: int, n: int | None, data: Any = None, stored: Any = None) -> None:
        """Raise unless a chunk read as ``n`` bytes (``None``: missing) is whole and, when the
        array is checksummed, ``data``'s CRC32C equals the ``stored`` 4 bytes."""
        want = self._nbytes_chunk + self._crc
        if n is None:
            raise self._damage(chunk, "is missing")
        if n != want:
            raise self._damage(chunk, f"holds {n} bytes, expected {want} (truncated or "
                                      "overwritten)")
        if self.checksummed and not _io.check_crc(data, stored):
            raise self._damage(chunk, "does not match its CRC32C checksum (its bytes changed "
                                      "after they were written)")

    def _raw_chunk(self, chunk: int, byte_range: tuple[int, int] | None = None
                   ) -> bytes | None:
        """The decoded bytes of a raw chunk (checked), or of ``byte_range`` of it (checked
        only for presence, unchecksummed arrays only); None for a missing chunk where that
        means the fill value (see ``_missing_ok``)."""
        if byte_range is not None and not self.checksummed:
            raw = _io.get_bytes(self.store, self._key(chunk), byte_range)
            if raw is None:
                raise self._damage(chunk, "is missing")
            if len(raw) != byte_range[1] - byte_range[0]:
                raise self._damage(chunk, f"is shorter than {self._nbytes_chunk} bytes "
                                          "(truncated)")
            return raw
        raw = _io.get_bytes(self.store, self._key(chunk))
        if raw is None and self._missing_ok:
            return None
        n = self._nbytes_chunk
        view = memoryview(raw if raw is not None else b"")  # slices without copies
        self._check(chunk, None if raw is None else len(raw), view[:n], view[n:])
        if byte_range is None:
            return raw if len(raw) == n else bytes(view[:n])
        return bytes(view[byte_range[0]:byte_range[1]])

    def _chunk_rows_array(self, chunk: int) -> np.ndarray:
        """A raw chunk as an array of shape ``(chunk_rows, *inner)`` (whole-row chunks)."""
        raw = self._raw_chunk(chunk)
        if raw is None:
            return np.full((self.chunk_rows, *self.inner), schema.fill_value(self.dtype),
                           dtype=self._le)
        return np.frombuffer(raw, dtype=self._le).reshape(self.chunk_rows, *self.inner)

    def _zarr_read(self, fn: Any, chunks: np.ndarray) -> np.ndarray:
        """``fn()`` (a zarr read touching ``chunks``) with missing chunks and zarr's errors
        (its crc32c codec's mismatch included) turned into CorruptStoreError."""
        for c in np.unique(chunks) if not self._missing_ok else ():
            if not _io.exists(self.store, self._key(int(c))):
                raise self._damage(int(c), "is missing")
        try:
            return np.asarray(fn())
        except _READ_ERRORS as exc:
            if _io.is_checksum_error(exc):
                bad = self._first_bad(chunks)
                where = f"the chunk of {self._rows_text(bad)}" if bad is not None else "a chunk"
                raise _corrupt(self.where, self.name,
                               f"{where} does not match its CRC32C checksum (its bytes changed "
                               "after they were written)") from exc
            raise _corrupt(self.where, self.name, f"{type(exc).__name__}: {exc}") from exc

    def _first_bad(self, chunks: np.ndarray) -> int | None:
        """The first of ``chunks`` whose stored bytes fail their checksum (for messages)."""
        for c in np.unique(chunks):
            raw = _io.get_bytes(self.store, self._key(int(c)))
            if raw is None or len(raw) < 4 or not _io.check_crc(raw[:-4], raw[-4:]):
                return int(c)
        return None

    def rows(self, idx: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows ``idx`` (positions, not steps), shape ``(len(idx), *inner)``."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.shape[0]):
            raise IndexError(f"row out of range for {self.name!r} with {self.shape[0]} rows")
        if self.raw and self._per_row:
            out = np.empty((idx.size, *self.inner), dtype=self._le)
            flat = out.reshape(idx.size, -1)
            tail = bytearray(self._crc)
            for j, i in enumerate(idx):
                view = memoryview(flat[j]).cast("B")
                n = _io.read_into(self.store, self._key(int(i)), view,
                                  memoryview(tail) if self._crc else None)
                self._check(int(i), n, view, tail)
            return out.astype(self.dtype, copy=False)
        if self.raw and self._whole_rows:
            out = np.empty((idx.size, *self.inner), dtype=self._le)
            chunks = idx // self.chunk_rows
            for c in np.unique(chunks):
                sel = chunks == c
                out[sel] = self._chunk_rows_array(int(c))[idx[sel] - c * self.chunk_rows]
            return out.astype(self.dtype, copy=False)
        return self._zarr_read(lambda: self.array.get_orthogonal_selection((idx,)),
                               idx // self.chunk_rows)

    def element(self, idx: Sequence[int] | np.ndarray, index: tuple[int, ...]) -> np.ndarray:
        """One entry ``index`` of the tensor at rows ``idx``, shape ``(len(idx),)``.

        Checksummed chunks are read whole (a checksum covers the whole chunk); chunks of
        stores written before checksums are read at the entry's byte range.
        """
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        index = self._entry_index(index)
        if self.raw and self._per_row:
            off = int(np.ravel_multi_index(index, self.inner)) * self.dtype.itemsize if index else 0
            br = (off, off + self.dtype.itemsize)
            return np.array(
                [np.frombuffer(self._raw_chunk(int(i), br), dtype=self._le)[0] for i in idx],
                dtype=self.dtype,
            )
        return self.rows(idx)[(slice(None), *index)]

    def _entry_index(self, index: tuple[int, ...]) -> tuple[int, ...]:
        """``index`` as non-negative positions in a tensor row; ConfigError when out of range."""
        index = tuple(int(i) for i in index)
        if len(index) != len(self.inner) or any(
            not -n <= i < n for i, n in zip(index, self.inner)
        ):
            raise ConfigError(f"index {index} does not address an entry of shape {self.inner}")
        return tuple(i % n for i, n in zip(index, self.inner))

    def forget(self) -> None:
        """Drop anything cached from the store (nothing here; shard readers cache indexes)."""

    def blocks(self) -> list[tuple[int, int]]:
        """Row ranges stored together (one per chunk), for reading everything once."""
        c = self.chunk_rows
        return [(lo, min(lo + c, self.shape[0])) for lo in range(0, self.shape[0], c)]

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        first, rest = key[0], key[1:]
        if isinstance(first, slice):
            idx = np.arange(*first.indices(self.shape[0]))
            if self.raw and self._whole_rows:
                return self.rows(idx)[(slice(None), *rest)]
            sel = (first, *rest)
        elif isinstance(first, int | np.integer):
            if not 0 <= first < self.shape[0]:
                raise IndexError(f"row {first} out of range for {self.name!r}")
            if self.raw and self._whole_rows:
                return self.rows([int(first)])[(0, *rest)]
            idx, sel = np.array([int(first)]), (int(first), *rest)
        else:
            idx = np.asarray(first, dtype=np.int64).reshape(-1)
            if self.raw and self._whole_rows:
                return self.rows(idx)[(slice(None), *rest)]
            sel = key
        return self._zarr_read(lambda: self.array[sel], idx // self.chunk_rows)

    def dask(self, token: str) -> da.Array:
        chunks = (1 if self._per_row else self.chunk_rows, *self.inner)
        return da.from_array(
            self, chunks=chunks, asarray=False, lock=False, fancy=False,
            meta=np.empty((0,) * self.ndim, dtype=self.dtype),
            name=f"grokscope-{token}-{self.name}-{self.shape[0]}",
        )


class _TailScalarReader(_ArrayReader):
    """A scalar array (``step``, ``nonfinite``, a metric) of a store being recorded: rows before
    ``start`` from its chunks, the others from ``values`` (the root document's scalar tail,
    :mod:`grokscope.store._scalar_tail`, checked when the root was read)."""

    def __init__(self, store: Any, where: str, name: str, array: zarr.Array, count: int,
                 start: int, values: np.ndarray) -> None:
        super().__init__(store, where, name, array, count)
        self.start = start
        self.values = values

    def rows(self, idx: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.shape[0]):
            raise IndexError(f"row out of range for {self.name!r} with {self.shape[0]} rows")
        out = np.empty(idx.size, dtype=self.dtype)
        early = idx < self.start
        if early.any():
            out[early] = super().rows(idx[early])
        if not early.all():
            out[~early] = self.values[idx[~early] - self.start]
        return out


def _read_whole(store: Any, where: str, path: str, what: str) -> np.ndarray:
    """The whole array at ``path`` through zarr, every chunk required to exist (a missing one
    would read as the fill value) and zarr's errors (its crc32c mismatch included) named."""
    import itertools

    arr = _io.open_zarr_array(store, path, what=what)
    if not arr.size:
        return np.empty(arr.shape, dtype=arr.dtype)
    grid = [range(-(-s // c)) for s, c in zip(arr.shape, arr.chunks)]
    for coords in itertools.product(*grid):
        if not _io.exists(store, f"{path}/{arr.metadata.encode_chunk_key(coords)}"):
            raise _corrupt(where, path, f"its chunk {coords} is missing")
    try:
        return np.asarray(arr[...])
    except _READ_ERRORS as exc:
        if _io.is_checksum_error(exc):
            raise _corrupt(where, path, "a chunk does not match its CRC32C checksum (its bytes "
                                        "changed after they were written)") from exc
        raise _corrupt(where, path, f"{type(exc).__name__}: {exc}") from exc


def _task_of(doc: dict) -> Any:
    attrs = doc.get("attributes")
    return attrs.get("task") if isinstance(attrs, dict) else None


def read_data(store: Any) -> Data:
    """The ``data/`` group of a store as a :class:`~grokscope.data.Data`."""
    where = _io.store_label(store)
    doc = _io.read_json(store, f"{schema.DATA_GROUP}/zarr.json", what="the data group metadata")
    if doc is None:
        raise StoreError(
            f"the store at {where} holds no data split (it was recorded with data=None); pass "
            "the Data yourself"
        )
    tensors: dict[str, torch.Tensor] = {}
    for name in _io.list_dir(store, schema.DATA_GROUP):
        if name == "zarr.json":
            continue
        a = _read_whole(store, where, f"{schema.DATA_GROUP}/{name}", "data array")
        arr = _io.open_zarr_array(store, f"{schema.DATA_GROUP}/{name}", what="data array")
        t = torch.from_numpy(np.ascontiguousarray(a))
        attrs = arr.metadata.attributes
        tdtype = attrs.get("torch_dtype") if isinstance(attrs, dict) else None
        if tdtype == "torch.bfloat16":
            t = t.to(torch.bfloat16)
        tensors[name] = t
    missing = [s for s in schema.SPLITS if s not in tensors]
    if missing:
        raise CorruptStoreError(
            f"the data group of {where} lacks {missing}; restore the store from a copy or "
            "re-record the run"
        )
    extras = {
        k[len(schema.EXTRA_PREFIX):]: v for k, v in tensors.items()
        if k.startswith(schema.EXTRA_PREFIX)
    }
    return Data(*(tensors[s] for s in schema.SPLITS), task=_task_of(doc),
                extras=extras)


def load_resume(store: Any, resume: dict | None) -> dict | None:
    """``{"step", "optimizer", "extra"}`` from the resume record ``resume`` (None passes)."""
    if resume is None:
        return None
    where = _io.store_label(store)
    if not isinstance(resume, dict):
        raise CorruptStoreError(f"the resume record of {where} is malformed; re-record the run")
    schema.check_stored_key(resume.get("key"), "resume", where)
    arr = _io.open_zarr_array(store, resume["key"], what="resume state")
    raw_ok, checksummed = _io.codec_layout(arr)
    if not raw_ok:
        raise _corrupt(where, resume["key"], f"codecs {arr.metadata.codecs} that grokscope does "
                                             "not write")
    raw = _io.get_bytes(store, f"{resume['key']}/{arr.metadata.encode_chunk_key((0,))}")
    crc = _io.CRC_NBYTES if checksummed else 0
    nbytes = resume.get("nbytes", len(raw) - crc if raw is not None else 0)
    if raw is None or len(raw) != nbytes + crc:
        raise _corrupt(where, resume["key"], "the saved optimizer state is missing or truncated")
    if checksummed:
        if not _io.check_crc(raw[:nbytes], raw[nbytes:]):
            raise _corrupt(where, resume["key"],
                           f"the saved optimizer state of step {resume.get('step')} does not "
                           "match its CRC32C checksum (its bytes changed after they were written)")
        raw = raw[:nbytes]
    try:
        state = torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise _corrupt(where, resume["key"], f"cannot load the optimizer state: {exc}") from exc
    return {"step": resume["step"], "optimizer": state.get("optimizer"), "extra": state.get("extra")}


def _check_model_arg(model: Any) -> Any:
    """``model`` when it is something :meth:`Run.model_at` can use, else ConfigError."""
    if model is None or isinstance(model, nn.Module | str):
        return model
    if isinstance(model, type):
        if not issubclass(model, nn.Module):
            raise ConfigError(f"model class {model.__name__} is not an nn.Module subclass")
        return model
    if callable(model):
        return model
    raise ConfigError(
        "model must be an nn.Module instance, an nn.Module class, a zero-argument factory, a "
        f"registered model name or 'module:qualname', got {type(model).__name__}"
    )


def _same_arg(a: Any, b: Any) -> bool:
    return a is b or (isinstance(a, str) and isinstance(b, str) and a == b)


class Run:
    """A recorded trajectory: the committed prefix of a store (see :func:`open_run`).

    Attributes
    ----------
    path : str or PathLike
        What was opened.
    steps : np.ndarray, shape (n,), int64
        The committed steps, strictly increasing.
    config : dict
        The run's config (``"model"``: the model spec, ``"task"``: the task spec,
        ``"anatomy"``: the roles detected when it was recorded, ...).
    model_override : nn.Module, class, callable, str or None
        The model the caller passed to :func:`open_run` (used by :meth:`model_at`).
    anatomy_override : dict or None
        The anatomy the caller passed to :func:`open_run` (read by the analysis).
    trust_code : bool
        Whether a ``module:qualname`` factory named in the store may be imported.
    """

    def __init__(self, path: Any, store: Any, *, trust_code: bool = False, model: Any = None,
                 anatomy: dict | None = None) -> None:
        self.path = path
        self.storage_options: dict | None = None
        self.results_path: Any = None  # a separate results store (``open_run(results=...)``)
        self.trust_code = trust_code
        self.model_override = _check_model_arg(model)
        if anatomy is not None and not isinstance(anatomy, Mapping):
            raise ConfigError(f"anatomy must be a dict or None, got {type(anatomy).__name__}")
        self.anatomy_override = anatomy
        self._store = store
        self._where = _io.store_label(store)
        self._caller_template: tuple[Any, nn.Module] | None = None
        self._stored_templates: dict[str, tuple[str, nn.Module]] = {}
        self._program: bytes | None = None
        self._shapes: tuple[nn.Module, dict[str, tuple[int, ...]]] | None = None
        self.recovered: str | None = None
        self.refresh()

    # ------------------------------------------------------------------ loading
    def refresh(self) -> Run:
        """Re-read the store (a writer may have committed more steps); returns ``self``."""
        store = self._store
        attrs = self._read_root().get("attributes", {})
        schema.check_version(attrs, self._where)
        meta = schema.check_meta(attrs.get(schema.META_KEY), self._where)
        count = meta["commit"]["count"]
        params, metrics = meta["params"], list(meta["metrics"])
        self._meta = meta
        self._count = count
        self._readers: dict[str, _ArrayReader] = {}
        compacted = meta["commit"].get("compacted", 0)  # checked by schema.check_meta
        arrays = {key: _io.open_zarr_array(store, key, what="parameter") for key in params}
        self._rows = self._row_files(arrays, count, compacted)
        for key, info in params.items():
            arr = arrays[key]
            sharded = self._sharded_reader(key, arr, count, compacted, info.get("source_dtype"))
            if sharded is not None:
                self._readers[key] = sharded
                continue
            self._check_rows(arr, key, count)
            self._readers[key] = _ArrayReader(store, self._where, key, arr, count,
                                              info.get("source_dtype"))
        self._scalar_readers: dict[str, _ArrayReader] = {}
        initialized = meta.get("initialized", True) is not False  # False: being created
        arrays = {}
        for name in (schema.STEP, schema.NONFINITE, *metrics) if initialized else ():
            arrays[name] = arr = _io.open_zarr_array(store, name, what="scalar array")
            self._check_rows(arr, name, count)
        # a sharded store being recorded holds its newest scalar rows in the root document
        start, tail = _scalar_tail.read(meta["commit"], {n: np.dtype(a.dtype)
                                                         for n, a in arrays.items()}, self._where)
        for name, arr in arrays.items():
            self._scalar_readers[name] = (
                _TailScalarReader(store, self._where, name, arr, count, start, tail[name])
                if start < count else _ArrayReader(store, self._where, name, arr, count))
        self.steps = (self._scalar_readers[schema.STEP][:] if initialized
                      else np.empty(0, dtype=np.int64))
        if count and np.any(np.diff(self.steps) <= 0):
            raise _corrupt(self._where, schema.STEP, "steps are not strictly increasing")
        for r in (*self._readers.values(), *self._scalar_readers.values()):
            r.steps = self.steps
        self._index = {int(s): i for i, s in enumerate(self.steps)}
        self._token = f"{abs(hash((self._where, meta.get('created'), count))):x}"
        self._params_ds: xr.Dataset | None = None
        self._metrics_ds: xr.Dataset | None = None
        self._data: Data | None = None
        return self

    def _row_files(self, arrays: dict[str, zarr.Array], count: int, compacted: int) -> Any:
        """The row files of a store that keeps its uncompacted rows in them (root metadata
        ``shards.tail == "rows"``) and has some: ``(array, {key: (offset, nbytes)})``;
        ``"gone"`` when a writer compacted every row and removed them since the root was read;
        None otherwise (no uncompacted row, or per-tensor tails: stores written before)."""
        from . import _shards

        if (self._meta.get(schema.SHARDS_KEY) or {}).get("tail") != _shards.TAIL_ROWS:
            return None
        if compacted >= count:
            return None
        layouts = {}
        for key, arr in arrays.items():
            layout = _shards.layout_of(arr)
            if layout is not None:
                layouts[key] = layout
        if not layouts:
            return None
        path = f"{schema.TAIL_GROUP}/{_shards.ROWS_NAME}"
        try:
            rows = _io.open_zarr_array(self._store, path, what="per-step tail")
        except CorruptStoreError:
            if self._compacted_now() < count:  # not a clean close since we read the root
                raise
            return "gone"
        self._check_rows(rows, path, count)
        return rows, _shards.check_rows_array(rows, layouts, self._where)

    def _sharded_reader(self, key: str, arr: zarr.Array, count: int, compacted: int,
                        source_dtype: str | None) -> _ArrayReader | None:
        """The reader of a sharded tensor (rows before ``compacted`` in shards, the others in
        ``_tail/<key>``), or None when ``arr`` is not sharded."""
        from . import _shards
        from ._sharded_reader import ShardedReader

        layout = _shards.layout_of(arr)
        if layout is None:
            return None
        if arr.ndim < 1 or arr.shape[0] < compacted:
            raise _corrupt(self._where, key, f"its shards hold {arr.shape[0] if arr.ndim else 0} "
                                             f"rows but {compacted} are compacted")
        tail = None
        path = f"{schema.TAIL_GROUP}/{key}"
        tarr = None
        if self._rows == "gone":
            compacted = count
        elif self._rows is not None:
            from ._sharded_reader import RowTailReader

            rows, entries = self._rows
            tail = RowTailReader(self._store, self._where, key, rows, entries[key][0], layout,
                                 tuple(arr.shape[1:]), np.dtype(arr.dtype))
        elif compacted < count:
            try:
                tarr = _io.open_zarr_array(self._store, path, what="parameter tail")
            except CorruptStoreError:
                # a writer may have compacted every row and removed the tail since we read
                # the root (a clean close): then the shards hold them all
                if self._compacted_now() < count:
                    raise
                compacted = count
        if tarr is not None:
            self._check_rows(tarr, path, count)
            tail = _ArrayReader(self._store, self._where, key, tarr, count, source_dtype)
            tail.path = path
            if not (tail.raw and tail._per_row and tail.checksummed == layout.checksummed
                    and tail.inner == tuple(arr.shape[1:]) and tail.dtype == np.dtype(arr.dtype)):
                raise _corrupt(self._where, path, "its layout is not the per-step layout of "
                                                  f"the sharded tensor {key!r}")
        return ShardedReader(self._store, self._where, key, arr, count, source_dtype,
                             layout=layout, compacted=compacted, tail=tail,
                             compacted_now=self._compacted_now)

    def _compacted_now(self) -> int:
        """The compacted count the root document publishes now (a writer may have moved more
        rows into shards since this Run read it)."""
        doc = self._read_root()
        meta = schema.check_meta(doc.get("attributes", {}).get(schema.META_KEY), self._where)
        return int(meta["commit"].get("compacted", 0))

    def _read_root(self) -> dict:
        """The root document (the caller checks it); after a power cut that left it empty or
        not a JSON object, the durable fallback root (grokscope.store._durable, already
        checked), with one ``UserWarning`` per Run saying which steps it holds. Without a
        valid fallback: the errors as before."""
        doc, what = _durable.root_problem(self._store)
        if what is None:
            return doc
        fallback = _durable.read_fallback(self._store, self._where)
        if fallback is None:
            self.recovered = None
            return _io.check_root(self._store)  # raises as before
        if getattr(self, "recovered", None) is None:
            warnings.warn(_durable.recovery_message(self._where, what, fallback, writer=False),
                          UserWarning, stacklevel=4)
        #: why the root was replaced by the durable fallback root (None: it was not)
        self.recovered = what
        return fallback

    def _check_rows(self, arr: zarr.Array, name: str, count: int) -> None:
        if arr.ndim < 1 or arr.shape[0] < count:
            raise _corrupt(
                self._where, name,
                f"it has {arr.shape[0] if arr.ndim else 0} rows but {count} are committed",
            )

    # ------------------------------------------------------------------ views
    @property
    def config(self) -> dict:
        return self._meta["config"]

    @property
    def closed(self) -> bool:
        """Whether the writer had closed the store when it was last read (:meth:`refresh`);
        False while a Recorder appends, after a writer was killed, and for stores closed
        before grokscope wrote the marker."""
        return self._meta.get(schema.CLOSED_KEY) is True

    @property
    def meta(self) -> dict:
        """The store's grokscope metadata (versions, created, params, metrics, commit)."""
        return self._meta

    @property
    def params(self) -> xr.Dataset:
        """Lazy (dask) dataset of every state-dict tensor, dims ``(step, <key>_dim0, ...)``
        with every character of the key that is not ``[0-9A-Za-z_]`` as ``_``
        (``layers_0_weight_dim0``; stores written before have ``layers.0.weight.dim0``)."""
        if self._params_ds is None:
            dims = schema.tensor_dims({k: len(r.inner) for k, r in self._readers.items()},
                                      style=schema.dims_style(self._meta))
            self._params_ds = xr.Dataset(
                {k: (dims[k], r.dask(self._token)) for k, r in self._readers.items()},
                coords={schema.STEP: self.steps},
            )
        return self._params_ds

    @property
    def metrics(self) -> xr.Dataset:
        """Lazy dataset of the scalar metrics and ``nonfinite``, dim ``step``."""
        if self._metrics_ds is None:
            self._metrics_ds = xr.Dataset(
                {n: ((schema.STEP,), r.dask(self._token))
                 for n, r in self._scalar_readers.items() if n != schema.STEP},
                coords={schema.STEP: self.steps},
            )
        return self._metrics_ds

    @property
    def data(self) -> Data:
        """The stored train/test split."""
        if self._data is None:
            self._data = read_data(self._store)
        return self._data

    @property
    def results(self) -> Mapping[str, xr.Dataset]:
        """``name -> xr.Dataset`` (loaded) of the analysis results: ``results/`` of this store,
        or of the separate results store ``results_path`` when set (``open_run(results=...)``)."""
        from ..results_io import ResultsView, location_for

        return ResultsView(location_for(self))

    def to_datatree(self) -> xr.DataTree:
        """The whole run as one ``xr.DataTree``::

            /                 attrs: grokscope_schema, grokscope (the store's metadata, JSON)
            /params           every state-dict tensor, lazy (dask), dims (step, <key>_dim0, ...)
            /metrics          the scalar metrics and nonfinite, lazy, dim step
            /data             x_train, y_train, x_test, y_test, extra.<name> (when stored)
            /results/<name>   every complete result (``run.results[name]``, loaded: small)

        Dims are names a user can type (``layers_0_weight_dim0``, ``x_train_dim0``), also for
        stores whose arrays carry the older ``layers.0.weight.dim0``. The root holds no
        variables, so each node keeps its own ``step`` coordinate (a result of some of the
        steps sits beside the params of all of them). Attributes are netCDF-compatible
        (``results_io.netcdf_attrs``): ``tree.to_netcdf(path)`` needs a netCDF4 engine
        (netCDF4 or h5netcdf) for the groups.
        """
        from ..results_io import netcdf_attrs, netcdf_safe

        nodes: dict[str, xr.Dataset] = {
            "/": xr.Dataset(attrs=netcdf_attrs({schema.SCHEMA_KEY: schema.SCHEMA_VERSION,
                                                schema.META_KEY: self._meta})),
        }
        dims = schema.tensor_dims({k: len(r.inner) for k, r in self._readers.items()})
        nodes["/params"] = xr.Dataset(
            {k: (dims[k], r.dask(self._token)) for k, r in self._readers.items()},
            coords={schema.STEP: self.steps},
        )
        nodes["/metrics"] = self.metrics
        try:
            data = self.data
        except StoreError as exc:
            if isinstance(exc, CorruptStoreError):
                raise
            data = None  # recorded with data=None
        if data is not None:
            arrays = {s: getattr(data, s) for s in schema.SPLITS}
            arrays.update({schema.EXTRA_PREFIX + k: v for k, v in data.extras.items()})
            ddims = schema.tensor_dims({n: t.dim() for n, t in arrays.items()}, leading=None)
            nodes["/data"] = xr.Dataset(
                {n: (ddims[n], t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy())
                 for n, t in arrays.items()},
                attrs=netcdf_attrs({"task": data.task}),
            )
        results = self.results
        for name in results:
            nodes[f"/{schema.RESULTS_GROUP}/{name}"] = netcdf_safe(results[name])
        return xr.DataTree.from_dict(nodes)

    @property
    def nbytes(self) -> int:
        """Bytes the store occupies."""
        return _io.store_nbytes(self._store)

    @property
    def store(self) -> Any:
        """The underlying zarr store (for writers of ``results/``)."""
        return self._store

    # ------------------------------------------------------------------ checkpoints
    def index_of(self, step: int) -> int:
        """Row position of ``step``; StepNotFoundError listing nearby steps when absent."""
        try:
            return self._index[int(step)]
        except (KeyError, TypeError, ValueError):
            pass
        if not self._count:
            raise StepNotFoundError(f"step {step!r} is not in {self._where}: the run is empty")
        pos = int(np.searchsorted(self.steps, step)) if isinstance(step, int | np.integer) else 0
        near = self.steps[max(0, pos - 3): pos + 3].tolist()
        raise StepNotFoundError(
            f"step {step!r} is not in {self._where}; nearby recorded steps: {near} (range "
            f"{int(self.steps[0])}..{int(self.steps[-1])}, {self._count} steps)"
        )

    def state_dict_at(self, step: int) -> dict[str, torch.Tensor]:
        """The recorded ``state_dict`` at ``step`` (CPU tensors in their recorded dtype)."""
        i = self.index_of(step)
        out = {}
        for k, r in self._readers.items():
            t = torch.from_numpy(np.asarray(r.rows([i])[0]))
            if r.source_dtype == "torch.bfloat16":
                t = t.to(torch.bfloat16)
            out[k] = t
        return out

    def trajectory(self, key: str, *, steps: Sequence[int] | None = None,
                   index: tuple[int, ...] | None = None) -> np.ndarray:
        """One tensor (or one entry ``index`` of it) across steps, read eagerly.

        Returns
        -------
        np.ndarray
            ``(n_steps, *shape)``, or ``(n_steps,)`` with ``index``.
        """
        r = self._readers.get(key) or self._scalar_readers.get(key)
        if r is None:
            raise ConfigError(
                f"no tensor or metric {key!r} in {self._where}; have {sorted(self._readers)}"
            )
        rows = np.arange(self._count) if steps is None else [self.index_of(s) for s in steps]
        if index is not None:
            return r.element(rows, index)
        return r.rows(rows)

    def model_at(self, step: int, model: Any = None,
                 device: str | torch.device = "cpu") -> nn.Module:
        """A fresh model with the weights of ``step``, in eval mode on ``device``.

        Every call returns a new module (never one returned before, never the caller's
        object). The architecture comes from, in order of preference:

        1. ``model`` given here, else the ``model=`` given to :func:`open_run`
           (:attr:`model_override`): an instance (deep-copied once, never modified), an
           ``nn.Module`` class (called with the stored kwargs), a zero-argument factory, a
           registered model name, or a ``"module:qualname"`` the caller names;
        2. the registered model name in the stored spec (``config["model"]["name"]``);
        3. the ``torch.export`` program stored in the run (no code needed; see
           :mod:`grokscope.store.portable`);
        4. the stored ``module:qualname`` factory with its stored kwargs, only with
           ``trust_code=True``.

        The architecture is built once per Run and copied per call (:attr:`model_source` says
        which path is used).

        Raises
        ------
        ModelMismatchError
            The architecture's state-dict keys or shapes differ from the stored weights.
        UntrustedCodeError, ConfigError
            No architecture is available (the message lists every option).
        """
        sd = self.state_dict_at(step)
        _source, template = self._template(model, device)
        cached = self._shapes
        if cached is None or cached[0] is not template:
            cached = self._shapes = (template, {k: tuple(v.shape)
                                                for k, v in template.state_dict().items()})
        own = cached[1]
        msg = mismatch_message({k: tuple(v.shape) for k, v in sd.items()}, own,
                               f"the model does not match the weights stored in {self._where}")
        if msg:
            raise ModelMismatchError(msg + "; pass the architecture the run was recorded with")
        from .portable import fresh_copy

        return fresh_copy(template, sd).to(device).eval()  # takes sd's tensors as its weights

    @property
    def model_source(self) -> str:
        """Where :meth:`model_at` gets the architecture: ``"caller"`` (the model passed in),
        ``"registered"`` (a grokscope model name), ``"exported"`` (the stored torch.export
        program), ``"factory"`` (trusted ``module:qualname``), or ``"none"`` (no way: then
        :meth:`model_at` raises, naming the options)."""
        try:
            return self._template(None, "cpu")[0]
        except GrokscopeError:
            return "none"

    # ------------------------------------------------------------------ architecture
    def _template(self, model: Any, device: str | torch.device) -> tuple[str, nn.Module]:
        """``(source, module)``: the architecture model_at copies (built once, cached)."""
        dev = torch.device(device)
        given = model if model is not None else self.model_override
        if given is not None:
            cached = self._caller_template
            if cached is None or not _same_arg(cached[0], given):
                self._caller_template = (given, self._build_caller(_check_model_arg(given)))
            return "caller", self._caller_template[1].to(dev)  # our copy: moved in place
        # an exported program bakes device arguments into its graph: one template per device
        key = str(dev) if dev.type != "cpu" else "cpu"
        if key not in self._stored_templates:
            source, template = self._build_stored(dev)
            self._stored_templates[key] = (source, template.to(dev))
        return self._stored_templates[key]

    def _spec(self) -> dict:
        spec = self.config.get("model")
        return spec if isinstance(spec, dict) else {}

    def _build_caller(self, given: Any) -> nn.Module:
        import copy

        from ..models import _call_factory, _import_factory, build_model, model_for

        spec = self._spec()
        kwargs = spec.get("kwargs") if isinstance(spec.get("kwargs"), dict) else {}
        if isinstance(given, nn.Module):
            try:
                return copy.deepcopy(given)
            except Exception as exc:  # noqa: BLE001 - user modules may refuse deepcopy
                raise ConfigError(
                    f"the model passed cannot be deep-copied ({type(exc).__name__}: {exc}); "
                    "grokscope never modifies the caller's instance, so pass its class or a "
                    "zero-argument factory instead"
                ) from exc
        if isinstance(given, type):
            try:
                built = given(**kwargs)
            except TypeError as exc:
                raise ConfigError(
                    f"{given.__name__}(**{kwargs!r}) failed ({exc}); pass a built instance or a "
                    "zero-argument factory"
                ) from exc
        elif isinstance(given, str):
            if ":" in given:  # code the caller names is trusted
                built = _call_factory(_import_factory(given), given, kwargs)
            elif spec.get("name") == given:
                built = build_model(given, **kwargs)
            else:
                built = model_for(given, self.data)
        else:
            built = given()
        if not isinstance(built, nn.Module):
            raise ConfigError(
                f"the model factory {given!r} returned {type(built).__name__}, not an nn.Module"
            )
        return built

    def _build_stored(self, device: torch.device) -> tuple[str, nn.Module]:
        from ..models import build_from_spec

        spec = self._spec()
        reasons: list[str] = []
        if "name" in spec:
            try:
                return "registered", build_from_spec(spec)
            except UnknownNameError as exc:  # registered only in the recording process
                reasons.append(str(exc))
        factory = spec.get("factory")
        info = self._meta.get("program")
        if info is not None:
            from .portable import load_exported

            try:
                return "exported", load_exported(self._program_bytes(), device=device)
            except CorruptStoreError as exc:
                if factory is None or not self.trust_code:
                    raise  # a damaged (or crafted) program is reported, never skipped silently
                warnings.warn(f"{exc}; using the trusted factory {factory!r} instead",
                              RuntimeWarning, stacklevel=4)
        elif self._meta.get("export_error"):
            reasons.append(f"no exported program ({self._meta['export_error']})")
        else:
            reasons.append("the store holds no exported program")
        if factory is not None and self.trust_code:
            return "factory", build_from_spec(spec, trust_code=True)
        options = self._options_text(spec)
        if factory is not None:
            raise UntrustedCodeError(
                f"cannot rebuild the model of {self._where}: {'; '.join(reasons)}; it names code "
                f"{factory!r}, imported only when trusted. {options}"
            )
        raise ConfigError(f"cannot rebuild the model of {self._where}: {'; '.join(reasons)}. "
                          f"{options}")

    def _options_text(self, spec: dict) -> str:
        kwargs = spec.get("kwargs")
        trust = ""
        if spec.get("factory"):
            trust = (f"; or, if you trust the code this store names ({spec['factory']}), "
                     "trust_code=True (--trust-code)")
        return (
            "Pass the model yourself: gs.open_run(path, model=...), run.model_at(step, "
            "model=...) or gs.analyze(path, model=...) with an instance, an nn.Module class "
            f"(called with the stored kwargs {kwargs!r}), a zero-argument factory or a "
            "registered model name; on the command line --model module:Class --model-kwargs "
            f"JSON{trust}"
        )

    def _program_bytes(self) -> bytes:
        """The stored torch.export program, checked (key form, length, sha256)."""
        if self._program is not None:
            return self._program
        import hashlib

        info = self._meta.get("program")
        if not isinstance(info, dict):
            raise CorruptStoreError(f"the program record of {self._where} is malformed")
        key = schema.check_stored_key(info.get("key"), "program", self._where)
        nbytes = info.get("nbytes")
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
            raise _corrupt(self._where, key, f"its recorded size {nbytes!r} is not a byte count")
        arr = _io.open_zarr_array(self._store, key, what="model program")
        if arr.shape != (nbytes,) or np.dtype(arr.dtype) != np.uint8:
            raise _corrupt(self._where, key, f"shape {arr.shape} {arr.dtype}, expected "
                                             f"({nbytes},) uint8")
        raw = _read_whole(self._store, self._where, key, "model program").tobytes()
        if len(raw) != nbytes or hashlib.sha256(raw).hexdigest() != info.get("sha256"):
            raise _corrupt(self._where, key, "its bytes do not match the recorded checksum")
        self._program = raw
        return raw

    # ------------------------------------------------------------------ integrity
    def verify(self) -> dict[str, int]:
        """Read and check every stored chunk of the committed rows: each tensor, metric,
        ``step`` and ``nonfinite`` chunk, the data split, the resume state and the stored
        program (checksums, lengths, presence; see docs/store.md, "Integrity").

        Returns
        -------
        dict
            ``{"arrays": n, "chunks": n}`` checked; plus ``"recovered_from_fallback": 1``
            when the root was damaged and the durable fallback root was read instead.

        Raises
        ------
        CorruptStoreError
            Listing every damaged array with its first damaged rows/steps (up to 20 lines).
        """
        problems: list[str] = []
        n_arrays = n_chunks = 0

        def check(fn: Any) -> None:
            try:
                fn()
            except CorruptStoreError as exc:
                problems.append(str(exc).split(". Restore")[0])

        for r in (*self._readers.values(), *self._scalar_readers.values()):
            n_arrays += 1
            r.forget()  # re-read, never a cached index
            for lo, hi in r.blocks():
                n_chunks += 1
                check(lambda lo=lo, hi=hi, r=r: r.rows(np.arange(lo, hi)))
        if _io.exists(self._store, f"{schema.DATA_GROUP}/zarr.json"):
            n_arrays += 1
            check(lambda: read_data(self._store))
        if self._meta["commit"].get("resume") is not None:
            n_arrays += 1
            check(lambda: load_resume(self._store, self._meta["commit"]["resume"]))
        if self._meta.get("program") is not None:
            n_arrays += 1
            self._program = None  # re-read, never the cached bytes
            check(self._program_bytes)
        if problems:
            shown = problems[:20] + ([f"... and {len(problems) - 20} more"]
                                     if len(problems) > 20 else [])
            raise CorruptStoreError(
                f"{len(problems)} damaged part(s) in {self._where}:\n  " + "\n  ".join(shown)
                + "\nRestore the store from a copy, or re-record/re-import the run"
            )
        out = {"arrays": n_arrays, "chunks": n_chunks}
        if self.recovered is not None:  # read from the durable fallback root
            out["recovered_from_fallback"] = 1
        return out

    # ------------------------------------------------------------------ description
    def info(self) -> dict[str, Any]:
        """A summary: steps, tensors (shapes), metrics, task, model spec, the stored program
        (or why there is none), size on disk."""
        return {
            "path": str(self.path),
            "steps": {
                "count": self._count,
                "first": int(self.steps[0]) if self._count else None,
                "last": int(self.steps[-1]) if self._count else None,
            },
            "tensors": {k: list(r.inner) for k, r in self._readers.items()},
            "n_params": int(sum(int(np.prod(r.inner)) for r in self._readers.values())),
            "metrics": [n for n in self._scalar_readers if n != schema.STEP],
            "task": self.config.get("task"),
            "model": self.config.get("model"),
            "program": self._meta.get("program") or (
                {"export_error": self._meta["export_error"]} if self._meta.get("export_error")
                else None),
            "results": list(self.results),
            "nbytes": self.nbytes,
            "versions": self._meta.get("versions"),
            "created": self._meta.get("created"),
        }

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        rng = f"steps {int(self.steps[0])}..{int(self.steps[-1])}" if self._count else "no steps"
        task = (self.config.get("task") or {}).get("name")
        model = self.config.get("model") or {}
        mname = model.get("name") or model.get("factory")
        return (
            f"<grokscope.Run {self._where!r}: {self._count} checkpoints ({rng}), "
            f"{len(self._readers)} tensors, task={task!r}, model={mname!r}>"
        )


def open_run(path_or_url: str | os.PathLike | Run, *, model: Any = None,
             anatomy: dict | None = None, trust_code: bool = False,
             storage_options: dict | None = None, results: str | os.PathLike | None = None) -> Run:
    """Open a recorded run (a local path or an fsspec URL) for reading.

    Parameters
    ----------
    path_or_url : str, PathLike or Run
        The store; a Run is returned as is (with ``model``/``anatomy`` attached when given).
    model : nn.Module, class, callable, str or None
        The architecture :meth:`Run.model_at` uses instead of the stored one: an instance
        (copied, never modified), an ``nn.Module`` class (called with the stored kwargs), a
        zero-argument factory, a registered model name or ``"module:qualname"``. None: the
        stored one (a registered name, the stored torch.export program, or a trusted factory).
    anatomy : dict, optional
        Roles overriding the stored/detected anatomy (kept as ``run.anatomy_override``).
    trust_code : bool
        Allow :meth:`Run.model_at` to import a ``module:qualname`` factory named in the store.
    storage_options : dict, optional
        fsspec options for URLs.
    results : str or PathLike, optional
        A separate results store (written by ``gs.analyze(..., results=...)``, e.g. for a
        read-only run): ``run.results`` reads from it. StoreError when it belongs to another run.

    Raises
    ------
    NotAStoreError, SchemaVersionError, CorruptStoreError
    ConfigError
        ``model`` or ``anatomy`` of the wrong kind.
    """
    if isinstance(path_or_url, Run):
        if model is not None:
            path_or_url.model_override = _check_model_arg(model)
        if anatomy is not None:
            path_or_url.anatomy_override = anatomy
        if results is not None:
            path_or_url.results_path = results
        return path_or_url
    local = _io._local_path(path_or_url)
    store = _io.open_store(path_or_url, read_only=True, storage_options=storage_options)
    if local is not None and not local.expanduser().exists():
        _io.check_root(store)  # raises NotAStoreError naming the path
    # a local path is kept absolute and expanded, so results written later by path land in
    # this store whatever the working directory or '~' (URLs are kept as given)
    where = local.expanduser().absolute() if local is not None else path_or_url
    run = Run(where, store, trust_code=trust_code, model=model, anatomy=anatomy)
    run.storage_options = storage_options
    if results is not None:
        from ..results_io import location_for

        run.results_path = results
        location_for(run)  # refuse now a results store that belongs to another run
    return run
