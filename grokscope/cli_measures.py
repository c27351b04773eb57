"""The ``grokscope measures`` subcommand: the registered measures and their parameters.

``grokscope.cli`` calls :func:`add_measures_parser` on its subparsers::

    grokscope measures            # every measure: summary, per step or not, parameters
    grokscope measures lmn        # one measure: docstring, parameters, output variables
    grokscope measures --json     # the same, machine-readable
"""

from __future__ import annotations

import argparse
import inspect
import json
import textwrap
from typing import Any

_WIDTH = 92


def _summary(description: str) -> str:
    """The registry's description as one plain line (no reST double backticks)."""
    return " ".join(description.replace("``", "").split())


def _fmt(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _params(defaults: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in defaults.items()) or "none"


def measure_info(name: str) -> dict[str, Any]:
    """What ``grokscope measures`` shows of measure ``name``, as a JSON-able dict."""
    from .measures import get
    from .measures._variables import ENGINE_VARIABLES, VARIABLES

    spec = get(name)
    table = dict(VARIABLES.get(name, {}))
    if spec.kind == "step":
        table.update(ENGINE_VARIABLES)
    return {
        "name": name,
        "summary": _summary(spec.description),
        "per_step": spec.kind == "step",
        "parameters": {k: v for k, v in spec.defaults.items()},
        "references": list(spec.references),
        "after": list(spec.after),
        "variables": {k: {"long_name": v.long_name, "units": v.units_text,
                          "description": v.description} for k, v in table.items()},
        "doc": inspect.getdoc(spec.fn) or "",
    }


def list_text() -> str:
    """Every registered measure: name, per step or over the whole run, summary, parameters."""
    from .measures import names

    lines = ["measures (per step: computed at each selected checkpoint; run: from the whole "
             "trajectory)", ""]
    for name in names():
        info = measure_info(name)
        kind = "per step" if info["per_step"] else "run"
        lines += textwrap.wrap(info["summary"], width=_WIDTH,
                               initial_indent=f"{name:<10} {kind:<9} ", subsequent_indent=" " * 21)
        lines += textwrap.wrap(_params(info["parameters"]), width=_WIDTH,
                               initial_indent=" " * 21 + "parameters: ",
                               subsequent_indent=" " * 33)
    lines += ["", *textwrap.wrap(
        "grokscope measures NAME shows a measure's documentation and output variables; set "
        "parameters with grokscope analyze --params '{\"NAME\": {\"PARAM\": VALUE}}'.",
        width=_WIDTH)]
    return "\n".join(lines)


def detail_text(name: str) -> str:
    """One measure: its full docstring, parameters with defaults, output variables with units."""
    info = measure_info(name)
    kind = ("per step (computed at each selected checkpoint)" if info["per_step"]
            else "run (computed from the whole trajectory at once)")
    lines = [f"measure: {name}", f"kind: {kind}"]
    if info["references"]:
        lines.append(f"also loads the model at the {' and '.join(info['references'])} step")
    if info["after"]:
        lines.append(f"runs after (reads the stored results of): {', '.join(info['after'])}")
    lines += ["", "parameters (default):"]
    lines += [f"  {k} = {_fmt(v)}" for k, v in info["parameters"].items()] or ["  none"]
    lines += ["", "output variables ([units] long name: description):"]
    for var, v in info["variables"].items():
        lines += textwrap.wrap(f"[{v['units']}] {v['long_name']}: {v['description']}",
                               width=_WIDTH, initial_indent=f"  {var:<20} ",
                               subsequent_indent=" " * 23)
    if not info["variables"]:
        lines.append("  none documented")
    lines += ["", "documentation:", "", textwrap.indent(info["doc"], "  ")]
    return "\n".join(lines)


def cmd_measures(args: argparse.Namespace) -> int:
    """Print the measure list, or one measure's details."""
    from .measures import names

    if args.json:
        chosen = [args.name] if args.name else names()
        out = {n: measure_info(n) for n in chosen}
        print(json.dumps(out, indent=2, default=repr))
        return 0
    print(detail_text(args.name) if args.name else list_text())
    return 0


def add_measures_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``measures`` to the ``grokscope`` subcommand parsers; returns its parser."""
    m = subparsers.add_parser(
        "measures", help="list the registered measures and their parameters",
        description="List every registered measure with a one-line summary, whether it is "
        "computed per step (at each selected checkpoint) or from the whole run, and its "
        "parameters with their defaults. With NAME: that measure's full documentation, "
        "parameters and output variables with their units. Parameters are set with "
        "grokscope analyze --params JSON.",
    )
    m.add_argument("name", nargs="?", metavar="NAME",
                   help="a measure to describe in full (default: list them all)")
    m.add_argument("--json", action="store_true",
                   help="print the same information as JSON (defaults as JSON values)")
    m.set_defaults(func=cmd_measures)
    return m
