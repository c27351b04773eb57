"""grokscope.report and ``grokscope report``: files, summary.json, a self-contained index.html."""

from __future__ import annotations

import argparse
import json
from html.parser import HTMLParser

import matplotlib.pyplot as plt
import numpy as np
import pytest

import grokscope as gs
import grokscope.engine
from grokscope.cli_report import add_report_parser
from grokscope.errors import ConfigError

from .conftest import record_tiny_run

STEPS = (0, 2, 5, 10, 20, 40)
_VOID = {"meta", "img", "br", "hr", "link", "input", "source", "col", "area", "base", "wbr"}


class _Checker(HTMLParser):
    """Collects tags and checks that every non-void element is closed in order."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.imgs: list[dict] = []
        self.doctype = False

    def handle_decl(self, decl: str) -> None:
        self.doctype = self.doctype or decl.lower() == "doctype html"

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs))
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()


def _check_html(path):
    text = path.read_text(encoding="utf-8")
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert checker.doctype
    assert checker.errors == []
    assert checker.stack == []
    return text, checker


def _analyze_quietly(run, measures):
    return grokscope.engine.analyze(run, measures, progress=False, device="cpu")


@pytest.fixture(scope="module")
def analysed_run(tmp_path_factory):
    run = record_tiny_run(tmp_path_factory.mktemp("rep") / "run.zarr", steps=STEPS)
    _analyze_quietly(run, ["curves", "nfa", "fourier", "phases"])
    return run


@pytest.fixture
def no_analyze(monkeypatch):
    def boom(*_a, **_k):
        raise AssertionError("report called grokscope.engine.analyze without analyze=True")

    monkeypatch.setattr(grokscope.engine, "analyze", boom)


def test_report_on_analysed_run(analysed_run, tmp_path, no_analyze):
    out = gs.report(analysed_run, tmp_path / "rep")
    assert out == tmp_path / "rep"
    summary = json.loads((out / "summary.json").read_text())
    figs = summary["figures"]
    expected = {"curves", "norms", "nfa", "fourier", "fourier_evolution", "fourier_losses",
                "changepoints"}
    assert expected <= set(figs)
    for name in figs:
        for ext in ("png", "pdf"):
            f = out / "figures" / f"{name}.{ext}"
            assert f.is_file() and f.stat().st_size > 1000, f
    assert (out / "figures" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "figures" / "curves.pdf").read_bytes()[:5] == b"%PDF-"

    assert summary["run"]["n_steps"] == len(STEPS)
    assert summary["run"]["task"]["name"] == "modular"
    ms = summary["milestones"]
    assert set(ms) >= {"t_train", "t_test", "gap", "label", "threshold"}
    assert ms["source"] == "stored 'phases' result"
    # the summary's final accuracy is the stored metric at the last step, not a recomputation
    want = float(analysed_run.metrics["train_acc"].values[-1])
    assert summary["final"]["train_acc"] == pytest.approx(want, abs=1e-12)
    nfa = summary["measures"]["nfa"]
    key = next(k for k in nfa if k.startswith("nfa_corr_sqrt["))
    assert set(nfa[key]) == {"first", "memorisation", "generalisation", "last"}
    # the generalisation column is the value at the stored step nearest t_test (the grokking
    # milestone; the report used to show only first, memorisation and last)
    gen_step = summary["measure_steps"]["nfa"]["generalisation"]
    if ms["t_test"] is None:
        assert gen_step is None and nfa[key]["generalisation"] is None
    else:
        rs = analysed_run.results["nfa"].step.values
        assert gen_step == int(rs[np.argmin(np.abs(rs - ms["t_test"]))])
        layer = key[len("nfa_corr_sqrt["):-1]
        want = analysed_run.results["nfa"]["nfa_corr_sqrt"].sel(step=gen_step, layer=layer)
        assert nfa[key]["generalisation"] == pytest.approx(float(want), abs=1e-12)
    assert isinstance(nfa[key]["first"], float)
    assert "mixture" in summary["measures_missing"]
    # a two-hot MLP's first layer is its token embedding, so every measure applies
    assert summary["measures_not_applicable"] == {}
    assert "rqi" in summary["measures_missing"]

    text, checker = _check_html(out / "index.html")
    assert '<img src="data:image/png;base64,' in text
    assert len(checker.imgs) == len(figs)
    assert all(i["src"].startswith("data:image/png;base64,") and i.get("alt") for i in checker.imgs)
    assert "grokscope analyze RUN -m" in text and "mixture" in text
    assert plt.get_fignums() == []


def test_report_without_results_still_draws_curves(tmp_path, no_analyze):
    run = record_tiny_run(tmp_path / "bare.zarr", steps=(0, 3, 10))
    out = gs.report(str(run.path), tmp_path / "rep", formats=("png",))
    assert (out / "figures" / "curves.png").is_file()
    assert not (out / "figures" / "curves.pdf").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["figures"]) == ["curves"]
    assert summary["measures"] == {}
    assert "curves" in summary["measures_missing"]
    assert summary["milestones"]["source"].startswith("computed from the accuracy curves")
    text, _ = _check_html(out / "index.html")
    assert "Not computed yet" in text and "--analyze" in text


def test_report_analyze_computes_only_missing(tmp_path, monkeypatch):
    run = record_tiny_run(tmp_path / "a.zarr", steps=(0, 3, 10))
    _analyze_quietly(run, ["curves"])
    real = grokscope.engine.analyze
    seen = []

    def spy(run_, measures=None, **kw):
        seen.append(list(measures))
        return real(run_, ["phases"], progress=False, device="cpu")  # keep the test fast

    monkeypatch.setattr(grokscope.engine, "analyze", spy)
    out = gs.report(run, tmp_path / "rep", analyze=True, formats=("png",))
    assert len(seen) == 1
    assert "curves" not in seen[0]
    assert {"mixture", "nfa", "phases", "rqi"} <= set(seen[0])
    summary = json.loads((out / "summary.json").read_text())
    assert "phases" in summary["measures_stored"]
    assert "changepoints" in summary["figures"]


def test_report_rejects_bad_arguments(analysed_run, tmp_path):
    with pytest.raises(ConfigError, match="format"):
        gs.report(analysed_run, tmp_path / "x", formats=("gif",))
    with pytest.raises(ConfigError, match="threshold"):
        gs.report(analysed_run, tmp_path / "x", threshold=1.5)


def test_cli_report(analysed_run, tmp_path, capsys, no_analyze):
    parser = argparse.ArgumentParser(prog="grokscope")
    add_report_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(analysed_run.path), "-o", str(tmp_path / "r"),
                              "--formats", "png", "--dpi", "60"])
    assert args.func(args) == 0
    assert "index.html" in capsys.readouterr().out
    assert (tmp_path / "r" / "index.html").is_file()
    assert (tmp_path / "r" / "figures" / "nfa.png").is_file()


@pytest.mark.slow
def test_report_analyze_all_measures(tmp_path):
    run = record_tiny_run(tmp_path / "full.zarr", steps=(0, 1, 2, 5, 10, 20, 40, 80, 160))
    out = gs.report(run, tmp_path / "rep", analyze=True)
    summary = json.loads((out / "summary.json").read_text())
    assert {"curves", "mixture", "mixture_k", "alignment", "lmn", "nfa", "fourier",
            "fourier_losses", "kernel", "changepoints"} <= set(summary["figures"])
    assert summary["figures_skipped"] == {}
    _check_html(out / "index.html")


def test_summary_has_the_generalisation_milestone():
    """Measures are read at t_test too (the grokking milestone), nearest stored step."""
    from types import SimpleNamespace

    import xarray as xr

    from grokscope.report import report_summary

    steps = np.array([0, 10, 20, 30, 40, 50])
    metrics = xr.Dataset({"train_acc": ("step", [0.1, 0.95, 1.0, 1.0, 1.0, 1.0]),
                          "test_acc": ("step", [0.0, 0.0, 0.1, 0.5, 0.93, 1.0])},
                         coords={"step": steps})
    run = SimpleNamespace(path="fake", steps=steps, metrics=metrics, config={}, results={})
    # the result is stored at fewer steps: t_test = 40 is read at its nearest stored step, 35
    rsteps = np.array([0, 15, 35, 50])
    res = {"m": xr.Dataset({"v": ("step", [1.0, 2.0, 3.0, 4.0])}, coords={"step": rsteps})}
    s = report_summary(run, res)
    assert (s["milestones"]["t_train"], s["milestones"]["t_test"]) == (10, 40)
    assert s["measure_steps"]["m"] == {"first": 0, "memorisation": 15, "generalisation": 35,
                                       "last": 50}
    assert s["measures"]["m"]["v"] == {"first": 1.0, "memorisation": 2.0, "generalisation": 3.0,
                                       "last": 4.0}
    # a run that never generalised: no generalisation step, no value (never a wrong step)
    never = metrics.assign(test_acc=("step", np.zeros(steps.size)))
    s = report_summary(SimpleNamespace(**{**vars(run), "metrics": never}), res)
    assert s["measure_steps"]["m"]["generalisation"] is None
    assert s["measures"]["m"]["v"]["generalisation"] is None
