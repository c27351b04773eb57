"""Argument parsing shared by the ``grokscope`` subcommands."""

from __future__ import annotations

import json
from typing import Any

from .errors import ConfigError


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
