"""A report folder for one run: figures (PNG + PDF), ``summary.json`` and ``index.html``.

:func:`report` reads the results *stored* in the run (it never recomputes a measure unless
``analyze=True``, which first computes the measures that are missing), draws every figure that
has data with the :mod:`grokscope.plot` functions, and writes::

    OUT/figures/<name>.png, OUT/figures/<name>.pdf
    OUT/summary.json     key numbers: t_train, t_test, gap, label, final accuracies, and per
                         measure its scalar values at the first, memorisation, generalisation
                         and last step
    OUT/index.html       self-contained (figures inlined as base64 PNG): opens with no server

A run without stored results still gets its accuracy curves (from the recorded metrics), and
the HTML lists the measures that are missing and how to compute them.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ._version import __version__
from .errors import ConfigError, GrokscopeError

__all__ = ["report", "report_summary"]

_FORMATS = ("png", "pdf", "svg")


@dataclass
class _Figure:
    name: str
    caption: str
    png: bytes
    files: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- numbers
def _num(v: Any) -> float | int | None:
    """A JSON-safe number (NaN/inf -> None)."""
    if v is None:
        return None
    arr = np.asarray(v)
    if arr.dtype.kind in "iu":
        return int(arr)
    if arr.dtype.kind == "b":
        return int(bool(arr))
    f = float(arr)
    return f if math.isfinite(f) else None


def _scalar_series(ds: xr.Dataset) -> dict[str, xr.DataArray]:
    """Numeric per-step scalars of a result (``var`` or ``var[layer]`` for per-layer ones)."""
    out: dict[str, xr.DataArray] = {}
    for name, var in ds.data_vars.items():
        if name == "nonfinite_weights" or var.dtype.kind not in "fiu":
            continue
        if var.dims == ("step",):
            out[str(name)] = var
        elif set(var.dims) == {"step", "layer"} and var.dtype.kind == "f":
            for layer in var["layer"].values:
                out[f"{name}[{layer}]"] = var.sel(layer=layer)
    return out


def _value_at(var: xr.DataArray, step: int | None) -> float | int | None:
    """The value at the stored step nearest ``step`` (None when ``step`` is None)."""
    if step is None:
        return None
    steps = np.asarray(var["step"].values)
    if steps.size == 0:
        return None
    return _num(np.asarray(var.values)[int(np.argmin(np.abs(steps - step)))])


def _milestones(run: Any, results: Mapping[str, xr.Dataset], threshold: float) -> dict[str, Any]:
    """t_train, t_test, gap and label.

    From the stored ``phases`` result when it used the same threshold and at least as many
    accuracy samples as the recorded curves; otherwise computed from the densest accuracy
    curves (the recorded metrics, else the ``curves`` result), as the curves figure is.
    """
    from .measures.phases import phase_summary
    from .summary import accuracy_curves

    curves = accuracy_curves(run, results)
    usable = curves is not None and bool(np.isfinite(curves[1]).any())
    n_curve = int(np.isfinite(curves[1]).sum()) if usable else 0
    ph = results.get("phases")
    why = ""
    if ph is not None and "t_train" in ph:
        n_ph = len(np.atleast_1d(ph.attrs.get("steps_analyzed", [])))
        same = float(ph.attrs.get("threshold", threshold)) == threshold
        if same and (not usable or n_ph >= n_curve):
            return {
                "t_train": _num(ph["t_train"].values), "t_test": _num(ph["t_test"].values),
                "gap": _num(ph["gap"].values), "label": str(ph["label"].values),
                "threshold": threshold, "source": "stored 'phases' result",
            }
        why = (f"; the stored 'phases' result used threshold {ph.attrs.get('threshold')} on "
               f"{n_ph} steps" if same is False or n_ph < n_curve else "")
    if not usable:
        return {"t_train": None, "t_test": None, "gap": None, "label": None,
                "threshold": threshold,
                "source": "no accuracy curves (record train_acc/test_acc or compute 'curves')"}
    s = phase_summary(*curves, threshold=threshold)
    return {
        "t_train": _num(s["t_train"].values), "t_test": _num(s["t_test"].values),
        "gap": _num(s["gap"].values), "label": str(s["label"].values), "threshold": threshold,
        "source": f"computed from the accuracy curves ({n_curve} steps) with "
        f"grokscope.measures.phases.phase_summary{why}",
    }


def _final(run: Any, results: Mapping[str, xr.Dataset]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sources = [run.metrics] + ([results["curves"]] if "curves" in results else [])
    for name in ("train_acc", "test_acc", "train_loss", "test_loss"):
        for src in sources:
            if name in src:
                v = np.asarray(src[name].values, dtype=np.float64)
                fin = v[np.isfinite(v)]
                if fin.size:
                    out[name] = float(fin[-1])
                    break
    return out


def _applicability(run: Any, missing: list[str]) -> tuple[dict[str, str], str | None]:
    """``{measure: reason}`` for missing measures that do not apply; a note if unknown."""
    from .measures import registry

    if not missing or len(run.steps) == 0:
        return {}, None
    try:
        model = run.model_at(int(run.steps[0]))
    except GrokscopeError as exc:
        return {}, f"could not check which measures apply ({exc})"
    from .anatomy import ModelView
    from .engine import run_anatomy

    data = run.data
    try:
        view = ModelView(model, run_anatomy(run, model, data))
    except GrokscopeError as exc:
        return {}, f"could not check which measures apply ({exc})"
    reasons = {}
    for name in missing:
        reason = registry.get(name).applies(view, data)
        if reason:
            reasons[name] = str(reason)
    return reasons, None


def report_summary(
    run: Any, results: Mapping[str, xr.Dataset], *, threshold: float = 0.9
) -> dict[str, Any]:
    """The key numbers of a run and its stored results, as a JSON-able dict.

    Parameters
    ----------
    run : Run
    results : mapping of str to xr.Dataset
        Loaded stored results.
    threshold : float
        Accuracy that counts as reached.

    Returns
    -------
    dict
        ``run`` (path, task, model, steps), ``milestones`` (``t_train``, ``t_test``, ``gap``,
        ``label``, ``threshold``, ``source``), ``final`` (last finite accuracies and losses),
        ``measures`` (``{measure: {variable: {"first", "memorisation", "generalisation",
        "last"}}}``; the value at the stored step nearest the first step, ``t_train``,
        ``t_test`` (None where the run never reached it) and the last step), and
        ``measure_steps`` (those steps per measure). NaN is written as null.
    """
    from .measures import registry

    steps = np.asarray(run.steps)
    config = run.config or {}
    ms = _milestones(run, results, threshold)
    t_train, t_test = ms["t_train"], ms["t_test"]
    measures: dict[str, Any] = {}
    measure_steps: dict[str, Any] = {}
    for name, ds in results.items():
        if "step" not in ds.dims:
            continue
        rs = np.asarray(ds["step"].values)
        if rs.size == 0:
            continue
        first, last = int(rs[0]), int(rs[-1])
        mem = None if t_train is None else int(rs[int(np.argmin(np.abs(rs - t_train)))])
        gen = None if t_test is None else int(rs[int(np.argmin(np.abs(rs - t_test)))])
        measure_steps[name] = {"first": first, "memorisation": mem, "generalisation": gen,
                               "last": last}
        measures[name] = {
            var: {"first": _value_at(da, first), "memorisation": _value_at(da, mem),
                  "generalisation": _value_at(da, gen), "last": _value_at(da, last)}
            for var, da in _scalar_series(ds).items()
        }
    missing = [n for n in registry.names() if n not in results]
    model = config.get("model") or {}
    return {
        "grokscope_version": __version__,
        "run": {
            "path": str(run.path),
            "task": config.get("task"),
            "model": model,
            "n_steps": int(steps.size),
            "first_step": int(steps[0]) if steps.size else None,
            "last_step": int(steps[-1]) if steps.size else None,
            "metrics": [str(v) for v in run.metrics.data_vars],
        },
        "milestones": ms,
        "final": _final(run, results),
        "measures": measures,
        "measure_steps": measure_steps,
        "measures_stored": sorted(results),
        "measures_missing": missing,
    }


# ----------------------------------------------------------------------------- figures
#: figures of two quantities on different scales: two panels read better than a twin axis
_PANELS = frozenset({"plot_curves", "plot_norms", "plot_alignment", "plot_kernel",
                     "plot_mixture_k"})


def _figure_plan(run: Any, results: Mapping[str, xr.Dataset], threshold: float
                 ) -> list[tuple[str, str, Callable[[], Any]]]:
    """``(name, caption, draw)`` for every figure the stored data supports."""
    import inspect

    from . import plot as gp
    from .plot._style import PlotDataError
    from .plot.curves import curves_dataset

    plan: list[tuple[str, str, Callable[[], Any]]] = []
    ms = _milestones(run, results, threshold)
    marks = {k: ms[k] for k in ("t_train", "t_test")}

    def add(name: str, caption: str, fn: Callable[..., Any], ds: Any, **kw: Any) -> None:
        accepts = inspect.signature(fn).parameters
        if "marks" in accepts:  # every per-step figure marks the run's t_train and t_test
            kw.setdefault("marks", marks)
        if "panels" in accepts and fn.__name__ in _PANELS:
            kw.setdefault("panels", True)
        plan.append((name, caption, lambda: fn(ds, None, **kw)))

    try:
        cds = curves_dataset(run)
    except PlotDataError:
        cds = None
    if cds is not None:
        src = "recorded metrics" if cds is run.metrics else "the 'curves' measure"
        add("curves", f"Accuracy (top) and loss (bottom) vs step from the {src}; the grokking "
            f"gap t_train → t_test (accuracy ≥ {threshold:g}) is shaded.", gp.plot_curves, cds,
            threshold=threshold)
    captions = {
        "plot_norms": "Total parameter L2 norm and relative distance from the first checkpoint.",
        "plot_mixture": "Histogram of the per-neuron order parameter at each step (heat map) "
        "with the Gaussian-mixture component means (marker size ~ component weight).",
        "plot_mixture_k": "Mixture components chosen by BIC and the droplet fraction.",
        "plot_alignment": "Centroid alignment of the input-output Jacobian (mean, min–max band) "
        "and the mean Jacobian norm.",
        "plot_lmn": "Linear mapping number against the test loss at the same steps.",
        "plot_nfa": "Neural feature ansatz: Pearson(WᵀW, AGOP^s) per layer.",
        "plot_fourier": "Share of neurons per Fourier frequency at the last step (key "
        "frequencies highlighted).",
        "plot_fourier_evolution": "Share of neurons per frequency over training.",
        "plot_fourier_losses": "Restricted and excluded loss (Nanda et al.) with the full loss.",
        "plot_kernel": "Scale-free distance of the empirical NTK from the first checkpoint, "
        "1 − cos(Θ_t, Θ_0), with the relative change (dominated by weight growth) dashed.",
        "plot_rqi": "Representation quality index of the token embedding (modular tasks: "
        "the share of parallel-chord quadruples; only one circle scores high, so an embedding "
        "spread over many frequencies, as a two-hot MLP's first layer, scores ~0 even when "
        "grokked: see docs/measures.md, rqi).",
        "plot_changepoints": "Step at which each stored curve changes fastest (dot size ~ rate).",
    }
    test_loss = None
    for src in (results.get("curves"), run.metrics):
        if src is not None and "test_loss" in src:
            test_loss = src["test_loss"]
            break
    plots = gp.PLOTS
    order = {name: i for i, name in enumerate(plots)}
    for measure in sorted(results, key=lambda m: (order.get(m, len(order)), m)):
        ds = results[measure]
        fns = plots.get(measure)
        if fns is None:
            scal = [v for v, da in ds.data_vars.items()
                    if da.dims == ("step",) and da.dtype.kind == "f"][:6]
            if scal:
                add(measure, f"Scalar values of the '{measure}' result.",
                    lambda d, ax, scal=scal, **kw: gp.plot_scalars(d, scal, ax, **kw), ds,
                    marks=marks)
            continue
        for fn in fns:
            name = fn.__name__.removeprefix("plot_")
            if fn.__name__ == "plot_curves":
                continue  # drawn above from the metrics (or from this result)
            kw = {"test_loss": test_loss} if fn.__name__ == "plot_lmn" else {}
            add(name, captions.get(fn.__name__, ""), fn, ds, **kw)
    return plan


def _render(plan: Iterable[tuple[str, str, Callable[[], Any]]], fig_dir: Path,
            formats: tuple[str, ...], dpi: int) -> tuple[list[_Figure], dict[str, str]]:
    import io

    from .plot._style import PlotDataError

    figures: list[_Figure] = []
    skipped: dict[str, str] = {}
    for name, caption, draw in plan:
        try:
            ax = draw()
        except PlotDataError as exc:
            skipped[name] = str(exc)
            continue
        fig = ax.figure
        files = []
        for fmt in formats:
            path = fig_dir / f"{name}.{fmt}"
            fig.savefig(path, dpi=dpi, format=fmt)
            files.append(f"figures/{path.name}")
        if "png" in formats:
            png = (fig_dir / f"{name}.png").read_bytes()
        else:
            buf = io.BytesIO()
            fig.savefig(buf, dpi=dpi, format="png")
            png = buf.getvalue()
        figures.append(_Figure(name, caption, png, files))
    return figures, skipped


# ----------------------------------------------------------------------------- html
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;
max-width:1100px;padding:0 1rem;color:#222;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;
margin-top:2rem}table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.25rem .6rem;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:#f4f4f4}
figure{margin:1.5rem 0;padding:0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9rem;color:#444}code{background:#f4f4f4;padding:0 .25rem}
.note{background:#fff8e5;border-left:4px solid #E69F00;padding:.5rem .8rem}
.muted{color:#666;font-size:.85rem}
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{int(v):,}" if v.is_integer() and abs(v) >= 1000 else f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _rows(pairs: Iterable[tuple[str, Any]]) -> str:
    e = html.escape
    return "".join(f"<tr><th scope=\"row\">{e(k)}</th><td>{e(_fmt(v))}</td></tr>" for k, v in pairs)


def _spec_text(spec: Any) -> str:
    if not spec:
        return "unknown"
    if isinstance(spec, Mapping):
        name = spec.get("name") or spec.get("factory") or "?"
        kwargs = spec.get("kwargs")
        rest = kwargs if kwargs is not None else {k: v for k, v in spec.items() if k != "name"}
        return f"{name} {json.dumps(rest, sort_keys=True, default=str)}"
    return str(spec)


def _html(summary: dict[str, Any], figures: list[_Figure], skipped: dict[str, str],
          not_applicable: dict[str, str], note: str | None) -> str:
    e = html.escape
    run, ms, final = summary["run"], summary["milestones"], summary["final"]
    title = f"grokscope report: {Path(str(run['path']).rstrip('/')).name or run['path']}"
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="muted">grokscope {e(summary["grokscope_version"])} · figures as PNG and '
        "PDF in <code>figures/</code> · numbers in <code>summary.json</code></p>",
        "<h2>Run</h2>", "<table>",
        _rows([("store", run["path"]), ("task", _spec_text(run["task"])),
               ("model", _spec_text(run["model"])), ("checkpoints", run["n_steps"]),
               ("steps", f"{_fmt(run['first_step'])} … {_fmt(run['last_step'])}"),
               ("recorded metrics", ", ".join(run["metrics"]) or "none")]),
        "</table>", "<h2>Summary</h2>", "<table>",
        _rows([("phase label", ms["label"]),
               (f"t_train (train acc ≥ {ms['threshold']:g})", ms["t_train"]),
               (f"t_test (test acc ≥ {ms['threshold']:g})", ms["t_test"]),
               ("grokking gap t_test − t_train", ms["gap"]),
               *[(f"final {k.replace('_', ' ')}", v) for k, v in final.items()]]),
        "</table>", f'<p class="muted">milestones: {e(ms["source"])}</p>',
    ]
    missing = [m for m in summary["measures_missing"] if m not in not_applicable]
    if missing or note:
        names = ",".join(missing)
        parts.append('<div class="note">')
        if missing:
            parts += [
                f"<p><strong>Not computed yet:</strong> {e(', '.join(missing))}.</p>",
                "<p>Compute them with <code>grokscope analyze RUN -m "
                f"{e(names)}</code>, in Python with <code>gs.analyze(run, "
                f"{e(json.dumps(missing))})</code>, or rebuild this report with "
                "<code>grokscope report RUN -o DIR --analyze</code>.</p>",
            ]
        if note:
            parts.append(f"<p>{e(note)}</p>")
        parts.append("</div>")
    if not_applicable:
        parts.append("<p class=\"muted\">Measures that do not apply to this run: "
                     + "; ".join(f"{e(k)} ({e(v)})" for k, v in not_applicable.items()) + "</p>")
    parts += ["<h2>Figures</h2>",
              '<p class="muted">On every figure against step, the dotted vertical lines mark '
              "t_train (blue) and t_test (vermillion) of the summary above; figures of two "
              "quantities show them in two panels sharing the step axis.</p>"]
    for fig in figures:
        b64 = base64.b64encode(fig.png).decode("ascii")
        links = " · ".join(f'<a href="{e(f)}">{e(f.rsplit(".", 1)[-1].upper())}</a>'
                           for f in fig.files)
        parts += [
            f'<figure id="fig-{e(fig.name)}">',
            f'<img src="data:image/png;base64,{b64}" alt="{e(fig.name)}">',
            f"<figcaption><strong>{e(fig.name)}</strong>. {e(fig.caption)}"
            + (f" <span class=\"muted\">({links})</span>" if links else "") + "</figcaption>",
            "</figure>",
        ]
    if skipped:
        parts.append("<p class=\"muted\">Figures without data: "
                     + "; ".join(f"{e(k)}: {e(v)}" for k, v in skipped.items()) + "</p>")
    measures = summary["measures"]
    if measures:
        parts += ["<h2>Measures at the milestones</h2>",
                  "<p class=\"muted\">Value at the stored step nearest the first step, "
                  "t_train (memorisation), t_test (generalisation; — if never reached) and "
                  "the last step of each result.</p>"]
        for mname, table in measures.items():
            st = summary["measure_steps"][mname]
            parts += [
                f"<h3>{e(mname)}</h3>", "<table>",
                "<tr><th scope=\"col\">variable</th>"
                f"<th scope=\"col\">first (step {e(_fmt(st['first']))})</th>"
                f"<th scope=\"col\">memorisation (step {e(_fmt(st['memorisation']))})</th>"
                f"<th scope=\"col\">generalisation (step {e(_fmt(st['generalisation']))})</th>"
                f"<th scope=\"col\">last (step {e(_fmt(st['last']))})</th></tr>",
            ]
            for var, v in table.items():
                parts.append(
                    f"<tr><td>{e(var)}</td>"
                    + "".join(f'<td class="num">{e(_fmt(v[c]))}</td>'
                              for c in ("first", "memorisation", "generalisation", "last"))
                    + "</tr>"
                )
            parts.append("</table>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- entry point
def report(
    run_or_path: Any,
    out: str | os.PathLike,
    *,
    analyze: bool = False,
    formats: tuple[str, ...] | list[str] = ("png", "pdf"),
    threshold: float = 0.9,
    dpi: int = 150,
    steps: Any = None,
    trust_code: bool = False,
    progress: bool = False,
    model: Any = None,
    anatomy: dict | None = None,
    results: Any = None,
) -> Path:
    """Write a report folder for a run: figures, ``summary.json`` and ``index.html``.

    Parameters
    ----------
    run_or_path : Run or str
        A run, or a path/URL opened with :func:`grokscope.open_run`.
    out : path
        The report folder (created; files in it are replaced).
    analyze : bool
        First compute the registered measures that have no stored result
        (:func:`grokscope.engine.analyze`). Default False: only stored results are used.
    formats : tuple of str
        Figure files to write per figure (``"png"``, ``"pdf"``, ``"svg"``); the HTML always
        inlines a PNG.
    threshold : float
        Accuracy that counts as reached (t_train, t_test).
    dpi : int
        Resolution of the PNGs.
    steps : step selection, optional
        Passed to the analysis when ``analyze=True``.
    trust_code, progress : bool
        Passed to :func:`grokscope.open_run` / the analysis.
    model, anatomy : optional
        The architecture and roles, as for :func:`grokscope.analyze` (needed to decide which
        measures apply and with ``analyze=True``).
    results : str or PathLike, optional
        A separate results store to read the results from (and, with ``analyze=True``, to write
        the missing ones to), as written by ``gs.analyze(..., results=...)``.

    Returns
    -------
    Path
        ``out``.
    """
    from .engine import open_for_analysis
    from .measures import registry

    formats = tuple(formats)
    bad = [f for f in formats if f not in _FORMATS]
    if bad:
        raise ConfigError(f"unknown figure format(s) {bad}; use some of {list(_FORMATS)}")
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"threshold must be in (0, 1], got {threshold}")
    run = open_for_analysis(run_or_path, model=model, anatomy=anatomy, trust_code=trust_code,
                            results=results)
    if len(run.steps) == 0:
        raise ConfigError(f"run {run.path} has no committed checkpoints: nothing to report")

    stored = set(run.results)
    missing = [n for n in registry.names() if n not in stored]
    not_applicable, note = _applicability(run, missing)
    if analyze:
        todo = [n for n in missing if n not in not_applicable]
        if todo:
            from . import engine

            engine.analyze(run, todo, steps=steps, progress=progress)
    stored_results = run.results
    results = {}
    for name in stored_results:
        ds = stored_results.get(name)  # None: removed since it was listed
        if ds is not None:
            results[name] = ds

    out = Path(out)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    summary = report_summary(run, results, threshold=threshold)
    summary["measures_not_applicable"] = not_applicable
    figures, skipped = _render(_figure_plan(run, results, threshold), fig_dir, formats, dpi)
    summary["figures"] = {f.name: f.files for f in figures}
    summary["figures_skipped"] = skipped
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "index.html").write_text(_html(summary, figures, skipped, not_applicable, note),
                                    encoding="utf-8")
    return out
