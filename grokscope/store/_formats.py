"""Readers for checkpoint files written by other people's code.

Each reader turns a source (a folder or a file) into a :class:`Source`: the list of
checkpoints found, their steps (sorted, unique), an optional train/test split carried by the
files, and an iterator of :class:`Item` ``(step, state_dict, scalars, extra)`` in step order.
Files are read twice: a cheap scan (``torch.load(..., mmap=True)`` or the safetensors header)
that finds steps, scalars and splits, then one load per checkpoint while importing, so memory
holds one checkpoint at a time.

Formats
-------
``"torch_files"``
    A folder of ``.pt``/``.pth``/``.ckpt``/``.bin`` files, one checkpoint each: a dict holding
    the state dict under ``model``/``state_dict``/``model_state_dict``/``net``/``params``/...
    (or ``state_key``), or a bare state dict. Also a folder of numbered subfolders each
    holding one weights file (``checkpoint-500/pytorch_model.bin``).
``"lightning"``
    The same, when every file is a PyTorch Lightning checkpoint (``state_dict`` plus
    ``global_step``/``pytorch-lightning_version``).
``"safetensors"``
    A folder of ``.safetensors`` files; the step comes from the metadata (``step_key`` or
    ``step``/``global_step``/``epoch``/``iteration``) or the file name; metadata strings that
    parse as numbers become scalars.
``"bundle"``
    One file holding many state dicts: ``{"checkpoints": [sd, ...], "checkpoint_epochs":
    [...], "train_losses": [...], ...}`` (Nanda et al.'s ``full_run_data.pth``), a dict keyed
    by step, or a list of ``{"epoch": ..., "model": sd, ...}`` dicts.
``"file"``
    One file holding one checkpoint.

Steps
-----
``step_key`` if given, else a key ``step``/``global_step``/``epoch``/``iteration`` in the
file, else the last number in the file name (``epoch_120.pt``, ``ckpt-00500.pth``,
``120.pt``). Names without a number: ``init*``/``initial*``/``start*`` are step 0,
``final*``/``last*`` come after the last numbered step (dropped when their weights equal the
checkpoint at that step), anything else is an error unless ``skip_unknown``. Two files at one
step are an error unless the extra ones are unnumbered aliases with identical weights.

A file whose name's number disagrees with its step key (``ckpt_100.pt`` holding ``epoch=1``)
is refused naming both values, unless ``step_from="name"``/``"meta"`` chooses (an explicit
``step_key`` chooses the key); a key equal to any number in the name agrees. The source that
won is in the notes (``step_source``, and ``step_disagreements`` for overruled files).
"""

from __future__ import annotations

import argparse
import math
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointFormatError, ConfigError, UnsafeCheckpointError

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
#: keys that may hold the state dict inside a checkpoint dict, in order of preference
STATE_KEYS = (
    "state_dict",
    "model_state_dict",
    "model",
    "model_state",
    "net",
    "network",
    "params",
    "weights",
    "module",
)
#: keys that may hold the step, in order of preference
STEP_KEYS = ("step", "global_step", "epoch", "iteration")
#: bundle keys holding a list of state dicts, and the list of their steps
BUNDLE_LIST_KEYS = ("checkpoints", "state_dicts", "model_checkpoints", "snapshots")
BUNDLE_STEP_KEYS = ("checkpoint_epochs", "checkpoint_steps", "epochs", "steps", "checkpoint_iters")
#: nested dicts whose numeric entries are scalars too
SCALAR_DICT_KEYS = ("metrics", "logs", "log", "scalars", "stats", "results")
#: keys describing the run (kept in the imported config, never scalars)
CONFIG_KEYS = ("config", "cfg", "args", "hparams", "hyper_parameters", "hyperparameters")
SPLIT_KEYS = {
    "x_train": ("x_train", "train_x", "train_data", "train_inputs", "X_train"),
    "y_train": ("y_train", "train_y", "train_labels", "train_targets", "Y_train"),
    "x_test": ("x_test", "test_x", "test_data", "test_inputs", "X_test"),
    "y_test": ("y_test", "test_y", "test_labels", "test_targets", "Y_test"),
    "train_indices": ("train_indices", "train_idx", "train_index"),
    "test_indices": ("test_indices", "test_idx", "test_index"),
    "x_all": ("x_all", "dataset", "all_data", "inputs", "all_inputs"),
    "y_all": ("y_all", "labels", "all_labels", "targets", "all_targets"),
}
_INIT_RE = re.compile(r"^(init|initial|start)", re.IGNORECASE)
_FINAL_RE = re.compile(r"^(final|last)", re.IGNORECASE)
_NUMBER_RE = re.compile(r"\d+")


# ---------------------------------------------------------------------------- loading
def _safe_numpy_globals() -> list[Any]:
    """Globals that rebuild numpy scalars/arrays and ``argparse.Namespace``: data, not code."""
    import numpy.dtypes as npd

    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    dtypes = [getattr(npd, n) for n in dir(npd) if n.endswith("DType")]
    return [np.dtype, np.ndarray, _reconstruct, scalar, argparse.Namespace, *dtypes]


#: how torch's weights-only unpickler names what it refused
_BLOCKED_RE = re.compile(r"unsupported GLOBAL (\S+) whose module (\S+) is blocked")
_REFUSED_RES = (
    re.compile(r"Unsupported global: GLOBAL (\S+)"),
    re.compile(r"but got <class '([^']+)'>"),
    re.compile(r"unrecognized function <(?:built-in )?function ([\w.]+)"),
)


def load_torch(path: Path, *, trust_pickle: bool = False, mmap: bool = True) -> Any:
    """``torch.load`` a foreign file safely onto the CPU.

    Uses ``weights_only=True`` (numpy scalars/arrays and ``argparse.Namespace`` allowed) and
    ``map_location="cpu"``; with ``mmap=True`` tensors of zip-format files are memory-mapped
    (falls back to a plain read for legacy files).

    Raises
    ------
    UnsafeCheckpointError
        The file needs arbitrary pickled code and ``trust_pickle`` is False.
    CheckpointFormatError
        The file is not a readable torch file.
    """
    kwargs: dict[str, Any] = {"map_location": "cpu"}
    try:
        with torch.serialization.safe_globals(_safe_numpy_globals()):
            return _load_mmap_or_plain(path, mmap, weights_only=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - classified below
        if not _is_weights_only_refusal(exc):
            raise _format_error(path, exc) from exc
        if not trust_pickle:
            raise _unsafe_error(path, exc) from None
    try:
        return _load_mmap_or_plain(path, mmap, weights_only=False, **kwargs)
    except (ImportError, AttributeError) as exc:
        raise CheckpointFormatError(
            f"{path}: unpickling needs code that is not importable here ({exc}); install the "
            "package that wrote the checkpoint and retry"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a format problem
        raise _format_error(path, exc) from exc


def _unsafe_error(path: Path, exc: Exception) -> UnsafeCheckpointError:
    """The refusal of a file that needs pickled code, naming the globals it pickles."""
    text = str(exc)
    blocked = _BLOCKED_RE.search(text)
    if blocked:
        return UnsafeCheckpointError(
            f"{path}: loading it would call {blocked.group(1)}, from the module "
            f"{blocked.group(2)!r} that torch refuses outright (it can run commands on this "
            "machine). The file may be malicious: do not load it with trust_pickle=True "
            "(--trust-pickle) unless you wrote it yourself."
        )
    names = []
    for pattern in _REFUSED_RES:
        names += [m for m in pattern.findall(text) if m not in names]
    names += [n for n in _unsafe_globals_in(path) if n not in names]
    if names:
        what = f"it pickles {', '.join(names[:8])}" + (" ..." if len(names) > 8 else "")
        allow = (f"allow just {'this global' if len(names) == 1 else 'these globals'} with "
                 f"torch.serialization.add_safe_globals([{', '.join(names[:8])}]) (the objects "
                 "themselves, imported) and import again, or ")
    else:
        what = "torch did not name it: " + " ".join(text.split())[-200:]
        allow = "allow its globals with torch.serialization.add_safe_globals([...]), or "
    return UnsafeCheckpointError(
        f"{path}: loading it needs arbitrary pickled Python code ({what}), which "
        "torch.load(weights_only=True) refuses. Only if you trust this file: "
        f"{allow}pass trust_pickle=True (CLI: --trust-pickle) to load it with "
        "weights_only=False; never do either for files from an unknown source."
    )


def _unsafe_globals_in(path: Path) -> list[str]:
    """Every global of a zip-format torch file that weights-only loading does not allow."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - legacy files, older torch: the error text suffices
        return []
    ours = {f"{g.__module__}.{getattr(g, '__qualname__', getattr(g, '__name__', ''))}"
            for g in _safe_numpy_globals()}
    return [n for n in found if n not in ours]


def _load_mmap_or_plain(path: Path, mmap: bool, **kwargs: Any) -> Any:
    if mmap:
        try:
            return torch.load(path, mmap=True, **kwargs)
        except RuntimeError as exc:
            if "mmap can only be used" not in str(exc):
                raise
    return torch.load(path, **kwargs)


def _is_weights_only_refusal(exc: Exception) -> bool:
    import pickle

    return isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in str(exc)


def _format_error(path: Path, exc: Exception) -> CheckpointFormatError:
    return CheckpointFormatError(
        f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0] if str(exc) else ''}); is the file complete?"
    )


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` file, on the CPU."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointFormatError(f"{path}: not a readable safetensors file ({exc})") from exc


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a ``.safetensors`` header (empty dict when none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # noqa: BLE001
        raise CheckpointFormatError(f"{path}: not a readable safetensors file ({exc})") from exc


# ---------------------------------------------------------------------------- helpers
def to_float(value: Any) -> float | None:
    """``value`` as a float when it is a number (python, numpy, one-element real tensor)."""
    if isinstance(value, bool | int | float | np.number | np.bool_):
        return float(value)
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "biuf":
        return float(value.item())
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        return float(value.item())
    return None


def _parse_number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def is_state_dict(obj: Any) -> bool:
    """True for a non-empty mapping from str to tensors (``*_extra_state`` entries allowed)."""
    if not isinstance(obj, dict) or not obj:
        return False
    n_tensors = 0
    for k, v in obj.items():
        if not isinstance(k, str):
            return False
        if isinstance(v, torch.Tensor):
            n_tensors += 1
        elif not k.endswith("_extra_state"):
            return False
    return n_tensors > 0


def _get_path(obj: Any, dotted: str) -> Any:
    cur = obj
    for part in dotted.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list | tuple) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise KeyError(part)
    return cur


def find_state_dict(obj: Any, state_key: str | None, label: str) -> tuple[dict, str | None]:
    """The state dict inside a loaded checkpoint and the key it was under (None: the file is one).

    Raises
    ------
    CheckpointFormatError
        No state dict found; the message lists the top-level keys.
    """
    if isinstance(obj, torch.nn.Module):  # a pickled module (only with trust_pickle)
        return _strip_extra(obj.state_dict()), None
    if state_key is not None:
        try:
            sd = _get_path(obj, state_key)
            if isinstance(sd, torch.nn.Module):
                sd = sd.state_dict()
        except KeyError:
            raise CheckpointFormatError(
                f"{label}: no key {state_key!r} (state_key); top-level keys: {_keys_of(obj)}"
            ) from None
        if not is_state_dict(sd):
            raise CheckpointFormatError(
                f"{label}: {state_key!r} holds a {type(sd).__name__}, not a state dict "
                "(a dict of tensors)"
            )
        return _strip_extra(sd), state_key
    if is_state_dict(obj):
        return _strip_extra(obj), None
    if isinstance(obj, dict):
        for key in STATE_KEYS:
            if key in obj and is_state_dict(obj[key]):
                return _strip_extra(obj[key]), key
        for key in STATE_KEYS:
            if isinstance(obj.get(key), torch.nn.Module):
                return _strip_extra(obj[key].state_dict()), key
    raise CheckpointFormatError(
        f"{label}: found no state dict (a dict of tensors) under any of {list(STATE_KEYS)}; "
        f"top-level keys: {_keys_of(obj)}. Name the key holding the weights with state_key= "
        "(CLI: --state-key; dotted paths like 'ema.model' work)."
    )


def _strip_extra(sd: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _keys_of(obj: Any) -> str:
    if isinstance(obj, dict):
        keys = [str(k) for k in obj]
        return str(keys[:30]) + (f" ... ({len(keys)} keys)" if len(keys) > 30 else "")
    return f"(a {type(obj).__name__}, not a dict)"


def scalars_of(meta: dict, exclude: set[str]) -> dict[str, float]:
    """Numeric entries of ``meta`` (and of nested ``metrics``/``logs``/... dicts) as floats."""
    out: dict[str, float] = {}
    for key, value in meta.items():
        if not isinstance(key, str) or key in exclude or key in CONFIG_KEYS:
            continue
        number = to_float(value)
        if number is not None:
            out[key] = number
        elif key in SCALAR_DICT_KEYS and isinstance(value, dict):
            for sub, sv in value.items():
                number = to_float(sv)
                if isinstance(sub, str) and number is not None and sub not in exclude:
                    out[sub if sub not in out else f"{key}/{sub}"] = number
    return out


def _as_step(value: Any, where: str) -> int:
    number = to_float(value)
    if number is None or not math.isfinite(number) or number != int(number) or number < 0:
        raise CheckpointFormatError(f"{where}: the step must be a non-negative integer, got {value!r}")
    return int(number)


def step_from_meta(meta: dict, step_key: str | None, label: str) -> tuple[int, str] | None:
    """``(step, key)`` from a checkpoint's own keys, or None."""
    keys = (step_key,) if step_key is not None else STEP_KEYS
    for key in keys:
        if key in meta and to_float(meta[key]) is not None:
            return _as_step(meta[key], f"{label} [{key!r}]"), key
    return None


STEP_FROM = (None, "name", "meta")
_NAME_SOURCES = {
    "numeric": "the number in the file name",
    "init": "the file name (init*: step 0)",
    "final": "the file name (final*: after the last numbered step)",
    "unknown": "none (a single file without a step: step 0)",
}


def _name_numbers(name: str) -> set[int]:
    """Every number in a file name (without its suffix)."""
    for suffix in (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return {int(n) for n in _NUMBER_RE.findall(name)}


def _summarise_sources(sources: list[str]) -> str:
    """One line saying where the steps came from: one source, or each with its file count."""
    counts: dict[str, int] = {}
    for src in sources:
        counts[src] = counts.get(src, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return "; ".join(f"{n} file{'s' if n > 1 else ''}: {src}" for src, n in counts.items())


def name_kind(name: str) -> tuple[str, int | None]:
    """Classify a file name: ``("numeric", n)``, ``("init", 0)``, ``("final", None)``, ``("unknown", None)``."""
    stem = name
    for suffix in (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    numbers = _NUMBER_RE.findall(stem)
    if numbers:
        return "numeric", int(numbers[-1])
    if _INIT_RE.match(stem):
        return "init", 0
    if _FINAL_RE.match(stem):
        return "final", None
    return "unknown", None


def split_of(meta: dict) -> dict[str, Any] | None:
    """The split entries carried by a checkpoint (canonical names), or None."""
    found: dict[str, Any] = {}
    for canon, aliases in SPLIT_KEYS.items():
        for alias in aliases:
            if alias in meta and meta[alias] is not None:
                found[canon] = meta[alias]
                break
    for split in ("train", "test"):  # train_data = (x, y) pairs
        x = found.get(f"x_{split}")
        if isinstance(x, list | tuple) and len(x) == 2 and f"y_{split}" not in found:
            found[f"x_{split}"], found[f"y_{split}"] = x
    has_explicit = all(k in found for k in ("x_train", "y_train", "x_test", "y_test"))
    has_indices = "train_indices" in found and "test_indices" in found
    if not (has_explicit or has_indices):
        return None
    keep = ("x_train", "y_train", "x_test", "y_test") if has_explicit else (
        "train_indices", "test_indices", "x_all", "y_all")
    return {k: _clone(found[k]) for k in keep if k in found}


def _clone(value: Any) -> Any:
    """Copy a tensor out of a memory-mapped file so it outlives the load."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    return value


def jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-able copy of a config-like value (objects via ``to_dict``/dataclass/``vars``)."""
    if depth > 6:
        return repr(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    number = to_float(value)
    if number is not None and not isinstance(value, torch.Tensor | np.ndarray):
        return jsonable(value.item() if hasattr(value, "item") else number, depth + 1)
    if isinstance(value, torch.Tensor | np.ndarray):
        n = value.size if isinstance(value, np.ndarray) else value.numel()
        if n <= 64:
            return jsonable(value.tolist(), depth + 1)
        return f"<{type(value).__name__} shape {tuple(value.shape)}>"
    if isinstance(value, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v, depth + 1) for v in value]
    if hasattr(value, "to_dict") and callable(value.to_dict):
        try:
            return jsonable(value.to_dict(), depth + 1)
        except Exception:  # noqa: BLE001 - fall back to the attribute dict
            pass
    if hasattr(value, "__dict__"):
        return jsonable(dict(vars(value)), depth + 1)
    return repr(value)


def config_of(meta: dict) -> dict[str, Any]:
    """Run descriptions (``config``/``args``/``hyper_parameters``...) found in ``meta``, JSON-able."""
    return {k: jsonable(meta[k]) for k in CONFIG_KEYS if k in meta and meta[k] is not None}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """True when two state dicts hold the same keys and exactly equal tensors."""
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a
    )


def weights_digest(sd: dict[str, torch.Tensor]) -> bytes:
    """A 16-byte hash of a state dict's keys, dtypes, shapes and exact bytes.

    Equal digests mean bit-for-bit identical weights (up to a 2**-128 accident); hashing each
    checkpoint once finds repeats among ``n`` checkpoints without comparing pairs.
    """
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for key in sorted(sd):
        t = sd[key].detach()
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        flat = t.cpu().contiguous().reshape(-1)
        if flat.numel():
            h.update(flat.view(torch.uint8).numpy().data)
    return h.digest()


# ---------------------------------------------------------------------------- the source
@dataclass
class Item:
    """One checkpoint: ``state_dict`` at ``step``, its numeric ``scalars``, and ``extra``
    (``{"file": label, ...}``)."""

    step: int
    state_dict: dict[str, torch.Tensor]
    scalars: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Source:
    """What a reader found: ``format``, the checkpoint ``labels`` (file names) and ``steps`` in
    step order, a ``split`` carried by the files (or None) and notes for the run's config."""

    format: str
    path: Path
    labels: list[str]
    steps: list[int]
    split: dict[str, Any] | None
    split_label: str | None
    notes: dict[str, Any]
    n_files: int
    _load: Callable[[int], Item]

    def __len__(self) -> int:
        return len(self.steps)

    def item(self, i: int) -> Item:
        """The ``i``-th checkpoint in step order (loaded now)."""
        return self._load(i)

    def __iter__(self) -> Iterator[Item]:
        for i in range(len(self.steps)):
            yield self._load(i)


@dataclass
class _Entry:
    path: Path
    label: str
    kind: str  # numeric | init | final | unknown
    step: int | None
    step_from: str  # "key:<k>" | "name" | "init" | "final"
    scalars: dict[str, float]
    source: str = ""  # which source gave the step, in words (for the import notes)


class _FileKind:
    """How to read one kind of per-checkpoint file."""

    def __init__(self, *, state_key: str | None, trust_pickle: bool, safetensors: bool):
        self.state_key = state_key
        self.trust_pickle = trust_pickle
        self.safetensors = safetensors

    def meta_and_sd(self, path: Path, label: str, *, want_sd: bool) -> tuple[dict, dict | None]:
        """``(meta, state_dict)``: ``meta`` the non-weight entries (numbers parsed)."""
        if self.safetensors:
            meta: dict[str, Any] = {}
            for k, v in safetensors_metadata(path).items():
                number = _parse_number(v)
                meta[k] = number if number is not None else v
            return meta, (load_safetensors(path) if want_sd else None)
        obj = load_torch(path, trust_pickle=self.trust_pickle)
        sd, key = find_state_dict(obj, self.state_key, label)
        if key is None:
            meta = {}
        elif "." in key or not isinstance(obj, dict):
            meta = {k: v for k, v in obj.items() if k != key.split(".")[0]} if isinstance(obj, dict) else {}
        else:
            meta = {k: v for k, v in obj.items() if k != key}
        return meta, sd

    def state_dict(self, path: Path, label: str) -> dict[str, torch.Tensor]:
        return self.meta_and_sd(path, label, want_sd=True)[1]  # type: ignore[return-value]


def _is_lightning(meta: dict) -> bool:
    return "pytorch-lightning_version" in meta or ("global_step" in meta and "epoch" in meta)


def _weight_file_of(folder: Path) -> Path | None:
    """The single weights file inside a checkpoint subfolder (HF ``checkpoint-500/``)."""
    for name in ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth"):
        if (folder / name).is_file():
            return folder / name
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix in (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX)]
    return files[0] if len(files) == 1 else None


def open_source(
    src: Path,
    *,
    step_key: str | None = None,
    state_key: str | None = None,
    trust_pickle: bool = False,
    skip_unknown: bool = False,
    step_from: str | None = None,
) -> Source:
    """Detect the format of ``src`` (a folder or a file) and scan it.

    ``step_from`` decides a file whose name's number disagrees with the step inside it
    (``"name"`` or ``"meta"``); None (default) refuses such a file, unless ``step_key`` is
    given (then the key wins).

    Raises
    ------
    CheckpointFormatError
        Nothing importable, mixed formats, unknown file names, duplicate steps.
    UnsafeCheckpointError
        A file needs pickled code and ``trust_pickle`` is False.
    """
    if step_from not in STEP_FROM:
        raise ConfigError(f"step_from={step_from!r}: use one of {STEP_FROM}")
    src = Path(src)
    if not src.exists():
        raise CheckpointFormatError(f"{src}: no such file or folder")
    if src.is_file():
        if src.suffix == SAFETENSORS_SUFFIX:
            kind = _FileKind(state_key=state_key, trust_pickle=trust_pickle, safetensors=True)
            return _scan_files(src, [(src, src.name)], kind, "file", step_key, skip_unknown, single=True,
                               step_from=step_from)
        obj = load_torch(src, trust_pickle=trust_pickle)
        if _bundle_list(obj, state_key) is not None:
            return _bundle_source(src, obj, step_key=step_key, state_key=state_key)
        del obj
        kind = _FileKind(state_key=state_key, trust_pickle=trust_pickle, safetensors=False)
        return _scan_files(src, [(src, src.name)], kind, "file", step_key, skip_unknown, single=True,
                               step_from=step_from)

    files = sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith("."))
    torch_files = [p for p in files if p.suffix in TORCH_SUFFIXES]
    st_files = [p for p in files if p.suffix == SAFETENSORS_SUFFIX]
    entries: list[tuple[Path, str]]
    if torch_files and st_files:
        raise CheckpointFormatError(
            f"{src}: holds both torch files ({torch_files[0].name}, ...) and safetensors files "
            f"({st_files[0].name}, ...); move one kind into its own folder and import that"
        )
    if torch_files or st_files:
        entries = [(p, p.name) for p in (torch_files or st_files)]
    else:  # numbered subfolders with one weights file each
        entries = []
        for sub in sorted(p for p in src.iterdir() if p.is_dir()):
            weights = _weight_file_of(sub)
            if weights is not None:
                entries.append((weights, sub.name))
    if not entries:
        suffixes = ", ".join((*TORCH_SUFFIXES, SAFETENSORS_SUFFIX))
        raise CheckpointFormatError(
            f"{src}: found no checkpoint files ({suffixes}) in it or in its subfolders"
        )
    safetensors = entries[0][0].suffix == SAFETENSORS_SUFFIX
    if not safetensors and len(entries) == 1:
        obj = load_torch(entries[0][0], trust_pickle=trust_pickle)
        if _bundle_list(obj, state_key) is not None:
            return _bundle_source(entries[0][0], obj, step_key=step_key, state_key=state_key)
        del obj
    kind = _FileKind(state_key=state_key, trust_pickle=trust_pickle, safetensors=safetensors)
    fmt = "safetensors" if safetensors else "torch_files"
    return _scan_files(src, entries, kind, fmt, step_key, skip_unknown, single=False,
                       step_from=step_from)


def _scan_files(
    src: Path,
    paths: list[tuple[Path, str]],
    kind: _FileKind,
    fmt: str,
    step_key: str | None,
    skip_unknown: bool,
    *,
    single: bool,
    step_from: str | None = None,
) -> Source:
    entries: list[_Entry] = []
    unknown: list[str] = []
    disagree: list[str] = []
    overruled: list[str] = []
    # an explicit step_key is the caller's choice of the metadata
    choice = step_from if step_from is not None else ("meta" if step_key is not None else None)
    split = split_label = None
    notes: dict[str, Any] = {}
    lightning = []
    for path, label in paths:
        meta, _ = kind.meta_and_sd(path, label, want_sd=False)
        lightning.append(_is_lightning(meta))
        if not notes.get("source_config"):
            cfg = config_of(meta)
            if cfg:
                notes["source_config"] = cfg
        name_k, name_step = name_kind(label)
        found = step_from_meta(meta, step_key, label)
        if found is not None and name_k == "numeric" and found[0] not in _name_numbers(label):
            step, key = found
            clash = f"{label}: the file name says step {name_step}, its {key!r} says {step}"
            if choice is None:
                disagree.append(clash)
                continue
            overruled.append(clash)
            if choice == "name":  # the key's value stays a metric
                entry = _Entry(path, label, name_k, name_step, "name", {},
                               f"the number in the file name (step_from='name', over {key!r})")
                used = set()
            else:
                entry = _Entry(path, label, name_k, step, f"key:{key}", {},
                               f"the key {key!r} (step_from='meta', over the file name)")
                used = {key}
        elif found is not None:
            step, key = found
            how = (" (agrees with the number in the file name)" if name_k == "numeric" else "")
            entry = _Entry(path, label, name_k, step, f"key:{key}", {}, f"the key {key!r}{how}")
            used = {key}
        elif step_key is not None and name_k in ("numeric", "unknown"):
            raise CheckpointFormatError(
                f"{label}: no numeric key {step_key!r} (step_key); its keys: {_keys_of(meta)}"
            )
        elif name_k == "unknown" and not single:
            unknown.append(label)
            continue
        else:
            step = 0 if name_k == "unknown" else name_step
            entry = _Entry(path, label, name_k, step, "name" if name_k == "numeric" else name_k, {},
                           _NAME_SOURCES[name_k])
            used = set()
        entry.scalars = scalars_of(meta, used)
        entries.append(entry)
        s = split_of(meta)
        if s is not None and (split is None or name_k == "init"):
            split, split_label = s, label
    if disagree:
        raise CheckpointFormatError(
            f"{src}: the step in the file name and the step inside the file disagree for "
            f"{len(disagree)} file(s): {'; '.join(disagree[:5])}"
            f"{' ...' if len(disagree) > 5 else ''}. Choose the source: step_from='name' "
            "(CLI: --step-from name) takes the numbers in the file names (the values inside "
            "stay as metrics), step_from='meta' (--step-from meta) the values inside the files"
        )
    if overruled:
        notes["step_disagreements"] = overruled[:50] + (["..."] if len(overruled) > 50 else [])
    if unknown and not skip_unknown:
        raise CheckpointFormatError(
            f"{src}: cannot tell the step of {unknown}: no step key "
            f"({step_key or '/'.join(STEP_KEYS)}) inside and no number in the name. Rename them "
            "(epoch_120.pt, init.pt, final.pt), pass step_key=, or skip them with "
            "skip_unknown=True (CLI: --skip-unknown)"
        )
    if unknown:
        notes["skipped_unknown"] = unknown
    if not entries:
        raise CheckpointFormatError(f"{src}: no checkpoint with a known step (skipped {unknown})")
    if all(lightning) and fmt == "torch_files":
        fmt = "lightning"
    entries = _resolve_steps(entries, kind, notes)
    notes["step_source"] = _summarise_sources([e.source for e in entries])
    labels = [e.label for e in entries]

    def load(i: int) -> Item:
        e = entries[i]
        sd = kind.state_dict(e.path, e.label)
        extra = {"file": e.label, "step_from": e.step_from}
        return Item(e.step, sd, dict(e.scalars), extra)

    return Source(fmt, src, labels, [e.step for e in entries], split, split_label, notes,
                  len(paths), load)


def _resolve_steps(entries: list[_Entry], kind: _FileKind, notes: dict) -> list[_Entry]:
    """Place unnumbered ``final`` files, drop identical aliases, refuse duplicate steps."""
    placed = [e for e in entries if e.step is not None]
    finals = [e for e in entries if e.step is None]
    last = max((e.step for e in placed), default=-1)
    if len(finals) > 1:
        raise CheckpointFormatError(
            f"several final checkpoints {[e.label for e in finals]}: keep one, or give them steps"
        )
    by_step: dict[int, list[_Entry]] = {}
    for e in placed:
        by_step.setdefault(e.step, []).append(e)  # type: ignore[arg-type]
    if finals:
        final = finals[0]
        if last >= 0 and _same_file_weights(final, by_step[last][0], kind):
            notes["skipped_aliases"] = [f"{final.label} (= {by_step[last][0].label})"]
        else:
            final.step = last + 1
            notes["final"] = {"file": final.label, "step": last + 1}
            by_step[last + 1] = [final]
    out = []
    for step in sorted(by_step):
        group = by_step[step]
        if len(group) > 1:
            named = [e for e in group if e.kind == "numeric"]
            keep = named[0] if named else group[0]
            aliases = [e for e in group if e is not keep and e.kind != "numeric"]
            clash = [e for e in group if e is not keep and e not in aliases]
            if clash or not all(_same_file_weights(a, keep, kind) for a in aliases):
                desc = ", ".join(f"{e.label} ({e.step_from})" for e in group)
                raise CheckpointFormatError(
                    f"step {step} appears in several files with different weights: {desc}. "
                    "Remove the extra files, or pass step_key= to take the step from another key"
                )
            notes.setdefault("skipped_aliases", []).extend(
                f"{a.label} (= {keep.label})" for a in aliases
            )
            group = [keep]
        out.append(group[0])
    return out


def _same_file_weights(a: _Entry, b: _Entry, kind: _FileKind) -> bool:
    return same_weights(kind.state_dict(a.path, a.label), kind.state_dict(b.path, b.label))


# ---------------------------------------------------------------------------- bundles
def _bundle_list(obj: Any, state_key: str | None) -> tuple[list, list | None, str | None] | None:
    """``(items, steps_or_None, list_key)`` when ``obj`` bundles several checkpoints."""
    if isinstance(obj, list | tuple):
        if len(obj) >= 1 and all(_item_sd(x, state_key) is not None for x in obj):
            return list(obj), None, None
        return None
    if not isinstance(obj, dict) or is_state_dict(obj):
        return None
    keys = (state_key,) if state_key is not None else BUNDLE_LIST_KEYS
    for key in keys:
        value = obj.get(key)
        if isinstance(value, dict) and value and all(_int_like(k) for k in value):
            if all(_item_sd(v, None) is not None for v in value.values()):
                steps = [int(k) for k in value]
                return list(value.values()), steps, key
        if isinstance(value, list | tuple) and value:
            if all(_item_sd(v, None) is not None for v in value):
                return list(value), None, key
    if obj and all(_int_like(k) for k in obj) and all(_item_sd(v, state_key) is not None for v in obj.values()):
        return list(obj.values()), [int(k) for k in obj], None
    return None


def _int_like(key: Any) -> bool:
    return isinstance(key, int) and not isinstance(key, bool) or isinstance(key, str) and key.isdigit()


def _item_sd(item: Any, state_key: str | None) -> dict | None:
    try:
        return find_state_dict(item, state_key, "")[0]
    except CheckpointFormatError:
        return None


def _series_name(key: str) -> str:
    for plural, single in (("losses", "loss"), ("accuracies", "acc"), ("accs", "acc"),
                           ("_accuracy", "_acc")):
        if key.endswith(plural):
            return key[: -len(plural)] + single
    if key.endswith("s") and not key.endswith("ss"):
        return key[:-1]
    return key


def _numeric_series(value: Any) -> list[float] | None:
    if isinstance(value, torch.Tensor | np.ndarray):
        if value.ndim != 1 or value.shape[0] == 0:
            return None
        try:
            return [float(v) for v in value.tolist()]
        except (TypeError, ValueError):
            return None
    if isinstance(value, list | tuple) and value:
        out = [to_float(v) for v in value]
        return None if any(v is None for v in out) else out  # type: ignore[misc]
    return None


def _bundle_source(path: Path, obj: Any, *, step_key: str | None, state_key: str | None) -> Source:
    found = _bundle_list(obj, state_key)
    assert found is not None
    items, steps, list_key = found
    label = path.name
    meta = obj if isinstance(obj, dict) else {}
    notes: dict[str, Any] = {}
    item_state_key = state_key if list_key is None else None
    per_item: list[tuple[int | None, dict, dict]] = []  # (step, sd, scalars)
    item_sources: list[str | None] = []
    for i, it in enumerate(items):
        sd, key = find_state_dict(it, item_state_key, f"{label}[{i}]")
        it_meta = {k: v for k, v in it.items() if k != key} if key is not None else {}
        found_step = step_from_meta(it_meta, step_key, f"{label}[{i}]")
        used = {found_step[1]} if found_step else set()
        per_item.append((found_step[0] if found_step else None, sd, scalars_of(it_meta, used)))
        item_sources.append(f"the key {found_step[1]!r} of each entry" if found_step else None)
    step_list_key = None
    if steps is None and any(s is None for s, _, _ in per_item):
        for key in ((step_key,) if step_key else BUNDLE_STEP_KEYS):
            series = _numeric_series(meta.get(key)) if key else None
            if series is not None:
                if len(series) != len(items):
                    raise CheckpointFormatError(
                        f"{label}: {key!r} has {len(series)} entries but there are "
                        f"{len(items)} checkpoints under {list_key!r}"
                    )
                steps = [_as_step(v, f"{label} [{key!r}]") for v in series]
                step_list_key = key
                break
        else:
            steps = list(range(len(items)))
            notes["steps_from"] = "position in the list (no step/epoch found)"
            warnings.warn(
                f"{label}: no steps found for the {len(items)} checkpoints; using their list "
                "positions 0..n-1 as steps (pass step_key= to name the key holding them)",
                stacklevel=3,
            )
    final_steps = [s if s is not None else steps[i] for i, (s, _, _) in enumerate(per_item)]  # type: ignore[index]
    if step_list_key is not None:
        list_source = f"the list {step_list_key!r}"
    elif "steps_from" in notes:
        list_source = "the position in the list"
    else:
        list_source = "the keys of the dict of checkpoints"
    notes["step_source"] = _summarise_sources([s or list_source for s in item_sources])
    order = sorted(range(len(items)), key=lambda i: final_steps[i])
    sorted_steps = [final_steps[i] for i in order]
    dups = sorted({s for s in sorted_steps if sorted_steps.count(s) > 1})
    if dups:
        raise CheckpointFormatError(
            f"{label}: steps {dups[:10]} appear more than once among its checkpoints"
        )
    # per-epoch series aligned with the checkpoints
    series_meta: dict[str, list[float]] = {}
    skipped: list[str] = []
    max_step = max(sorted_steps)
    exclude = {list_key, step_list_key, *BUNDLE_STEP_KEYS, *SPLIT_KEYS["train_indices"],
               *SPLIT_KEYS["test_indices"]}
    for key, value in meta.items():
        if not isinstance(key, str) or key in exclude:
            continue
        series = _numeric_series(value)
        if series is None:
            continue
        name = _series_name(key)
        if len(series) > max_step:
            series_meta[name] = [series[s] for s in final_steps]
            notes.setdefault("series_indexed_by_step", []).append(key)
        elif len(series) == len(items):
            series_meta[name] = series
            notes.setdefault("series_aligned_by_position", []).append(key)
        else:
            skipped.append(f"{key} (length {len(series)})")
    if skipped:
        notes["series_not_aligned"] = skipped
        warnings.warn(
            f"{label}: ignored per-step lists {skipped}: their length matches neither the last "
            f"step + 1 ({max_step + 1}) nor the number of checkpoints ({len(items)})",
            stacklevel=3,
        )
    top_scalars = scalars_of({k: v for k, v in meta.items() if k not in exclude}, set())
    # a final model next to the list (Nanda's "model"): keep if it differs from the last one
    final_sd = None
    if list_key is not None:
        for key in (state_key,) if state_key and state_key != list_key else STATE_KEYS:
            if key and key in meta and is_state_dict(meta[key]):
                final_sd = _strip_extra(meta[key])
                break
    entries: list[tuple[int, dict, dict, dict]] = []
    for rank, i in enumerate(order):
        scal = dict(top_scalars)
        scal.update({k: v[i] for k, v in series_meta.items()})
        scal.update(per_item[i][2])
        entries.append((sorted_steps[rank], per_item[i][1], scal, {"file": f"{label}[{i}]"}))
    if final_sd is not None:
        if same_weights(final_sd, entries[-1][1]):
            notes["skipped_aliases"] = [f"final model (= the checkpoint at step {max_step})"]
        else:
            entries.append((max_step + 1, final_sd, dict(top_scalars), {"file": f"{label}[final]"}))
            notes["final"] = {"file": f"{label}[final]", "step": max_step + 1}
    cfg = config_of(meta)
    if cfg:
        notes["source_config"] = cfg
    split = split_of(meta)

    def load(i: int) -> Item:
        step, sd, scal, extra = entries[i]
        return Item(step, sd, dict(scal), dict(extra))

    return Source("bundle", path, [e[3]["file"] for e in entries], [e[0] for e in entries],
                  split, label if split else None, notes, 1, load)

