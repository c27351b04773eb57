"""The scalar tail: ``step``, ``nonfinite`` and every metric of the newest committed rows, held
in the root document's commit instead of their 1024-row chunks.

A sharded store's writer commits a step by writing its tensors' per-step files and then the
root ``zarr.json`` (see :mod:`grokscope.store.schema`). Rewriting each scalar array's current
1024-row chunk at every step too (an atomic replace of a file that grows with the run, per
scalar array) was most of the cost of recording a small model; instead the root's commit carries
the scalar values of rows ``start..count-1``::

    "commit": {"count": n, ..., "tail": {"start": s, "columns": {"step": "<base64>",
                                                                  "nonfinite": "<base64>",
                                                                  "<metric>": "<base64>", ...}}}

Each column is encoded exactly as an uncompressed, checksummed chunk is stored (the values'
little-endian bytes followed by their 4-byte CRC32C), then base64. Rows before ``start`` live
in the scalar arrays as before. The writer moves the tail into the arrays (``flush``) when it
compacts tensors, when the tail reaches :data:`MAX_ROWS` rows, and on close: first the chunks
(atomic replaces; rows at and after the old ``start`` are ignored by readers until the root
says otherwise), then the root with the new ``start``. A kill at any moment leaves the last
root's view intact. A closed store has no tail (``"tail"`` is absent when it holds no rows), so
plain zarr and xarray read the arrays as before; stores written before this key read every row
from the arrays.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import CorruptStoreError
from . import _io

#: the key of the tail in the root metadata's ``commit``
TAIL_KEY = "tail"
#: the most rows the tail holds before the writer flushes it into the arrays (the root
#: document then stays a few kB: 8 bytes per row per scalar array, base64)
MAX_ROWS = 256


def encode(values: np.ndarray) -> str:
    """``values`` (1-d) as base64 of their little-endian bytes followed by their CRC32C."""
    raw = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes()
    return base64.b64encode(raw + _io.crc32c(raw)).decode("ascii")


def _damaged(where: str, name: str, detail: str) -> CorruptStoreError:
    return CorruptStoreError(
        f"the root metadata of {where} is damaged: the newest values of {name!r} it holds "
        f"(commit.tail) {detail}. Restore the store from a copy, or re-record/re-import the run"
    )


def decode(text: Any, dtype: np.dtype, n: int, where: str, name: str) -> np.ndarray:
    """The ``n`` values of one column (``dtype``), checked: length and CRC32C; a damaged
    column is CorruptStoreError naming ``name``."""
    if not isinstance(text, str):
        raise _damaged(where, name, f"are {type(text).__name__}, not text")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise _damaged(where, name, f"are not base64 ({exc})") from None
    le = np.dtype(dtype).newbyteorder("<")
    want = n * le.itemsize
    if len(raw) != want + _io.CRC_NBYTES:
        raise _damaged(where, name, f"hold {len(raw)} bytes, expected {want + _io.CRC_NBYTES} "
                                    f"for {n} rows")
    if not _io.check_crc(raw[:want], raw[want:]):
        raise _damaged(where, name, "do not match their CRC32C checksum")
    return np.frombuffer(raw, dtype=le, count=n).astype(np.dtype(dtype), copy=False)


def start_of(commit: Mapping[str, Any]) -> int:
    """The first row the tail holds (``commit.count`` when there is no tail)."""
    tail = commit.get(TAIL_KEY)
    return int(commit["count"]) if tail is None else int(tail["start"])


def read(commit: Mapping[str, Any], dtypes: Mapping[str, np.dtype], where: str
         ) -> tuple[int, dict[str, np.ndarray]]:
    """``(start, {name: values of rows start..count-1})`` of a checked commit (every name in
    ``dtypes``; the structure was checked by :func:`check`)."""
    count = int(commit["count"])
    tail = commit.get(TAIL_KEY)
    if tail is None:
        return count, {name: np.empty(0, dtype=dt) for name, dt in dtypes.items()}
    start = int(tail["start"])
    cols = tail["columns"]
    return start, {name: decode(cols.get(name), dt, count - start, where, name)
                   for name, dt in dtypes.items()}


def check(commit: Mapping[str, Any], names: list[str], bad: Any) -> None:
    """Raise ``bad(detail)`` unless ``commit``'s tail (when present) is
    ``{"start": int in 0..count, "columns": {name: str}}`` whose names are exactly ``names``."""
    tail = commit.get(TAIL_KEY)
    if tail is None:
        return
    count = commit["count"]
    if not isinstance(tail, dict) or set(tail) != {"start", "columns"}:
        raise bad(f"commit.{TAIL_KEY} is not an object with 'start' and 'columns'")
    start = tail["start"]
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < count:
        raise bad(f"commit.{TAIL_KEY}.start {start!r} is not an integer from 0 to the committed "
                  f"count {count} (excluded)")
    cols = tail["columns"]
    if not isinstance(cols, dict) or set(cols) != set(names) or not all(
            isinstance(v, str) for v in cols.values()):
        raise bad(f"commit.{TAIL_KEY}.columns does not hold one text per scalar array "
                  f"({sorted(names)})")


def entry(start: int, columns: Mapping[str, np.ndarray]) -> dict | None:
    """The ``commit.tail`` value for rows ``start..`` (None when it holds no rows)."""
    if not columns or not len(next(iter(columns.values()))):
        return None
    return {"start": start, "columns": {n: encode(v) for n, v in columns.items()}}
