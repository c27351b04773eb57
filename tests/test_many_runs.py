"""Many runs as one Dataset (gs.open_runs) and on one axes (plot_runs)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import grokscope as gs  # noqa: E402
from grokscope.plot import plot_runs  # noqa: E402
from grokscope.plot._style import PlotDataError  # noqa: E402

from .test_sweep import CURVES, STEPS, fake_run  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    fake_run(root / "a", "grokking", config={"weight_decay": 1.0, "seed": 0})
    fake_run(root / "b", "memorisation", config={"weight_decay": 0.0, "seed": 0})
    fake_run(root / "c", "comprehension", config={"weight_decay": 1.0, "seed": 1},
             steps=STEPS[::2])  # another step grid: aligned with NaN
    return root


def test_open_runs_stacks_runs_with_their_seed_and_hyperparameters(folder):
    ds = gs.open_runs(folder)
    assert dict(ds.sizes) == {"run": 3, "step": len(STEPS)}
    assert list(ds.run.values) == ["a", "b", "c"]
    assert ds.seed.values.tolist() == [0, 0, 1]
    assert ds.weight_decay.values.tolist() == [1.0, 0.0, 1.0]
    np.testing.assert_array_equal(ds.test_acc.sel(run="a"), CURVES["grokking"][1])
    np.testing.assert_array_equal(ds.train_acc.sel(run="b"), CURVES["memorisation"][0])
    c = ds.test_acc.sel(run="c").values
    # fake_run writes the curve's first values at the steps it is given
    np.testing.assert_array_equal(c[::2], CURVES["comprehension"][1][: len(STEPS[::2])])
    assert np.isnan(c[1::2]).all()  # steps it never recorded
    # plain xarray on top: the runs of one setting, grouped by seed
    wd1 = ds.where(ds.weight_decay == 1.0, drop=True)
    assert sorted(wd1.seed.values.tolist()) == [0, 1]


def test_open_runs_includes_stored_results(folder, tmp_path):
    import shutil

    for name in ("a", "b"):
        shutil.copytree(folder / name, tmp_path / name)
        gs.analyze(str(tmp_path / name), ["curves"], progress=False,
                   model="tests._store_helpers:TinyNet")
    ds = gs.open_runs([str(tmp_path / "a"), str(tmp_path / "b")], results=["curves"])
    assert "curves.param_norm" in ds and ds["curves.param_norm"].dims == ("run", "step")
    assert np.isfinite(ds["curves.param_norm"].values).all()


def test_plot_runs_bands_over_seeds_and_distinct_colours(folder):
    ds = gs.open_runs(folder)
    ax = plot_runs(ds, "test_acc")
    lines = ax.get_lines()
    assert len(lines) == 2  # weight_decay 0 (one run), weight_decay 1 (median of two seeds)
    assert len({ln.get_color() for ln in lines}) == 2
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("weight_decay=1" in t and "median of 2" in t for t in labels)
    assert len(ax.collections) == 1  # one band: the setting with two seeds
    # a second call on the same axes continues the colours
    plot_runs(ds, "train_acc", ax=ax, label="train")
    assert len({ln.get_color() for ln in ax.get_lines()}) == 4
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    ax2 = plot_runs(ds, "test_acc", bands=False, title="")
    assert len(ax2.get_lines()) == 3 and ax2.get_title() == ""


def test_plot_runs_errors_name_the_problem(folder):
    ds = gs.open_runs(folder)
    with pytest.raises(PlotDataError, match="no variable 'nope'"):
        plot_runs(ds, "nope")
    with pytest.raises(PlotDataError, match="open_runs"):
        plot_runs(ds.isel(run=0), "test_acc")


def test_plot_curves_twice_on_one_axes_keeps_one_twin_and_both_legends(folder):
    from grokscope.plot import plot_curves

    a, b = gs.open_run(folder / "a"), gs.open_run(folder / "b")
    ds_a = a.metrics.assign(train_loss=("step", np.linspace(2, 0.1, len(a.steps))))
    ds_b = b.metrics.assign(train_loss=("step", np.linspace(3, 0.5, len(b.steps))))
    ax = plot_curves(ds_a, label="wd=1", title="")
    twin = ax.grokscope_twin
    plot_curves(ds_b, ax=ax, label="wd=0", colors=("#000000", "#777777"))
    assert ax.grokscope_twin is twin
    assert len(ax.figure.axes) == 2  # the axes and one twin, not two
    leg = twin.get_legend()  # drawn above every line: on the twin
    labels = [t.get_text() for t in leg.get_texts()]
    assert {"wd=1: train acc", "wd=1: test acc", "wd=0: train acc", "wd=0: test acc",
            "wd=1: train loss", "wd=0: train loss"} <= set(labels)
    assert ax.get_title() == ""
    colours = {ln.get_label(): ln.get_color() for ln in ax.get_lines()}
    assert colours["wd=0: train acc"] == "#000000" and colours["wd=1: train acc"] != "#000000"
