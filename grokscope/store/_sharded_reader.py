"""Reading a sharded tensor (see :mod:`grokscope.store._shards`): rows before the compacted
boundary from their shard, the others from the row files ``_tail/rows`` (stores written before:
the per-tensor tail ``_tail/<key>``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import dask.array as da
import numpy as np
import zarr

from ..errors import CorruptStoreError
from . import _io, _shards
from .run import _ArrayReader, _corrupt


class RowTailReader:
    """One sharded tensor's uncompacted rows inside the row files ``_tail/rows`` (one file per
    row holding every sharded tensor's stored chunk; see ``grokscope.store.recorder._RowTail``):
    each row read at its byte range, length- and CRC32C-checked."""

    def __init__(self, store: Any, where: str, name: str, rows: zarr.Array, offset: int,
                 layout: _shards.ShardLayout, inner: tuple[int, ...], dtype: np.dtype) -> None:
        self.store, self.where, self.name, self.rows_array = store, where, name, rows
        self.offset, self.layout, self.inner = offset, layout, inner
        self.dtype = np.dtype(dtype).newbyteorder("<")

    def _key(self, row: int) -> str:
        return f"{self.rows_array.path}/{self.rows_array.metadata.encode_chunk_key((row, 0))}"

    def rows(self, idx: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        out = np.empty((idx.size, *self.inner), dtype=self.dtype)
        flat = out.reshape(idx.size, -1).view(np.uint8)
        n, size = self.layout.chunk_nbytes, self.layout.stored_nbytes
        for j, row in enumerate(idx):
            raw = _io.get_bytes(self.store, self._key(int(row)),
                                (self.offset, self.offset + size))
            what = None
            if raw is None:
                what = "is missing"
            elif len(raw) != size:
                what = f"holds {len(raw)} bytes, expected {size} (truncated)"
            elif self.layout.checksummed and not _io.check_crc(raw[:n], raw[n:]):
                what = ("does not match its CRC32C checksum (its bytes changed after they were "
                        "written)")
            if what is not None:
                raise _corrupt(self.where, self.name,
                               f"the chunk of row {int(row)} in the per-step tail "
                               f"({self._key(int(row))!r}) {what}")
            flat[j] = np.frombuffer(raw, dtype=np.uint8, count=n)
        return out


class ShardedReader(_ArrayReader):
    """Read access to the first ``count`` rows of a sharded tensor, every row checked.

    Parameters
    ----------
    layout : ShardLayout
        The array's layout (:func:`grokscope.store._shards.layout_of`).
    compacted : int
        Rows ``0..compacted-1`` are read from shards, the others from ``tail``.
    tail : _ArrayReader, RowTailReader or None
        The per-step tail (None when every committed row is compacted).
    compacted_now : callable, optional
        The compacted count a writer has published since (re-read from the root document):
        a tail chunk that vanished because a writer compacted it is then read from its shard.
    """

    def __init__(self, store: Any, where: str, name: str, array: zarr.Array, count: int,
                 source_dtype: str | None, *, layout: _shards.ShardLayout, compacted: int,
                 tail: _ArrayReader | RowTailReader | None,
                 compacted_now: Callable[[], int] | None = None) -> None:
        super().__init__(store, where, name, array, count, source_dtype)
        self.raw, self.checksummed = True, layout.checksummed
        self._crc = _io.CRC_NBYTES if layout.checksummed else 0
        self._missing_ok = False
        self.layout = layout
        self.compacted = compacted
        self.tail = tail
        self._compacted_now = compacted_now
        self._indexes: dict[int, np.ndarray] = {}  # checked shard indexes (local stores)
        self._paths: dict[int, str] = {}

    # ------------------------------------------------------------------ messages
    def _row_text(self, row: int) -> str:
        steps = self.steps
        at = f" (step {int(steps[row])})" if steps is not None and row < len(steps) else ""
        return f"row {row}{at}"

    def _shard_damage(self, k: int, what: str) -> CorruptStoreError:
        lo = k * self.layout.steps
        hi = min(lo + self.layout.steps, self.compacted) - 1
        return _corrupt(self.where, self.name,
                        f"shard {k} (rows {lo}..{hi}, key {self._shard_key(k)!r}) {what}")

    def _row_damage(self, k: int, row: int, what: str) -> CorruptStoreError:
        return _corrupt(self.where, self.name,
                        f"the chunk of {self._row_text(row)} in shard {k} {what}")

    # ------------------------------------------------------------------ reading
    def _shard_key(self, k: int) -> str:
        zeros = (0,) * len(self.inner)
        return f"{self.name}/{self.array.metadata.encode_chunk_key((k, *zeros))}"

    def _index(self, k: int, raw: bytes, size: int) -> np.ndarray:
        index = _shards.parse_index(raw, self.layout)
        if index is None:
            what = ("is shorter than its index (truncated)" if size < self.layout.index_nbytes
                    else "has an index that does not match its CRC32C checksum")
            raise self._shard_damage(k, what)
        return index

    def _entry(self, k: int, index: np.ndarray, j: int, size: int) -> int:
        """The byte offset of shard ``k``'s row ``j``, checked against the index."""
        off, nbytes = index[j]
        row = k * self.layout.steps + j
        if off == _shards.EMPTY and nbytes == _shards.EMPTY:
            raise self._row_damage(k, row, "is missing from the shard")
        want = self.layout.stored_nbytes
        if nbytes != want:
            raise self._row_damage(k, row, f"holds {int(nbytes)} bytes, expected {want} "
                                           "(truncated or overwritten)")
        if int(off) + want > size - self.layout.index_nbytes:
            raise self._row_damage(k, row, "lies beyond the shard's data (truncated)")
        return int(off)

    def _check_row(self, k: int, row: int, data: Any, stored: Any) -> None:
        if self.checksummed and not _io.check_crc(data, stored):
            raise self._row_damage(k, row, "does not match its CRC32C checksum (its bytes "
                                           "changed after they were written)")

    def _read_shard(self, k: int, js: np.ndarray, flat: np.ndarray, pos: np.ndarray) -> None:
        """Rows ``js`` of shard ``k`` into ``flat[pos]`` (uint8 views of the output rows).

        On local disk the shard is opened once and each row read straight into its output
        row (its checksum after it); the shard's index is read once per reader (checked by its
        CRC32C and cached: a grokscope writer never moves a compacted row, and every row's own
        checksum is still checked on every read). Elsewhere the shard is fetched whole.
        """
        if not isinstance(self.store, _io.LocalStore):
            self._read_shard_whole(k, js, flat, pos)
            return
        self._read_local(k, js, flat, pos)

    def _read_local(self, k: int, js: Any, flat: np.ndarray, pos: Any) -> None:
        path = self._paths.get(k)
        if path is None:
            path = self._paths[k] = os.path.join(self.store.root, self._shard_key(k))
        lo, n = k * self.layout.steps, self.layout.chunk_nbytes
        crc = bytearray(self._crc)
        try:
            with open(path, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                index = self._indexes.get(k)
                for j, p in zip(js, pos):
                    j = int(j)
                    if index is None or index[j, 1] == _shards.EMPTY:  # absent: not cached yet
                        f.seek(max(0, size - self.layout.index_nbytes))
                        index = self._index(k, f.read(self.layout.index_nbytes), size)
                        self._indexes[k] = index
                    f.seek(self._entry(k, index, j, size))
                    out = memoryview(flat[p])
                    got = f.readinto(out) + (f.readinto(crc) if self._crc else 0)
                    if got != n + self._crc:
                        raise self._row_damage(k, lo + j, "is truncated")
                    self._check_row(k, lo + j, out, crc)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise self._shard_damage(k, "is missing") from None

    def _read_shard_whole(self, k: int, js: np.ndarray, flat: np.ndarray,
                          pos: np.ndarray) -> None:
        key = self._shard_key(k)
        n = self.layout.chunk_nbytes
        lo = k * self.layout.steps
        raw = _io.get_bytes(self.store, key)
        if raw is None:
            raise self._shard_damage(k, "is missing")
        view = memoryview(raw)
        index = self._index(k, raw[-self.layout.index_nbytes:], len(raw))
        for j, p in zip(js, pos):
            off = self._entry(k, index, int(j), len(raw))
            self._check_row(k, lo + int(j), view[off:off + n], view[off + n:off + n + self._crc])
            flat[p] = np.frombuffer(view[off:off + n], dtype=np.uint8)

    def _tail_rows(self, idx: np.ndarray) -> np.ndarray:
        try:
            return self.tail.rows(idx) if self.tail is not None else self._no_tail(idx)
        except CorruptStoreError:
            # a writer may have compacted these rows (and deleted their chunks) since we read
            # the root: read them from their shards if it says so now
            # (dask reads blocks from several threads: each compares with its own rows)
            now = self._compacted_now() if self._compacted_now is not None else 0
            if now < int(idx.max()) + 1:
                raise
            self.compacted = max(self.compacted, now)
            return self.rows(idx)

    def _no_tail(self, idx: np.ndarray) -> np.ndarray:
        raise _corrupt(self.where, self.name,
                       f"{self._row_text(int(idx[0]))} is committed but neither in a shard nor "
                       "in the per-step tail")

    def rows(self, idx: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows ``idx`` (positions, not steps), shape ``(len(idx), *inner)``; each shard is
        opened once per call, every row's checksum checked."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.shape[0]):
            raise IndexError(f"row out of range for {self.name!r} with {self.shape[0]} rows")
        out = np.empty((idx.size, *self.inner), dtype=self._le)
        if idx.size == 1 and idx[0] < self.compacted and isinstance(self.store, _io.LocalStore):
            k, j = divmod(int(idx[0]), self.layout.steps)  # one checkpoint: the short path
            self._read_local(k, (j,), out.reshape(1, -1).view(np.uint8), (0,))
            return out.astype(self.dtype, copy=False)
        in_tail = idx >= self.compacted
        if in_tail.any():
            out[in_tail] = self._tail_rows(idx[in_tail])
        main = np.nonzero(~in_tail)[0]
        if main.size:
            flat = out.reshape(idx.size, -1).view(np.uint8)
            shard_of = idx[main] // self.layout.steps
            for k in np.unique(shard_of):
                sel = main[shard_of == k]
                self._read_shard(int(k), idx[sel] - int(k) * self.layout.steps, flat, sel)
        return out.astype(self.dtype, copy=False)

    def forget(self) -> None:
        """Drop the cached shard indexes (the next read checks each index again)."""
        self._indexes.clear()

    def element(self, idx: Sequence[int] | np.ndarray, index: tuple[int, ...]) -> np.ndarray:
        """One entry ``index`` of the tensor at rows ``idx`` (rows read and checked whole)."""
        index = self._entry_index(index)
        return self.rows(idx)[(slice(None), *index)]

    def blocks(self) -> list[tuple[int, int]]:
        """Row ranges read together: one per shard, then one per tail row."""
        # a writer may have compacted rows beyond this reader's count since it opened
        s, c = self.layout.steps, min(self.compacted, self.shape[0])
        out = [(lo, min(lo + s, c)) for lo in range(0, c, s)]
        return out + [(r, r + 1) for r in range(c, self.shape[0])]

    def dask(self, token: str) -> da.Array:
        if not self.shape[0]:
            return super().dask(token)
        rows = tuple(hi - lo for lo, hi in self.blocks())
        return da.from_array(
            self, chunks=(rows, *((n,) for n in self.inner)), asarray=False, lock=False,
            fancy=False, meta=np.empty((0,) * self.ndim, dtype=self.dtype),
            name=f"grokscope-{token}-{self.name}-{self.shape[0]}",
        )
