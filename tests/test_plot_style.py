"""The style options every figure shares: title, t_train/t_test marks, two panels, mathtext
labels, unclipped markers, legends off the data, equal phase-diagram cells."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import grokscope.plot as gp
from grokscope.plot._style import PlotDataError, milestone_marks

from .test_plot import (
    alignment_result,
    curves_result,
    fourier_result,
    kernel_result,
    lmn_result,
    metrics_ds,
    mixture_result,
    nfa_result,
    phases_result,
    rqi_result,
)

MARKS = {"t_train": 50, "t_test": 2000}


def _kernel_new():
    ds = kernel_result()
    ds["kernel_distance"] = ("step", 0.05 * ds["kernel_change"].values)
    return ds


def _runs_ds():
    ds = metrics_ds()[["test_acc"]].expand_dims(run=["a", "b"])
    ds["test_acc"] = ds["test_acc"] * xr.DataArray([1.0, 0.9], dims="run")
    return ds.assign_coords(seed=("run", [0, 1]))


def _phase_ds(xs=(0.0, 1e-3, 1.0, 10.0), ys=(0.3, 0.5)):
    labels = np.array([["memorisation", "grokking"][(i + j) % 2] for i in range(len(xs))
                       for j in range(len(ys))]).reshape(len(xs), len(ys))
    return xr.Dataset(
        {"label_mode": (("weight_decay", "train_frac"), labels),
         "final_test_acc_mean": (("weight_decay", "train_frac"),
                                 np.linspace(0, 1, len(xs) * len(ys)).reshape(len(xs), -1))},
        coords={"weight_decay": list(xs), "train_frac": list(ys)},
        attrs={"x": "weight_decay", "y": "train_frac", "threshold": 0.9},
    )


# (function, dataset factory, kwargs) of every per-step figure
PER_STEP = [
    (gp.plot_curves, metrics_ds, {}),
    (gp.plot_norms, curves_result, {}),
    (gp.plot_mixture, mixture_result, {}),
    (gp.plot_mixture_k, mixture_result, {}),
    (gp.plot_alignment, alignment_result, {}),
    (gp.plot_lmn, lmn_result, {}),
    (gp.plot_nfa, nfa_result, {}),
    (gp.plot_fourier_evolution, fourier_result, {}),
    (gp.plot_fourier_losses, fourier_result, {}),
    (gp.plot_kernel, _kernel_new, {}),
    (gp.plot_rqi, rqi_result, {}),
    (gp.plot_changepoints, phases_result, {}),
    (gp.plot_runs, _runs_ds, {"variable": "test_acc"}),
]
ALL = PER_STEP + [
    (gp.plot_fourier, fourier_result, {}),
    (gp.plot_lmn, lmn_result, {"test_loss": metrics_ds()}),
    (gp.plot_phase_diagram, _phase_ds, {}),
]
#: figures of two quantities: twin axis by default, two panels on request
TWO = [
    (gp.plot_curves, metrics_ds, "accuracy", "loss (nats)"),
    (gp.plot_norms, curves_result, r"parameter norm $\|\theta\|_2$", "relative distance"),
    (gp.plot_alignment, alignment_result, r"$\cos(\mathrm{centroid}, \mathrm{input})$",
     r"Jacobian norm $\|J_x\|_F$"),
    (gp.plot_kernel, _kernel_new, r"$1-\cos(\Theta_t, \Theta_0)$", "relative kernel change"),
    (gp.plot_mixture_k, mixture_result, "components k (chosen by BIC)", "fraction of neurons"),
]


def _ids(cases):
    return [f"{c[0].__name__}{'-' + next(iter(c[2])) if c[2] else ''}" for c in cases]


def _draw(fn, make, kw, **more):
    ds = make()
    if fn is gp.plot_runs:
        return fn(ds, kw["variable"], **more)
    return fn(ds, **kw, **more)


def _marks(ax):
    return {ln.get_gid(): ln for ln in ax.get_lines() if ln.get_gid() in ("t_train", "t_test")}


@pytest.fixture(autouse=True)
def _no_pyplot_figures():
    yield
    assert plt.get_fignums() == [], "a plot function created a pyplot figure"


@pytest.mark.parametrize(("fn", "make", "kw"), ALL, ids=_ids(ALL))
def test_title_empty_draws_none(fn, make, kw):
    # (title=None draws the default title: tests/test_plot.py checks every one is non-empty)
    assert _draw(fn, make, kw, title="").get_title() == ""


def test_title_given_replaces_the_default():
    assert gp.plot_kernel(_kernel_new(), title="Mine").get_title() == "Mine"
    assert gp.plot_kernel(_kernel_new()).get_title() == "Empirical NTK distance from init"


@pytest.mark.parametrize(("fn", "make", "kw"), PER_STEP, ids=_ids(PER_STEP))
def test_every_per_step_figure_marks_t_train_and_t_test(fn, make, kw):
    ax = _draw(fn, make, kw, marks=MARKS)
    lines = _marks(ax)
    assert set(lines) == {"t_train", "t_test"}
    np.testing.assert_array_equal(lines["t_train"].get_xdata(), [50, 50])
    np.testing.assert_array_equal(lines["t_test"].get_xdata(), [2000, 2000])
    assert lines["t_train"].get_linestyle() == ":"
    # in the legend, with the step
    legend = ax.get_legend() or getattr(ax, "grokscope_twin", ax).get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert "t_train = 50" in texts and "t_test = 2,000" in texts
    assert _marks(_draw(fn, make, kw, marks=False)) == {}
    # no marker is clipped: every marker of every line lies inside its axes' limits
    for a in ax.figure.axes:
        (x0, x1), (y0, y1) = sorted(a.get_xlim()), sorted(a.get_ylim())
        for ln in a.get_lines():
            if ln.get_marker() in (None, "None", "", " ") or not ln.get_clip_on():
                continue
            x, y = np.asarray(ln.get_xdata(), float), np.asarray(ln.get_ydata(), float)
            ok = np.isfinite(x) & np.isfinite(y)
            assert ((x[ok] >= x0) & (x[ok] <= x1) & (y[ok] >= y0) & (y[ok] <= y1)).all(), (
                fn.__name__, ln.get_label())


def test_marks_from_metrics_phases_result_and_run():
    assert milestone_marks(metrics_ds()) == {"t_train": 200.0, "t_test": 5000.0}
    assert milestone_marks(metrics_ds(), threshold=0.5) == {"t_train": 50.0, "t_test": 2000.0}
    assert milestone_marks(phases_result()) == {"t_train": 50.0, "t_test": 2000.0}
    assert milestone_marks({"t_train": 63, "t_test": None}) == {"t_train": 63.0}
    assert milestone_marks({"t_train": np.nan}) == {}
    assert milestone_marks(None, nfa_result()) == {}  # no accuracies: nothing to mark

    class FakeRun:
        metrics = metrics_ds()
        results: dict = {}

    ax = gp.plot_nfa(nfa_result(), marks=FakeRun())
    assert _marks(ax)["t_test"].get_xdata()[0] == 5000
    # a result with accuracies marks itself (the curves result)
    assert _marks(gp.plot_norms(curves_result()))["t_train"].get_xdata()[0] == 200


def test_marks_errors_name_what_to_pass():
    with pytest.raises(PlotDataError, match="unknown key"):
        milestone_marks({"t_grok": 5})
    with pytest.raises(PlotDataError, match="t_train/t_test"):
        milestone_marks(nfa_result())
    with pytest.raises(PlotDataError, match="mapping"):
        milestone_marks(3.0)


@pytest.mark.parametrize(("fn", "make", "top_label", "bottom_label"), TWO,
                         ids=[c[0].__name__ for c in TWO])
def test_two_panels_instead_of_a_twin_axis(fn, make, top_label, bottom_label):
    ax = fn(make(), panels=True, marks=MARKS)
    bottom = ax.grokscope_panel
    assert isinstance(bottom, Axes) and bottom is not ax
    assert not hasattr(ax, "grokscope_twin")
    assert len(ax.figure.axes) == 2  # no twin, no colour bar
    assert ax.get_ylabel() == top_label
    assert bottom_label in bottom.get_ylabel()
    assert ax.get_xlabel() == "" and bottom.get_xlabel().startswith("step")
    assert bottom.get_position().y1 <= ax.get_position().y0  # stacked, top above bottom
    assert ax.get_shared_x_axes().joined(ax, bottom)
    assert [ln.get_gid() for ln in bottom.get_lines() if ln.get_gid()] == ["t_train", "t_test"]
    assert any(ln.get_gid() is None for ln in bottom.get_lines())  # the second quantity
    # the default layout is one axes with a twin
    twin = fn(make()).grokscope_twin
    assert twin.get_ylabel()


def test_panels_on_given_axes_and_errors():
    top, bottom = gp.new_panels(2)
    assert top.figure is bottom.figure and len(top.figure.axes) == 2
    ax = gp.plot_curves(metrics_ds(), ax=(top, bottom))
    assert ax is top and ax.grokscope_panel is bottom
    assert [ln.get_label() for ln in bottom.get_lines()][:2] == ["train loss", "test loss"]
    assert bottom.get_yscale() == "log"
    fig = Figure()
    with pytest.raises(PlotDataError, match="ax=\\(top, bottom\\)"):
        gp.plot_kernel(_kernel_new(), fig.add_subplot(), panels=True)
    with pytest.raises(PlotDataError, match="pair"):
        gp.plot_alignment(alignment_result(), ax=(top,))


MATH = [
    (gp.plot_alignment, alignment_result, lambda ax: ax.grokscope_twin.yaxis.label),
    (gp.plot_norms, curves_result, lambda ax: ax.yaxis.label),
    (gp.plot_kernel, _kernel_new, lambda ax: ax.yaxis.label),
    (gp.plot_nfa, nfa_result, lambda ax: ax.yaxis.label),
    (gp.plot_lmn, lmn_result, lambda ax: ax.yaxis.label),
    (gp.plot_mixture, mixture_result, lambda ax: ax.yaxis.label),
]


@pytest.mark.parametrize(("fn", "make", "get"), MATH, ids=[c[0].__name__ for c in MATH])
def test_maths_labels_render_as_mathtext(fn, make, get):
    ax = fn(make())
    label = get(ax)
    text, is_math = label._preprocess_math(label.get_text())
    assert is_math, label.get_text()
    ax.figure.draw_without_rendering()  # mathtext parses (an unsupported command raises here)
    assert label.get_window_extent().width > 0


def test_jacobian_norm_is_written_in_maths():
    ax = gp.plot_alignment(alignment_result())
    assert r"$\|J_x\|_F$" in ax.grokscope_twin.get_ylabel()


def _bbox_overlap(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize(("fn", "make", "kw"), ALL, ids=_ids(ALL))
def test_legend_is_outside_the_data(fn, make, kw):
    ax = _draw(fn, make, kw, marks=MARKS) if (fn, make, kw) in PER_STEP else _draw(fn, make, kw)
    ax.figure.draw_without_rendering()
    legends = [a.get_legend() for a in ax.figure.axes if a.get_legend() is not None]
    if fn in (gp.plot_lmn,) and not kw or fn is gp.plot_rqi:
        legends = legends or [None]
    for leg in legends:
        if leg is None:
            continue
        box = leg.get_window_extent()
        for a in ax.figure.axes:
            if a.get_label() == "<colorbar>":
                continue
            assert not _bbox_overlap(box, a.get_window_extent()), (fn.__name__, a)
        # and inside the figure (not cut off when saved)
        fb = ax.figure.bbox
        assert box.x0 >= fb.x0 - 1 and box.x1 <= fb.x1 + 1 and box.y0 >= fb.y0 - 1


def test_mixture_means_above_the_histogram_are_not_clipped():
    ds = mixture_result()
    means = ds["means"].values.copy()
    means[-3:, 2] = 3.5  # a third component above every histogram edge
    ds["means"] = (("step", "component"), means)
    ds["weights"] = (("step", "component"), np.nan_to_num(ds["weights"].values) * 0 + 0.3)
    assert float(ds["hist_edges"].max()) < 3.5
    ax = gp.plot_mixture(ds)
    lo, hi = ax.get_ylim()
    for sc in ax.collections[1:]:
        assert sc.get_clip_on() is False
        y = sc.get_offsets()[:, 1]
        y = y[np.isfinite(y)]
        assert ((y > lo) & (y < hi)).all()
    assert hi >= 3.5 + 0.03 * (3.5 - lo) - 1e-9  # room for the marker's radius
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "component 2 mean" in texts
    assert {"weight 0.1", "weight 0.5", "weight 1"} <= set(texts)  # marker sizes explained
    assert "weight" in ax.get_legend().get_title().get_text()


def test_changepoint_dot_sizes_are_explained():
    ax = gp.plot_changepoints(phases_result())
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "rate 2" in texts and "rate 0.5" in texts
    assert "rate" in ax.get_legend().get_title().get_text()
    assert ax.collections[0].get_clip_on() is False


def test_phase_diagram_cells_have_equal_width_whatever_the_spacing():
    ds = _phase_ds(xs=(0.0, 1e-3, 1.0, 10.0), ys=(0.3, 0.5))
    ax = gp.plot_phase_diagram(ds, var="final_test_acc_mean")
    ax.figure.draw_without_rendering()
    mesh = ax.collections[0]
    paths = mesh.get_paths()
    trans = mesh.get_transform()
    widths = [np.ptp(trans.transform(p.vertices)[:, 0]) for p in paths]
    heights = [np.ptp(trans.transform(p.vertices)[:, 1]) for p in paths]
    assert len(widths) == 8
    np.testing.assert_allclose(widths, widths[0], rtol=1e-6)
    np.testing.assert_allclose(heights, heights[0], rtol=1e-6)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "0.001", "1", "10"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0.3", "0.5"]
    assert ax.get_xscale() == "linear" and ax.get_xlabel() == "weight_decay"
    # the cell text is explained in the caption; each cell's value is written in it
    texts = [t.get_text() for t in ax.texts]
    assert any("cell text: final_test_acc_mean" in t for t in texts)
    assert "0.143" in texts  # 1/7, the second cell


def test_phase_diagram_seed_agreement_is_explained():
    ds = _phase_ds()
    ds = ds.expand_dims(seed=[0, 1, 2])
    ds["label_mode"] = ds["label_mode"].isel(seed=0, drop=True)
    ds["n_runs"] = xr.full_like(ds["label_mode"], 3, dtype=np.int64)
    ds["label_agreement"] = xr.full_like(ds["label_mode"], 2 / 3, dtype=np.float64)
    ax = gp.plot_phase_diagram(ds)
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("2/3") == 8
    assert any("k/n" in t and "seeds" in t for t in texts)


def test_lmn_vs_loss_rings_the_milestone_points_only_inside_the_steps_shown():
    lmn = lmn_result()
    ax = gp.plot_lmn(lmn, test_loss=metrics_ds(), marks=MARKS)
    rings = {c.get_label(): c.get_offsets()[0] for c in ax.collections[1:]}
    loss = metrics_ds()["test_loss"]
    np.testing.assert_allclose(rings["t_test = 2,000"],
                               [float(loss.sel(step=2000)), float(lmn.lmn.sel(step=2000))])
    # a window starting after t_train: only t_test is ringed
    ax = gp.plot_lmn(lmn.sel(step=slice(100, None)), test_loss=metrics_ds(), marks=MARKS)
    assert [c.get_label() for c in ax.collections[1:]] == ["t_test = 2,000"]


def test_fourier_bars_label_few_keys_and_legend_only_what_is_drawn():
    ds = fourier_result()
    ax = gp.plot_fourier(ds)
    assert [t.get_text() for t in ax.texts] == ["3"]  # the one key frequency, over its bar
    wide = xr.Dataset({"freq_share": ("freq", np.full(20, 0.05)),
                       "key_freqs": ("freq", np.ones(20, dtype=bool))},
                      coords={"freq": np.arange(1, 21)})
    ax = gp.plot_fourier(wide)
    assert list(ax.texts) == []  # 20 labels would overlap; the axis names the frequencies
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["key (20)"]


def test_rqi_axis_spans_the_fraction():
    ds = rqi_result()
    ds["rqi"] = ds["rqi"] * 0.0
    lo, hi = gp.plot_rqi(ds).get_ylim()
    assert lo < 0 and hi > 1


def test_panels_without_a_second_quantity():
    acc_only = metrics_ds()[["train_acc", "test_acc"]]
    ax = gp.plot_curves(acc_only, panels=True)  # nothing for a lower panel: one axes
    assert len(ax.figure.axes) == 1 and not hasattr(ax, "grokscope_panel")
    top, bottom = gp.new_panels(2)
    with pytest.raises(PlotDataError, match="lower panel"):
        gp.plot_curves(acc_only, ax=(top, bottom))
    with pytest.raises(PlotDataError, match="lower panel"):
        gp.plot_alignment(alignment_result()[["centroid_alignment_mean"]], ax=(top, bottom))
