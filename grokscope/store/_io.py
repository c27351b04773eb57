"""Low-level store access: opening a path or URL, atomic writes, raw keys and JSON documents.

Every byte the store writes goes through :func:`put_file` (local disk) or the fsspec store's
``set``; both are wrapped here so that

* a local write is atomic (a temporary file in the same folder, then renamed into place; over
  an existing file by an atomic exchange, see :func:`put_file`): a ``SIGKILL`` can never leave
  a torn chunk or a torn ``zarr.json``;
* an ``OSError`` (disk full, permissions) surfaces as one exception type the recorder turns
  into :class:`~grokscope.errors.StoreWriteError`.

Chunk checksums: every array grokscope writes ends its codec chain with zarr v3's ``crc32c``
codec (4 little-endian bytes of the CRC32C of the encoded chunk, appended). :func:`crc32c`,
:func:`codec_layout` and :func:`check_crc` are the raw-path helpers the recorder and the
readers share with zarr's own codec.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr
from zarr.abc.store import ByteRequest, RangeByteRequest, Store
from zarr.core.buffer import Buffer, default_buffer_prototype
from zarr.core.buffer import cpu as cpu_buffer
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore

from ..errors import CorruptStoreError, NotAStoreError

TMP_SUFFIX = ".gstmp"
#: the names of grokscope's own leftovers: :func:`put_file`'s temporary files and (empty)
#: writer-lock files
_OWN_TMP_RE = re.compile(r"^\..+\.[0-9a-f]{12}" + re.escape(TMP_SUFFIX) + "$")
_OWN_LOCK_RE = re.compile(r"^\..+\.lock$")
CRC_NBYTES = 4


# ---------------------------------------------------------------------------- checksums
def crc32c(data: Any) -> bytes:
    """The 4-byte little-endian CRC32C of ``data`` (any buffer), as zarr's ``crc32c`` codec
    appends it to a chunk."""
    value = google_crc32c.value(np.frombuffer(data, dtype=np.uint8))
    return int(value).to_bytes(CRC_NBYTES, "little")


def codec_layout(array: zarr.Array) -> tuple[bool, bool]:
    """``(raw, checksummed)`` of an array's codec chain: ``raw`` when a chunk is plain
    little-endian bytes (``bytes``, optionally followed by ``crc32c``), ``checksummed`` when the
    chain ends with ``crc32c`` (stores written before checksums: False)."""
    names = [type(c).__name__ for c in array.metadata.codecs]
    checksummed = bool(names) and names[-1] == "Crc32cCodec"
    plain = names[:-1] if checksummed else names
    endian = getattr(array.metadata.codecs[0], "endian", None) if names else None
    raw = plain == ["BytesCodec"] and (endian is None or getattr(endian, "value", endian) == "little")
    return raw, checksummed


def check_crc(data: Any, stored: Any) -> bool:
    """Whether the CRC32C of ``data`` equals the 4 ``stored`` bytes."""
    return len(stored) == CRC_NBYTES and crc32c(data) == bytes(stored)


def is_checksum_error(exc: BaseException) -> bool:
    """Whether ``exc`` is zarr's crc32c codec reporting a mismatch."""
    return isinstance(exc, ValueError) and "checksum do not match" in str(exc)


def put_file(path: Path, data: Any, *, durable: bool = False, sync_over: bool = False) -> bool:
    """Write ``data`` (bytes-like, or a tuple/list/iterator of bytes-like parts written one
    after the other) to ``path`` atomically: temporary file, then renamed into place.

    The temporary file lives in the same folder (same file system), is named
    ``.<name>.<random>.gstmp`` and is removed on failure; a killed process may leave one behind,
    which :func:`remove_stale_tmp` deletes when a writer next opens the store.

    Over an existing regular file (the root ``zarr.json`` at every commit, a rewritten shard)
    the new file is swapped in by one ``renameat2(RENAME_EXCHANGE)`` (Linux) and the old one
    deleted, instead of ``os.replace``: as atomic for every reader and against a kill, but
    ext4 (``auto_da_alloc``) makes a rename *over* an existing file write the new file's data
    to disk first, measured at ~2-3 ms per commit on a loaded machine against ~0.1 ms for the
    exchange. The price: after a power cut or a kernel crash (not a killed process) within
    the file system's commit interval, a file swapped in this way may be empty, as any new
    file written without ``fsync`` may (see docs/store.md, "After a power cut"). Elsewhere, or
    where the exchange is refused, ``os.replace``.

    ``durable``: the temporary file is ``fsync``-ed before it is renamed into place, and the
    folder after (grokscope.store._durable: the fallback root). ``sync_over``: when ``path``
    already exists, the new data is ``fsync``-ed before the swap, so a power cut leaves the old
    file or the new one, never an empty one (a writer's every replacement but the root's).
    Returns whether the data was ``fsync``-ed.
    """
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}"
    try:
        try:
            f = open(tmp, "wb")  # noqa: SIM115 (closed below, before the replace)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            f = open(tmp, "wb")  # noqa: SIM115
        with f:
            for part in (data if isinstance(data, tuple | list | Iterator) else (data,)):
                f.write(part)
            synced = durable or (sync_over and os.path.lexists(path))
            if synced:
                f.flush()
                os.fsync(f.fileno())
        if durable:
            os.replace(tmp, path)
            fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            return True
        if _swap(tmp, path):
            try:
                os.unlink(tmp)  # now the old content
            except OSError:
                pass  # a leftover temporary file: remove_stale_tmp deletes it
            return synced
        os.replace(tmp, path)
        return synced
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


_RENAME_EXCHANGE = 2
_renameat2: Any = None


def exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` (files or folders) in one atomic step (Linux
    ``renameat2(RENAME_EXCHANGE)``); False (nothing changed) where unsupported or refused."""
    global _renameat2
    if _renameat2 is None:
        try:
            import ctypes

            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
            _renameat2 = fn
        except (OSError, AttributeError):
            _renameat2 = False
    if _renameat2 is False:
        return False
    at_fdcwd = -100
    return _renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b),
                      _RENAME_EXCHANGE) == 0


def _swap(tmp: Path, path: Path) -> bool:
    """Exchange ``tmp`` and ``path`` atomically when ``path`` is a regular file
    (:func:`exchange`); False (nothing changed) when it is not, or the call is unsupported or
    refused (the caller then renames)."""
    if _renameat2 is False:
        return False
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    return exchange(tmp, path)


class AtomicLocalStore(LocalStore):
    """A zarr ``LocalStore`` whose every ``set`` is an atomic replace (see :func:`put_file`).

    ``written`` collects the paths written through it (:func:`put_local`), which
    ``grokscope.store._durable.sync_written`` ``fsync``-s before a durable commit.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: files written and not yet synced (None: not tracked, readers; a Recorder sets a
        #: set), and the folders of files whose data is synced but whose names are not
        self.written: set[Path] | None = None
        self.written_dirs: set[Path] = set()
        #: folders whose own name in their parent is known to be on disk
        self.durable_dirs: set[Path] = set()

    def set_sync(self, key: str, value: Buffer) -> None:
        self._ensure_open_sync()
        self._check_writable()
        put_local(self, key, value.as_buffer_like())

    async def set(self, key: str, value: Buffer) -> None:
        if not self._is_open:
            await self._open()
        self._check_writable()
        put_local(self, key, value.as_buffer_like())

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        if not (self.root / key).exists():
            await self.set(key, value)


def put_local(store: AtomicLocalStore, key: str, data: Any) -> None:
    """:func:`put_file` of ``key`` in ``store``, remembered in ``store.written``."""
    path = store.root / key
    synced = put_file(path, data, sync_over=store.written is not None and key != "zarr.json")
    if store.written is not None:
        if synced:
            store.written_dirs.add(path.parent)
        else:
            store.written.add(path)


def remove_stale_tmp(store: Store) -> int:
    """Delete temporary files a killed writer left behind (local stores only); return the count."""
    if not isinstance(store, LocalStore):
        return 0
    n = 0
    for dirpath, _dirs, files in os.walk(store.root):
        for name in files:
            if name.endswith(TMP_SUFFIX) or name.endswith(".partial"):
                try:
                    os.unlink(os.path.join(dirpath, name))
                    n += 1
                except FileNotFoundError:
                    pass
    return n


def unfinished_store_files(store: Store | Path) -> list[Path] | None:
    """The leftovers of a local store killed before its first commit, else None.

    A writer killed before its root document landed leaves a folder holding only
    :func:`put_file`'s temporary files (``.zarr.json.<hex>.gstmp``), perhaps empty lock files
    and empty folders: no data, and no ``zarr.json`` that would say whose it is. This returns
    those files (a non-empty list) when the folder holds nothing else; None for a store with a
    ``zarr.json``, an empty or missing folder, a URL, or a folder holding anything else.
    """
    root = _root_of(store)
    if root is None or not root.is_dir() or (root / "zarr.json").exists():
        return None
    found: list[Path] = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if _OWN_TMP_RE.match(name):
                found.append(path)
                continue
            try:
                empty_lock = bool(_OWN_LOCK_RE.match(name)) and path.stat().st_size == 0
            except OSError:
                empty_lock = False
            if not empty_lock:
                return None  # anything else: not ours to judge, never ours to delete
            found.append(path)
    return found or None


def clear_unfinished_store(store: Store | Path, files: list[Path]) -> None:
    """Delete the leftovers :func:`unfinished_store_files` found, then the folders they leave
    empty inside the store (never the store's folder itself, never a non-empty folder)."""
    for path in files:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
    root = _root_of(store)
    if root is None:
        return
    for dirpath, _dirs, _files in os.walk(root, topdown=False):
        if Path(dirpath) != root:
            try:
                os.rmdir(dirpath)
            except OSError:  # not empty: leave it
                pass


def _root_of(store: Store | Path) -> Path | None:
    if isinstance(store, Path):
        return store
    return Path(store.root) if isinstance(store, LocalStore) else None


def _local_path(path_or_url: str | os.PathLike) -> Path | None:
    """The local filesystem path of a path or ``file://`` URL (``~`` expanded), else None."""
    s = os.fspath(path_or_url)
    if s.startswith("file://"):
        s = s[len("file://"):]
        if s.startswith("localhost/"):
            s = s[len("localhost"):]
        return Path(s).expanduser()
    if "://" in s:
        return None
    return Path(s).expanduser()


def open_store(
    path_or_url: str | os.PathLike,
    *,
    read_only: bool,
    storage_options: dict | None = None,
) -> Store:
    """A zarr store for a local path, a ``file://`` URL or any fsspec URL (``memory://`` ...).

    Local paths (and ``file://`` URLs) get an :class:`AtomicLocalStore`; other URLs a zarr
    ``FsspecStore`` built with ``storage_options``.
    """
    local = _local_path(path_or_url)
    if local is not None:
        return AtomicLocalStore(local.expanduser().absolute(), read_only=read_only)
    return FsspecStore.from_url(
        os.fspath(path_or_url), storage_options=storage_options, read_only=read_only
    )


def store_label(store: Store) -> str:
    """A human-readable location of ``store`` for messages."""
    if isinstance(store, LocalStore):
        return str(store.root)
    if isinstance(store, FsspecStore):
        proto = store.fs.protocol
        proto = proto[0] if isinstance(proto, tuple | list) else proto
        return f"{proto}://{store.path}"
    return repr(store)


# ---------------------------------------------------------------------------- raw keys
def put_bytes(store: Store, key: str, data: Any, *, checksum: bool = False) -> None:
    """Write raw bytes (any buffer-protocol object) to ``key``; with ``checksum``, followed by
    their CRC32C (what zarr's ``crc32c`` codec writes)."""
    parts = (data, crc32c(data)) if checksum else (data,)
    if isinstance(store, AtomicLocalStore):
        put_local(store, key, parts if checksum else data)
        return
    buf = cpu_buffer.Buffer.from_bytes(b"".join(bytes(p) for p in parts))
    sync(store.set(key, buf))


def put_parts(store: Store, key: str, parts: list) -> None:
    """Write the buffers ``parts`` one after the other as the value of ``key`` (atomic)."""
    if isinstance(store, AtomicLocalStore):
        put_local(store, key, parts)
        return
    sync(store.set(key, cpu_buffer.Buffer.from_bytes(b"".join(bytes(p) for p in parts))))


def grow_array(store: Store, array: zarr.Array, shape: tuple[int, ...]) -> None:
    """``array.resize(shape)``; when it grows an array of a local store, without zarr's
    event-loop round trip (measured several ms per call on a loaded machine): the new metadata
    document written as zarr writes it (atomically), the array's metadata updated in place, as
    zarr's own resize does when nothing is deleted."""
    shape = tuple(int(n) for n in shape)
    if not isinstance(store, AtomicLocalStore) or len(shape) != array.ndim or any(
            new < old for new, old in zip(shape, array.shape)):
        array.resize(shape)
        return
    meta = array.metadata.update_shape(shape)
    for key, buf in meta.to_buffer_dict(default_buffer_prototype()).items():
        put_local(store, f"{array.path}/{key}", buf.as_buffer_like())
    object.__setattr__(array.async_array, "metadata", meta)


def get_bytes(store: Store, key: str, byte_range: tuple[int, int] | None = None) -> bytes | None:
    """Raw bytes of ``key`` (``None`` when missing); ``byte_range`` is ``(start, end)``."""
    if isinstance(store, LocalStore):
        path = store.root / key
        try:
            with open(path, "rb") as f:
                if byte_range is None:
                    return f.read()
                f.seek(byte_range[0])
                return f.read(byte_range[1] - byte_range[0])
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
    req: ByteRequest | None = None if byte_range is None else RangeByteRequest(*byte_range)
    buf = sync(store.get(key, prototype=default_buffer_prototype(), byte_range=req))
    return None if buf is None else buf.to_bytes()


def read_into(store: Store, key: str, out: memoryview, tail: memoryview | None = None
              ) -> int | None:
    """Read ``key`` into the writable buffer ``out`` and its last bytes into ``tail`` (e.g. the
    4 checksum bytes); the byte count (``None`` when missing).

    A byte count different from ``len(out) + len(tail)`` means a truncated or oversized chunk.
    """
    n_tail = 0 if tail is None else len(tail)
    want = len(out) + n_tail
    if isinstance(store, LocalStore):
        try:
            with open(store.root / key, "rb", buffering=0) as f:
                n = f.readinto(out)
                if n == len(out) and n_tail:
                    n += f.readinto(tail)
                return n + len(f.read(1)) if n == want else n
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
    raw = get_bytes(store, key)
    if raw is None:
        return None
    if len(raw) == want:
        out[:] = raw[:len(out)]
        if n_tail:
            tail[:] = raw[len(out):]
    return len(raw)


def _links_leaving(root: Path, top: Path) -> list[tuple[str, str]]:
    """Links at or under ``top`` whose targets resolve outside ``root``."""
    real = root.resolve()
    found = []

    def leaves(path: Path) -> bool:
        target = path.resolve()
        return target != real and real not in target.parents

    if top != root and top.is_symlink() and leaves(top):
        return [(str(top.relative_to(root)), str(top.resolve()))]
    for dirpath, dirs, files in os.walk(top):
        for name in (*dirs, *files):
            path = Path(dirpath) / name
            if path.is_symlink() and leaves(path):
                found.append((str(path.relative_to(root)), str(path.resolve())))
    return found


def check_links_inside(store: Store | Path, under: str = "") -> None:
    """CorruptStoreError when a local store (a zarr store or its folder), or its part
    ``under``, holds a link whose target resolves outside the store: writing or deleting
    through it would touch files outside. Other stores hold no links."""
    if isinstance(store, Path):
        root, label = store, str(store)
    elif isinstance(store, LocalStore):
        root, label = Path(store.root), store_label(store)
    else:
        return
    bad = _links_leaving(root, root / under if under else root)
    if bad:
        shown = ", ".join(f"{a} -> {b}" for a, b in bad[:3])
        raise CorruptStoreError(
            f"{label} holds {len(bad)} link(s) pointing outside the store ({shown}); "
            "grokscope never writes through them. Replace each link by a copy of what it points "
            "to (or remove it), or write into another path"
        )


def delete_entry(store: Store, name: str) -> None:
    """Delete ``name`` whether it is one key or a prefix (a folder on disk)."""
    if isinstance(store, LocalStore):
        path = store.root / name
        root = Path(store.root).resolve()
        if path.is_symlink():  # a link (crafted, or a user's) goes; never what it points to
            path.unlink()
            return
        if root not in path.resolve().parents:  # a linked folder on the way: refuse
            raise CorruptStoreError(
                f"deleting {name!r} in {store_label(store)} would delete {path.resolve()}, "
                "outside the store (a link in its path); grokscope never deletes through links"
            )
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=False)
        else:
            path.unlink(missing_ok=True)
        return
    sync(store.delete_dir(name))
    sync(store.delete(name))


def delete_keys(store: Store, prefix: str, names: list[str]) -> None:
    """Delete the keys ``prefix/<name>`` (missing ones are fine). On local disk the folder
    ``prefix`` is checked once to lie inside the store (never through a link), then each file
    is unlinked directly (no per-file path resolution)."""
    if not names:
        return
    if isinstance(store, LocalStore):
        folder = store.root / prefix
        root = Path(store.root).resolve()
        if folder.is_symlink() or root not in folder.resolve().parents:
            raise CorruptStoreError(
                f"deleting in {prefix!r} of {store_label(store)} would delete outside the store "
                "(a link in its path); grokscope never deletes through links"
            )
        for name in names:
            try:
                os.unlink(folder / name)
            except FileNotFoundError:
                pass
        return
    for name in names:
        sync(store.delete(f"{prefix}/{name}"))


def list_dir(store: Store, prefix: str) -> list[str]:
    async def _collect() -> list[str]:
        return [k async for k in store.list_dir(prefix)]

    return sync(_collect())


def exists(store: Store, key: str) -> bool:
    return sync(store.exists(key))


def read_json(store: Store, key: str, *, what: str) -> dict | None:
    """Parse the JSON document ``key``; ``None`` when missing, CorruptStoreError when unreadable."""
    raw = get_bytes(store, key)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptStoreError(
            f"{what} ({key!r} in {store_label(store)}) is not valid JSON: {exc}. The store is "
            "damaged; restore it from a copy, or re-record/re-import the run"
        ) from exc
    if not isinstance(doc, dict):
        raise CorruptStoreError(
            f"{what} ({key!r} in {store_label(store)}) is not a JSON object. The store is "
            "damaged; restore it from a copy, or re-record/re-import the run"
        )
    return doc


def write_json(store: Store, key: str, doc: dict) -> None:
    put_bytes(store, key, json.dumps(doc, allow_nan=True, separators=(",", ":")).encode())


def store_nbytes(store: Store) -> int:
    """Bytes the store occupies (sum of every key's size)."""
    if isinstance(store, LocalStore):
        total = 0
        for dirpath, _dirs, files in os.walk(store.root):
            for name in files:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:
                    pass
        return total

    async def _sum() -> int:
        total = 0
        async for key in store.list():
            total += await store.getsize(key)
        return total

    return sync(_sum())


def open_zarr_array(store: Store, path: str, *, what: str) -> zarr.Array:
    """Open the array at ``path`` read/write as the store allows, errors named."""
    try:
        arr = zarr.open_array(store=store, path=path, zarr_format=3, mode="r" if store.read_only else "r+")
        for chunks in (arr.chunks, arr.shards or arr.chunks):
            chunks = tuple(int(c) for c in chunks)
            if len(chunks) != arr.ndim or any(c < 1 for c in chunks):
                raise ValueError(f"chunk shape {chunks} of an array of shape {arr.shape}")
        return arr
    except (FileNotFoundError, KeyError) as exc:
        raise CorruptStoreError(
            f"{what} {path!r} is listed in the store's metadata but its array is missing from "
            f"{store_label(store)}; the store is damaged: restore it from a copy or re-record the run"
        ) from exc
    except (ValueError, TypeError, ArithmeticError) as exc:  # zarr divides by a crafted 0
        raise CorruptStoreError(
            f"the metadata of {what} {path!r} in {store_label(store)} is unreadable ({exc}); "
            "restore the store from a copy or re-record the run"
        ) from exc


def check_root(store: Store) -> dict:
    """The root ``zarr.json`` document, or NotAStoreError."""
    doc = read_json(store, "zarr.json", what="the root metadata document")
    if doc is None and unfinished_store_files(store):
        raise NotAStoreError(
            f"{store_label(store)} is an unfinished grokscope store: a writer was stopped before "
            "its first commit and left only temporary files, no data. Record or import into "
            "it again (it is reused), or delete the folder"
        )
    if doc is None:
        raise NotAStoreError(
            f"{store_label(store)} is not a grokscope store (no zarr.json at its root). Record "
            "a run with grokscope.Recorder or grokscope.train, or import checkpoints with "
            "grokscope.import_checkpoints"
        )
    return doc
