"""The ``grokscope report`` subcommand.

``grokscope.cli`` calls :func:`add_report_parser` on its subparsers::

    grokscope report RUN -o PATH [--analyze [--steps STEP-SPEC]] [--formats png,pdf]
"""

from __future__ import annotations

import argparse
from typing import Any

from .errors import ConfigError


def cmd_report(args: argparse.Namespace) -> int:
    """Write the report folder and print where its index.html is."""
    from ._cliargs import model_from_args
    from .report import report

    model, anatomy = model_from_args(args)
    formats = tuple(f.strip().lower() for f in args.formats.split(",") if f.strip())
    if not formats:
        raise ConfigError("--formats needs at least one of png, pdf, svg")
    out = report(
        args.run, args.out, analyze=args.analyze, formats=formats, threshold=args.threshold,
        dpi=args.dpi, steps=args.steps, trust_code=args.trust_code, progress=not args.quiet,
        model=model, anatomy=anatomy, results=args.results,
    )
    n_figs = len(list((out / "figures").glob("*.png")))
    print(f"report written to {out} ({n_figs} figures): open {out / 'index.html'}")
    return 0


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``report`` to the ``grokscope`` subcommand parsers; returns its parser."""
    r = subparsers.add_parser(
        "report", help="write figures, summary.json and index.html for a run",
        description="Draw every figure the run's stored results support into PATH/figures "
        "(PNG and PDF by default), write PATH/summary.json and a self-contained "
        "PATH/index.html. Only "
        "stored results are used unless --analyze computes the missing measures first.",
    )
    from ._cliargs import (
        add_model_arguments,
        add_quiet_argument,
        add_steps_argument,
        add_trust_code_argument,
    )

    r.add_argument("run", metavar="RUN", help="the run store (a folder or an fsspec URL)")
    r.add_argument("-o", "--out", required=True, metavar="PATH",
                   help="the report folder to write")
    r.add_argument("--analyze", action="store_true",
                   help="first compute the measures that have no stored result")
    add_steps_argument(r, what="with --analyze, the stored steps to analyse")
    r.add_argument("--formats", default="png,pdf", metavar="LIST",
                   help="figure files to write, comma-separated from png, pdf, svg "
                   "(default: %(default)s)")
    r.add_argument("--threshold", type=float, default=0.9, metavar="X",
                   help="accuracy that counts as reached, for the milestones "
                   "(default: %(default)s)")
    r.add_argument("--dpi", type=int, default=150, metavar="N",
                   help="resolution of the PNG figures (default: %(default)s)")
    add_trust_code_argument(r)
    add_model_arguments(r)
    from .cli import add_results_argument

    add_results_argument(r, writes=True)
    add_quiet_argument(r)
    r.set_defaults(func=cmd_report)
    return r
