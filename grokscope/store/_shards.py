"""Sharded parameter arrays: the layout that keeps a long run to a few files per tensor.

A parameter array of a store created with ``steps_per_shard=S`` is a zarr v3 array whose chunk
grid is one **shard** of ``S`` steps, ``(S, *shape)``, encoded by zarr's ``sharding_indexed``
codec with one inner chunk per step, ``(1, *shape)``: inner codecs ``bytes -> crc32c`` (each
step keeps its own checksum), index codecs ``bytes -> crc32c``, index at the end, chunk keys
``c.<k>.0...`` (``"."`` separator: one file per shard, no folders). Plain zarr and xarray read
it as any other array.

grokscope writes a shard itself, deterministically: the inner chunks of the shard's rows in
row order (row ``j`` of the shard at byte ``j * (n + 4)``, each chunk its ``n`` raw bytes and
their CRC32C, copied verbatim from where the step was first committed), then the index
(``S x (offset, nbytes)`` little-endian uint64, ``2**64 - 1`` for a row not in the shard) and
the index's CRC32C. A rewritten shard therefore keeps every earlier row at the same offset with
the same bytes, so a reader never sees a committed row change.

This module holds the byte layout (building and parsing a shard) and nothing about commits:
the recorder decides when rows move into shards (:mod:`grokscope.store.recorder`), the reader
which rows live where (:mod:`grokscope.store.run`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from ..errors import CorruptStoreError
from . import _io

#: the index value of a row absent from its shard (zarr's "empty chunk" marker)
EMPTY = np.uint64(2**64 - 1)
INDEX_ENTRY_NBYTES = 16

#: the chunk key encoding of the arrays grokscope shards (and of their per-step tails): one
#: file per chunk, no nested folders
KEY_ENCODING = {"name": "default", "separator": "."}


@dataclass(frozen=True)
class ShardLayout:
    """How a sharded array is laid out on disk (what :func:`layout_of` found).

    Attributes
    ----------
    steps : int
        Rows per shard, ``S``.
    chunk_nbytes : int
        Bytes of one row's raw data, ``n`` (the inner chunk without its checksum).
    checksummed : bool
        Whether every inner chunk ends with its 4-byte CRC32C.
    """

    steps: int
    chunk_nbytes: int
    checksummed: bool

    @property
    def stored_nbytes(self) -> int:
        """Bytes of one stored inner chunk (raw bytes plus the checksum, when any)."""
        return self.chunk_nbytes + (_io.CRC_NBYTES if self.checksummed else 0)

    @property
    def index_nbytes(self) -> int:
        """Bytes of the index at the end of a shard, its CRC32C included."""
        return self.steps * INDEX_ENTRY_NBYTES + _io.CRC_NBYTES


def layout_of(array: zarr.Array) -> ShardLayout | None:
    """The :class:`ShardLayout` of ``array`` when it is sharded the way grokscope writes it
    (one row per inner chunk, raw little-endian inner chunks with or without ``crc32c``, an
    index ``bytes -> crc32c`` at the end); None for an unsharded array.

    Raises
    ------
    CorruptStoreError
        The array is sharded in any other way (grokscope never writes that: a damaged or
        crafted store).
    """
    codecs = array.metadata.codecs
    if not codecs or type(codecs[0]).__name__ != "ShardingCodec":
        return None
    codec = codecs[0]
    inner = tuple(int(n) for n in array.shape[1:])
    shard = tuple(int(n) for n in array.shards or ())
    names = [type(c).__name__ for c in codec.codecs]
    checksummed = bool(names) and names[-1] == "Crc32cCodec"
    plain = names[:-1] if checksummed else names
    endian = getattr(codec.codecs[0], "endian", None) if names else None
    index_names = [type(c).__name__ for c in codec.index_codecs]
    ok = (
        len(codecs) == 1
        and plain == ["BytesCodec"]
        and getattr(endian, "value", endian) in (None, "little")
        and index_names == ["BytesCodec", "Crc32cCodec"]
        and getattr(codec.index_location, "value", codec.index_location) == "end"
        and tuple(int(n) for n in codec.chunk_shape) == (1, *inner)
        and len(shard) == len(inner) + 1 and shard[1:] == inner and shard[0] >= 1
    )
    if not ok:
        raise CorruptStoreError(
            f"array {array.path!r} is sharded in a way grokscope does not write (codecs "
            f"{codecs}, shards {shard}); the store is damaged or crafted: restore it from a "
            "copy or re-record the run"
        )
    itemsize = np.dtype(array.dtype).itemsize
    return ShardLayout(shard[0], int(np.prod(inner, dtype=np.int64)) * itemsize, checksummed)


def index_bytes(layout: ShardLayout, rows: int) -> bytes:
    """The index of a shard holding its first ``rows`` rows, written in order, with its CRC32C."""
    index = np.full((layout.steps, 2), EMPTY, dtype="<u8")
    size = layout.stored_nbytes
    index[:rows, 0] = np.arange(rows, dtype=np.uint64) * np.uint64(size)
    index[:rows, 1] = size
    raw = index.tobytes()
    return raw + _io.crc32c(raw)


def write_shard(store: Any, key: str, layout: ShardLayout, rows: int,
                chunk: Callable[[int], bytes]) -> None:
    """Write shard ``key`` holding its first ``rows`` rows, row ``j``'s stored inner chunk
    being ``chunk(j)`` (raw bytes plus CRC32C, exactly :attr:`ShardLayout.stored_nbytes`).

    On local disk the shard is streamed into a temporary file and renamed into place (one row
    in memory at a time); elsewhere it is assembled and written with one ``set``. Either way
    readers see the old shard or the new one, never a torn one.
    """
    size = layout.stored_nbytes

    def parts() -> Iterator[bytes]:
        for j in range(rows):
            raw = chunk(j)
            if len(raw) != size:
                raise ValueError(f"inner chunk {j} of {key!r} holds {len(raw)} bytes, not {size}")
            yield raw
        yield index_bytes(layout, rows)

    if isinstance(store, _io.AtomicLocalStore):
        _io.put_local(store, key, parts())
    else:
        _io.put_bytes(store, key, b"".join(parts()))


# ---------------------------------------------------------------------------- the row tail
#: ``shards.tail`` in the root metadata of a store whose uncompacted rows are row files
TAIL_ROWS = "rows"
#: the array of the row files, inside the tail group (``_tail/rows``)
ROWS_NAME = "rows"
#: its attribute: ``[[key, offset, nbytes], ...]``, where each tensor's chunk lies in a row
ROWS_ATTR = "grokscope_rows"


def row_entries(params: dict[str, ShardLayout]) -> dict[str, tuple[int, int]]:
    """``{key: (offset, nbytes)}`` of each sharded tensor's stored chunk (raw bytes and their
    CRC32C, :attr:`ShardLayout.stored_nbytes`) inside a row file, in ``params`` order."""
    out, off = {}, 0
    for key, layout in params.items():
        out[key] = (off, layout.stored_nbytes)
        off += layout.stored_nbytes
    return out


def check_rows_array(array: zarr.Array, layouts: dict[str, ShardLayout], where: str
                     ) -> dict[str, tuple[int, int]]:
    """The entries of the row-file array ``_tail/rows`` (see :mod:`grokscope.store.recorder`:
    one file per uncompacted row, holding every sharded tensor's stored chunk one after the
    other), checked against the tensors' ``layouts``: uint8 ``(rows, n)`` in chunks of
    ``(1, n)``, plain ``bytes`` codec (each chunk inside carries its own CRC32C), one entry per
    sharded tensor of the right size, one after the other filling the row. Else
    CorruptStoreError."""
    raw, checksummed = _io.codec_layout(array)
    entries = array.attrs.get(ROWS_ATTR)
    n = int(array.shape[1]) if array.ndim == 2 else -1

    def bad(what: str) -> CorruptStoreError:
        return CorruptStoreError(
            f"the per-step tail {array.path!r} of {where} is damaged or crafted ({what}); "
            "restore the store from a copy or re-record the run"
        )

    if (np.dtype(array.dtype) != np.uint8 or array.ndim != 2 or not raw or checksummed
            or tuple(array.chunks) != (1, n)):
        raise bad(f"dtype {array.dtype}, shape {array.shape}, chunks {array.chunks}, codecs "
                  f"{[type(c).__name__ for c in array.metadata.codecs]}")
    if not isinstance(entries, list):
        raise bad(f"its {ROWS_ATTR!r} attribute is not a list")
    out: dict[str, tuple[int, int]] = {}
    for e in entries:
        if (not isinstance(e, list) or len(e) != 3 or not isinstance(e[0], str)
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in e[1:])):
            raise bad(f"entry {e!r} is not [key, offset, nbytes]")
        out[e[0]] = (e[1], e[2])
    spans = sorted(out.values())
    if (len(out) != len(entries) or set(out) != set(layouts)
            or any(out[k][1] != lay.stored_nbytes for k, lay in layouts.items())
            or not spans or spans[0][0] != 0 or spans[-1][0] + spans[-1][1] != n
            or any(a[0] + a[1] != b[0] for a, b in zip(spans, spans[1:]))):
        raise bad(f"its entries {entries!r} do not lay out the sharded tensors "
                  f"{sorted(layouts)} inside rows of {n} bytes")
    return out


def parse_index(raw: bytes, layout: ShardLayout) -> np.ndarray | None:
    """The ``(S, 2)`` uint64 index from the last :attr:`ShardLayout.index_nbytes` bytes of a
    shard, or None when its length or its CRC32C is wrong."""
    n = layout.index_nbytes
    if len(raw) != n or not _io.check_crc(raw[:-_io.CRC_NBYTES], raw[-_io.CRC_NBYTES:]):
        return None
    return np.frombuffer(raw[:-_io.CRC_NBYTES], dtype="<u8").reshape(layout.steps, 2)


def read_suffix(store: Any, key: str, nbytes: int) -> tuple[bytes, int] | None:
    """The last ``nbytes`` bytes of ``key`` and the size of the whole file (None: missing)."""
    if isinstance(store, _io.LocalStore):
        try:
            with open(store.root / key, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(max(0, size - nbytes))
                return f.read(nbytes), size
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
    raw = _io.get_bytes(store, key)
    return None if raw is None else (raw[-nbytes:], len(raw))
