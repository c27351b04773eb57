"""Durability against a power cut: ``fsync`` before publishing, and a durable fallback root.

A record swaps the root ``zarr.json`` in without ``fsync`` (cheap, atomic against a killed
process; see :func:`grokscope.store._io.put_file`), so after a power cut or a kernel crash the
root may come back empty. This module keeps that from costing the run:

* :func:`sync_written` ``fsync``-s every file the writer wrote through its store since the last
  call (then each folder on the way to the store's root, so new names survive too). The
  recorder calls it before it publishes a root that a fallback will copy: at every compaction,
  on close, and before a timed fallback.
* :func:`write_fallback` writes a copy of the committed root document durably (temporary
  file, ``fsync``, rename, ``fsync`` of the folder) to :data:`FALLBACK_KEY`,
  ``_commit/zarr.json``: a zarr group document whose attribute :data:`FALLBACK_ATTR` holds the
  root document, so zarr and xarray see a plain empty group. Because everything written
  before it is synced first, the fallback only ever names durable data.
* :func:`read_fallback` reads and checks it back; readers and writers use it when the root is
  not a JSON object (empty, zeros, torn: what a power cut leaves), never for a root that is
  valid JSON but fails the root checks (a crafted or hand-edited root is refused as before;
  see docs/store.md, "After a power cut").
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import CorruptStoreError, GrokscopeError
from . import _io, schema

#: the group that holds the fallback root (a zarr group, so zarr listings never trip on it)
FALLBACK_GROUP = schema.COMMIT_GROUP
#: the key of the fallback root document
FALLBACK_KEY = f"{FALLBACK_GROUP}/zarr.json"
#: the attribute of :data:`FALLBACK_KEY` holding the copy of the root document
FALLBACK_ATTR = "grokscope_committed_root"
#: the longest a recording goes without a durable fallback, in seconds (besides one at every
#: compaction and on close): a power cut loses at most the steps of the last interval
INTERVAL_S = 10.0


def fsync_path(path: Path, *, directory: bool = False) -> None:
    """``fsync`` the file (or folder) at ``path``; a vanished one is skipped."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_written(store: Any, *, skip: set[Path] | frozenset = frozenset()) -> int:
    """``fsync`` every file written through ``store`` since the last call (except ``skip``:
    files about to be deleted), then each folder holding one and every folder above it up to
    the store's root; forget them. The number of files synced (0 for non-local stores, which
    keep no record).
    """
    written = getattr(store, "written", None)
    if written is None or not (written or store.written_dirs):
        return 0
    root = Path(store.root)
    paths = [p for p in written if p not in skip]
    written.clear()
    parents = {p.parent for p in paths} | store.written_dirs
    store.written_dirs = set()
    folders: set[Path] = set()
    known = store.durable_dirs
    for folder in parents:  # each file's folder; a folder made since, its parent too
        while folder not in folders:
            folders.add(folder)
            if folder == root or folder in known or root not in folder.parents:
                break
            folder = folder.parent
    _fsync_all(paths)
    _fsync_all(sorted(folders), directory=True)
    known |= folders
    return len(paths)


_pool: Any = None


def _forget_pool() -> None:  # a forked child has none of its parent's threads
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def run_concurrently(fns: list[Any]) -> None:
    """Call every function of ``fns`` (I/O waiting on ``fsync``) on the fsync threads, all at
    once; the first exception is raised once all have finished."""
    global _pool
    if len(fns) <= 1:
        for fn in fns:
            fn()
        return
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="grokscope-fsync")
    futures = [_pool.submit(fn) for fn in fns]
    errors = [f.exception() for f in futures]
    for exc in errors:
        if exc is not None:
            raise exc


def _fsync_all(paths: list[Path], *, directory: bool = False) -> None:
    """``fsync`` every path, concurrently: the file system commits its journal once for
    fsyncs that wait together (ext4 measured ~3.5 ms per fsync one after the other on a
    loaded VM), so a compaction's ~20 fsyncs cost about one."""
    run_concurrently([(lambda p=p: fsync_path(p, directory=directory)) for p in paths])


def fallback_bytes(root_json: bytes) -> bytes:
    """The fallback document holding the root document ``root_json`` (its JSON bytes)."""
    return (b'{"zarr_format":3,"node_type":"group","attributes":{"' + FALLBACK_ATTR.encode()
            + b'":' + root_json + b"}}")


def write_fallback(store: Any, root_json: bytes) -> bool:
    """Write :data:`FALLBACK_KEY` durably from the root document's JSON bytes (local stores;
    False, nothing written, elsewhere). The caller has synced what the root names first."""
    if not isinstance(store, _io.AtomicLocalStore):
        return False
    path = Path(store.root) / FALLBACK_KEY
    new_folder = not path.parent.is_dir()
    if new_folder:
        path.parent.mkdir(parents=True, exist_ok=True)
    _io.put_file(path, fallback_bytes(root_json), durable=True)
    if new_folder:  # its name in the store's folder must survive too
        fsync_path(Path(store.root), directory=True)
    return True


def check_root_doc(doc: Any, where: str) -> dict:
    """The root document's grokscope metadata when ``doc`` passes the root checks
    (a grokscope schema this version reads, :func:`schema.check_meta`); else an error."""
    if not isinstance(doc, dict) or not isinstance(doc.get("attributes"), dict):
        raise CorruptStoreError(f"the root metadata of {where} is not a JSON object with "
                                "attributes")
    schema.check_version(doc["attributes"], where)
    return schema.check_meta(doc["attributes"].get(schema.META_KEY), where)


def read_fallback(store: Any, where: str) -> dict | None:
    """The fallback root document when one exists and passes the root checks, else None."""
    raw = _io.get_bytes(store, FALLBACK_KEY)
    if not raw:
        return None
    try:
        doc = json.loads(raw).get("attributes", {}).get(FALLBACK_ATTR)
        check_root_doc(doc, where)
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, GrokscopeError):
        return None
    return doc


def root_problem(store: Any) -> tuple[dict | None, str | None]:
    """``(doc, None)`` for a root document that is a JSON object (the caller checks it);
    ``(None, what)`` for what a power cut leaves: an empty file, or bytes that are not a JSON
    object (zeros, a torn write; ``what`` says which); NotAStoreError without a root.

    A JSON object that fails the root checks is not a power cut's doing (a write lands whole
    or not at all, never as another valid document): it stays the CorruptStoreError it was.
    """
    try:
        return _io.check_root(store), None  # NotAStoreError without a root
    except CorruptStoreError:  # not JSON, or not an object: say which
        raw = _io.get_bytes(store, "zarr.json") or b""
    if not raw.strip(b" \t\r\n\x00"):
        return None, f"is empty ({len(raw)} bytes{', all zero' if raw else ''})"
    try:
        json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"is not valid JSON ({exc})"
    return None, "is not a JSON object"


def recovery_message(where: str, what: str, doc: dict, *, writer: bool) -> str:
    """The warning saying the root was damaged and which steps the fallback holds."""
    commit = doc["attributes"][schema.META_KEY]["commit"]
    count, last = commit["count"], commit["last_step"]
    steps = f"{count} steps up to step {last}" if count else "no steps"
    then = ("zarr.json is restored from it and recording continues after step "
            f"{last}" if writer else "Reading from it; a Recorder re-opening the store restores "
            "zarr.json and continues after that step")
    return (f"the root metadata (zarr.json) of {where} {what}, as a power cut or a kernel crash "
            f"during recording leaves it; its durable fallback root ({FALLBACK_KEY}) holds "
            f"{steps}: those are readable, any steps recorded after them are lost. {then}")
