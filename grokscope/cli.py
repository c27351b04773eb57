"""The ``grokscope`` command: train, import, info, analyze, sweep, phase-diagram, report, demo.

Errors that a user can cause are printed as one message (no traceback) with a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ._cliargs import add_model_arguments, json_arg, kv_args, model_from_args
from .errors import ConfigError, GrokscopeError


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
        print(f"{path}: ok ({counts['chunks']} chunks of {counts['arrays']} arrays checked)")
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
        return f"anatomy: unavailable ({exc})"
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
    if args.results and (args.workers or args.scheduler):
        raise ConfigError("--results works without --workers/--scheduler (one run, one results store)")
    if args.workers or args.scheduler:
        from .distributed import analyze_many

        summary = analyze_many(
            args.runs, measures, steps=args.steps, device=args.device, workers=args.workers,
            scheduler=args.scheduler, progress=not args.quiet, recompute=args.recompute,
            trust_code=args.trust_code, model=model, anatomy=anatomy,
        )
        for path, info in summary.items():
            print(f"{path}: {', '.join(info['measures'])} in {info['seconds']:.1f} s; "
                  f"skipped: {info['skipped'] or 'none'}")
            run = open_run(path, trust_code=args.trust_code)
            print(milestone_table(run, {n: run.results[n] for n in info["measures"]}))
        return 0
    for path in args.runs:
        run = open_run(path, model=model, anatomy=anatomy, trust_code=args.trust_code,
                       results=args.results)
        t0 = time.perf_counter()
        res = analyze(run, measures, steps=args.steps, device=args.device,
                      progress=not args.quiet, recompute=args.recompute,
                      num_threads=args.threads, results=args.results)
        print(f"{path}: {len(res)} measures in {time.perf_counter() - t0:.1f} s "
              f"({', '.join(res)}); skipped: {dict(res.skipped) or 'none'}")
        print(milestone_table(run, res))
    return 0


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
    print(f"analysed in {time.perf_counter() - t0:.1f} s; skipped: {dict(res.skipped) or 'none'}\n")
    print(milestone_table(run, res))
    if args.no_report:
        return 0
    from .report import report

    t0 = time.perf_counter()
    folder = report(run, Path(args.report) if args.report else out.with_name(out.name + "-report"))
    print(f"\nreport written in {time.perf_counter() - t0:.1f} s: open {folder / 'index.html'}")
    return 0


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from ._threads import cli_threads

    p = argparse.ArgumentParser(prog="grokscope", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a reference run into a store")
    t.add_argument("--task", default="modular", help="task name (modular, parity, teacher, digits)")
    t.add_argument("--task-kwargs", help='JSON, e.g. \'{"p": 97, "op": "+"}\'')
    t.add_argument("--model", default="mlp", help="model name (mlp, transformer)")
    t.add_argument("--model-kwargs", help='JSON, e.g. \'{"width": 256}\'')
    t.add_argument("-o", "--out", required=True, help="the store to write (path or fsspec URL)")
    t.add_argument("--steps", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other hyperparameter of gs.train")
    t.add_argument("--device", default="auto")
    t.add_argument("--threads", type=cli_threads, metavar="N|auto",
                   help="torch CPU threads: a count, or auto (default: time a few passes at "
                   "1, 2, 4, ... threads and keep the fastest)")
    t.add_argument("--overwrite", action="store_true")
    t.add_argument("-q", "--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    from .store.importers import add_import_parser

    add_import_parser(sub)

    i = sub.add_parser("info", help="print a run's summary and its model's anatomy")
    i.add_argument("runs", nargs="+")
    add_model_arguments(i)
    i.add_argument("--trust-code", action="store_true", help="allow importing the model factory named in the store")
    add_results_argument(i, writes=False)
    i.set_defaults(func=cmd_info)

    v = sub.add_parser(
        "verify", help="read every chunk of a run and check it (checksums, lengths, presence)",
        description="Read every committed chunk of each run (tensors, metrics, the data split, "
        "the resume state, the stored program) and check its CRC32C checksum, length and "
        "presence. Exits 0 when all are intact; otherwise names every damaged array and step.")
    v.add_argument("runs", nargs="+", metavar="RUN", help="run stores to check")
    v.set_defaults(func=cmd_verify)

    a = sub.add_parser("analyze", help="compute measures over stored runs")
    a.add_argument("runs", nargs="+")
    a.add_argument("-m", "--measures", action="append", help="measure names (comma-separated); default all")
    a.add_argument("--params", help='JSON {measure: {param: value}}')
    a.add_argument("--steps", help="all | every:K | log:N | A:B | A:B:K | comma list")
    a.add_argument("--device", default="auto")
    a.add_argument("--recompute", action="store_true")
    a.add_argument("--threads", type=cli_threads, default="auto", metavar="N|auto",
                   help="torch (and BLAS) CPU threads: a count, or auto (default: time a few "
                   "passes of the model at 1, 2, 4, ... threads and keep the fastest)")
    a.add_argument("--trust-code", action="store_true", help="allow importing the model factory named in the store")
    add_model_arguments(a)
    add_results_argument(a, writes=True)
    a.add_argument("-q", "--quiet", action="store_true")
    from .distributed import add_distributed_arguments

    add_distributed_arguments(a)
    a.set_defaults(func=cmd_analyze)

    from .cli_sweep import add_sweep_parsers

    add_sweep_parsers(sub)

    from .cli_report import add_report_parser

    add_report_parser(sub)

    d = sub.add_parser("demo", help="train, analyse and summarise the built-in grokking run")
    d.add_argument("-o", "--out", default="runs/demo")
    d.add_argument("--steps", help="analyse only these steps (default all)")
    d.add_argument("--no-analyze", action="store_true")
    d.add_argument("--no-report", action="store_true")
    d.add_argument("--report", help="report folder (default: <out>-report)")
    d.add_argument("-q", "--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GrokscopeError as exc:
        print(f"grokscope {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: everything committed so far is in the store", file=sys.stderr)
        return 130
    except OSError as exc:  # the file system refused (permissions, disk full): say so, no traceback
        print(f"grokscope {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
