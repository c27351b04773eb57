"""Import checkpoints written by other people's code into a grokscope store.

>>> import grokscope as gs
>>> run = gs.import_checkpoints("ckpts/", "run.zarr", model="mlp", data=data,
...                             model_kwargs={"in_dim": 4, "out_dim": 3})   # doctest: +SKIP

Supported sources (detected automatically, see :mod:`grokscope.store._formats`): a folder of
per-checkpoint torch files (plain dicts or PyTorch Lightning ``.ckpt``), a folder of
``.safetensors`` files, numbered subfolders holding one weights file each, and one file
bundling many state dicts (Nanda et al.'s ``full_run_data.pth``). Every file is loaded with
``torch.load(..., weights_only=True, map_location="cpu")``: files saved on a GPU import on a
CPU-only machine, and a file that needs arbitrary pickled code is refused
(:class:`~grokscope.errors.UnsafeCheckpointError`) unless ``trust_pickle=True``.

Keys are matched to the model's state dict; a common prefix (``model.`` of Lightning,
``module.`` of DataParallel, ``_orig_mod.`` of ``torch.compile``) is stripped or added when
that makes every key match. Numbers found in the files become metrics; in a bundle, per-epoch
lists (``train_losses``...) become metrics at the checkpoint epochs: ``list[epoch]`` when the
list covers every epoch up to the last checkpoint (losses indexed by epoch), else
``list[i]`` for the ``i``-th checkpoint when the list has one entry per checkpoint.

The step of a file comes from a key inside it or the number in its name; when both exist and
disagree the import stops unless ``step_from`` chooses (see :func:`import_checkpoints`).
Checkpoints at different steps with identical weights are imported, and reported by a
warning and in ``config["import"]["identical_weights"]`` (each checkpoint hashed once).
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._cliargs import json_arg
from ..data import Data, as_data
from ..errors import ConfigError, DataError, GrokscopeError, ModelMismatchError
from . import _io, _tl, schema
from ._formats import Item, Source, jsonable, open_source, weights_digest
from .schema import RESERVED

if TYPE_CHECKING:
    from .run import Run

__all__ = [
    "KeyMatcher",
    "Source",
    "add_import_parser",
    "cmd_import",
    "import_checkpoints",
    "modular_full_set",
]

#: prefixes tried first when several would make the keys match
_PREFERRED_PREFIXES = ("model.", "module.", "net.", "_orig_mod.", "network.")


# ---------------------------------------------------------------------------- key matching

def _prefix_counts(keys: set[str], target: set[str]) -> dict[str, int]:
    """How many ``keys`` become a ``target`` key once each candidate prefix is removed."""
    counts: dict[str, int] = {}
    for k in keys:
        parts = k.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[i:]) in target:
                p = ".".join(parts[:i]) + "."
                counts[p] = counts.get(p, 0) + 1
    return counts

class KeyMatcher:
    """Maps a foreign state dict onto a model's keys (stripping or adding one prefix).

    Parameters
    ----------
    model : nn.Module
        The model whose ``state_dict()`` keys and shapes are the target.
    """

    def __init__(self, model: nn.Module):
        target = model.state_dict()
        self.shapes = {k: tuple(v.shape) for k, v in target.items()}
        self.dtypes = {k: v.dtype for k, v in target.items()}
        self.strip: str | None = None
        self.add: str | None = None
        self.ignored: list[str] = []
        self._fitted = False

    # -- fitting
    def fit(self, sd: dict[str, torch.Tensor], label: str) -> KeyMatcher:
        """Choose the prefix rule from the first checkpoint ``sd`` (file ``label``)."""
        target, keys = set(self.shapes), set(sd)
        if keys != target:
            rule = self._find_rule(keys, target)
            if rule is None:
                raise self._mismatch(sd, label, keys_only=True)
            self.strip, self.add = rule
        self._fitted = True
        mapped = self(sd, label)
        self.ignored = sorted(k for k in sd if self._map_key(k) is None)
        del mapped
        return self

    def _find_rule(self, keys: set[str], target: set[str]) -> tuple[str | None, str | None] | None:
        strip_counts = _prefix_counts(keys, target)
        add_counts = _prefix_counts(target, keys)

        def rank(p: str) -> tuple[int, int, int]:
            pref = _PREFERRED_PREFIXES.index(p) if p in _PREFERRED_PREFIXES else len(_PREFERRED_PREFIXES)
            return (-strip_counts.get(p, add_counts.get(p, 0)), pref, len(p))

        for p in sorted(strip_counts, key=rank):
            under = {k[len(p):] for k in keys if k.startswith(p)}
            if under == target:
                return p, None
        for p in sorted(add_counts, key=rank):
            if {p + k for k in keys} == target:
                return None, p
        return None

    def _map_key(self, key: str) -> str | None:
        if self.strip is not None:
            return key[len(self.strip):] if key.startswith(self.strip) else None
        if self.add is not None:
            return self.add + key
        return key

    # -- applying
    def __call__(self, sd: dict[str, torch.Tensor], label: str) -> dict[str, torch.Tensor]:
        """``sd`` with the model's keys; ModelMismatchError naming ``label`` when it cannot."""
        if not self._fitted:
            self.fit(sd, label)
        out = {}
        for k, v in sd.items():
            mk = self._map_key(k)
            if mk is not None:
                out[mk] = v
        if set(out) != set(self.shapes) or any(
            tuple(out[k].shape) != self.shapes[k] for k in self.shapes
        ):
            raise self._mismatch(out if set(out) & set(self.shapes) else sd, label)
        return out

    def _mismatch(self, sd: dict, label: str, *, keys_only: bool = False) -> ModelMismatchError:
        target = set(self.shapes)
        missing = sorted(target - set(sd))
        unexpected = sorted(set(sd) - target)
        shapes = [
            f"{k}: file {tuple(sd[k].shape)} vs model {self.shapes[k]}"
            for k in sorted(target & set(sd))
            if tuple(sd[k].shape) != self.shapes[k]
        ]
        lines = [f"{label}: the checkpoint does not match the model."]
        if missing:
            lines.append(f"missing keys ({len(missing)}): {_clip(missing)}")
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {_clip(unexpected)}")
        if shapes:
            lines.append(f"shape differences ({len(shapes)}): {_clip(shapes)}")
        hint = (
            "Check the model and its kwargs (model_kwargs / --model-kwargs). If the weights sit "
            "under another key of the file pass state_key= (--state-key); a common key prefix "
            "(e.g. 'model.' or 'module.') is stripped automatically only when every model key "
            "then matches; for other renamings pass key_map= (a function state_dict -> "
            "state_dict)."
        )
        lines.append(hint)
        return ModelMismatchError("\n".join(lines))

    def notes(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.strip:
            out["stripped_prefix"] = self.strip
        if self.add:
            out["added_prefix"] = self.add
        if self.ignored:
            out["ignored_keys"] = self.ignored[:50] + (["..."] if len(self.ignored) > 50 else [])
        return out


def _clip(items: Sequence[str], n: int = 12) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


# ---------------------------------------------------------------------------- data
def modular_full_set(
    p: int, op: str = "+", encoding: str = "tokens"
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The full ``a op b mod p`` table in row-major ``(a, b)`` order, for index splits.

    Nanda et al.'s grokking runs store ``train_indices``/``test_indices`` into exactly this
    table (``(a, b, p)`` tokens, ``a`` major). Pass the result as ``full_data=``.

    Returns
    -------
    x_all : tensor, ``(N, 3)`` int64 tokens or ``(N, 2p)`` float two-hot
    y_all : tensor, ``(N,)`` int64
    task : dict, the modular task spec (without ``train_frac``/``seed``: the split is given)
    """
    from ..tasks.modular import all_pairs, encode

    pairs, labels = all_pairs(p, op)
    task = {"name": "modular", "p": int(p), "op": op, "encoding": encoding, "n_classes": int(p),
            "vocab": int(p) + 1}
    return encode(pairs, p, encoding), labels, task


def _data_from_split(
    split: dict[str, Any], where: str, full_data: tuple | None
) -> tuple[Data, dict[str, Any]]:
    task: dict[str, Any] = {"name": "imported", "source": where}
    if "x_train" in split:
        data = Data(split["x_train"], split["y_train"], split["x_test"], split["y_test"], task=task)
        return data, {"split_from": where}
    tr = torch.as_tensor(split["train_indices"]).long().reshape(-1)
    te = torch.as_tensor(split["test_indices"]).long().reshape(-1)
    if full_data is not None:
        if len(full_data) not in (2, 3):
            raise ConfigError("full_data must be (x_all, y_all) or (x_all, y_all, task_spec)")
        x_all, y_all = (torch.as_tensor(v) for v in full_data[:2])
        if len(full_data) == 3 and full_data[2]:
            task = dict(full_data[2])
        origin = "full_data argument"
    elif "x_all" in split and "y_all" in split:
        x_all, y_all = torch.as_tensor(split["x_all"]), torch.as_tensor(split["y_all"])
        origin = where
    else:
        raise ConfigError(
            f"{where} carries train/test indices but not the dataset they index: pass "
            "full_data=(x_all, y_all) (for Nanda-style modular runs: full_data="
            "modular_full_set(p, op); CLI: --full-set '{\"p\": 113, \"op\": \"+\"}'), or pass "
            "data= with the split yourself"
        )
    n = x_all.shape[0]
    if y_all.shape[0] != n:
        raise ConfigError(f"the full dataset has {n} inputs but {y_all.shape[0]} labels")
    bad = [int(i) for i in torch.cat([tr, te]) if i < 0 or i >= n][:5]
    if bad:
        raise ConfigError(f"{where}: indices {bad} are out of range for a dataset of {n} samples")
    extras: dict[str, torch.Tensor] = {}
    if task.get("name") == "modular" and "p" in task:
        from ..tasks.modular import all_pairs

        pairs = all_pairs(int(task["p"]), task.get("op", "+"))[0]
        if pairs.shape[0] == n:
            extras = {"pairs_train": pairs[tr], "pairs_test": pairs[te]}
        task.setdefault("train_frac", round(len(tr) / n, 6))
    data = Data(x_all[tr], y_all[tr], x_all[te], y_all[te], task=task, extras=extras)
    return data, {"split_from": where, "split_indexes": origin}


# ---------------------------------------------------------------------------- model
def _resolve_model(
    model: nn.Module | type | str, model_kwargs: dict | None, data: Data, trust_code: bool
) -> tuple[nn.Module, dict | None]:
    """``(module to load checkpoints into, constructor kwargs to store)``.

    An instance is deep-copied (the caller's object is never loaded into); its
    ``model_kwargs``, when given, are stored as its constructor arguments. A class or a
    ``module:qualname`` is built with ``model_kwargs`` (its spec records them); a registered
    name is built by ``model_for``.
    """
    from ..models import build_from_spec, build_model, model_for

    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise ConfigError(f"model_kwargs must be a dict, got {type(model_kwargs).__name__}")
    kwargs = dict(model_kwargs or {})
    if isinstance(model, nn.Module):
        try:
            return copy.deepcopy(model), model_kwargs
        except Exception as exc:  # noqa: BLE001 - user modules may refuse deepcopy
            raise ConfigError(
                f"the model passed cannot be deep-copied ({type(exc).__name__}: {exc}); pass its "
                "class with model_kwargs instead"
            ) from exc
    if isinstance(model, type):
        if not issubclass(model, nn.Module):
            raise ConfigError(f"model must be an nn.Module class, got {model!r}")
        return build_model(model, **kwargs), None
    if isinstance(model, str):
        if ":" in model:
            return build_from_spec({"factory": model, "kwargs": kwargs},
                                   trust_code=trust_code), None
        return model_for(model, data, **kwargs), None
    raise ConfigError(
        f"model must be an nn.Module, a module class, or a registered model name, got {model!r}"
    )


def _brief(t: torch.Tensor) -> str:
    return f"{str(t.dtype).replace('torch.', '')} {tuple(t.shape)}"


def check_inputs_fit(net: nn.Module, data: Data, out: Any) -> None:
    """Run ``net`` on 2 stored inputs; DataError naming what did not fit when it fails.

    A store whose model cannot take its own inputs (integer tokens into a two-hot MLP, a
    width mismatch) would only fail later, inside an analysis, with a raw torch error.
    """
    x = data.x_train if data.x_train.shape[0] else data.x_test
    if x.shape[0] == 0:
        return
    x = x[:2]
    param = next(iter(net.parameters()), None)
    if param is not None:
        x = x.to(param.device)
    if x.is_floating_point():  # as the analysis feeds them: in the model's float dtype
        dtype = next((p.dtype for p in net.parameters() if p.is_floating_point()), None)
        if dtype is not None:
            x = x.to(dtype)
    entered: list[tuple[str, nn.Module, str]] = []

    def note(name: str) -> Callable:
        def hook(mod: nn.Module, args: tuple) -> None:
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            entered.append((name, mod, _brief(first) if first is not None else "no tensor"))
        return hook

    handles = [m.register_forward_pre_hook(note(n)) for n, m in net.named_modules() if n]
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(x)
    except Exception as exc:  # noqa: BLE001 - the model's own code may raise anything
        leaves = [e for e in entered if not any(True for _ in e[1].children())]
        if leaves:
            name, mod, got = leaves[-1]
            where = f"module {name!r} ({mod!r}) received {got}"
        else:
            first = next(((n, m) for n, m in net.named_modules()
                          if any(True for _ in m.parameters(recurse=False))), None)
            where = (f"its first layer {first[0] or 'the root'!r} is {first[1]!r}" if first
                     else "it has no parameters")
        detail = " ".join(str(exc).split())[:300]
        raise DataError(
            f"the model cannot run on the stored inputs ({_brief(data.x_train)} x_train; a "
            f"batch of 2 gave {type(exc).__name__}: {detail}); {where}. Pass data with the "
            "encoding the model was trained on (e.g. make_task(..., encoding='onehot') for an "
            "MLP on two-hot vectors, encoding='tokens' for a model with an embedding), or the "
            f"model these inputs belong to. Nothing was written to {out}"
        ) from None
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)


# ---------------------------------------------------------------------------- import
def _metric_name(name: str, params: dict, renamed: dict[str, str]) -> str:
    if name in renamed:
        return renamed[name]
    new = name.replace("/", ".").lstrip(".") or "metric"
    while new in RESERVED or new in params:
        new = f"source_{new}"
    if new != name:
        renamed[name] = new
    return new


def import_checkpoints(
    src: str | Path,
    out: str | Path,
    *,
    model: nn.Module | type | str,
    data: Data | None,
    config: dict | None = None,
    step_key: str | None = None,
    state_key: str | None = None,
    trust_pickle: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    model_kwargs: dict | None = None,
    trust_code: bool = False,
    skip_unknown: bool = False,
    full_data: tuple | None = None,
    key_map: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    storage_options: dict | None = None,
    step_from: str | None = None,
) -> Run:
    """Turn foreign checkpoints into a grokscope store.

    Parameters
    ----------
    src : str or Path
        A folder of checkpoint files (``.pt``/``.pth``/``.ckpt``/``.bin`` or
        ``.safetensors``), a folder of numbered subfolders, or one file (a bundle of state
        dicts, or one checkpoint).
    out : str or Path
        The store to write (a path or fsspec URL).
    model : nn.Module, class or str
        The architecture the weights belong to: an instance, an ``nn.Module`` class (built with
        ``model_kwargs``), a registered name (built by ``model_for(name, data, **model_kwargs)``)
        or ``"module:qualname"`` (imported only with ``trust_code=True``). Keys and shapes of
        every checkpoint are checked against it; it becomes the run's model.
    data : Data, tuple, dict or None
        The split the run was trained on; None to read it from the checkpoints (keys
        ``x_train``/``train_data``/... or ``train_indices`` with ``full_data``).
    config : dict, optional
        Extra config stored with the run; ``imported_from``, ``format``, ``files`` and
        ``import`` (what the importer decided) are added.
    step_key : str, optional
        The key holding the step in every file (default: ``step``, ``global_step``,
        ``epoch``, ``iteration``, then the number in the file name).
    state_key : str, optional
        The key holding the state dict (dotted paths allowed), or in a bundle the key holding
        the list of state dicts.
    trust_pickle : bool
        Load files that need arbitrary pickled code with ``weights_only=False``. Only for files
        you trust.
    overwrite : bool
        Replace an existing store at ``out``.
    progress : bool
        Show a tqdm progress bar.
    model_kwargs : dict, optional
        Constructor arguments: used to build ``model`` when it is a class, a name or
        ``module:qualname``; stored as its constructor arguments when it is an instance
        (``config["model"] = {"factory": "module:qualname", "kwargs": model_kwargs}``).
    trust_code : bool
        Allow ``model="module:qualname"`` to import that code.
    skip_unknown : bool
        Skip files whose step cannot be told (no step key, no number in the name) instead of
        raising.
    full_data : tuple, optional
        ``(x_all, y_all[, task_spec])``: the dataset that ``train_indices``/``test_indices``
        in the checkpoints index (see :func:`modular_full_set`).
    key_map : callable, optional
        Applied to every state dict before matching (for renamings beyond one prefix).
    storage_options : dict, optional
        fsspec options for ``out``.
    step_from : {None, "name", "meta"}
        Where the step comes from when a file's name carries a number and the file a step key
        that disagree (``ckpt_100.pt`` holding ``epoch=1``): ``"name"`` the number in the
        name (the key's value stays a metric), ``"meta"`` the key. None (default) refuses
        such files with a CheckpointFormatError naming both values, unless ``step_key`` is
        given (then the key wins). A key equal to any number in the name agrees with it;
        names without a number are unaffected.

    Returns
    -------
    Run
        The new store, opened.

    Raises
    ------
    CheckpointFormatError
        No checkpoints, unreadable files, unknown file names, duplicate steps, a file name
        and a step key that disagree (see ``step_from``).
    UnsafeCheckpointError
        A file needs pickled code and ``trust_pickle`` is False.
    ModelMismatchError
        A checkpoint's keys or shapes differ from the model's.
    DataError
        The model, with the first checkpoint's weights, cannot run on the stored inputs
        (e.g. integer tokens into an MLP on two-hot vectors); nothing is written.
    ConfigError
        No split given or found, or bad arguments.

    Notes
    -----
    ``config["import"]`` records what the importer decided, among others ``step_source``
    (which source gave the steps: a key, the file names, list positions ...),
    ``step_disagreements`` (files whose name and key disagreed, and which won) and
    ``identical_weights`` (groups of steps whose weights are bit-for-bit identical: public
    checkpoint series have shipped one set of weights under several step names; each group
    is also reported by a warning, and every step is still imported). Identical weights are
    found by hashing each checkpoint once, never by comparing pairs.

    Unless ``model`` is one of grokscope's registered models, the store also keeps the
    architecture as a ``torch.export`` program (see :mod:`grokscope.store.portable`), so a
    process without the model's code can analyse the run; the model's anatomy is stored in
    ``config["anatomy"]``.
    """
    from tqdm.auto import tqdm

    from .recorder import Recorder, remove_lock_file
    from .run import open_run

    source = open_source(
        Path(src), step_key=step_key, state_key=state_key, trust_pickle=trust_pickle,
        skip_unknown=skip_unknown, step_from=step_from,
    )
    notes: dict[str, Any] = dict(source.notes)
    if data is None:
        if source.split is None:
            raise ConfigError(
                f"{src}: the checkpoints carry no train/test split (no x_train/train_data/"
                "train_indices keys); pass data= (a grokscope.Data, e.g. from "
                "grokscope.make_task; CLI: --task NAME --task-kwargs JSON)"
            )
        found = _tl.demo_table(source.split, source.notes.get("source_config")) if full_data is None else None
        if found is not None:  # TransformerLens's grokking demo file: indices into a known table
            full_data, notes["split_table"] = found
        data, how = _data_from_split(source.split, str(source.split_label), full_data)
        notes.update(how)
    else:
        data = as_data(data)
        if source.split is not None:
            notes["split_in_checkpoints_ignored"] = source.split_label
    net, spec_kwargs = _resolve_model(model, model_kwargs, data, trust_code)
    key_map = _tl.buffer_key_map(net, key_map)  # TransformerLens: keep the model's own mask buffer

    first = _mapped(source.item(0), key_map)
    matcher = KeyMatcher(net).fit(first.state_dict, first.extra["file"])
    notes.update(matcher.notes())
    first_sd = matcher(first.state_dict, first.extra["file"])
    casts = sorted({
        f"{v.dtype}->{matcher.dtypes[k]}" for k, v in first_sd.items() if v.dtype != matcher.dtypes[k]
    })
    # the first checkpoint's weights, then the safety net: the model must take the inputs
    net.load_state_dict(first_sd, strict=True)
    check_inputs_fit(net, data, out)
    if casts:
        notes["dtype_cast"] = casts
    cfg = dict(config or {})
    cfg.update(imported_from=str(src), format=source.format, files=source.n_files)
    cfg["import"] = jsonable(notes)

    params = net.state_dict()
    renamed: dict[str, str] = {}
    seen: list[str] = []
    digests: dict[bytes, list[int]] = {}  # weights hash -> the steps holding those weights
    existed = _exists(out, storage_options)
    # Re-importing over an existing local store writes a sibling first and swaps it in only on
    # success, so a failure part-way leaves the old store untouched.
    target = out
    local = _io._local_path(out)
    if existed and local is not None and _io.unfinished_store_files(local):
        existed = False  # only the temp files of a writer killed before its first commit
    swap = existed and overwrite and local is not None
    if swap and not _is_grokscope_store(local):
        raise ConfigError(
            f"{out} exists and is not a grokscope store; choose another path (grokscope will "
            "not delete it, even with overwrite=True)"
        )
    if swap:
        target = local.with_name(f".{local.name}.importing-{uuid.uuid4().hex[:8]}")
    created = False
    rec_config: dict | None = cfg
    if existed and not overwrite and local is not None and _is_grokscope_store(local):
        # appending to an earlier import: only from the same source, under the stored config
        from .run import open_run as _open_run

        before = _open_run(out).config.get("imported_from")
        if before is not None and before != str(src):
            raise ConfigError(
                f"{out} holds checkpoints imported from {before}, not {src}: import into another "
                "path, or pass overwrite=True to replace it"
            )
        rec_config = None
    try:
        with Recorder(target, net, data, config=rec_config, overwrite=overwrite,
                      storage_options=storage_options, model_kwargs=spec_kwargs) as rec:
            created = not existed or swap
            last = rec.last_step
            todo = [i for i, step in enumerate(source.steps) if last is None or step > last]
            if last is not None:
                warnings.warn(
                    f"{out} already holds steps up to {last}: importing only the "
                    f"{len(todo)} later checkpoints (pass overwrite=True to re-import all)",
                    stacklevel=2,
                )
            bar = tqdm(total=len(todo), desc="import", unit="ckpt", disable=not progress)
            try:
                for i in todo:
                    item = first if i == 0 else _mapped(source.item(i), key_map)
                    sd = matcher(item.state_dict, item.extra["file"])
                    digests.setdefault(weights_digest(sd), []).append(item.step)
                    net.load_state_dict(sd, strict=True)
                    metrics = {_metric_name(k, params, renamed): v for k, v in item.scalars.items()}
                    for name in seen:
                        metrics.setdefault(name, float("nan"))
                    seen.extend(k for k in metrics if k not in seen)
                    rec.record(item.step, net, metrics=metrics or None)
                    bar.update(1)
            finally:
                bar.close()
    except GrokscopeError:
        if created:  # remove only what this call created; never a path that existed before
            _remove(target, storage_options)
            remove_lock_file(target)
        raise
    same = sorted(steps for steps in digests.values() if len(steps) > 1)
    if same:
        shown = ", ".join(str(g) for g in same[:10]) + (" ..." if len(same) > 10 else "")
        warnings.warn(
            f"{src}: identical weights under different steps: {shown}. Every step was imported; "
            "the groups are listed in run.config['import']['identical_weights']. Check that the "
            "checkpoints were saved at the steps their names or keys claim",
            stacklevel=2,
        )
        _note_in_store(target, storage_options, "identical_weights", same)
    if swap:
        old = local.with_name(f".{local.name}.replaced-{uuid.uuid4().hex[:8]}")
        os.replace(local, old)
        os.replace(target, local)
        shutil.rmtree(old)
        remove_lock_file(target)  # the sibling's lock file: the store keeps its own
    return open_run(out, storage_options=storage_options)


def _note_in_store(out: str | Path, storage_options: dict | None, key: str, groups: list) -> None:
    """Add ``groups`` under ``config["import"][key]`` of the closed store ``out``."""
    store = _io.open_store(out, read_only=False, storage_options=storage_options)
    doc = _io.read_json(store, "zarr.json", what="the root metadata document")
    if doc is None:
        return
    notes = doc["attributes"][schema.META_KEY]["config"].setdefault("import", {})
    notes[key] = [g for g in notes.get(key, []) if g not in groups] + groups
    _io.write_json(store, "zarr.json", doc)


def _is_grokscope_store(path: Path) -> bool:
    """True when ``path`` holds a root document written by grokscope (any schema version)."""
    import json

    try:
        doc = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    attrs = doc.get("attributes") if isinstance(doc, dict) else None
    return isinstance(attrs, dict) and schema.SCHEMA_KEY in attrs


def _exists(out: str | Path, storage_options: dict | None) -> bool:
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(out), **(storage_options or {}))
    return bool(fs.exists(path))


def _remove(out: str | Path, storage_options: dict | None) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(out), **(storage_options or {}))
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _mapped(item: Item, key_map: Callable | None) -> Item:
    if key_map is not None:
        item.state_dict = key_map(item.state_dict)
        if not isinstance(item.state_dict, dict):
            raise ConfigError("key_map must return a dict (a state dict)")
    return item


# ---------------------------------------------------------------------------- CLI
def add_import_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``import`` subcommand to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "import",
        help="turn checkpoints written by other code into a grokscope store",
        description=(
            "Import a folder of checkpoints (.pt/.pth/.ckpt/.bin, PyTorch Lightning, "
            ".safetensors) or one bundle file (e.g. full_run_data.pth) into a store. Files are "
            "loaded with torch.load(weights_only=True, map_location='cpu')."
        ),
    )
    from .._cliargs import add_quiet_argument
    from ._formats import STATE_KEYS, STEP_KEYS

    p.add_argument("src", metavar="PATH",
                   help="the checkpoint folder (one file per step) or one bundle file")
    p.add_argument("-o", "--out", required=True, metavar="PATH",
                   help="the store to write (a folder or an fsspec URL); an existing import of "
                   "the same source is continued with the new checkpoints")
    p.add_argument("--model", required=True, metavar="NAME|MODULE:CLASS",
                   help="the architecture the checkpoints hold: a registered model name (e.g. "
                   "mlp) or module:qualname (needs --trust-code)")
    p.add_argument("--model-kwargs", default=None, metavar="JSON",
                   help="model constructor arguments as a JSON object, e.g. '{\"width\": 256}'")
    p.add_argument("--task", default=None, metavar="NAME",
                   help="task name building the train/test split (modular, parity, teacher, "
                   "digits; default: the split read from the checkpoints)")
    p.add_argument("--task-kwargs", default=None, metavar="JSON",
                   help="task parameters as a JSON object (with --task)")
    p.add_argument("--full-set", default=None, metavar="JSON",
                   help="modular table the checkpoints' train/test indices index, e.g. "
                   "'{\"p\": 113, \"op\": \"+\"}' (Nanda et al. runs)")
    p.add_argument("--step-key", default=None, metavar="KEY",
                   help="key holding the step in each file (default: one of "
                   f"{', '.join(STEP_KEYS)}, else the number in the file name)")
    p.add_argument("--step-from", default=None, choices=("name", "meta"),
                   help="when a file's name and its step key disagree (ckpt_100.pt holding "
                   "epoch=1): take the step from the number in the name or from the key inside "
                   "(default: refuse such files)")
    p.add_argument("--state-key", default=None, metavar="KEY",
                   help="key holding the state dict in each file; dotted paths like "
                   f"'ema.model' work (default: the first of {', '.join(STATE_KEYS)})")
    p.add_argument("--skip-unknown", action="store_true",
                   help="skip files whose step cannot be told")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load files needing pickled code (weights_only=False): trusted files only")
    p.add_argument("--trust-code", action="store_true", help="allow --model module:qualname")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing store at --out instead of continuing it")
    add_quiet_argument(p, "--no-progress")
    p.set_defaults(func=cmd_import)
    return p


def cmd_import(args: argparse.Namespace) -> int:
    """Run ``grokscope import``; print a summary. Returns 0, or 2 after printing an error."""
    try:
        data = None
        if args.task:
            from ..tasks import make_task

            data = make_task(args.task, **json_arg(args.task_kwargs, "--task-kwargs"))
        elif args.task_kwargs:
            raise ConfigError("--task-kwargs needs --task")
        full = json_arg(args.full_set, "--full-set")
        full_data = None
        if full:
            if "p" not in full:
                raise ConfigError("--full-set needs at least {\"p\": P}")
            full_data = modular_full_set(int(full["p"]), full.get("op", "+"),
                                         full.get("encoding", "tokens"))
        run = import_checkpoints(
            args.src, args.out, model=args.model, data=data,
            model_kwargs=json_arg(args.model_kwargs, "--model-kwargs"),
            step_key=args.step_key, state_key=args.state_key, trust_pickle=args.trust_pickle,
            trust_code=args.trust_code, overwrite=args.overwrite, skip_unknown=args.skip_unknown,
            full_data=full_data, progress=not args.quiet,
            step_from=getattr(args, "step_from", None),
        )
    except GrokscopeError as exc:
        from ..cli import cli_message

        print(f"grokscope import: error: {cli_message(str(exc))}", file=sys.stderr)
        return 2  # as grokscope.cli.main does for every GrokscopeError
    steps = run.steps
    print(f"imported {len(steps)} checkpoints (steps {int(steps[0])}..{int(steps[-1])}, "
          f"format {run.config.get('format')}) into {args.out}")
    return 0

