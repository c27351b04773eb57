"""The store schema, written down in code.

A run is one zarr v3 group::

    zarr.json                 root group; attrs:
                                grokscope_schema   int, this module's SCHEMA_VERSION
                                grokscope          {created, versions, config, params, metrics,
                                                    compression, commit, dims}
                                  config           caller's config + "model" spec + "task" spec
                                  params           {key: {"shape", "dtype", "source_dtype"}}
                                  metrics          [name, ...]   (scalar float64 arrays)
                                  commit           {"count": n, "last_step": s,
                                                    "resume": {"step", "key"} | None,
                                                    "compacted": c,   (sharded stores)
                                                    "tail": {"start": s, "columns": {...}}}
                                                   (sharded stores while recording: the
                                                   step/nonfinite/metric values of rows
                                                   s..n-1, see grokscope.store._scalar_tail)
                                  shards           {"steps_per_shard": S, "compact_every": N,
                                                    "tail": "rows"} or absent (per-step
                                                   layout); "tail" absent in stores written
                                                   before the row files (per-tensor tails)
                                  closed           true once the writer closed the store
                                                   (absent while one writes, or when it was
                                                   killed; a re-opening writer drops it)
    step                      int64 (capacity,), chunks 1024, dims ("step",)
    nonfinite                 int64 (capacity,): non-finite parameter entries at that row
    <metric>                  float64 (capacity,), chunks 1024, NaN fill
                              (step, nonfinite, metrics: rows from commit.tail.start on are
                              held in the root's commit.tail while a sharded store records)
    <state-dict key>          per-step layout: (capacity, *shape), one chunk per step;
                              sharded layout (``shards`` set): (compacted, *shape), shards of
                              (S, *shape) with one inner chunk per step (grokscope.store.
                              _shards), chunk keys "c.<k>.0..."; rows from ``commit.compacted``
                              on live in _tail/<key> (per-step, absolute rows). NaN fill,
                              dims ("step", "<key>_dim0", ...) with every character of the key
                              that is not [0-9A-Za-z_] as "_" (tensor_dims: unique, "layers.0.
                              weight" -> "layers_0_weight_dim0"); the root metadata says
                              "dims": "identifier". Stores without that key (written before)
                              have ("step", "<key>.dim0", ...) and read as before.
    data/                     x_train, y_train, x_test, y_test, extra.<name>; attrs: task;
                              dims "x_train_dim0", "extra_pairs_train_dim0" ... (".dim0" before)
    _resume/s<step>           uint8 torch.save bytes of {"optimizer", "extra"} (latest only)
    _model/program            uint8 torch.export.save bytes of the model's architecture (state
                              dict zeroed; zstd), when it could be exported; root metadata
                              "program": {"key", "nbytes", "sha256", "torch", "format"} or
                              None with "export_error" (see grokscope.store.portable)
    _tail/rows                sharded stores ("tail": "rows"): the committed rows not yet
                              compacted, one file per step holding every sharded tensor's
                              stored chunk (raw bytes + CRC32C) one after the other: uint8
                              (capacity, n), chunks (1, n), plain bytes codec, attrs
                              grokscope_rows [[key, offset, nbytes], ...]; removed on a clean
                              close
    _tail/<state-dict key>    sharded stores written before the row files: the same rows, one
                              per-step array per tensor, (capacity, *shape)
    _commit/zarr.json         the durable fallback root: a zarr group document whose attribute
                              grokscope_committed_root holds a copy of the root document,
                              written with fsync at every compaction, on close and at most
                              every grokscope.store._durable.INTERVAL_S seconds while
                              recording, after everything it names is synced; read when the
                              root is empty or damaged after a power cut (absent in stores
                              written before)
    results/<measure>/        analysis outputs (written by the engine, read by Run.results)

``capacity`` grows geometrically; readers use only the first ``commit.count`` rows, which the
writer publishes last (an atomic rewrite of the root ``zarr.json``). A cleanly closed store is
trimmed to exactly ``count`` rows, so plain ``xr.open_zarr`` shows the data. The root carries no
zarr consolidated metadata (it would go stale as soon as an analysis adds ``results/<name>``,
and only the writer rewrites the root).

Integrity: every array above except ``results/`` ends its codec chain with zarr v3's
``crc32c`` codec: ``bytes -> crc32c`` (uncompressed), ``bytes -> blosc -> crc32c``
(``compression="lz4"``, and the zstd program), so each stored chunk is its encoded bytes
followed by the 4-byte little-endian CRC32C of them. The recorder writes uncompressed chunks
itself in exactly that form; grokscope's readers and plain zarr verify it on every read. A
checksum mismatch, a chunk of the wrong length, or a missing chunk of a committed row (a metric
first logged late has its earlier chunks written as NaN) is a CorruptStoreError naming the
array and the rows/steps. Stores written before checksums (no ``crc32c`` in an array's codecs)
read as before, and a writer appending to one keeps its format; the schema version is unchanged
(the codec is declared per array, in its own metadata).
"""

from __future__ import annotations

import platform
import re
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, CorruptStoreError, SchemaVersionError

SCHEMA_VERSION = 1
SCHEMA_KEY = "grokscope_schema"
META_KEY = "grokscope"

STEP = "step"
NONFINITE = "nonfinite"
DATA_GROUP = "data"
RESUME_GROUP = "_resume"
RESULTS_GROUP = "results"
MODEL_GROUP = "_model"
TAIL_GROUP = "_tail"
COMMIT_GROUP = "_commit"  # the durable fallback root, grokscope.store._durable
SHARDS_KEY = "shards"
#: the largest ``steps_per_shard`` / ``compact_every`` a store may name
MAX_STEPS_PER_SHARD = 1 << 16
PROGRAM_KEY = f"{MODEL_GROUP}/program"
EXTRA_PREFIX = "extra."
SPLITS = ("x_train", "y_train", "x_test", "y_test")

#: root-metadata key set to true by :meth:`Recorder.close` (readers following a growing store
#: stop when they see it); dropped when a writer re-opens the store
CLOSED_KEY = "closed"

SCALAR_CHUNK = 1024
INITIAL_CAPACITY = 64
RESERVED = frozenset({STEP, NONFINITE, DATA_GROUP, RESUME_GROUP, RESULTS_GROUP, MODEL_GROUP,
                      TAIL_GROUP, COMMIT_GROUP})

#: the forms of the keys a store's metadata names (anything else is refused on read, so a
#: crafted store cannot point a reader or a writer outside itself)
_STORED_KEYS = {
    "resume": re.compile(rf"{RESUME_GROUP}/s\d{{1,20}}"),
    "program": re.compile(rf"{MODEL_GROUP}/[a-z][a-z0-9_]{{0,63}}"),
}


def check_stored_key(key: Any, kind: str, where: str) -> str:
    """``key`` (read from a store's metadata) when it has the form of a ``kind`` key
    (``"resume"``: ``_resume/s<step>``, ``"program"``: ``_model/<name>``); else
    CorruptStoreError. Relative, inside the store, no ``..``, no absolute path, no URL."""
    if not isinstance(key, str) or not _STORED_KEYS[kind].fullmatch(key):
        raise CorruptStoreError(
            f"the {kind} key {key!r} in the metadata of {where} is not of the form grokscope "
            "writes; the store is damaged or crafted. Restore it from a copy or re-record the run"
        )
    return key


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad_meta(where: str, what: str) -> CorruptStoreError:
    return CorruptStoreError(
        f"the root metadata of {where} is damaged or crafted: {what}. Restore the store from a "
        "copy, or re-record/re-import the run"
    )


def _array_name_ok(name: Any) -> bool:
    """A name grokscope could have written as a root array: one path segment inside the store."""
    return (isinstance(name, str) and 0 < len(name) <= 1024 and name not in RESERVED
            and not name.startswith(".") and "/" not in name and "\0" not in name
            and name != "zarr.json")


def check_meta(meta: Any, where: str) -> dict:
    """``meta`` (the ``grokscope`` attribute of a root document) after checking every field a
    reader or a writer acts on: ``params`` names one-segment array names with non-negative
    integer shapes, ``metrics`` distinct one-segment names, ``commit.count`` a non-negative
    integer, ``commit.last_step`` an integer or None, ``commit.resume`` None or a record whose
    key has the resume form, ``closed`` (when present) a boolean. Anything else is CorruptStoreError: nothing a store's metadata
    names can point a reader or a writer outside the store."""
    if not isinstance(meta, dict):
        raise _bad_meta(where, f"the {META_KEY!r} attribute is not an object")
    commit = meta.get("commit")
    if not isinstance(commit, dict):
        raise _bad_meta(where, "'commit' is missing or not an object")
    count, last = commit.get("count"), commit.get("last_step")
    if not _is_int(count) or count < 0:
        raise _bad_meta(where, f"commit.count {count!r} is not a non-negative integer")
    if last is not None and not _is_int(last):
        raise _bad_meta(where, f"commit.last_step {last!r} is not an integer")
    if count and last is None:
        raise _bad_meta(where, f"{count} steps are committed but commit.last_step is null")
    shards = meta.get(SHARDS_KEY)
    if shards is not None:
        if not isinstance(shards, dict):
            raise _bad_meta(where, f"{SHARDS_KEY!r} is not an object")
        for name in ("steps_per_shard", "compact_every"):
            v = shards.get(name)
            if not _is_int(v) or not 1 <= v <= MAX_STEPS_PER_SHARD:
                raise _bad_meta(where, f"{SHARDS_KEY}.{name} {v!r} is not an integer from 1 to "
                                       f"{MAX_STEPS_PER_SHARD}")
        if shards.get("tail", "rows") != "rows":
            raise _bad_meta(where, f"{SHARDS_KEY}.tail {shards.get('tail')!r} is not 'rows'")
    compacted = commit.get("compacted", 0)
    if not _is_int(compacted) or not 0 <= compacted <= count:
        raise _bad_meta(where, f"commit.compacted {compacted!r} is not an integer from 0 to the "
                               f"committed count {count}")
    if compacted and shards is None:
        raise _bad_meta(where, f"commit.compacted is {compacted} but the store names no "
                               f"{SHARDS_KEY!r} settings")
    resume = commit.get("resume")
    if resume is not None:
        if not isinstance(resume, dict) or not _is_int(resume.get("step")):
            raise _bad_meta(where, "commit.resume is not a resume record")
        nbytes = resume.get("nbytes", 0)
        if not _is_int(nbytes) or nbytes < 0:
            raise _bad_meta(where, f"commit.resume.nbytes {nbytes!r} is not a byte count")
        check_stored_key(resume.get("key"), "resume", where)
    params = meta.get("params")
    if not isinstance(params, dict):
        raise _bad_meta(where, "'params' is missing or not an object")
    for key, info in params.items():
        if not _array_name_ok(key):
            raise _bad_meta(where, f"parameter name {key!r} is not a one-segment array name")
        shape = info.get("shape") if isinstance(info, dict) else None
        if (not isinstance(shape, list) or len(shape) > 32
                or not all(_is_int(n) and n >= 0 for n in shape)):
            raise _bad_meta(where, f"parameter {key!r} has no valid shape ({info!r})")
    metrics = meta.get("metrics")
    if not isinstance(metrics, list):
        raise _bad_meta(where, "'metrics' is missing or not a list")
    for name in metrics:
        if not _array_name_ok(name) or name in params:
            raise _bad_meta(where, f"metric name {name!r} is not a one-segment array name")
    if len(set(metrics)) != len(metrics):
        raise _bad_meta(where, f"metric names repeat: {metrics}")
    from . import _scalar_tail

    _scalar_tail.check(commit, [STEP, NONFINITE, *metrics], lambda what: _bad_meta(where, what))
    if not isinstance(meta.get("config"), dict):
        raise _bad_meta(where, "'config' is missing or not an object")
    if not isinstance(meta.get(CLOSED_KEY, False), bool):
        raise _bad_meta(where, f"{CLOSED_KEY!r} is {meta.get(CLOSED_KEY)!r}, not true or false")
    if meta.get(DIMS_KEY, DIMS_IDENTIFIER) != DIMS_IDENTIFIER:
        raise _bad_meta(where, f"{DIMS_KEY!r} is {meta.get(DIMS_KEY)!r}, not {DIMS_IDENTIFIER!r}")
    return meta


def dims_style(meta: dict) -> str | None:
    """How the tensor dims of the store with metadata ``meta`` are spelled (see
    :func:`tensor_dims`): :data:`DIMS_IDENTIFIER`, or None for stores written before it."""
    return DIMS_IDENTIFIER if meta.get(DIMS_KEY) == DIMS_IDENTIFIER else None


def check_version(attrs: dict, where: str) -> int:
    """The schema version in root ``attrs``; SchemaVersionError when newer than this code's."""
    if not isinstance(attrs, dict):
        raise _bad_meta(where, "the root attributes are not an object")
    version = attrs.get(SCHEMA_KEY)
    if not isinstance(version, int):
        from ..errors import NotAStoreError

        raise NotAStoreError(
            f"{where} is a zarr group but not a grokscope store (no integer "
            f"{SCHEMA_KEY!r} attribute). Record runs with grokscope.Recorder or import "
            "checkpoints with grokscope.import_checkpoints"
        )
    if version > SCHEMA_VERSION:
        from .._version import __version__

        raise SchemaVersionError(
            f"{where} was written with grokscope store schema {version}, but this grokscope "
            f"({__version__}) reads schemas up to {SCHEMA_VERSION}: upgrade grokscope "
            "(pip install -U grokscope)"
        )
    return version


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape what is stored."""
    import xarray
    import zarr

    from .._version import __version__

    return {
        "grokscope": __version__,
        "torch": torch.__version__,
        "zarr": zarr.__version__,
        "numpy": np.__version__,
        "xarray": xarray.__version__,
        "python": platform.python_version(),
    }


def storage_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype a tensor of ``dtype`` is stored as (bfloat16 widens to float32)."""
    if dtype == torch.bfloat16:
        return np.dtype("float32")
    try:
        return np.dtype(torch.empty(0, dtype=dtype).numpy().dtype)
    except TypeError as exc:
        raise ConfigError(
            f"tensors of dtype {dtype} cannot be stored; convert them to float32 first"
        ) from exc


def fill_value(dtype: np.dtype) -> Any:
    """NaN for floating dtypes, 0 (False) otherwise."""
    if np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.complexfloating):
        return float("nan")
    if dtype == np.bool_:
        return False
    return 0


def dim_names(name: str, ndim: int, *, leading: str | None = STEP) -> tuple[str, ...]:
    """The dimension names of stores written before :data:`DIMS_KEY`:
    ``("step", "<name>.dim0", ...)``."""
    dims = tuple(f"{name}.dim{i}" for i in range(ndim))
    return ((leading,) + dims) if leading else dims


#: root-metadata key saying how tensor dims are spelled; :data:`DIMS_IDENTIFIER` (the only
#: value written) means ``fc1_weight_dim0`` (see :func:`tensor_dims`); stores written before it
#: have no key and ``fc1.weight.dim0`` (:func:`dim_names`)
DIMS_KEY = "dims"
DIMS_IDENTIFIER = "identifier"
_NOT_IDENT = re.compile(r"[^0-9A-Za-z_]")


def identifier(name: str) -> str:
    """``name`` with every character that is not ``[0-9A-Za-z_]`` replaced by ``_`` (and a
    leading ``_`` before a digit): ``"layers.0.weight"`` -> ``"layers_0_weight"``,
    ``"0.bias"`` -> ``"_0_bias"``."""
    base = _NOT_IDENT.sub("_", name)
    return base if base and not base[0].isdigit() else f"_{base}"


def tensor_dims(ndims: dict[str, int], *, leading: str | None = STEP,
                style: str | None = DIMS_IDENTIFIER, taken: Any = ()) -> dict[str, tuple[str, ...]]:
    """The dimension names of every array in ``ndims`` (``name -> number of dims, leading
    excluded``), unique across them and never an array's name (or one of ``taken``).

    ``style`` :data:`DIMS_IDENTIFIER`: ``("step", "layers_0_weight_dim0", ...)``, names a user
    can type (:func:`identifier`); two arrays whose names map to the same identifier
    (``a.b`` and ``a_b``) keep it for the one already spelled so, the other gets ``a_b_2``.
    ``style`` None: the older ``("step", "layers.0.weight.dim0", ...)`` (:func:`dim_names`).
    """
    if style is None:
        return {n: dim_names(n, k, leading=leading) for n, k in ndims.items()}
    if style != DIMS_IDENTIFIER:
        raise ValueError(f"unknown dims style {style!r}")
    reserved = {*ndims, *taken, STEP, NONFINITE} | ({leading} if leading else set())
    used: set[str] = set()
    out = {}
    for name in sorted(ndims, key=lambda n: (identifier(n) != n, n)):
        base = identifier(name)
        prefix, i = base, 2
        while prefix in used or any(f"{prefix}_dim{d}" in reserved for d in range(ndims[name])):
            prefix, i = f"{base}_{i}", i + 1
        used.add(prefix)
        dims = tuple(f"{prefix}_dim{d}" for d in range(ndims[name]))
        out[name] = ((leading,) + dims) if leading else dims
    return {n: out[n] for n in ndims}


def check_metric_name(name: Any, params: dict) -> str:
    """A metric name usable as a root array (not reserved, not a parameter key)."""
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ConfigError(
            f"metric name {name!r} is not usable: use a non-empty string without '/' "
            "(e.g. 'train_loss')"
        )
    if name in RESERVED or name in params:
        raise ConfigError(
            f"metric name {name!r} clashes with a reserved store name or a parameter key; "
            "rename the metric"
        )
    return name


def check_param_name(name: str) -> str:
    if not name or "/" in name or name.startswith(".") or name in RESERVED:
        raise ConfigError(
            f"state-dict key {name!r} cannot name a store array (empty, contains '/', starts "
            f"with '.', or is one of {sorted(RESERVED)}); rename the module"
        )
    return name
