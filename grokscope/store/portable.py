"""A model's architecture as a portable ``torch.export`` program, stored inside its run.

A run recorded from a user's own loop, or imported from someone else's checkpoints, must be
analysable by a process that has none of the code that trained it. At record/import time
:func:`export_model` traces the model with :func:`torch.export.export` on one batch of the
run's inputs (batch dimension dynamic, eval mode, a deep copy on the CPU) and serialises the
program with :func:`torch.export.save`; the store keeps those bytes (``_model/program``).
:func:`load_exported` turns them back into a module with the original parameter and module
names (:func:`torch.export.unflatten`): ``load_state_dict(run.state_dict_at(step))`` works,
forward hooks fire on submodules by their dotted names (``get_submodule("layers.0")``),
``torch.func`` transforms apply, and any batch size runs.

What is stored
    The graph (JSON), the non-persistent buffers and constants the graph needs (raw tensor
    bytes), and the state-dict tensors **zeroed**: the store holds the weights of every
    step, so the program carries the architecture only (and compresses to almost nothing).

What loading runs
    :func:`torch.export.load` is documented as unsafe for untrusted files: a weight marked
    ``use_pickle`` is read with ``torch.load(weights_only=False)``, the example inputs fall
    back to ``weights_only=False``, symbolic shape expressions are parsed with
    ``sympy.sympify`` (which evaluates Python) and guard code is ``exec``-ed. A store is
    untrusted input, so :func:`check_program` validates the archive first and refuses
    (:class:`~grokscope.errors.CorruptStoreError`) anything grokscope does not write itself:
    only the expected archive entries (stored, not compressed; no pickled tensors, no
    example inputs, no AOTInductor libraries, no custom objects, no extra files), no guard
    code, every graph target an ``aten`` operator (``from_file`` excluded), an ``_operator``
    arithmetic function or a ``torch.sym_*`` helper, every shape expression made of symbol
    names, numbers, operators and a fixed list of sympy functions, every module path made of
    identifiers. Every tensor is then read from raw bytes (``torch.as_strided`` over the
    stored buffer), never unpickled.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import re
import warnings
import zipfile
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..errors import CorruptStoreError

__all__ = ["check_program", "export_model", "fresh_copy", "load_exported"]

#: batch sizes tried for the example batch (one that no other input dimension has)
_BATCH_SIZES = (3, 5, 7, 2, 4, 6, 9, 11, 13)
#: attributes of unflattened modules that hold the traced graph and its metadata (fake
#: tensors, which cannot be deep-copied): shared, read-only, between copies
_SHARED_ATTRS = ("graph", "graph_module", "meta", "input_placeholders", "module_call_graph",
                 "range_constraints", "equality_constraints", "graph_signature")


# --------------------------------------------------------------------------- export
@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """Silence torch's logging, its printed graphs and warnings while tracing/loading."""
    saved = {}
    for name, lg in list(logging.Logger.manager.loggerDict.items()):
        if (name == "torch" or name.startswith("torch.")) and isinstance(lg, logging.Logger):
            saved[name] = lg.disabled
            lg.disabled = True
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):  # export prints partial graphs
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, disabled in saved.items():
            logging.getLogger(name).disabled = disabled


def _one_line(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}"


def _batch(x: torch.Tensor, avoid: set[int]) -> torch.Tensor:
    """``x``'s first rows (cycled when there are too few) as a batch whose size is in
    none of ``avoid`` (the other input dimensions, so tracing cannot confuse them)."""
    n = next((b for b in _BATCH_SIZES if b not in avoid), max(avoid) + 1)
    return x[torch.arange(n) % x.shape[0]]


def _why_untraceable(exc: BaseException) -> str:
    name = type(exc).__name__
    if "DataDependent" in name or "data-dependent" in str(exc):
        return "data-dependent control flow (e.g. `if x.sum() > 0:`)"
    if "Constraint" in name or "specializ" in str(exc).lower():
        return "the batch dimension cannot vary"
    return "the forward pass cannot be traced"


def _same_outputs(a: Any, b: Any) -> bool:
    fa, sa = torch.utils._pytree.tree_flatten(a)
    fb, sb = torch.utils._pytree.tree_flatten(b)
    if sa != sb or len(fa) != len(fb):
        return False
    for u, v in zip(fa, fb):
        if isinstance(u, torch.Tensor) != isinstance(v, torch.Tensor):
            return False
        if not isinstance(u, torch.Tensor):
            if u != v:
                return False
        elif u.shape != v.shape or u.dtype != v.dtype:
            return False
        elif u.is_floating_point() or u.is_complex():
            if not torch.allclose(u, v, rtol=1e-4, atol=1e-5, equal_nan=True):
                return False
        elif not torch.equal(u, v):
            return False
    return True


def export_model(model: nn.Module, example_inputs: torch.Tensor) -> tuple[bytes | None, str | None]:
    """The model's architecture as ``torch.export.save`` bytes, or ``(None, reason)``.

    Parameters
    ----------
    model : nn.Module
        Not modified: a deep copy is moved to the CPU, put in eval mode and traced.
    example_inputs : Tensor, shape (n, ...)
        The run's inputs (e.g. ``data.x_train``); a few rows (at least 2, cycled when fewer)
        make the example batch, whose size is dynamic in the program. Floating inputs are
        cast to the model's floating dtype, as the analysis feeds them.

    Returns
    -------
    (bytes, None)
        The program, checked before it is returned: it passes :func:`check_program`, its
        unflattened module has the model's state-dict keys and shapes, and with the model's
        weights loaded it gives the model's outputs on a batch of another size.
    (None, str)
        Why the model cannot be exported (one line), e.g. data-dependent control flow.
    """
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.ndim < 1:
        return None, "no example inputs to trace the model on (record with data)"
    if example_inputs.shape[0] == 0:
        return None, "the example inputs have no rows"
    x_all = example_inputs.detach().cpu()
    if x_all.is_floating_point():  # as the analysis feeds them: in the model's float dtype
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
        if dtype is not None:
            x_all = x_all.to(dtype)
    avoid = set(x_all.shape[1:])
    x = _batch(x_all, avoid)
    x2 = _batch(x_all, avoid | {x.shape[0]})
    try:
        net = copy.deepcopy(model).to("cpu").eval()
    except Exception as exc:  # noqa: BLE001 - any user module may refuse to be copied
        return None, f"the model cannot be copied ({_one_line(exc)})"
    sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
    with _quiet_torch():
        try:
            with torch.no_grad():
                expected = net(x2)
        except Exception as exc:  # noqa: BLE001 - the user's forward may raise anything
            return None, f"the model does not run on the stored inputs ({_one_line(exc)})"
        try:
            program = torch.export.export(
                net, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), strict=False
            )
        except Exception as exc:  # noqa: BLE001 - tracing failures come in many types
            return None, f"torch.export failed: {_why_untraceable(exc)} ({_one_line(exc)})"
        try:
            with torch.no_grad():
                for key, t in program.state_dict.items():
                    if key in sd and isinstance(t, torch.Tensor):
                        t.zero_()  # the store keeps the weights; the program the architecture
            program._example_inputs = None  # restored with torch.load: not stored at all
            buf = io.BytesIO()
            torch.export.save(program, buf)
            raw = buf.getvalue()
        except Exception as exc:  # noqa: BLE001
            return None, f"torch.export.save failed ({_one_line(exc)})"
    try:
        rebuilt = load_exported(raw)
        with _quiet_torch():
            missing = _state_dict_difference(rebuilt, sd)
            if missing:
                return None, f"the exported program {missing}"
            rebuilt.load_state_dict(sd)
            with torch.no_grad():
                got = rebuilt(x2)
    except CorruptStoreError as exc:
        return None, f"the exported program uses what grokscope does not load safely ({exc})"
    except Exception as exc:  # noqa: BLE001
        return None, f"the exported program does not load back ({_one_line(exc)})"
    if not _same_outputs(got, expected):
        return None, ("the exported program's outputs differ from the model's (is the forward "
                      "pass random, or does it depend on Python state?)")
    return raw, None


def _state_dict_difference(module: nn.Module, sd: dict[str, torch.Tensor]) -> str | None:
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in sd.items()}
    if own == want:
        return None
    missing = sorted(set(want) - set(own))
    extra = sorted(set(own) - set(want))
    shapes = sorted(k for k in set(own) & set(want) if own[k] != want[k])
    return (f"renames the state dict (missing {missing[:5]}, unexpected {extra[:5]}, "
            f"shapes differ {shapes[:5]})")


# --------------------------------------------------------------------------- checking
_ENTRY = re.compile(
    r"(?:archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/model\.json|data/weights/model_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+"
    r"|data/sample_inputs/model\.pt)"
)
_PREFIX = re.compile(r"[A-Za-z0-9_]{1,64}")
_ATEN = re.compile(r"torch\.ops\.aten\.([A-Za-z0-9_]+)\.[A-Za-z0-9_]+")
_ATEN_REFUSED = frozenset({"from_file", "_from_file"})
_OTHER_TARGETS = frozenset(
    [f"_operator.{n}" for n in (
        "getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "pow", "neg", "pos",
        "abs", "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "xor", "not_", "invert",
    )]
    + [f"math.{n}" for n in ("ceil", "floor", "trunc", "sqrt")]
    + [f"torch.{n}" for n in (
        "sym_float", "sym_int", "sym_max", "sym_min", "sym_not", "sym_ite", "sym_sum",
        "_sym_sqrt", "_check", "_check_is_size",
    )]
    + [f"torch.ops.higher_order.{n}" for n in ("wrap_with_set_grad_enabled",
                                                "wrap_with_autocast")]
)
#: names a shape expression may use besides symbol names (``s0``, ``u3``): sympy constructors,
#: assumptions and the functions torch's deserializer defines
_EXPR_NAMES = frozenset({
    "Symbol", "Integer", "Rational", "Float", "positive", "negative", "integer", "nonnegative",
    "nonpositive", "real", "finite", "infinite", "zero", "True", "False", "oo", "zoo", "nan",
    "int_oo", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan",
    "LessThan", "GreaterThan", "Equality", "Unequality", "And", "Or", "Not", "Max", "Min",
    "Abs", "Mod", "Mul", "Add", "Pow", "sqrt", "floor", "ceiling", "FloorDiv",
    "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt",
    "RoundDecimal", "ToFloat", "Identity", "OpaqueUnaryFn_sqrt",
})
_SYMBOL = re.compile(r"[a-z]{1,3}\d+")
_EXPR_TOKEN = re.compile(
    r"\s+|(?P<num>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|'(?P<sym>[a-z]{1,3}\d+)'"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|\*\*|//|==|!=|<=|>=|[-+*/%(),=<>&|~]"
)
_FQN_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+")


def _refuse(detail: str) -> CorruptStoreError:
    return CorruptStoreError(
        f"the model program stored in this run is not one grokscope writes ({detail}); it is "
        "not loaded. Pass the model yourself (model=...), or re-record/re-import the run"
    )


def _check_expr(text: Any) -> None:
    if not isinstance(text, str) or len(text) > 2000:
        raise _refuse("a shape expression is not a short string")
    pos = 0
    while pos < len(text):
        m = _EXPR_TOKEN.match(text, pos)
        if m is None:
            raise _refuse(f"shape expression {text[:80]!r} has unexpected characters")
        name = m.group("name")
        if name is not None and name not in _EXPR_NAMES and not _SYMBOL.fullmatch(name):
            raise _refuse(f"shape expression {text[:80]!r} names {name!r}")
        pos = m.end()


def _check_fqn(path: Any, what: str) -> None:
    if not isinstance(path, str) or len(path) > 500:
        raise _refuse(f"{what} is not a short string")
    if path == "":
        return
    for part in path.split("."):
        if not _FQN_PART.fullmatch(part) or part.startswith("__"):
            raise _refuse(f"{what} {path[:80]!r} is not a dotted module path")


def _check_target(target: Any) -> None:
    if not isinstance(target, str):
        raise _refuse("a graph node has no operator name")
    m = _ATEN.fullmatch(target)
    if m is not None:
        if m.group(1) in _ATEN_REFUSED:
            raise _refuse(f"the graph calls {target}")
        return
    if target not in _OTHER_TARGETS:
        raise _refuse(f"the graph calls {target[:80]!r}, which grokscope does not load")


def _check_module_stack(text: Any) -> None:
    # "key,fqn,type;key,fqn,type": unflatten builds submodules at the fqn paths
    if not isinstance(text, str):
        raise _refuse("a module stack entry is not a string")
    for entry in text.split(";") if text else ():
        parts = entry.split(",")
        if len(parts) < 3:
            raise _refuse("a module stack entry is malformed")
        _check_fqn(parts[1], "a module path")


def _walk(node: Any, depth: int = 0) -> None:
    if depth > 200:
        raise _refuse("the program is nested too deeply")
    if isinstance(node, dict):
        if {"target", "inputs", "outputs"} <= node.keys():
            _check_target(node["target"])
            meta = node.get("metadata") or {}
            if not isinstance(meta, dict):
                raise _refuse("node metadata is not an object")
            if "nn_module_stack" in meta:
                _check_module_stack(meta["nn_module_stack"])
        for key, value in node.items():
            if key == "expr_str":
                _check_expr(value)
            elif key in ("as_custom_obj", "as_custom_objs") or (
                key == "custom_obj_values" and value
            ):
                raise _refuse("the program holds custom (pickled) objects")
            elif key in ("fqn", "parameter_name", "buffer_name", "tensor_constant_name"):
                _check_fqn(value, key)
            else:
                _walk(value, depth + 1)
    elif isinstance(node, list):
        for value in node:
            _walk(value, depth + 1)


def _check_payload_config(doc: Any, names: set[str], prefix: str, what: str) -> None:
    config = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(config, dict):
        raise _refuse(f"the {what} table is malformed")
    stem = "weight_" if what == "weights" else "tensor_"
    for fqn, entry in config.items():
        _check_fqn(fqn, f"a {what} name")
        if not isinstance(entry, dict) or entry.get("use_pickle") is not False:
            raise _refuse(f"{what} entry {fqn!r} is pickled (would be read with torch.load "
                          "weights_only=False)")
        path = entry.get("path_name")
        if not isinstance(path, str) or not re.fullmatch(re.escape(stem) + r"\d+", path) or (
            f"{prefix}data/{what}/{path}" not in names
        ):
            raise _refuse(f"{what} entry {fqn!r} points at {path!r}")


def check_program(raw: bytes) -> None:
    """Validate stored program bytes before :func:`torch.export.load` sees them.

    Raises
    ------
    CorruptStoreError
        The bytes are not a program grokscope writes (see the module docstring for what is
        refused and why).
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(raw))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _refuse(f"not a torch.export archive: {exc}") from exc
    with zf:
        if not infos:
            raise _refuse("the archive is empty")
        prefix = infos[0].filename.split("/", 1)[0]
        if not _PREFIX.fullmatch(prefix):
            raise _refuse("unexpected archive layout")
        prefix += "/"
        names: set[str] = set()
        for info in infos:
            name = info.filename
            if not name.startswith(prefix) or not _ENTRY.fullmatch(name[len(prefix):]):
                raise _refuse(f"unexpected archive entry {name[:100]!r}")
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > len(raw):
                raise _refuse(f"archive entry {name[:100]!r} is compressed")
            if name in names:
                raise _refuse(f"archive entry {name[:100]!r} appears twice")
            if name.endswith("/sample_inputs/model.pt") and info.file_size:
                raise _refuse("the archive carries example inputs (read with torch.load, "
                              "falling back to weights_only=False)")
            names.add(name)

        def load(name: str) -> Any:
            try:
                return json.loads(zf.read(prefix + name))
            except KeyError as exc:
                raise _refuse(f"the archive lacks {name}") from exc
            except (ValueError, UnicodeDecodeError) as exc:
                raise _refuse(f"{name} is not JSON") from exc

        try:
            if zf.read(prefix + "archive_format").strip() != b"pt2":
                raise _refuse("not a pt2 archive")
        except KeyError as exc:
            raise _refuse("the archive has no format marker") from exc
        program = load("models/model.json")
        if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
            raise _refuse("models/model.json is malformed")
        if program.get("guards_code") not in (None, []):
            raise _refuse("the program carries guard code (executed on load)")
        ranges = program.get("range_constraints") or {}
        if not isinstance(ranges, dict) or not all(_SYMBOL.fullmatch(str(k)) for k in ranges):
            raise _refuse("the program's range constraints name unexpected symbols")
        _walk(program)
        _check_payload_config(load("data/weights/model_weights_config.json"), names, prefix,
                              "weights")
        _check_payload_config(load("data/constants/model_constants_config.json"), names, prefix,
                              "constants")


# --------------------------------------------------------------------------- loading
def load_exported(raw: bytes, *, device: str | torch.device | None = None) -> nn.Module:
    """The module stored by :func:`export_model` (checked by :func:`check_program` first).

    Parameters
    ----------
    raw : bytes
        ``torch.export.save`` bytes.
    device : str or torch.device, optional
        Where to put it; for an accelerator the program is rewritten with
        ``torch.export.passes.move_to_device_pass`` (device arguments baked into the graph
        move too).

    Returns
    -------
    nn.Module
        An unflattened module with the original parameter, buffer and submodule names; its
        state-dict tensors are zero until weights are loaded.

    Raises
    ------
    CorruptStoreError
        The bytes fail :func:`check_program` or torch cannot load them (e.g. a program saved
        by an incompatible torch version).
    """
    check_program(raw)
    with _quiet_torch():
        try:
            program = torch.export.load(io.BytesIO(raw))
            if device is not None and torch.device(device).type != "cpu":
                from torch.export.passes import move_to_device_pass

                program = move_to_device_pass(program, torch.device(device))
            module = torch.export.unflatten(program)
        except Exception as exc:  # noqa: BLE001 - torch raises many types on a bad program
            raise CorruptStoreError(
                f"torch {torch.__version__} cannot load the model program stored in this run "
                f"({_one_line(exc)}); pass the model yourself (model=...)"
            ) from exc
    return module


def fresh_copy(module: nn.Module,
               state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A deep copy of ``module``, optionally with ``state_dict``'s tensors as its weights.

    Parameters and buffers are new tensors (an unflattened program's traced graphs, which
    hold fake tensors and are never modified, are shared). With ``state_dict`` (tensors the
    caller owns, e.g. fresh from :meth:`Run.state_dict_at`) the copy takes them as its
    parameters and persistent buffers directly (cast to the module's dtype and device), so the
    template's weights are never cloned only to be overwritten; tied parameters stay tied.
    """
    memo: dict[int, Any] = {}
    for sub in module.modules():
        for attr in _SHARED_ATTRS:
            value = sub.__dict__.get(attr)
            if value is not None and not isinstance(value, torch.Tensor | nn.Module):
                memo[id(value)] = value
            elif isinstance(value, torch.fx.GraphModule) and attr == "graph_module":
                memo[id(value)] = value
    adopted = False
    if state_dict is not None:
        own = dict(module.named_parameters(remove_duplicate=False))
        own.update(module.named_buffers(remove_duplicate=False))
        if set(state_dict) <= set(own):
            for key, value in state_dict.items():
                t = own[key]
                if id(t) in memo:
                    continue  # a tied parameter: one tensor under several names
                v = value.detach().to(device=t.device, dtype=t.dtype)
                memo[id(t)] = nn.Parameter(v, requires_grad=t.requires_grad) if isinstance(
                    t, nn.Parameter) else v
            adopted = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's pytree spec deprecation note
        out = copy.deepcopy(module, memo)
    if state_dict is not None and not adopted:
        out.load_state_dict(state_dict)
    return out
