"""Follow a store while it is recorded: :func:`watch` analyses each new checkpoint.

Another process (or a background thread, ``Recorder(..., watch=True)``) records into a store;
:func:`watch` polls its root metadata (one small JSON read per ``interval``), and whenever the
committed count grows it runs the cheap measures through the engine
(:func:`grokscope.analyze`: only the new steps are computed, results land in the store as a
fresh analysis would write them), asks :func:`grokscope.forecast` (when installed) whether and
when the run will grok, and rewrites a live page ``OUT/index.html`` that reloads itself.

It stops

- when the writer closes the store (the ``closed`` marker of the root metadata, see
  :mod:`grokscope.store.schema`), after a final pass: the stored results then equal what a
  fresh ``gs.analyze(path, measures)`` computes;
- after ``timeout`` seconds without a new checkpoint (a writer killed or stalled: the store
  has no closed marker), with a message saying so;
- on Ctrl-C (KeyboardInterrupt), keeping what was computed;
- when the ``stop`` event is set (``Recorder.close`` sets it for its watcher thread), after a
  final pass.

The live folder ``OUT``::

    OUT/index.html     the page (meta refresh), replaced atomically (temp file + os.replace)
    OUT/summary.json   milestones, final accuracies, the latest forecast, the watch status
    OUT/forecast.csv   one row per pass: step, p_grok, t_test_pred, t_test_low, t_test_high
"""

from __future__ import annotations

import base64
import contextlib
import csv
import html
import io
import json
import math
import os
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .errors import ConfigError, GrokscopeError, StoreError

__all__ = ["DEFAULT_MEASURES", "Watched", "WatchTimeoutError", "start_watcher", "watch"]

#: what :func:`watch` computes by default: accuracy/loss curves and parameter norms (``curves``),
#: the Fourier measures on modular-arithmetic tasks (skipped elsewhere; ``keys="step"``: each
#: step's own key frequencies, so a new checkpoint costs one step, where ``keys="final"``
#: would recompute every step whenever the last one changes; stored as ``fourier_steps``, so a
#: ``fourier`` result the user computed with the default keys is never replaced) and the phase
#: label (``phases``)
DEFAULT_MEASURES: dict[str, dict[str, Any]] = {
    "curves": {},
    "fourier_steps": {"measure": "fourier", "keys": "step"},
    "phases": {},
}

#: seconds between two reloads of the live page in a browser
PAGE_REFRESH_S = 5

_FORECAST_FIELDS = ("p_grok", "t_test_pred", "t_test_low", "t_test_high")


class WatchTimeoutError(StoreError):
    """The store to watch did not appear (or held no checkpoint) within the timeout."""


@dataclass
class Watched:
    """What :func:`watch` saw.

    Attributes
    ----------
    path : str
        The store followed.
    out : Path
        The live folder (``index.html``, ``summary.json``, ``forecast.csv``).
    reason : {"closed", "timeout", "stopped", "interrupted"}
        Why it stopped: the writer closed the store; no new checkpoint for ``timeout``
        seconds; the ``stop`` event was set; Ctrl-C.
    message : str
        The same, in a sentence.
    n_steps : int
        Committed checkpoints analysed by the last pass.
    last_step : int or None
        The last of them.
    passes : int
        Analysis passes run.
    results : dict of str to xr.Dataset
        The stored results after the last pass (what ``gs.analyze`` returned).
    skipped : dict of str to str
        Measures that do not apply to the run, with the reason.
    forecast : xr.Dataset or None
        The last forecast (None when :mod:`grokscope.forecast` is unavailable or failed:
        ``forecast_note`` says why).
    forecast_note : str
    """

    path: str
    out: Path
    reason: str = "stopped"
    message: str = ""
    n_steps: int = 0
    last_step: int | None = None
    passes: int = 0
    results: dict[str, xr.Dataset] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    forecast: xr.Dataset | None = None
    forecast_note: str = ""


# ----------------------------------------------------------------------------- polling
@dataclass(frozen=True)
class _Commit:
    count: int
    last_step: int | None
    closed: bool


def _read_commit(store: Any, where: str) -> _Commit | None:
    """The committed count, last step and closed marker from the root ``zarr.json`` alone
    (one small read); None while the store does not exist or is being created."""
    from .store import _io, schema

    doc = _io.read_json(store, "zarr.json", what="the root metadata document")
    if doc is None:
        return None
    attrs = doc.get("attributes")
    schema.check_version(attrs if isinstance(attrs, dict) else {}, where)  # NotAStoreError ...
    meta = schema.check_meta(attrs.get(schema.META_KEY), where)
    commit = meta["commit"]
    return _Commit(int(commit["count"]), commit["last_step"], meta.get(schema.CLOSED_KEY) is True)


def default_out(path: Any) -> Path:
    """The live folder beside a local store (``runs/a.zarr`` -> ``runs/a.zarr-watch``); for a
    URL, ``<last path segment>-watch`` in the working directory."""
    from .store import _io

    local = _io._local_path(path)
    if local is not None:
        local = local.expanduser().absolute()
        return local.with_name(f"{local.name}-watch")
    name = str(path).rstrip("/").rsplit("/", 1)[-1] or "run"
    return Path.cwd() / f"{name}-watch"


def _results_busy(run: Any, names: list[str]) -> str | None:
    """The first of ``names`` whose writer lock another analysis holds (local stores), else
    None. The lock is only probed (taken and released at once)."""
    from . import results_io

    loc = results_io.location_for(run)
    if loc.local is None or not loc.local.is_dir():
        return None
    for name in names:
        try:
            fd = results_io._try_flock(loc.lock_path(name, "write"))
        except (OSError, ImportError):
            return None
        if fd is None:
            return name
        os.close(fd)
    return None


# ----------------------------------------------------------------------------- forecast
def _forecast(run: Any, *, threshold: float, model: Any, anatomy: dict | None
              ) -> tuple[xr.Dataset | None, str]:
    """:func:`grokscope.forecast.forecast` of the run so far, or ``(None, why not)``."""
    try:
        from .forecast import forecast
    except ImportError:
        return None, ("no forecast: grokscope.forecast is not part of this installation "
                      "(install a grokscope that has it)")
    try:
        ds = forecast(run, threshold=threshold, model=model, anatomy=anatomy)
    except GrokscopeError as exc:
        return None, f"no forecast yet: {exc}"
    except (ValueError, RuntimeError, ArithmeticError, LookupError) as exc:
        # a bug in the forecast must not stop the live analysis: said on the page and warned
        msg = f"the forecast failed ({type(exc).__name__}: {exc}); please report it"
        warnings.warn(f"watch: {msg}", RuntimeWarning, stacklevel=2)
        return None, msg
    return ds, ""


def _forecast_values(ds: xr.Dataset | None) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name in _FORECAST_FIELDS:
        v = None
        if ds is not None and name in ds:
            arr = np.asarray(ds[name].values, dtype=np.float64).reshape(-1)
            if arr.size and math.isfinite(float(arr[-1])):
                v = float(arr[-1])
        out[name] = v
    return out


# ----------------------------------------------------------------------------- the page
def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and
    ``os.replace``, so a reader (a browser) sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _panels(run: Any, results: Mapping[str, xr.Dataset], threshold: float
            ) -> list[tuple[str, Callable[[Any], Any]]]:
    """``(title, draw(ax))`` of the live figure's panels that have data: the accuracy curves
    (t_train/t_test marked), the parameter norms, the Fourier progress measures."""
    from . import plot as gp
    from .plot._style import PlotDataError
    from .plot.curves import curves_dataset

    panels: list[tuple[str, Callable[[Any], Any]]] = []
    try:
        cds = curves_dataset(run)
    except PlotDataError:
        cds = None
    if cds is not None:
        panels.append(("accuracy", lambda ax: gp.plot_curves(cds, ax, threshold=threshold)))
    if "curves" in results:
        panels.append(("norms", lambda ax: gp.plot_norms(results["curves"], ax)))
    fourier = next((results[k] for k in ("fourier_steps", "fourier") if k in results), None)
    if fourier is not None:
        panels.append(("fourier", lambda ax: gp.plot_fourier_losses(fourier, ax)))
    return panels


def _figure_png(run: Any, results: Mapping[str, xr.Dataset], threshold: float, dpi: int
                ) -> tuple[bytes | None, list[str]]:
    """One PNG with the live panels side by side and the titles drawn: one render, with fixed
    margins (on the shared 2-core machine each panel as its own constrained-layout figure
    was measured ~0.5-0.9 s to save, the three in one constrained figure ~2.2-3.7 s, with
    fixed margins ~1.2-1.5 s)."""
    from matplotlib.figure import Figure

    from .plot._style import PlotDataError

    panels = _panels(run, results, threshold)
    if not panels:
        return None, []
    fig = Figure(figsize=(5.2 * len(panels), 3.8))
    fig.subplots_adjust(left=0.16 / len(panels), right=1 - 0.2 / len(panels), bottom=0.14,
                        top=0.9, wspace=0.5)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    drawn = []
    for ax, (title, draw) in zip(axes, panels, strict=True):
        try:
            draw(ax)
            drawn.append(title)
            if ax.get_title():  # a fixed title position: matplotlib's automatic placement
                ax.set_title(ax.get_title(), y=1.0)  # measures every tick label (~40% of a save)
        except PlotDataError as exc:
            ax.set_axis_off()
            ax.text(0.5, 0.5, f"{title}: {exc}", ha="center", va="center", wrap=True,
                    transform=ax.transAxes, fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    return buf.getvalue(), drawn


def _fmt(v: Any) -> str:
    from .report import _fmt as fmt

    return fmt(v)


def _page(status: str, summary: dict[str, Any], fc: dict[str, float | None], fc_note: str,
          png: bytes | None, drawn: list[str], skipped: Mapping[str, str]) -> str:
    from .report import _CSS, _rows

    e = html.escape
    run, ms, final = summary["run"], summary["milestones"], summary["final"]
    name = Path(str(run["path"]).rstrip("/")).name or str(run["path"])
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{PAGE_REFRESH_S}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>grokscope watch: {e(name)}</title>", f"<style>{_CSS}</style>", "</head>",
        "<body>", f"<h1>grokscope watch: {e(name)}</h1>",
        f'<p class="note">{e(status)}</p>',
        "<h2>Now</h2>", "<table>",
        _rows([("store", run["path"]), ("last step", run["last_step"]),
               ("checkpoints", run["n_steps"]), ("phase", ms["label"]),
               (f"t_train (train acc ≥ {ms['threshold']:g})", ms["t_train"]),
               (f"t_test (test acc ≥ {ms['threshold']:g})", ms["t_test"]),
               *[(k.replace("_", " "), v) for k, v in final.items()]]),
        "</table>", f'<p class="muted">milestones: {e(ms["source"])}</p>',
        "<h2>Forecast</h2>",
    ]
    if fc.get("p_grok") is not None:
        interval = (f"{_fmt(fc['t_test_low'])} … {_fmt(fc['t_test_high'])}"
                    if fc.get("t_test_low") is not None else "—")
        parts += ["<table>", _rows([
            (f"P(test acc reaches {ms['threshold']:g})", f"{fc['p_grok']:.2f}"),
            ("predicted t_test", fc.get("t_test_pred")),
            ("80% interval", interval)]), "</table>"]
    else:
        parts.append(f'<p class="muted">{e(fc_note or "no forecast")}</p>')
    if png is not None:
        b64 = base64.b64encode(png).decode("ascii")
        parts += ["<h2>Figures</h2>", '<figure id="fig-live">',
                  f'<img src="data:image/png;base64,{b64}" alt="{e(", ".join(drawn))}">',
                  f"<figcaption>{e(' · '.join(drawn))}: accuracy vs step (t_train → t_test "
                  "shaded), parameter norms, restricted/excluded loss (modular tasks)."
                  "</figcaption>", "</figure>"]
    if skipped:
        parts.append('<p class="muted">Measures that do not apply: '
                     + "; ".join(f"{e(k)} ({e(v)})" for k, v in skipped.items()) + "</p>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- the loop
class _Watcher:
    """The state of one :func:`watch` call (the run, the live folder, the last pass)."""

    def __init__(self, path: Any, out: Path, measures: Any, *, threshold: float, model: Any,
                 anatomy: dict | None, trust_code: bool, storage_options: dict | None,
                 num_threads: int | str | None, progress: bool, dpi: int,
                 budget: float = 2.0, redraw: float = 0.0) -> None:
        self.path, self.out, self.measures = path, out, measures
        self.threshold, self.model, self.anatomy = threshold, model, anatomy
        self.trust_code, self.storage_options = trust_code, storage_options
        self.num_threads, self.progress, self.dpi = num_threads, progress, dpi
        self.run: Any = None
        self.names: list[str] = []
        self.analyzed = 0  # checkpoints (a prefix of the committed ones) analysed so far
        self.committed = 0  # checkpoints committed when the last pass started
        self.cost: float | None = None  # seconds of analysis per checkpoint, last pass
        self.budget = budget
        self.redraw = redraw  # seconds between two renders of the live figure, at least
        self._drawn_at: float | None = None  # time.monotonic() of the last render ...
        self._drawn_pass = 0  # ... and the pass it showed
        self.state = Watched(path=str(path), out=out)
        self._figure: tuple[bytes | None, list[str]] | None = None

    def say(self, msg: str) -> None:
        if self.progress:
            print(f"watch: {msg}", file=sys.stderr, flush=True)

    def open(self) -> None:
        from .engine import resolve_measures
        from .store.run import open_run

        if self.run is None:
            self.run = open_run(self.path, model=self.model, anatomy=self.anatomy,
                                trust_code=self.trust_code,
                                storage_options=self.storage_options)
            self.names = [spec.result_name for spec, _ in resolve_measures(self.measures)]
        else:
            self.run.refresh()

    def analysis_pass(self, *, final: bool) -> bool:
        """Analyse every committed checkpoint not yet analysed, forecast, rewrite the page.
        Not final: skipped (False) while another analysis holds a result's lock."""
        from .engine import analyze

        self.open()
        run = self.run
        if len(run.steps) == 0:
            return False
        if not final:
            busy = _results_busy(run, self.names)
            if busy is not None:
                self.say(f"another analysis is writing result {busy!r}; retrying at the next "
                         "poll")
                return False
        t0 = time.perf_counter()
        n = len(run.steps)
        if not final and self.cost is not None:  # a pass of about ``budget`` seconds
            n = min(n, self.analyzed + max(1, int(self.budget / self.cost)))
        res = analyze(run, self.measures, steps=None if n == len(run.steps) else run.steps[:n],
                      progress=False, num_threads=self.num_threads)
        st = self.state
        st.results, st.skipped = dict(res), dict(res.skipped)
        st.n_steps, st.last_step = n, int(run.steps[n - 1])
        st.passes += 1
        self.cost = (time.perf_counter() - t0) / max(1, n - self.analyzed)  # per checkpoint
        self.analyzed = n
        self.committed = len(run.steps)
        st.forecast, st.forecast_note = _forecast(run, threshold=self.threshold,
                                                  model=self.model, anatomy=self.anatomy)
        fc = _forecast_values(st.forecast)
        self.write_forecast_row(fc)
        now = time.monotonic()
        draw = final or self._drawn_at is None or now - self._drawn_at >= self.redraw
        self.write_page(self.live_status(), fc, draw=draw)
        phase = ""
        if "phases" in st.results and "label" in st.results["phases"]:
            phase = f", phase {st.results['phases']['label'].values}"
        p = f", p_grok {fc['p_grok']:.2f}" if fc.get("p_grok") is not None else ""
        self.say(f"step {st.last_step} ({st.n_steps} checkpoints){phase}{p} "
                 f"[{time.perf_counter() - t0:.1f} s]")
        return True

    def live_status(self) -> str:
        st = self.state
        behind = self.committed - self.analyzed
        lag = (f" ({behind} more committed, being caught up)" if behind > 0 else "")
        return (f"Live: following the writer; analysed up to step {st.last_step} "
                f"({st.n_steps} checkpoints){lag}, updated {time.strftime('%H:%M:%S')}. "
                f"This page reloads every {PAGE_REFRESH_S} s.")

    def write_forecast_row(self, fc: dict[str, float | None]) -> None:
        path = self.out / "forecast.csv"
        new = not path.exists()
        with open(path, "a", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(["step", "n_steps", *_FORECAST_FIELDS])
            w.writerow([self.state.last_step, self.state.n_steps,
                        *("" if fc[k] is None else fc[k] for k in _FORECAST_FIELDS)])

    def write_page(self, status: str, fc: dict[str, float | None] | None = None, *,
                   draw: bool = True) -> None:
        """Rewrite summary.json and index.html; ``draw=False`` reuses the last figure."""
        from .report import report_summary

        st = self.state
        if self.run is None or st.passes == 0:
            return
        fc = _forecast_values(st.forecast) if fc is None else fc
        summary = report_summary(self.run, st.results, threshold=self.threshold)
        if draw or self._figure is None:
            self._figure = _figure_png(self.run, st.results, self.threshold, self.dpi)
            self._drawn_at, self._drawn_pass = time.monotonic(), st.passes
        png, drawn = self._figure
        summary["watch"] = {"status": status, "passes": st.passes, "forecast": fc,
                            "forecast_note": st.forecast_note}
        _atomic_write(self.out / "summary.json",
                      json.dumps(summary, indent=2, default=str) + "\n")
        _atomic_write(self.out / "index.html",
                      _page(status, summary, fc, st.forecast_note, png, drawn, st.skipped))

    def finish(self, reason: str, message: str) -> Watched:
        st = self.state
        st.reason, st.message = reason, message
        if st.passes:
            # the final pass drew the latest figure; a timeout or Ctrl-C may follow a pass
            # that kept an older one (``redraw``): the last page shows the last results
            self.write_page(message, draw=self._drawn_pass != st.passes)
        self.say(message)
        return st


def _check_args(interval: float, timeout: float | None, threshold: float) -> None:
    if not (isinstance(interval, int | float) and interval > 0 and math.isfinite(interval)):
        raise ConfigError(f"interval must be a positive number of seconds, got {interval!r}")
    if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
        raise ConfigError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"threshold must be in (0, 1], got {threshold}")


def watch(
    path: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    measures: Any = None,
    interval: float = 2.0,
    timeout: float | None = None,
    progress: bool = True,
    threshold: float = 0.9,
    model: Any = None,
    anatomy: dict | None = None,
    trust_code: bool = False,
    storage_options: dict | None = None,
    num_threads: int | str | None = 1,
    dpi: int = 80,
    duty: float = 0.25,
    budget: float = 2.0,
    redraw: float = 0.0,
    stop: threading.Event | None = None,
) -> Watched:
    """Follow a store while another process records into it; analyse each new checkpoint.

    Parameters
    ----------
    path : str or PathLike
        The store (a local folder or an fsspec URL). It may not exist yet: watch waits for
        its first checkpoint (at most ``timeout`` seconds).
    out : path, optional
        The live folder (``index.html``, ``summary.json``, ``forecast.csv``); default
        ``<store>-watch`` beside a local store.
    measures : None, list of str or dict
        As for :func:`grokscope.analyze`; None: :data:`DEFAULT_MEASURES` (curves and norms,
        Fourier on modular tasks, phases). Measures that do not apply are skipped.
    interval : float
        Seconds between two polls of the store's root metadata.
    timeout : float, optional
        Stop after this many seconds without a new checkpoint (or without the store
        appearing): a writer killed before it closed the store leaves no closed marker.
        None (default): wait until the store is closed, ``stop`` is set, or Ctrl-C.
    progress : bool
        Print one line per analysis pass (stderr).
    threshold : float
        Accuracy that counts as reached (milestones, the forecast).
    model, anatomy, trust_code, storage_options
        As for :func:`grokscope.open_run`.
    num_threads : int, "auto" or None
        torch CPU threads of the analysis (default 1: leave the cores to the writer). None
        leaves torch's setting alone (what a watcher thread inside the writer's process
        must do: the setting is process-wide).
    dpi : int
        Resolution of the live page's figure.
    duty : float
        At most this share of the wall time is spent analysing: after a pass of ``T``
        seconds the next starts ``T / duty`` seconds after it began at the earliest (the
        final pass does not wait; the first, which also loads the measures and the model,
        delays the second the most). It bounds what the watcher takes from the writer (CPU, and
        the GIL for a watcher thread); see docs/watch.md for the measured slowdown.
    budget : float
        Seconds of analysis a pass aims at: it analyses the oldest new checkpoints that fit
        (at the last pass's cost per checkpoint, at least one); when the writer commits faster
        than that, the page lags and the final pass catches up (it takes them all).
    redraw : float
        Seconds between two renders of the live figure, at least (0: every pass). A pass in
        between updates the page's numbers and keeps the last figure; the final pass always
        draws. The figure is the costliest part of a pass that adds a few checkpoints (pure
        Python: for a watcher thread, time the writer cannot hold the GIL); a watcher thread
        redraws every :data:`THREAD_REDRAW` seconds.
    stop : threading.Event, optional
        When set, watch makes a final pass over what is committed and returns.

    Returns
    -------
    Watched
        Why it stopped (``reason``: ``"closed"``, ``"timeout"``, ``"stopped"``,
        ``"interrupted"``), the last pass's results and forecast, the live folder.

    Raises
    ------
    WatchTimeoutError
        The store did not appear, or held no checkpoint, within ``timeout``.
    NotAStoreError, CorruptStoreError, ConfigError, ...
        As :func:`grokscope.analyze` raises them.

    Notes
    -----
    Analysis goes through :func:`grokscope.analyze`, which skips steps already stored with
    the same parameters; so each pass computes only the new checkpoints (and the
    trajectory-wide ``phases``), and after the final pass the stored results equal a fresh
    analysis of the closed store. A pass that finds another analysis writing one of its
    results waits for the next poll (the final pass waits for the lock).
    """
    from .store import _io

    _check_args(interval, timeout, threshold)
    if not (isinstance(budget, int | float) and budget > 0):
        raise ConfigError(f"budget must be a positive number of seconds, got {budget!r}")
    if not (isinstance(duty, int | float) and 0 < duty <= 1):
        raise ConfigError(f"duty must be a share of the time in (0, 1], got {duty!r}")
    if not (isinstance(redraw, int | float) and redraw >= 0 and math.isfinite(redraw)):
        raise ConfigError(f"redraw must be a number of seconds >= 0, got {redraw!r}")
    if measures is None:
        measures = {k: dict(v) for k, v in DEFAULT_MEASURES.items()}
    out_dir = Path(out) if out is not None else default_out(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    w = _Watcher(path, out_dir, measures, threshold=threshold, model=model, anatomy=anatomy,
                 trust_code=trust_code, storage_options=storage_options,
                 num_threads=num_threads, progress=progress, dpi=dpi, budget=budget,
                 redraw=redraw)
    store = _io.open_store(path, read_only=True, storage_options=storage_options)
    where = _io.store_label(store)
    stop = stop if stop is not None else threading.Event()
    w.say(f"following {where}; the live page will be {out_dir / 'index.html'}")
    last_change = next_pass = time.monotonic()
    seen: _Commit | None = None
    try:
        while True:
            stopping = stop.is_set()
            commit = _read_commit(store, where)
            now = time.monotonic()
            if commit != seen:
                seen, last_change = commit, now
            idle = now - last_change
            if commit is None or commit.count == 0:
                if stopping:
                    raise WatchTimeoutError(
                        f"watch stopped before {where} held any checkpoint: nothing to analyse")
                if timeout is not None and idle > timeout:
                    raise WatchTimeoutError(
                        f"{where} {'does not exist' if commit is None else 'holds no checkpoint'}"
                        f" after waiting {timeout:g} s; start the writer first, check the path, "
                        "or pass a longer timeout (--timeout)")
                stop.wait(interval)
                continue
            final = commit.closed or stopping
            if commit.count > w.analyzed or (final and w.state.passes == 0):
                wait = 0.0 if final else next_pass - now
                if wait > 0:  # the duty cycle: keep the cores (and the GIL) for the writer
                    stop.wait(min(wait, interval))
                    continue
                t0 = time.monotonic()
                done = w.analysis_pass(final=final)
                next_pass = t0 + (time.monotonic() - t0) / duty
                if not done:  # another analysis holds a result: retry at the next poll
                    stop.wait(interval)
                continue
            if commit.closed:
                return w.finish("closed", (
                    f"finished: the writer closed the store; {w.state.n_steps} checkpoints "
                    f"analysed, last step {w.state.last_step}"))
            if stopping:
                return w.finish("stopped", (
                    f"stopped; {w.state.n_steps} checkpoints analysed, last step "
                    f"{w.state.last_step}"))
            if timeout is not None and idle > timeout:
                return w.finish("timeout", (
                    f"stopped: no new checkpoint for {timeout:g} s and the store was not closed "
                    f"(the writer was killed, crashed, or is paused longer than the timeout); "
                    f"results cover the {w.state.n_steps} checkpoints up to step "
                    f"{w.state.last_step}. Watch again to continue, or analyse the store once "
                    "it is complete"))
            stop.wait(interval)
    except KeyboardInterrupt:
        return w.finish("interrupted", (
            f"interrupted; results of the {w.state.n_steps} checkpoints analysed are in the store"))


# ----------------------------------------------------------------------------- Recorder(watch=)
#: ``duty`` of a watcher thread in the writer's process. It shares the GIL with the training
#: loop, and nearly all of a pass holds it (matplotlib, xarray, zarr metadata, dask's scheduler;
#: torch's kernels release it): a thread that holds the GIL a share ``d`` of the wall time slows
#: a writer that needs the GIL all the time by at most ``d``, so 0.08 keeps even that writer
#: within 10% (0.1 allowed 0.90x). Between passes it polls one small JSON (0.05 ms of CPU).
THREAD_DUTY = 0.08
#: ``redraw`` of a watcher thread: the live figure (~1-4 s of matplotlib, all of it holding the
#: GIL, measured on the shared 2-core machine) at most once a minute; the numbers every pass
THREAD_REDRAW = 60.0


def _preload() -> None:
    """Import what a pass uses (the engine, every measure module, matplotlib, the report and
    the forecast) in the caller's thread: a watcher thread importing them while the writer
    trains was measured to hold the GIL for seconds."""
    import matplotlib.figure  # noqa: F401

    from . import engine, report  # noqa: F401
    from .measures import registry
    from .plot import curves, fourier  # noqa: F401

    registry.names()
    with contextlib.suppress(ImportError):
        from . import forecast  # noqa: F401


def _close_wait(value: Any) -> bool | float:
    """A valid ``close_wait``: True (wait for the final pass), False (do not wait) or a
    number of seconds >= 0 (wait at most that long)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and math.isfinite(value) and value >= 0:
        return float(value)
    raise ConfigError(f"close_wait must be True, False or a number of seconds >= 0, got "
                      f"{value!r}")


def _at_shutdown(fn: Callable[[], None]) -> None:
    """Call ``fn`` when the interpreter shuts down, *before* the thread pools close.

    A watcher thread's final pass reads and writes zarr (whose local store runs file I/O on
    asyncio's default executor) and computes through dask's thread pool; both refuse new work
    once ``concurrent.futures`` has run its shutdown hook, which comes before
    :mod:`atexit` handlers and before non-daemon threads are joined. ``threading``'s own
    shutdown hooks run first, last registered first, so a hook registered now (after those
    pools' modules were imported by :func:`_preload`) runs while they still accept work.
    """
    register = getattr(threading, "_register_atexit", None)  # CPython >= 3.9
    if register is None:  # pragma: no cover - other interpreters: best effort
        import atexit

        atexit.register(fn)
        return
    register(fn)


class _ThreadWatcher:
    """:func:`watch` in a daemon thread of the writer's process.

    :meth:`close` (what ``Recorder.close`` calls) sets the stop event, so the thread makes a
    final pass over every committed checkpoint, and waits for it as ``close_wait`` says: True,
    until it is done; a number, at most that many seconds; False, not at all. A final pass
    still running when the interpreter exits is finished first (a shutdown hook joins it), so
    a script that ends right after ``close`` keeps its final results. A failure is kept and
    warned once it is known (never raised into the writer)."""

    def __init__(self, path: Any, options: dict[str, Any]) -> None:
        options = dict(options)
        self.close_wait = _close_wait(options.pop("close_wait", True))
        self.stop = threading.Event()
        self.result: Watched | None = None
        self.error: BaseException | None = None
        self._reported = False
        options = {"progress": False, "num_threads": None, "duty": THREAD_DUTY,
                   "redraw": THREAD_REDRAW, **options, "stop": self.stop}
        _preload()

        def target() -> None:
            try:
                self.result = watch(path, **options)
            except Exception as exc:  # noqa: BLE001 - reported on join, never into the writer
                self.error = exc

        self.thread = threading.Thread(target=target, name="grokscope-watch", daemon=True)
        self.thread.start()
        ref = weakref.ref(self)  # a finished watcher (and its results) is not kept alive

        def at_exit() -> None:
            handle = ref()
            if handle is not None and handle.thread.is_alive():
                handle.join()

        _at_shutdown(at_exit)

    @property
    def done(self) -> bool:
        """True once the watcher returned (its final pass, if it was stopped, is written)."""
        return not self.thread.is_alive()

    def join(self, timeout: float | None = None) -> Watched | None:
        """Stop the watcher (a final pass) and wait for it, at most ``timeout`` seconds (None:
        until it is done). Returns what it saw, or None while it still runs (or if it
        failed: warned)."""
        self.stop.set()
        self.thread.join(timeout)
        if self.thread.is_alive():
            return None
        if self.error is not None and not self._reported:
            self._reported = True
            warnings.warn(f"the watcher of this Recorder failed: {self.error}", RuntimeWarning,
                          stacklevel=3)
        return self.result

    def close(self) -> Watched | None:
        """Stop the watcher and wait as ``close_wait`` says (see the class docstring)."""
        if self.close_wait is False:
            self.stop.set()
            return None
        return self.join(None if self.close_wait is True else self.close_wait)


#: the ``grokscope`` command run with this interpreter (what the console script runs)
CLI_COMMAND = (sys.executable, "-m", "grokscope.cli")


class _ProcessWatcher:
    """``grokscope watch`` in a subprocess; :meth:`join` waits for it to see the
    closed marker and exit (it is stopped after ``grace`` seconds more)."""

    def __init__(self, path: Any, options: dict[str, Any]) -> None:
        import subprocess

        cmd = [*CLI_COMMAND, "watch", os.fspath(path), "--quiet"]
        flags = {"out": "--out", "interval": "--interval", "timeout": "--timeout",
                 "threshold": "--threshold", "threads": "--threads"}
        for key, value in options.items():
            if key == "measures":
                cmd += ["--params", json.dumps(value if isinstance(value, Mapping)
                                               else {m: {} for m in value})]
            elif key in flags:
                cmd += [flags[key], os.fspath(value) if isinstance(value, os.PathLike)
                        else str(value)]
            else:
                raise ConfigError(
                    f"Recorder(watch={{'mode': 'process', {key!r}: ...}}): a watcher process "
                    f"takes only {sorted([*flags, 'measures', 'mode'])}")
        self.grace = float(options.get("interval", 2.0)) * 5 + 60
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)

    def join(self) -> None:
        import subprocess

        try:
            _, err = self.proc.communicate(timeout=self.grace)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            _, err = self.proc.communicate()
        if self.proc.returncode not in (0, None):
            warnings.warn(f"the watcher process of this Recorder exited with "
                          f"{self.proc.returncode}: {(err or '').strip()[-2000:]}",
                          RuntimeWarning, stacklevel=3)

    def close(self) -> None:
        """What ``Recorder.close`` calls: :meth:`join`."""
        self.join()


def start_watcher(path: Any, spec: bool | dict, *, storage_options: dict | None = None
                  ) -> _ThreadWatcher | _ProcessWatcher:
    """Start following ``path`` as ``Recorder(..., watch=spec)`` asks (True or a dict of
    :func:`watch` options plus ``"mode"``: ``"thread"`` or ``"process"``); the returned
    object's ``join()`` stops it after a final pass."""
    options: dict[str, Any] = {} if spec is True else spec
    if not isinstance(options, dict):
        raise ConfigError(f"watch must be True or a dict of watch options, got {spec!r}")
    options = dict(options)
    mode = options.pop("mode", "thread")
    if mode == "thread":
        if storage_options is not None:
            options.setdefault("storage_options", storage_options)
        return _ThreadWatcher(path, options)
    if mode == "process":
        return _ProcessWatcher(path, options)
    raise ConfigError(f"watch mode {mode!r}: use 'thread' or 'process'")

