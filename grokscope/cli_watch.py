"""The ``grokscope watch`` subcommand.

``grokscope.cli`` calls :func:`add_watch_parser` on its subparsers::

    grokscope watch RUN [--out DIR] [--measures NAMES] [--interval S] [--timeout S]
"""

from __future__ import annotations

import argparse
from typing import Any

#: exit status of ``grokscope watch`` per reason it stopped (:attr:`Watched.reason`)
EXIT_CODES = {"closed": 0, "stopped": 0, "timeout": 3, "interrupted": 130}


def cmd_watch(args: argparse.Namespace) -> int:
    """Follow the store until its writer closes it; print where the live page is."""
    from ._cliargs import json_arg, model_from_args
    from .watch import watch

    model, anatomy = model_from_args(args)
    params = json_arg(args.params, "--params")
    measures: Any = None
    if args.measures or params:
        names = [n.strip() for group in args.measures or [] for n in group.split(",")
                 if n.strip()] or list(params)
        measures = {n: params.get(n, {}) for n in names}
    out = watch(args.run, out=args.out, measures=measures, interval=args.interval,
                timeout=args.timeout, progress=not args.quiet, threshold=args.threshold,
                model=model, anatomy=anatomy, trust_code=args.trust_code,
                num_threads=args.threads)
    print(f"{out.message}\nlive page: {out.out / 'index.html'}")
    return EXIT_CODES.get(out.reason, 1)


def add_watch_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``watch`` to the ``grokscope`` subcommand parsers; returns its parser."""
    from ._cliargs import add_model_arguments, add_quiet_argument, add_trust_code_argument
    from ._threads import cli_threads

    w = subparsers.add_parser(
        "watch", help="follow a run while it is recorded: analyse each new checkpoint live",
        description="Follow a store while another process records into it: on each new "
        "checkpoint compute the cheap measures (curves and norms, Fourier on modular tasks, "
        "phases) and the forecast, and keep OUT/index.html (a page that reloads itself) up to "
        "date. Exits 0 when the writer closes the store (after a final pass: the stored "
        "results then equal a fresh analyze), 3 after --timeout seconds without a new "
        "checkpoint, 130 on Ctrl-C.",
    )
    w.add_argument("run", metavar="RUN", help="the run store (a folder or an fsspec URL); it "
                   "may not exist yet")
    w.add_argument("-o", "--out", metavar="DIR",
                   help="the live folder (index.html, summary.json, forecast.csv); default: "
                   "RUN-watch next to the store")
    w.add_argument("-m", "--measures", action="append", metavar="NAMES",
                   help="measure names, comma-separated, repeatable (default: curves, "
                   "fourier with keys=step stored as fourier_steps, phases; see grokscope "
                   "measures)")
    w.add_argument("--params", metavar="JSON",
                   help='measure parameters as a JSON object {measure: {param: value}}; '
                   "without --measures, the measures named here")
    w.add_argument("--interval", type=float, default=2.0, metavar="S",
                   help="seconds between two polls of the store (default: %(default)s)")
    w.add_argument("--timeout", type=float, metavar="S",
                   help="stop after S seconds without a new checkpoint, or without the store "
                   "appearing (a killed writer never closes the store); default: no limit")
    w.add_argument("--threshold", type=float, default=0.9, metavar="X",
                   help="accuracy that counts as reached, for the milestones and the "
                   "forecast (default: %(default)s)")
    w.add_argument("--threads", type=cli_threads, default=1, metavar="N|auto",
                   help="torch CPU threads of the analysis (default: %(default)s, leaving the "
                   "other cores to the writer)")
    add_trust_code_argument(w)
    add_model_arguments(w)
    add_quiet_argument(w)
    w.set_defaults(func=cmd_watch)
    return w
