"""The ``grokscope`` command: train, import, info, verify, analyze, measures, sweep,
phase-diagram, report, watch, demo.

Errors that a user can cause are printed as one message (no traceback) with a non-zero exit;
:func:`cli_message` rewrites the library's Python keywords (``overwrite=True``) into the
command's flags (``--overwrite``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from ._cliargs import (
    add_model_arguments,
    add_quiet_argument,
    add_steps_argument,
    add_trust_code_argument,
    json_arg,
    kv_args,
    model_from_args,
)
from ._version import __version__
from .errors import ConfigError, GrokscopeError

#: the top-level ``grokscope --help`` text (plain text: argparse prints it as is)
DESCRIPTION = (
    "grokscope records neural-network training runs into zarr stores and analyses them for "
    "grokking: train or import a run, compute the measures of the grokking literature over "
    "its checkpoints, and write figures, reports and phase diagrams. Run 'grokscope COMMAND "
    "--help' for a command's options; 'grokscope measures' lists the measures."
)

#: the examples under ``grokscope --help``
EXAMPLES = """examples:
  grokscope demo                                   # train, analyse and report a grokking run
  grokscope train --task-kwargs '{"p": 97}' -o runs/add97 --steps 5000
  grokscope analyze runs/add97 --measures curves,nfa --steps log:50
  grokscope report runs/add97 -o reports/add97
  grokscope measures lmn                           # what a measure computes, its parameters"""

#: the library's Python keywords as they appear in error messages -> the CLI's flags.
#: Applied in order by :func:`cli_message`; a keyword inside a Python call written in the
#: message (``gs.open_run(path, model=...)``) is left alone.
KEYWORD_FLAGS: tuple[tuple[str, str], ...] = (
    (r"overwrite=True", "--overwrite"),
    (r"recompute=True", "--recompute"),
    (r"trust_code=True", "--trust-code"),
    (r"trust_pickle=True", "--trust-pickle"),
    (r"skip_unknown=True", "--skip-unknown"),
    (r"analyze=True", "--analyze"),
    (r"results=(?:'PATH'|\.\.\.)", "--results PATH"),
    (r"results=", "--results"),
    (r"model_kwargs=", "--model-kwargs"),
    (r"task_kwargs=", "--task-kwargs"),
    (r"model=\.\.\.", "--model"),
    (r"model=", "--model"),
    (r"task=", "--task"),
    (r"out=", "--out"),
    (r"anatomy=", "--anatomy"),
    (r"steps=", "--steps"),
    (r"step_from='(name|meta)'", r"--step-from \1"),
    (r"step_from=", "--step-from"),
    (r"step_key=", "--step-key"),
    (r"state_key=", "--state-key"),
    (r"workers=N", "--workers N"),
    (r"scheduler=ADDRESS", "--scheduler ADDRESS"),
    (r"num_threads=", "--threads"),
    (r"to sweep\(\)", "to grokscope sweep"),
    (r"another out\b", "another -o/--out"),
)
_KW = r"(?<![\w.\-])"  # a keyword starts a word (not ``gs.x`` or ``--x``)
_CALL = re.compile(r"[\w.]*\w\([^()]+\)")  # a Python call written in a message: left as is
_DICT = r"\{(?:[^{}]|\{[^{}]*\})*\}"  # a dict literal, one level of nesting
_ANATOMY_DICT = re.compile(_KW + r"anatomy=(" + _DICT + ")")
_FLAG = r"--[a-z][\w-]*(?: (?:PATH|N|ADDRESS|JSON|name|meta))?"
#: ``keyword (CLI: --flag)``, ``keyword (--flag)``, ``keyword / --flag``: the flag alone
_BOTH = re.compile(r"(?<![\w.\-])(?:[a-z_]+=(?:True|'[^']*'|\.\.\.|N|ADDRESS)?|[a-z]+(?:_[a-z]+)+) ?"
                   r"(?:\((?:CLI: )?(" + _FLAG + r")(\)|; )|/ (" + _FLAG + r"))")
_SIMPLE = tuple(
    (re.compile(_KW + pattern + (r"(?=[\s,;.)/]|$)" if pattern.endswith("=") else r"(?!\w)")), flag)
    for pattern, flag in KEYWORD_FLAGS
)


def cli_message(message: str) -> str:
    """``message`` (a library error) as the command line should say it: every Python keyword
    of :data:`KEYWORD_FLAGS` replaced by its flag (``overwrite=True`` -> ``--overwrite``,
    ``anatomy={'output': 'all'}`` -> ``--anatomy '{"output": "all"}'``), a keyword already
    followed by its flag (``trust_pickle=True (CLI: --trust-pickle)``) by the flag alone;
    keywords inside a Python call the message spells out are kept."""

    def both(m: re.Match) -> str:
        if m.group(3):
            return m.group(3)
        return m.group(1) + ("" if m.group(2) == ")" else " (")

    def anatomy(m: re.Match) -> str:
        return "--anatomy '" + m.group(1).replace("'", '"') + "'"

    def outside_calls(text: str) -> str:
        text = _BOTH.sub(both, text)
        text = _ANATOMY_DICT.sub(anatomy, text)
        for pattern, flag in _SIMPLE:
            text = pattern.sub(flag, text)
        return text

    out, pos = [], 0
    for call in _CALL.finditer(message):
        out += [outside_calls(message[pos:call.start()]), call.group(0)]
        pos = call.end()
    out.append(outside_calls(message[pos:]))
    return "".join(out)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def describe(run: Any) -> str:
    """A human-readable summary of a run (the `info` command)."""
    from .summary import milestones

    info = run.info()
    steps = run.steps
    lines = [f"run: {run.path}"]
    task = (run.config or {}).get("task") or (run.data.task if run.data is not None else None)
    lines.append(f"task: {json.dumps(task) if task else 'unknown'}")
    model = (run.config or {}).get("model")
    lines.append(f"model: {json.dumps(model) if model else 'unknown'}")
    if len(steps):
        lines.append(f"steps: {len(steps)} recorded, {steps[0]} .. {steps[-1]}")
    else:
        lines.append("steps: none recorded")
    tensors = info.get("tensors", {})
    n_params = sum(int(_prod(shape)) for shape in tensors.values())
    lines.append(f"tensors: {len(tensors)} ({n_params:,} parameters per step)")
    for name, shape in list(tensors.items())[:12]:
        lines.append(f"  {name:<32} {tuple(shape)}")
    if len(tensors) > 12:
        lines.append(f"  ... and {len(tensors) - 12} more")
    metrics = info.get("metrics", [])
    lines.append(f"metrics: {', '.join(metrics) if metrics else 'none'}")
    if len(steps):
        for m in ("train_acc", "test_acc", "train_loss", "test_loss"):
            if m in run.metrics:
                lines.append(f"  final {m}: {float(run.metrics[m].values[-1]):.4g}")
        ms = milestones(run)
        lines.append(f"train acc >= 0.9 first at step {ms['t_train']}; test acc >= 0.9 first at step {ms['t_test']}")
    results = info.get("results") or []
    lines.append(f"results: {', '.join(results) if results else 'none'}")
    lines.append(f"size on disk: {_fmt_bytes(info.get('nbytes', 0))}")
    return "\n".join(lines)


def _prod(shape: Any) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


# ---------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    hp = kv_args(args.set)
    for name in ("steps", "lr", "weight_decay", "seed", "batch_size"):
        value = getattr(args, name)
        if value is not None:
            hp[name] = value
    if args.threads is not None:
        hp["num_threads"] = args.threads
    run = train(
        task=args.task, model=args.model, out=args.out,
        task_kwargs=json_arg(args.task_kwargs, "--task-kwargs"),
        model_kwargs=json_arg(args.model_kwargs, "--model-kwargs"),
        device=args.device, overwrite=args.overwrite, progress=not args.quiet, **hp,
    )
    print(describe(run))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .store.run import open_run

    model, anatomy = model_from_args(args)
    _one_run_for_results(args, "info")
    for path in args.runs:
        run = open_run(path, model=model, anatomy=anatomy, trust_code=args.trust_code,
                       results=args.results)
        print(describe(run))
        print(describe_anatomy(run))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .store.run import open_run

    for path in args.runs:
        counts = open_run(path).verify()
        note = ("; zarr.json was damaged (a power cut?): read from the durable fallback root "
                "_commit/zarr.json, later steps are lost. Open it with a Recorder to restore "
                "zarr.json" if counts.get("recovered_from_fallback") else "")
        print(f"{path}: ok ({counts['chunks']} chunks of {counts['arrays']} arrays checked)"
              f"{note}")
    return 0


def describe_anatomy(run: Any) -> str:
    """The model's roles as measures see them (stored, detected, or why neither)."""
    from .engine import run_anatomy

    if not len(run.steps):
        stored = (run.config or {}).get("anatomy")
        return "anatomy: " + ("stored, no steps to check it on" if stored else "unknown (no steps)")
    try:
        model = run.model_at(int(run.steps[0]))
        anat = run_anatomy(run, model, run.data)
    except GrokscopeError as exc:
        return f"anatomy: unavailable ({cli_message(str(exc))})"
    body = "\n".join("  " + line for line in anat.summary().splitlines())
    return f"anatomy (model from: {getattr(run, 'model_source', '?')}):\n{body}"


def cmd_analyze(args: argparse.Namespace) -> int:
    from .engine import analyze
    from .summary import milestone_table

    measures: Any = None
    if args.measures:
        measures = [m for item in args.measures for m in item.split(",") if m]
    params = json_arg(args.params, "--params")
    if params:
        measures = {m: params.get(m, {}) for m in (measures or params)}
    from .store.run import open_run

    model, anatomy = model_from_args(args)
    _one_run_for_results(args, "analyze")
    dask: dict[str, Any] = {}
    if args.workers or args.scheduler:
        dask = {"workers": args.workers, "scheduler": args.scheduler,
                "steps_per_task": args.steps_per_task}
    elif args.steps_per_task is not None:
        raise ConfigError("--steps-per-task splits a run's steps into Dask tasks: pass "
                          "--workers N or --scheduler ADDRESS too")
    if dask and len(args.runs) > 1:
        from .distributed import analyze_many

        summary = analyze_many(
            args.runs, measures, steps=args.steps, device=args.device,
            progress=not args.quiet, recompute=args.recompute,
            trust_code=args.trust_code, model=model, anatomy=anatomy, **dask,
        )
        for path, info in summary.items():
            print(f"{path}: {', '.join(info['measures'])} in {info['seconds']:.1f} s; "
                  f"skipped: {_skipped(info['skipped'])}")
            run = open_run(path, trust_code=args.trust_code)
            print(milestone_table(run, {n: run.results[n] for n in info["measures"]}))
        return 0
    for path in args.runs:
        run = open_run(path, model=model, anatomy=anatomy, trust_code=args.trust_code,
                       results=args.results)
        t0 = time.perf_counter()
        res = analyze(run, measures, steps=args.steps, device=args.device,
                      progress=not args.quiet, recompute=args.recompute,
                      num_threads=args.threads, results=args.results, **dask)
        print(f"{path}: {len(res)} measures in {time.perf_counter() - t0:.1f} s "
              f"({', '.join(res)}); skipped: {_skipped(res.skipped)}")
        print(milestone_table(run, res))
    return 0


def _skipped(skipped: Any) -> Any:
    """The measures an analysis skipped, their reasons naming flags (:func:`cli_message`)."""
    return {name: cli_message(str(why)) for name, why in dict(skipped or {}).items()} or "none"


def _one_run_for_results(args: argparse.Namespace, command: str) -> None:
    if getattr(args, "results", None) and len(args.runs) > 1:
        raise ConfigError(f"--results names the results store of one run; run `grokscope "
                          f"{command}` once per run, each with its own --results PATH")


def add_results_argument(parser: argparse.ArgumentParser, *, writes: bool) -> None:
    """``--results PATH``: a separate results store (for read-only runs)."""
    parser.add_argument(
        "--results", metavar="PATH",
        help=("write and read the analysis results in this separate results store instead of "
              "the run's own (needed when the run is read-only; created when absent)") if writes
        else "read the analysis results from this separate results store (see analyze --results)",
    )


def demo_measures() -> dict[str, dict[str, Any]]:
    """Every registered measure with its defaults.

    (LMN's default cut, ``"auto"``, takes the input role on the demo's one-hidden-layer MLP,
    where the rest of the network after the hidden layer is the affine read-out.)
    """
    from .measures import names

    return {name: {} for name in names()}


def cmd_demo(args: argparse.Namespace) -> int:
    from .defaults import DEMO
    from .engine import analyze
    from .summary import milestone_table
    from .train import train

    out = Path(args.out)
    print(f"training the demo run into {out} (modular addition; should grok in about a minute)")
    t0 = time.perf_counter()
    run = train(**DEMO, out=str(out), overwrite=True, progress=not args.quiet)
    print(f"trained in {time.perf_counter() - t0:.1f} s\n")
    print(describe(run))
    if args.no_analyze:
        return 0
    print("\nanalysing every recorded step with every applicable measure ...")
    t0 = time.perf_counter()
    res = analyze(run, demo_measures(), steps=args.steps, progress=not args.quiet,
                  num_threads=DEMO.get("num_threads"))
    print(f"analysed in {time.perf_counter() - t0:.1f} s; skipped: {_skipped(res.skipped)}\n")
    print(milestone_table(run, res))
    if args.no_report:
        return 0
    from .report import report

    t0 = time.perf_counter()
    folder = report(run, Path(args.report) if args.report else out.with_name(out.name + "-report"))
    print(f"\nreport written in {time.perf_counter() - t0:.1f} s: open {folder / 'index.html'}")
    return 0


def _train_default(name: str) -> Any:
    """The default of ``gs.train``'s parameter ``name`` (each default lives in train.py)."""
    import inspect

    from .train import train

    return inspect.signature(train).parameters[name].default


#: the hyperparameters of ``gs.train`` that ``train --set KEY=VALUE`` reaches (no own flag)
TRAIN_SET_KEYS = (
    "optimizer (adamw, adam, sgd), betas ([0.9, 0.98]), momentum (SGD), warmup (linear "
    "learning-rate warm-up steps), loss (auto, ce, mse), dtype (float32, float64), "
    "jacobian_reg (GrokAlign's lambda: penalty on the input-output Jacobian norm), "
    "norm_project (Omnigrok's alpha: keep the parameter norm at alpha x its initial norm), "
    "schedule (recording schedule, a JSON object of Schedule's arguments), eval_every "
    "(also evaluate every K steps), stop_when (early stop, e.g. {\"test_acc\": 0.99, "
    "\"patience\": 300}), compression (lz4)"
)


def add_train_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``train`` to the ``grokscope`` subcommand parsers; returns its parser."""
    from ._threads import cli_threads

    t = sub.add_parser(
        "train", help="train a reference model on a task, recording its trajectory into a store",
        description="Train one of grokscope's reference models on a built-in task with the "
        "reference trainer (gs.train), recording checkpoints (log-spaced early, then linear) "
        "and train/test loss and accuracy into the store OUT. An existing store is continued "
        "from its last checkpoint with the same settings, or replaced with --overwrite. "
        "Hyperparameters without a flag of their own are set with --set KEY=VALUE: "
        + TRAIN_SET_KEYS + ". Prints the run's summary at the end.",
    )
    t.add_argument("--task", default="modular", metavar="NAME",
                   help="task building the train/test split: modular (modular arithmetic), "
                   "parity (sparse parity), teacher (cubic teacher-student), digits (sklearn "
                   "digits) (default: %(default)s)")
    t.add_argument("--task-kwargs", metavar="JSON",
                   help='task parameters as a JSON object, e.g. \'{"p": 97, "op": "+", '
                   '"train_frac": 0.3}\'')
    t.add_argument("--model", default="mlp", metavar="NAME",
                   help="reference model: mlp or transformer; input and output sizes come from "
                   "the task (default: %(default)s)")
    t.add_argument("--model-kwargs", metavar="JSON",
                   help='model constructor arguments as a JSON object, e.g. \'{"width": 256}\'')
    t.add_argument("-o", "--out", required=True, metavar="PATH",
                   help="the store to write (a folder or an fsspec URL); an existing store is "
                   "continued")
    t.add_argument("--steps", type=int, metavar="N",
                   help="total optimizer steps; a continued run trains up to this many "
                   f"(default: {_train_default('steps')})")
    t.add_argument("--lr", type=float, metavar="X",
                   help=f"learning rate (default: {_train_default('lr')})")
    t.add_argument("--weight-decay", type=float, metavar="X",
                   help="weight decay: decoupled for adamw, L2 for adam and sgd "
                   f"(default: {_train_default('weight_decay')})")
    t.add_argument("--batch-size", type=int, metavar="N",
                   help="minibatch size, shuffled epochs drawn with --seed (default: the whole "
                   "training split, full batch)")
    t.add_argument("--seed", type=int, metavar="N",
                   help="seed of the model initialisation, the minibatch order and the "
                   f"regulariser's projections (default: {_train_default('seed')})")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any other hyperparameter of gs.train, listed above (repeatable; VALUE "
                   "is JSON when it parses, else a string), e.g. --set optimizer=sgd --set "
                   "betas=[0.9,0.99]")
    t.add_argument("--device", default="auto", metavar="DEVICE",
                   help="auto (CUDA when available, else CPU), cpu, cuda, cuda:1 ... "
                   "(default: %(default)s)")
    t.add_argument("--threads", type=cli_threads, metavar="N|auto",
                   help="torch CPU threads: a count, or auto (default: time a few passes at "
                   "1, 2, 4, ... threads and keep the fastest)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace an existing store at --out instead of continuing it")
    add_quiet_argument(t)
    t.set_defaults(func=cmd_train)
    return t


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    import textwrap

    from ._threads import cli_threads

    p = argparse.ArgumentParser(
        prog="grokscope", description=textwrap.fill(DESCRIPTION, 79), epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"grokscope {__version__}",
                   help="print grokscope's version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           title="commands")

    add_train_parser(sub)

    from .store.importers import add_import_parser

    add_import_parser(sub)

    i = sub.add_parser(
        "info", help="print a run's summary and its model's anatomy",
        description="Print what each run recorded (task, model, steps, tensors, metrics, "
        "milestones, stored results, size on disk) and the roles its model shows measures "
        "(input, output, hidden layers, linear maps, embedding, unembedding).",
    )
    i.add_argument("runs", nargs="+", metavar="RUN", help="run stores (folders or fsspec URLs)")
    add_model_arguments(i)
    add_trust_code_argument(i)
    add_results_argument(i, writes=False)
    i.set_defaults(func=cmd_info)

    v = sub.add_parser(
        "verify", help="read every chunk of a run and check it (checksums, lengths, presence)",
        description="Read every committed chunk of each run (tensors, metrics, the data split, "
        "the resume state, the stored program) and check its CRC32C checksum, length and "
        "presence. Exits 0 when all are intact; otherwise names every damaged array and step.")
    v.add_argument("runs", nargs="+", metavar="RUN", help="run stores to check")
    v.set_defaults(func=cmd_verify)

    a = sub.add_parser(
        "analyze", help="compute measures over stored runs (results kept in the store)",
        description="Compute measures over the stored checkpoints of each run and keep the "
        "results in the store (or in --results). Steps already computed with the same "
        "parameters are skipped. Prints each run's measures, timings and milestone table. "
        "'grokscope measures' lists the measures and their parameters.",
    )
    a.add_argument("runs", nargs="+", metavar="RUN", help="run stores (folders or fsspec URLs)")
    a.add_argument("-m", "--measures", action="append", metavar="NAMES",
                   help="measure names, comma-separated, repeatable (default: every measure "
                   "that applies to the model; see grokscope measures)")
    a.add_argument("--params", metavar="JSON",
                   help='measure parameters as a JSON object {measure: {param: value}}, e.g. '
                   '\'{"lmn": {"n_samples": 50}}\'; without --measures, the measures named here')
    add_steps_argument(a)
    a.add_argument("--device", default="auto", metavar="DEVICE",
                   help="auto (CUDA when available, else CPU), cpu, cuda, cuda:1 ... "
                   "(default: %(default)s)")
    a.add_argument("--recompute", action="store_true",
                   help="recompute steps that already have a stored result")
    a.add_argument("--threads", type=cli_threads, default="auto", metavar="N|auto",
                   help="torch (and BLAS) CPU threads: a count, or auto (default: time a few "
                   "passes of the model at 1, 2, 4, ... threads and keep the fastest; with "
                   "--workers/--scheduler, each worker's torch threads per task slot, auto: 1)")
    add_trust_code_argument(a)
    add_model_arguments(a)
    add_results_argument(a, writes=True)
    add_quiet_argument(a)
    from .distributed import add_distributed_arguments

    add_distributed_arguments(a)
    a.add_argument("--steps-per-task", type=int, metavar="N",
                   help="with --workers/--scheduler: checkpoints per Dask task when a run's "
                   "steps are split over the workers (default: about four tasks per worker; "
                   "a single run, or fewer runs than workers, is split, more runs go one task "
                   "per run)")
    a.set_defaults(func=cmd_analyze)

    from .cli_measures import add_measures_parser

    add_measures_parser(sub)

    from .cli_sweep import add_sweep_parsers

    add_sweep_parsers(sub)

    from .cli_report import add_report_parser

    add_report_parser(sub)

    from .cli_watch import add_watch_parser

    add_watch_parser(sub)

    from .cli_forecast import add_forecast_parser

    add_forecast_parser(sub)

    d = sub.add_parser(
        "demo", help="train, analyse and report the built-in grokking run",
        description="Train the built-in demo run (modular addition, a one-hidden-layer MLP; "
        "about a minute on a laptop CPU), analyse every recorded step with every measure, "
        "print the milestone table and write a report folder.",
    )
    d.add_argument("-o", "--out", default="runs/demo", metavar="PATH",
                   help="the store to write; replaced if present (default: %(default)s)")
    add_steps_argument(d, what="analyse only these steps")
    d.add_argument("--no-analyze", action="store_true", help="only train (no analysis, no report)")
    d.add_argument("--no-report", action="store_true", help="train and analyse, write no report")
    d.add_argument("--report", metavar="PATH",
                   help="the report folder to write (default: OUT-report next to the store)")
    add_quiet_argument(d)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GrokscopeError as exc:
        print(f"grokscope {args.command}: error: {cli_message(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: everything committed so far is in the store", file=sys.stderr)
        return 130
    except OSError as exc:  # the file system refused (permissions, disk full): say so, no traceback
        print(f"grokscope {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
