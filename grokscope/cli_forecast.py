"""The ``grokscope forecast`` subcommand.

``grokscope.cli`` calls :func:`add_forecast_parser` on its subparsers::

    grokscope forecast RUN [--upto STEP] [--threshold X] [--horizon STEP] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any


def format_forecast(ds: Any) -> str:
    """A forecast dataset as a few lines of text."""
    p = float(ds.p_grok)
    upto, thr = int(ds.upto), ds.attrs["threshold"]
    if ds.attrs["branch"] == "observed":
        return (f"test accuracy reached {thr:g} at step {float(ds.t_test_pred):.0f} "
                f"(seen by step {upto}): p_grok = 1")
    lines = [
        f"from steps <= {upto}: p_grok = {p:.2f} (test accuracy >= {thr:g} by step "
        f"{ds.attrs['horizon']})" + (
            f" = P(generalises) {float(ds.p_generalises):.2f} x P(by then) "
            f"{float(ds.p_by_horizon):.2f}"
            if "p_generalises" in ds and math.isfinite(float(ds.p_generalises)) else ""),
        f"predicted t_test = {float(ds.t_test_pred):.0f} (80% interval "
        f"{float(ds.t_test_low):.0f}-{float(ds.t_test_high):.0f}; {ds.attrs['branch']})",
        "signals: " + ", ".join(
            f"{k[len('signal_'):]}={v:.3g}" for k, v in ds.attrs.items()
            if k.startswith("signal_") and isinstance(v, float) and math.isfinite(v)),
    ]
    return "\n".join(lines)


def cmd_forecast(args: argparse.Namespace) -> int:
    """Print the forecast of one run (text, or JSON with --json)."""
    from ._cliargs import model_from_args
    from .forecast import forecast

    model, anatomy = model_from_args(args)
    ds = forecast(args.run, upto=args.upto, threshold=args.threshold, horizon=args.horizon,
                  model=model, anatomy=anatomy)
    if args.json:
        doc = {k: float(ds[k]) for k in ("p_grok", "p_generalises", "p_by_horizon",
                                         "t_test_pred", "t_test_low", "t_test_high", "upto",
                                         "t_test_observed") if k in ds}
        doc.update({k: v for k, v in ds.attrs.items() if k != "constants"})
        doc = {k: None if isinstance(v, float) and not math.isfinite(v) else v
               for k, v in doc.items()}  # NaN is not JSON: null
        print(json.dumps(doc, default=str, allow_nan=False))
    else:
        print(format_forecast(ds))
    return 0


def add_forecast_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``forecast`` to the ``grokscope`` subcommand parsers; returns its parser."""
    from ._cliargs import add_model_arguments

    f = subparsers.add_parser(
        "forecast", help="predict whether and when a run's test accuracy will pass a threshold",
        description="From the metrics and checkpoints recorded up to --upto (default: all so "
        "far), print the probability that test accuracy reaches --threshold, the predicted "
        "first step at or above it and an 80%% interval, and the signals used "
        "(docs/forecast.md).",
    )
    f.add_argument("run", metavar="RUN", help="the run store (a folder or an fsspec URL)")
    f.add_argument("--upto", type=int, metavar="STEP",
                   help="use only steps <= STEP (default: everything recorded)")
    f.add_argument("--threshold", type=float, default=0.9, metavar="X",
                   help="test accuracy that counts as generalised (default: %(default)s)")
    f.add_argument("--horizon", type=int, metavar="STEP",
                   help="p_grok is the probability of passing the threshold by STEP (default: "
                   "10 x the last step used)")
    f.add_argument("--json", action="store_true", help="print one JSON object")
    add_model_arguments(f)
    f.set_defaults(func=cmd_forecast)
    return f
