"""The ``grokscope sweep`` and ``grokscope phase-diagram`` subcommands.

``grokscope.cli`` calls :func:`add_sweep_parsers` on its subparsers::

    grokscope sweep --task modular --task-kwargs '{"p": 23}' \\
        --grid weight_decay=0,0.1,1 --grid train_frac=0.2,0.3,0.5 --seeds 3 \\
        --set steps=2000 -o sweeps/wd_frac [--workers N | --scheduler ADDRESS]
    grokscope phase-diagram sweeps/wd_frac -x weight_decay -y train_frac -o fig.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .errors import ConfigError


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_grid(items: list[str] | None) -> dict[str, list[Any]]:
    """``["weight_decay=0,0.1,1", "lr=[1e-3,1e-2]"]`` -> ``{"weight_decay": [0, 0.1, 1], ...}``.

    A value list is comma-separated or a JSON list; each value is JSON when it parses (numbers,
    ``true``, ``null``), else a string.
    """
    grid: dict[str, list[Any]] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--grid takes NAME=V1,V2,..., got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or not raw.strip():
            raise ConfigError(f"--grid takes NAME=V1,V2,..., got {item!r}")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice; list all its values in one --grid")
        if raw.strip().startswith("["):
            try:
                values = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"--grid {key}: {raw!r} is not a JSON list") from exc
        else:
            values = [_value(v.strip()) for v in raw.split(",") if v.strip()]
        grid[key.replace("-", "_") if "." not in key else key] = values
    return grid


def parse_seeds(text: str) -> int | list[int]:
    """``"3"`` -> 3 (seeds 0, 1, 2); ``"0,5,7"`` -> ``[0, 5, 7]``."""
    try:
        if "," in text:
            return [int(s) for s in text.split(",") if s.strip()]
        return int(text)
    except ValueError as exc:
        raise ConfigError(f"--seeds takes a count or a comma list of integers, got {text!r}") \
            from exc


def cmd_sweep(args: argparse.Namespace) -> int:
    from ._cliargs import json_arg, kv_args
    from .sweep import sweep

    fixed = kv_args(args.set)
    if args.device is not None:
        fixed["device"] = args.device
    paths = sweep(
        task=args.task,
        model=args.model,
        grid=parse_grid(args.grid),
        seeds=parse_seeds(args.seeds),
        out=args.out,
        workers=args.workers,
        scheduler=args.scheduler,
        progress=not args.quiet,
        task_kwargs=json_arg(args.task_kwargs, "--task-kwargs"),
        model_kwargs=json_arg(args.model_kwargs, "--model-kwargs"),
        **fixed,
    )
    print(f"{len(paths)} runs in {args.out} (manifest: {Path(args.out) / 'sweep.json'})")
    return 0


def _figure_paths(out: str) -> list[Path]:
    p = Path(out)
    if p.suffix.lower() not in (".png", ".pdf"):
        raise ConfigError(f"-o must end in .png or .pdf (both are written), got {out!r}")
    return [p.with_suffix(".png"), p.with_suffix(".pdf")]


def cmd_phase_diagram(args: argparse.Namespace) -> int:
    from matplotlib.figure import Figure

    from .plot.phase import plot_phase_diagram
    from .sweep import phase_diagram, save_phase_diagram

    figs = _figure_paths(args.out)
    runs: Any = args.runs[0] if len(args.runs) == 1 else args.runs
    from ._cliargs import model_from_args

    model, anatomy = model_from_args(args)
    ds = phase_diagram(runs, args.x, args.y, threshold=args.threshold,
                       comprehension_gap=args.comprehension_gap, model=model, anatomy=anatomy)
    data_path = Path(args.data) if args.data else figs[0].with_name("phase_diagram.nc")
    figs[0].parent.mkdir(parents=True, exist_ok=True)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    plot_phase_diagram(ds, fig.add_subplot(), var=args.var)
    for f in figs:
        fig.savefig(f, dpi=150)
    save_phase_diagram(ds, data_path)
    print(ds[["label_mode"]].to_dataframe().to_string() if "label_mode" in ds else ds)
    print(f"wrote {', '.join(str(f) for f in figs)} and {data_path}")
    return 0


def add_sweep_parsers(subparsers: Any) -> None:
    """Add ``sweep`` and ``phase-diagram`` to the ``grokscope`` subcommand parsers."""
    from .distributed import add_distributed_arguments

    s = subparsers.add_parser(
        "sweep", help="train a grid of runs (resumable; serial or on Dask)",
        description="Train one run per grid cell and seed into OUT/ (resumable). A grid or "
        "--set key goes to the trainer when gs.train takes it, else to the task, else to the "
        "model; prefix it with task. or model. to be explicit.",
    )
    from ._cliargs import add_quiet_argument

    s.add_argument("--task", default="modular", metavar="NAME",
                   help="task name: modular, parity, teacher, digits (default: %(default)s)")
    s.add_argument("--task-kwargs", metavar="JSON",
                   help='task parameters shared by every run, e.g. \'{"p": 23}\'')
    s.add_argument("--model", default="mlp", metavar="NAME",
                   help="model name: mlp, transformer (default: %(default)s)")
    s.add_argument("--model-kwargs", metavar="JSON",
                   help='model arguments shared by every run, e.g. \'{"width": 256}\'')
    s.add_argument("--grid", action="append", metavar="NAME=V1,V2,...", required=True,
                   help="a swept hyperparameter and its values, comma-separated or a JSON list "
                   "(repeat for more axes)")
    s.add_argument("--seeds", default="1", metavar="N|LIST",
                   help="number of seeds (seeds 0..N-1) or a comma list of seeds "
                   "(default: %(default)s)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a fixed hyperparameter of every run, repeatable (e.g. steps=2000, "
                   "lr=1e-3; see grokscope train --help)")
    s.add_argument("-o", "--out", required=True, metavar="PATH",
                   help="the sweep folder (one store per run, and sweep.json)")
    s.add_argument("--device", metavar="DEVICE",
                   help="training device: auto, cpu, cuda, cuda:1 ... (default: auto)")
    add_distributed_arguments(s)
    add_quiet_argument(s)
    s.set_defaults(func=cmd_sweep)

    p = subparsers.add_parser(
        "phase-diagram", help="label a sweep's runs and draw the phase diagram",
        description="Label every run by its grokking phase and draw the grid over two "
        "hyperparameters read from each store's config. Writes FIG.png, FIG.pdf and the "
        "dataset (phase_diagram.nc next to the figure unless --data).",
    )
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="a sweep folder (its sweep.json names the runs), or run stores")
    p.add_argument("-x", required=True, metavar="NAME",
                   help="hyperparameter on the x axis (e.g. weight_decay)")
    p.add_argument("-y", required=True, metavar="NAME",
                   help="hyperparameter on the y axis (e.g. train_frac)")
    p.add_argument("-o", "--out", required=True, metavar="PATH",
                   help="figure path (.png or .pdf; both are written)")
    p.add_argument("--data", metavar="PATH",
                   help="where to write the dataset, .nc or .zarr (default: phase_diagram.nc "
                   "next to the figure)")
    p.add_argument("--threshold", type=float, default=0.9, metavar="X",
                   help="accuracy that counts as reached (default: %(default)s)")
    p.add_argument("--comprehension-gap", type=float, default=1000, metavar="N",
                   help="t_test - t_train (steps) from which a run counts as grokking "
                   "(default: %(default)s)")
    p.add_argument("--var", default="label_mode", metavar="NAME",
                   help="variable to draw: label_mode, final_test_acc_mean, frac_grokking ... "
                   "(default: %(default)s)")
    from ._cliargs import add_model_arguments

    add_model_arguments(p)
    p.set_defaults(func=cmd_phase_diagram)
