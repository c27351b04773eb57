"""grokscope.plot: every plot function on small synthetic datasets shaped like the measures'."""

from __future__ import annotations

import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.collections import QuadMesh
from matplotlib.figure import Figure

import grokscope.plot as gp
from grokscope.errors import ConfigError, GrokscopeError
from grokscope.plot._style import PlotDataError, cell_edges, step_scale

LOG_STEPS = np.array([0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000])
LIN_STEPS = np.arange(0, 1000, 100)


def _sig(steps, lo=0.0, hi=1.0, at=500.0):
    return lo + (hi - lo) / (1 + np.exp(-(np.log1p(steps) - np.log1p(at)) * 3))


def metrics_ds(steps=LOG_STEPS):
    return xr.Dataset(
        {"train_acc": ("step", _sig(steps, 0.1, 1.0, 50)),
         "test_acc": ("step", _sig(steps, 0.1, 1.0, 2000)),
         "train_loss": ("step", 2.5 - 2.4 * _sig(steps, 0, 1, 50)),
         "test_loss": ("step", 2.5 - 2.3 * _sig(steps, 0, 1, 2000))},
        coords={"step": steps},
    )


def curves_result(steps=LOG_STEPS):
    ds = metrics_ds(steps)
    ds["param_norm"] = ("step", 10 - _sig(steps, 0, 5, 1000))
    ds["rel_distance_init"] = ("step", _sig(steps, 0, 2, 100))
    ds.attrs["measure"] = "curves"
    return ds


def mixture_result(steps=LOG_STEPS, rng=None):
    rng = rng or np.random.default_rng(0)
    n, bins, K = len(steps), 20, 3
    counts = np.zeros((n, bins), dtype=np.int64)
    edges = np.zeros((n, bins + 1))
    means = np.full((n, K), np.nan)
    weights = np.full((n, K), np.nan)
    for i, s in enumerate(steps):
        frac = float(_sig(s, 0, 0.4, 1000))
        phi = np.concatenate([rng.normal(0, 0.2, 200), rng.normal(1.5, 0.2, int(300 * frac) + 1)])
        c, e = np.histogram(phi, bins=bins)
        counts[i], edges[i] = c, e
        means[i, 0], weights[i, 0] = 0.0, 1 - frac
        if frac > 0.05:
            means[i, 1], weights[i, 1] = 1.5, frac
    return xr.Dataset(
        {"hist_counts": (("step", "bin"), counts), "hist_edges": (("step", "edge"), edges),
         "means": (("step", "component"), means), "weights": (("step", "component"), weights),
         "k": ("step", np.where(np.isfinite(means[:, 1]), 2, 1)),
         "droplet_fraction": ("step", np.nan_to_num(weights[:, 1]))},
        coords={"step": steps},
        attrs={"measure": "mixture", "order_parameter_used": "teacher"},
    )


def alignment_result(steps=LOG_STEPS):
    m = _sig(steps, 0.1, 0.8, 500)
    return xr.Dataset(
        {"centroid_alignment_mean": ("step", m), "centroid_alignment_min": ("step", m - 0.2),
         "centroid_alignment_max": ("step", m + 0.1),
         "jacobian_norm": ("step", 1 + _sig(steps, 0, 9, 300))},
        coords={"step": steps}, attrs={"measure": "alignment"},
    )


def lmn_result(steps=LOG_STEPS):
    return xr.Dataset({"lmn": ("step", 1 + _sig(steps, 0, 5, 1000))}, coords={"step": steps},
                      attrs={"measure": "lmn"})


def nfa_result(steps=LOG_STEPS, n_layers=3):
    layers = [f"layers.{i}" for i in range(n_layers)]
    base = np.stack([_sig(steps, 0.2, 0.9 - 0.1 * i, 300) for i in range(n_layers)], axis=1)
    return xr.Dataset(
        {"nfa_corr_sqrt": (("step", "layer"), base), "nfa_corr": (("step", "layer"), base - 0.1),
         "agop_alignment": (("step", "layer"), base * 0.9)},
        coords={"step": steps, "layer": layers}, attrs={"measure": "nfa"},
    )


def fourier_result(steps=LOG_STEPS, n_freq=8):
    share = np.full((len(steps), n_freq), 1.0 / n_freq)
    share[-4:, 2] = 0.5
    key = share >= 0.25
    n = len(steps)
    return xr.Dataset(
        {"freq_share": (("step", "freq"), share), "key_freqs": (("step", "freq"), key),
         "restricted_loss": ("step", 4 - _sig(steps, 0, 3.9, 2000)),
         "excluded_loss": ("step", 0.1 + _sig(steps, 0, 4, 2000)),
         "loss_all": ("step", 4 - _sig(steps, 0, 3.9, 2500)),
         "loss_train": ("step", np.full(n, 0.01))},
        coords={"step": steps, "freq": np.arange(1, n_freq + 1)},
        attrs={"measure": "fourier", "p": 17},
    )


def kernel_result(steps=LOG_STEPS):
    return xr.Dataset({"kernel_change": ("step", _sig(steps, 0, 3, 500)),
                       "kernel_alignment": ("step", 1 - _sig(steps, 0, 0.3, 500))},
                      coords={"step": steps}, attrs={"measure": "kernel"})


def rqi_result(steps=LOG_STEPS):
    return xr.Dataset({"rqi": ("step", _sig(steps, 0, 1, 800))}, coords={"step": steps},
                      attrs={"measure": "rqi"})


def phases_result():
    curves = ["curves/test_acc", "kernel/kernel_change", "nfa/nfa_corr_sqrt[layers.0]", "lmn/lmn"]
    return xr.Dataset(
        {"changepoint": ("curve", [2000.0, 400.0, np.nan, 900.0]),
         "changepoint_rate": ("curve", [2.0, 1.0, 0.0, 0.5]),
         "t_train": 50.0, "t_test": 2000.0, "label": np.array("grokking")},
        coords={"curve": curves}, attrs={"measure": "phases"},
    )


# (function, dataset factory, kwargs, expected number of Line2D on the main axes or None)
CASES = [
    (gp.plot_curves, metrics_ds, {}, None),
    (gp.plot_norms, curves_result, {}, 1),
    (gp.plot_mixture, mixture_result, {}, 2),
    (gp.plot_mixture_k, mixture_result, {}, 1),
    (gp.plot_alignment, alignment_result, {}, 1),
    (gp.plot_lmn, lmn_result, {}, 1),
    (gp.plot_nfa, nfa_result, {}, 6),
    (gp.plot_fourier_evolution, fourier_result, {}, 0),
    (gp.plot_fourier_losses, fourier_result, {}, 4),
    (gp.plot_kernel, kernel_result, {}, 1),
    (gp.plot_rqi, rqi_result, {}, 1),
]


@pytest.fixture(autouse=True)
def _no_pyplot_figures():
    assert plt.get_fignums() == []
    yield
    assert plt.get_fignums() == [], "a plot function created a pyplot figure"


def _data_lines(ax):
    """The Line2D on ``ax`` that are not a t_train/t_test mark."""
    return [ln for ln in ax.get_lines() if ln.get_gid() not in ("t_train", "t_test")]


def _check_labels(ax):
    assert isinstance(ax, Axes)
    assert ax.get_title().strip()
    assert ax.get_xlabel().strip()
    assert ax.get_ylabel().strip()


@pytest.mark.parametrize("fn,make,kw,n_lines", CASES, ids=[c[0].__name__ for c in CASES])
def test_plot_functions_log_steps(fn, make, kw, n_lines):
    ax = fn(make(), **kw)
    _check_labels(ax)
    assert ax.get_xscale() == "symlog"
    assert "log" in ax.get_xlabel()
    if n_lines is not None:
        assert len(_data_lines(ax)) == n_lines
    ax.figure.canvas.draw()  # renders without error (Agg canvas created lazily, no pyplot)


@pytest.mark.parametrize("fn,make,kw,n_lines", CASES, ids=[c[0].__name__ for c in CASES])
def test_plot_functions_linear_steps_and_given_ax(fn, make, kw, n_lines):
    fig = Figure()
    ax0 = fig.add_subplot()
    ax = fn(make(LIN_STEPS), ax0, **kw)
    assert ax is ax0
    assert ax.get_xscale() == "linear"
    assert ax.get_xlabel() == "step"
    _check_labels(ax)


def test_curves_gap_is_shaded_and_annotated():
    ax = gp.plot_curves(metrics_ds(), threshold=0.9)
    texts = [t.get_text() for t in ax.texts]
    assert any("grokking gap" in t for t in texts)
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert "train acc" in labels and "test acc" in labels
    assert any(lab.startswith("t_train") for lab in labels)
    assert any(lab.startswith("t_test") for lab in labels)
    assert ax.patches, "the gap span was not drawn"
    twin = ax.grokscope_twin
    assert twin.get_ylabel().startswith("loss (nats)")
    assert len(twin.get_lines()) == 2


def test_curves_without_loss_and_no_generalisation():
    ds = metrics_ds()[["train_acc", "test_acc"]]
    ds["test_acc"] = ds["test_acc"] * 0.5
    ax = gp.plot_curves(ds)
    assert not hasattr(ax, "grokscope_twin")
    assert any("test acc < 0.9" in t.get_text() for t in ax.texts)


def test_curves_regression_losses_only():
    ds = metrics_ds()[["train_loss", "test_loss"]]
    ax = gp.plot_curves(ds)
    assert ax.get_ylabel().startswith("loss")
    assert ax.get_yscale() == "log"


def test_curves_from_run_like_object():
    class FakeRun:
        metrics = metrics_ds()
        results: dict = {}

    ax = gp.plot_curves(FakeRun())
    assert len(ax.get_lines()) >= 2


def test_mixture_heatmap_has_one_mesh_and_colorbar():
    ax = gp.plot_mixture(mixture_result())
    meshes = [c for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(meshes) == 1
    assert len(ax.figure.axes) == 2  # the axes and its colour bar
    arr = meshes[0].get_array()
    assert arr.shape == (20, len(LOG_STEPS))
    assert np.isfinite(arr.compressed()).all()


def test_mixture_density_integrates_to_one():
    from grokscope.plot.mixture import mixture_density

    ds = mixture_result()
    dens, grid = mixture_density(ds, n_grid=400)
    mass = (dens * np.diff(grid)[:, None]).sum(axis=0)
    np.testing.assert_allclose(mass, 1.0, atol=0.08)


def test_mixture_vector_phi_uses_first_feature():
    ds = mixture_result()
    ds["means"] = (("step", "component", "feature"), np.stack([ds["means"].values] * 2, axis=-1))
    ax = gp.plot_mixture(ds)
    assert len(ax.get_lines()) == 2


def test_nfa_one_line_per_layer_and_style():
    ax = gp.plot_nfa(nfa_result(n_layers=2), agop_alignment=True)
    lines = ax.get_lines()
    assert len(lines) == 6
    styles = [ln.get_linestyle() for ln in lines]
    assert styles.count("-") == 2 and styles.count("--") == 2 and styles.count(":") == 2


def test_lmn_vs_test_loss_scatter_and_fit():
    lmn = lmn_result()
    ax = gp.plot_lmn(lmn, test_loss=metrics_ds())
    assert ax.get_xlabel() == "test loss (nats)"
    assert len(ax.collections) == 1
    assert len(ax.collections[0].get_offsets()) == len(LOG_STEPS)
    assert len(ax.get_lines()) == 1  # the fit line
    # a DataArray on a subset of steps is aligned by step
    sub = metrics_ds()["test_loss"].isel(step=slice(0, 5))
    ax = gp.plot_lmn(lmn, test_loss=sub)
    assert len(ax.collections[0].get_offsets()) == 5
    with pytest.raises(PlotDataError, match="values but"):
        gp.plot_lmn(lmn, test_loss=np.ones(3))


def test_fourier_bars_key_highlighted():
    ds = fourier_result()
    ax = gp.plot_fourier(ds)
    _check_labels(ax)
    assert len(ax.patches) == ds.sizes["freq"]
    colors = {tuple(p.get_facecolor()) for p in ax.patches}
    assert len(colors) == 2
    assert "step 10,000" in ax.get_title()
    ax = gp.plot_fourier(ds, step=3)
    assert "step 2" in ax.get_title()  # nearest stored step
    ax = gp.plot_fourier(ds.isel(step=0))
    assert "step 0" in ax.get_title()


def test_fourier_losses_reports_why_empty():
    ds = fourier_result()
    for v in ("restricted_loss", "excluded_loss", "loss_all", "loss_train"):
        ds[v] = ds[v] * np.nan
    ds.attrs["restricted_skipped"] = "defined for '+' and '-' only"
    with pytest.raises(PlotDataError, match="only"):
        gp.plot_fourier_losses(ds)


def test_changepoints():
    ax = gp.plot_changepoints(phases_result())
    _check_labels(ax)
    assert len(ax.get_yticks()) == 3  # the NaN change point is left out
    assert "grokking" in ax.get_title()


def test_missing_variable_and_nan_errors_are_grokscope_errors():
    with pytest.raises(GrokscopeError, match="centroid_alignment_mean"):
        gp.plot_alignment(kernel_result())
    ds = kernel_result()
    ds["kernel_change"] = ds["kernel_change"] * np.nan
    with pytest.raises(PlotDataError, match="no finite"):
        gp.plot_kernel(ds)
    with pytest.raises(PlotDataError, match="step"):
        gp.plot_kernel(kernel_result().isel(step=0))
    with pytest.raises(PlotDataError, match="Axes"):
        gp.plot_kernel(kernel_result(), ax="not an axes")


def test_step_scale_and_cell_edges():
    assert step_scale(LOG_STEPS) == "symlog"
    assert step_scale(LIN_STEPS) == "linear"
    assert step_scale(np.array([0, 1000, 2000, 5000])) == "linear"
    e = cell_edges(LOG_STEPS, "symlog")
    assert e.shape == (len(LOG_STEPS) + 1,)
    assert np.all(np.diff(e) > 0)
    assert np.all((e[:-1] < LOG_STEPS) & (LOG_STEPS < e[1:]))
    e = cell_edges(LIN_STEPS, "linear")
    np.testing.assert_allclose(e, np.arange(-50, 1000, 100))


def test_plots_registry_covers_measures():
    assert set(gp.PLOTS) >= {"curves", "mixture", "alignment", "lmn", "nfa", "fourier", "kernel"}
    for fns in gp.PLOTS.values():
        assert fns and all(callable(f) and f.__name__.startswith("plot_") for f in fns)


def test_accessor_dispatches_by_measure():
    ds = nfa_result()
    assert ds.grok.measure == "nfa"
    assert ds.grok.plots == ["plot_nfa"]
    ax = ds.grok.plot()
    assert ax.get_title() == gp.plot_nfa(ds).get_title()
    mix = mixture_result()
    assert mix.grok.plot("mixture_k").get_ylabel().startswith("components")
    assert mix.grok.plot(1).get_ylabel().startswith("components")
    fig = Figure()
    ax0 = fig.add_subplot()
    assert kernel_result().grok.plot(ax=ax0) is ax0
    assert kernel_result().grok.plot(ax0) is ax0
    with pytest.raises(ConfigError, match="measure"):
        xr.Dataset().grok.measure  # noqa: B018
    with pytest.raises(ConfigError, match="no plot is registered"):
        xr.Dataset(attrs={"measure": "nonesuch"}).grok.plot()
    with pytest.raises(ConfigError, match="no plot"):
        mix.grok.plot("nfa")


def test_phase_diagram_reexported_when_present():
    try:
        import grokscope.plot.phase as phase
    except ImportError:
        pytest.skip("grokscope.plot.phase is not there")
    assert gp.phase_diagram is phase.plot_phase_diagram
    assert gp.plot_phase_diagram is phase.plot_phase_diagram


def test_import_is_cheap_and_pyplot_free():
    code = ("import sys, grokscope.plot as gp, xarray as xr; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'; "
            "gp.plot_kernel; assert 'matplotlib.pyplot' not in sys.modules; "
            "assert hasattr(xr.Dataset(), 'grok')")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_save_figure_writes_each_format(tmp_path):
    from matplotlib.figure import Figure

    from grokscope.plot import save_figure

    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    assert save_figure(fig, tmp_path / "out", "f") == ["f.png", "f.pdf"]
    assert (tmp_path / "out" / "f.png").stat().st_size > 0 and (tmp_path / "out" / "f.pdf").exists()
