"""Argument parsing shared by the ``grokscope`` subcommands."""

from __future__ import annotations

import json
from typing import Any

from .errors import ConfigError

#: ``--steps STEP-SPEC``: the step syntax every command that analyses accepts
#: (:func:`grokscope.steps.select_steps`), documented once here
STEPS_HELP = (
    "all (default) | every:K (every K-th stored step, the "
    "last included) | log:N (about N steps log-spaced over the step values, first and last "
    "included) | A:B or A:B:K (stored steps with A <= step <= B, every K-th of those; A or B "
    "may be left out) | S1,S2,... (exactly these steps, each must be stored)"
)


def add_steps_argument(parser: Any, *, what: str = "the stored steps to analyse") -> None:
    """``--steps STEP-SPEC``: ``what``, then the syntax :data:`STEPS_HELP`."""
    parser.add_argument("--steps", metavar="STEP-SPEC", help=f"{what}: {STEPS_HELP}")


def add_quiet_argument(parser: Any, *aliases: str) -> None:
    """``-q/--quiet``: no progress bars (what the command prints at the end still prints)."""
    parser.add_argument("-q", "--quiet", *aliases, dest="quiet", action="store_true",
                        help="no progress bars (the summary at the end is still printed)")


def add_trust_code_argument(parser: Any) -> None:
    """``--trust-code``: allow importing the model factory a store names."""
    parser.add_argument(
        "--trust-code", action="store_true",
        help="allow importing the model code (a module:qualname factory) named in the store; "
        "only for stores you trust (not needed when the store carries its exported program "
        "or --model is given)",
    )


def json_arg(text: str | None, what: str) -> dict[str, Any]:
    """The JSON object given to option ``what`` (``{}`` when absent); ConfigError otherwise."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{what}: not valid JSON ({exc.msg}); give a JSON object like '{{\"p\": 97}}', "
            f"got {text!r}"
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a JSON object, got {text!r}")
    return value


def kv_args(items: list[str] | None) -> dict[str, Any]:
    """``["lr=1e-3", "betas=[0.9,0.98]"]`` -> ``{"lr": 0.001, ...}`` (JSON values, else strings)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key.replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = raw
    return out


def add_model_arguments(parser: Any) -> None:
    """``--model``, ``--model-kwargs`` and ``--anatomy`` for the verbs that analyse a run."""
    parser.add_argument(
        "--model", metavar="MODULE:CLASS",
        help="the architecture to load the stored weights into: a registered name, "
        "'package.module:Class' or 'path/to/file.py:Class' (code named here is trusted). "
        "Default: what the store carries",
    )
    parser.add_argument("--model-kwargs", metavar="JSON", help="constructor kwargs for --model")
    parser.add_argument(
        "--anatomy", metavar="JSON",
        help='roles overriding the detected ones, e.g. \'{"input": "embed", '
        '"hidden": ["blocks.0.mlp.hook_post"]}\' (see docs/anatomy.md)',
    )


def model_from_args(args: Any) -> tuple[Any, dict[str, Any] | None]:
    """``(model, anatomy)`` from :func:`add_model_arguments`' options.

    ``model`` is None (use the store's), a registered name, or a zero-argument factory
    building the named class with ``--model-kwargs``.
    """
    anatomy = json_arg(getattr(args, "anatomy", None), "--anatomy") or None
    spec = getattr(args, "model", None)
    kwargs = json_arg(getattr(args, "model_kwargs", None), "--model-kwargs")
    if not spec:
        if kwargs:
            raise ConfigError("--model-kwargs needs --model MODULE:CLASS")
        return None, anatomy
    if ":" not in spec:
        if kwargs:
            from .models import build_model

            return (lambda: build_model(spec, **kwargs)), anatomy
        return spec, anatomy
    cls = import_object(spec)

    def factory() -> Any:
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"--model {spec} rejected --model-kwargs {kwargs}: {exc}") from None

    return factory, anatomy


def import_object(spec: str) -> Any:
    """The object ``module:qualname`` or ``path/to/file.py:qualname`` (the user's own code)."""
    import importlib.util
    import sys
    from pathlib import Path

    target, _, qualname = spec.rpartition(":")
    if not target or not qualname:
        raise ConfigError(f"--model must be MODULE:CLASS or FILE.py:CLASS, got {spec!r}")
    if not target.endswith(".py"):  # an importable module: the lookup a stored factory gets
        from .models import _import_factory

        return _import_factory(spec)
    path = Path(target).expanduser()
    if not path.is_file():
        raise ConfigError(f"--model {spec}: no file {path}")
    name = f"_grokscope_user_{path.stem}"
    mod_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(mod_spec)  # type: ignore[arg-type]
    sys.modules[name] = module
    try:
        mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as exc:  # noqa: BLE001 - the user's file; say what failed
        raise ConfigError(f"--model {spec}: running {path} failed ({type(exc).__name__}: {exc})") from exc
    obj: Any = module
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"--model {spec}: {target} has no {qualname!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"--model {spec} is not a class or factory")
    return obj
