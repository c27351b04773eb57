"""Sweeps, the phase-diagram dataset and its plot.

Phase labels are checked on fabricated stores: runs recorded with the public Recorder whose
``train_acc``/``test_acc`` metrics are synthetic curves of each kind, so every label is known.
"""

from __future__ import annotations

import argparse
import json

import matplotlib
import numpy as np
import pytest
import torch
import xarray as xr

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (only to check that no figure is left open)

import grokscope as gs  # noqa: E402
from grokscope.errors import ConfigError  # noqa: E402
from grokscope.plot.phase import LABEL_COLORS, plot_phase_diagram  # noqa: E402
from grokscope.sweep import (  # noqa: E402
    MANIFEST,
    config_value,
    phase_diagram,
    plan_sweep,
    run_status,
    save_phase_diagram,
    sweep,
)

STEPS = np.array([0, 10, 100, 300, 500, 1000, 2000, 3000, 5000])


def _curve(points: dict[int, float]) -> np.ndarray:
    """Piecewise-constant accuracy: the value of the last key <= step."""
    keys = sorted(points)
    return np.array([points[max(k for k in keys if k <= s)] for s in STEPS])


#: (train_acc, test_acc) curves whose label under threshold 0.9 / gap 1000 is known
CURVES = {
    "comprehension": (_curve({0: 0.1, 100: 1.0}), _curve({0: 0.1, 500: 0.95})),
    "grokking": (_curve({0: 0.1, 100: 1.0}), _curve({0: 0.1, 3000: 0.97})),
    "memorisation": (_curve({0: 0.1, 100: 1.0}), _curve({0: 0.1})),
    "confusion": (_curve({0: 0.1, 1000: 0.5}), _curve({0: 0.1})),
    "semi-grokking": (_curve({0: 0.1, 100: 1.0}), _curve({0: 0.1, 3000: 0.6})),
    "ungrokking": (_curve({0: 0.1, 100: 1.0}), _curve({0: 0.1, 500: 0.95, 3000: 0.4})),
}


def fake_run(path, label, *, config, task=None, steps=STEPS):
    """A store whose accuracy metrics are the synthetic curves of ``label``."""
    from tests._store_helpers import TinyNet, tiny_data

    data = tiny_data()
    data.task = {"name": "toy", "n_classes": 3, **(task or {})}
    model = TinyNet()
    tr, te = CURVES[label]
    with gs.Recorder(path, model, data, config=config) as rec:
        for i, s in enumerate(steps):
            rec.record(int(s), model, {"train_acc": float(tr[i]), "test_acc": float(te[i])})
    return str(path)


# (weight_decay, train_frac) -> label of seed 0
LAYOUT = {
    (0.0, 0.3): "confusion",
    (0.0, 0.5): "memorisation",
    (0.1, 0.3): "semi-grokking",
    (0.1, 0.5): "grokking",
    (1.0, 0.3): "ungrokking",
    (1.0, 0.5): "comprehension",
}


@pytest.fixture(scope="module")
def fake_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake_sweep")
    for k, ((wd, tf), label) in enumerate(LAYOUT.items()):
        # directory names deliberately lie: hyperparameters must come from the configs
        fake_run(root / f"run{k}_weight_decay=999", label,
                 config={"weight_decay": wd, "seed": 0}, task={"train_frac": tf})
    # a second seed in one cell, with another label
    fake_run(root / "extra", "grokking", config={"weight_decay": 1.0, "seed": 1},
             task={"train_frac": 0.5})
    return root


@pytest.fixture(scope="module")
def diagram(fake_sweep):
    return phase_diagram(fake_sweep, "weight_decay", "train_frac")


def test_phase_labels_on_synthetic_curves(diagram):
    ds = diagram
    assert ds["label"].dims == ("weight_decay", "train_frac", "seed")
    np.testing.assert_array_equal(ds["weight_decay"].values, [0.0, 0.1, 1.0])
    np.testing.assert_array_equal(ds["train_frac"].values, [0.3, 0.5])
    np.testing.assert_array_equal(ds["seed"].values, [0, 1])
    for (wd, tf), label in LAYOUT.items():
        cell = ds.sel(weight_decay=wd, train_frac=tf)
        assert str(cell["label"].sel(seed=0).values) == label
    # only one cell has seed 1; the others are missing there
    assert (ds["label"].sel(seed=1).values == "missing").sum() == 5
    assert np.isnan(ds["t_train"].sel(seed=1, weight_decay=0.0, train_frac=0.3))
    g = ds.sel(weight_decay=0.1, train_frac=0.5, seed=0)
    assert float(g["t_train"]) == 100 and float(g["t_test"]) == 3000
    assert float(g["gap"]) == 2900
    assert float(g["final_test_acc"]) == pytest.approx(0.97)
    assert float(g["final_train_acc"]) == pytest.approx(1.0)


def test_aggregates_over_seeds(diagram):
    ds = diagram
    both = ds.sel(weight_decay=1.0, train_frac=0.5)
    assert int(both["n_runs"]) == 2
    assert float(both["frac_comprehension"]) == 0.5
    assert float(both["frac_grokking"]) == 0.5
    # a tie is broken in label order: comprehension before grokking
    assert str(both["label_mode"].values) == "comprehension"
    assert float(both["label_agreement"]) == 0.5
    assert float(both["final_test_acc_mean"]) == pytest.approx((0.95 + 0.97) / 2)
    one = ds.sel(weight_decay=0.0, train_frac=0.5)
    assert str(one["label_mode"].values) == "memorisation"
    assert float(one["frac_memorisation"]) == 1.0
    assert float(one["frac_semi_grokking"]) == 0.0
    assert ds.attrs["threshold"] == 0.9
    assert ds.attrs["comprehension_gap"] == 1000
    assert ds.attrs["step_budget"] == 5000
    assert ds.attrs["n_runs"] == 7
    assert json.loads(ds.attrs["task"])["name"] == "toy"


def test_threshold_is_a_parameter(fake_sweep):
    ds = phase_diagram(fake_sweep, "weight_decay", "train_frac", comprehension_gap=5000)
    assert str(ds["label"].sel(weight_decay=0.1, train_frac=0.5, seed=0).values) == \
        "comprehension"
    assert ds.attrs["comprehension_gap"] == 5000


def test_explicit_run_list_and_runs(fake_sweep):
    paths = sorted(str(p) for p in fake_sweep.iterdir() if not p.name.startswith("."))
    ds = phase_diagram([gs.open_run(p) for p in paths[:2]] + paths[2:], "train_frac",
                       "weight_decay")
    assert ds["label"].dims == ("train_frac", "weight_decay", "seed")
    assert ds.attrs["n_runs"] == 7


def test_missing_hyperparameter_is_a_clear_error(fake_sweep):
    with pytest.raises(ConfigError, match="no hyperparameter 'lr'.*weight_decay"):
        phase_diagram(fake_sweep, "lr", "train_frac")
    with pytest.raises(ConfigError, match="both"):
        phase_diagram(fake_sweep, "train_frac", "train_frac")


def test_duplicate_cells_are_refused(tmp_path):
    fake_run(tmp_path / "a", "grokking", config={"weight_decay": 1.0, "lr": 1e-3, "seed": 0},
             task={"train_frac": 0.5})
    fake_run(tmp_path / "b", "grokking", config={"weight_decay": 1.0, "lr": 1e-2, "seed": 0},
             task={"train_frac": 0.5})
    with pytest.raises(ConfigError, match="differ in some other hyperparameter"):
        phase_diagram(tmp_path, "weight_decay", "train_frac")


def test_manifest_cells_without_runs_are_missing(tmp_path):
    fake_run(tmp_path / "r0", "grokking", config={"weight_decay": 0.1, "seed": 0},
             task={"train_frac": 0.3})
    (tmp_path / MANIFEST).write_text(json.dumps({
        "grid": {"weight_decay": [0.1, 1.0], "task.train_frac": [0.3]},
        "seeds": [0],
        "runs": [{"path": "r0"}, {"path": "not_trained_yet"}],
    }))
    ds = phase_diagram(tmp_path, "weight_decay", "train_frac")
    np.testing.assert_array_equal(ds["weight_decay"].values, [0.1, 1.0])
    assert ds["label"].sel(weight_decay=1.0).values.tolist() == [["missing"]]
    assert str(ds["label_mode"].sel(weight_decay=1.0, train_frac=0.3).values) == "missing"
    assert int(ds["n_runs"].sel(weight_decay=1.0, train_frac=0.3)) == 0


def test_config_value_lookup():
    cfg = {"lr": 1e-3, "seed": 2, "task": {"name": "modular", "p": 23, "seed": 0},
           "model": {"name": "mlp", "kwargs": {"width": 64}}}
    assert config_value(cfg, "lr") == 1e-3
    assert config_value(cfg, "p") == 23
    assert config_value(cfg, "task.p") == 23
    assert config_value(cfg, "width") == 64
    assert config_value(cfg, "model.width") == 64
    assert config_value(cfg, "seed") == 2  # the trainer's seed wins
    assert config_value(cfg, "task.seed") == 0
    with pytest.raises(KeyError):
        config_value(cfg, "momentum")


def test_save_round_trip(diagram, tmp_path):
    for name in ("pd.nc", "pd.zarr"):
        path = save_phase_diagram(diagram, tmp_path / name)
        kw = {"engine": "zarr", "consolidated": False} if name.endswith("zarr") else {}
        back = xr.open_dataset(path, **kw)
        xr.testing.assert_allclose(back["gap"], diagram["gap"])
        assert back["label_mode"].values.astype(str).tolist() == \
            diagram["label_mode"].values.tolist()
        back.close()
    with pytest.raises(ConfigError, match=".nc or .zarr"):
        save_phase_diagram(diagram, tmp_path / "pd.csv")


# ----------------------------------------------------------------------------- plot
def test_plot_draws_labelled_grid_without_global_figures(diagram):
    plt.close("all")
    ax = plot_phase_diagram(diagram)
    assert plt.get_fignums() == []
    assert ax.get_xlabel().startswith("weight_decay")
    assert ax.get_ylabel().startswith("train_frac")
    # categorical axes: equal cells for 0, 0.1, 1, the values as tick labels
    assert ax.get_xscale() == "linear" and ax.get_yscale() == "linear"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "0.1", "1"]
    assert ax.get_xlim() == (-0.5, 2.5)
    assert "toy" in ax.get_title()
    caption = " ".join(t.get_text() for t in ax.texts)
    assert "threshold 0.9" in caption and "step budget 5000" in caption
    legend = ax.get_legend()
    names = [t.get_text() for t in legend.get_texts()]
    assert set(names) == set(LAYOUT.values()) - {"ungrokking"} | {"ungrokking"}
    mesh = ax.collections[0]
    assert mesh.get_array().size == 6
    # the colour of each cell is its label's palette colour
    rgba = mesh.to_rgba(mesh.get_array()).reshape(-1, 4)
    want = matplotlib.colors.to_rgba(LABEL_COLORS["grokking"])
    assert any(np.allclose(c, want) for c in rgba)
    ax.figure.savefig(__import__("io").BytesIO(), format="png")


def test_plot_numeric_var_log_axis_and_given_axes(tmp_path):
    from matplotlib.figure import Figure

    for k, lr in enumerate([1e-4, 1e-3, 1e-2]):
        fake_run(tmp_path / f"r{k}", "grokking" if k else "memorisation",
                 config={"lr": lr, "seed": 0}, task={"train_frac": 0.5})
    ds = phase_diagram(tmp_path, "lr", "train_frac")
    fig = Figure()
    ax = fig.add_subplot()
    out = plot_phase_diagram(ds, ax, var="final_test_acc_mean")
    assert out is ax
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.0001", "0.001", "0.01"]
    assert "cell text: final_test_acc_mean" in " ".join(t.get_text() for t in ax.texts)
    assert len(fig.axes) == 2  # the colour bar
    with pytest.raises(ConfigError, match="select the extra dims"):
        plot_phase_diagram(ds, var="label")
    ax2 = plot_phase_diagram(ds.isel(seed=0), var="label")
    assert ax2.get_legend() is not None


# ----------------------------------------------------------------------------- planning
def test_plan_routes_keys_and_names_runs(tmp_path):
    plans = plan_sweep("modular", "mlp", {"weight_decay": [0, 1], "train_frac": [0.3],
                                          "model.width": [8]},
                       seeds=2, out=tmp_path, steps=5, p=7, depth=1)
    assert len(plans) == 4
    kw = plans[0].kwargs
    assert kw["weight_decay"] == 0 and kw["steps"] == 5 and kw["seed"] == 0
    assert kw["task_kwargs"] == {"p": 7, "train_frac": 0.3}
    assert kw["model_kwargs"] == {"width": 8, "depth": 1}
    assert [p.seed for p in plans] == [0, 1, 0, 1]
    assert len({p.path for p in plans}) == 4
    assert plans[0].path == str(tmp_path / "weight_decay=0__train_frac=0.3__model.width=8__seed=0")
    again = plan_sweep("modular", "mlp", {"weight_decay": [0, 1], "train_frac": [0.3],
                                          "model.width": [8]},
                       seeds=2, out=tmp_path, steps=5, p=7, depth=1)
    assert [p.path for p in again] == [p.path for p in plans]


@pytest.mark.parametrize(
    ("grid", "fixed", "match"),
    [
        ({"nonsense": [1]}, {}, "neither a parameter"),
        ({"seed": [0, 1]}, {}, "seeds="),
        ({"lr": 1e-3}, {}, "list of values"),
        ({"lr": []}, {}, "empty"),
        ({"lr": [1e-3]}, {"lr": 1e-2}, "both in the grid and fixed"),
        ({"p": [7]}, {"task.p": 11}, "both in the grid and fixed"),
        ({"out": ["x"]}, {}, "set by the sweep"),
        ({}, {"seed": 3}, "seeds="),
    ],
)
def test_plan_rejects_bad_grids(tmp_path, grid, fixed, match):
    with pytest.raises(ConfigError, match=match):
        plan_sweep("modular", "mlp", grid, seeds=1, out=tmp_path, **fixed)


def test_plan_rejects_bad_seeds_and_out(tmp_path):
    with pytest.raises(ConfigError, match="seeds"):
        plan_sweep("modular", "mlp", {}, seeds=0, out=tmp_path)
    with pytest.raises(ConfigError, match="repeat"):
        plan_sweep("modular", "mlp", {}, seeds=[1, 1], out=tmp_path)
    with pytest.raises(ConfigError, match="out= is required"):
        plan_sweep("modular", "mlp", {}, seeds=1)


# ----------------------------------------------------------------------------- real sweep
SMALL = dict(steps=4, p=7, train_frac=0.5, width=8, lr=1e-2, device="cpu", num_threads=1)


def test_sweep_trains_resumes_and_skips(tmp_path, monkeypatch):
    out = tmp_path / "sw"
    paths = sweep("modular", "mlp", {"weight_decay": [0.0, 1.0]}, seeds=1, out=out,
                     progress=False, **SMALL)
    assert len(paths) == 2
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["grid"] == {"weight_decay": [0.0, 1.0]}
    assert manifest["seeds"] == [0]
    assert manifest["fixed"]["steps"] == 4
    runs = [gs.open_run(p) for p in paths]
    assert [int(r.steps[-1]) for r in runs] == [4, 4]
    assert [r.config["weight_decay"] for r in runs] == [0.0, 1.0]
    assert runs[0].config["task"]["p"] == 7

    # a second call trains nothing
    import sys

    sweep_mod = sys.modules["grokscope.sweep"]  # the module, whatever gs.sweep is bound to

    def boom(**kwargs):
        raise AssertionError(f"trained again: {kwargs['out']}")

    monkeypatch.setattr(sweep_mod, "train_one", boom)
    assert sweep("modular", "mlp", {"weight_decay": [0.0, 1.0]}, seeds=1, out=out,
                    progress=False, **SMALL) == paths
    monkeypatch.undo()

    # more steps: the runs are continued, not restarted
    sweep("modular", "mlp", {"weight_decay": [0.0, 1.0]}, seeds=1, out=out,
             progress=False, **{**SMALL, "steps": 6})
    for p, before in zip(paths, runs):
        run = gs.open_run(p)
        assert int(run.steps[-1]) == 6
        np.testing.assert_array_equal(run.steps[: len(before.steps)], before.steps)
        torch.testing.assert_close(run.state_dict_at(4), before.state_dict_at(4))

    # a finished run with other settings is not silently reused
    with pytest.raises(ConfigError, match="other settings.*lr"):
        sweep("modular", "mlp", {"weight_decay": [0.0, 1.0]}, seeds=1, out=out,
                 progress=False, **{**SMALL, "steps": 6, "lr": 0.5})

    ds = phase_diagram(out, "weight_decay", "p")
    assert ds["label"].shape == (2, 1, 1)
    assert set(ds["label"].values.ravel()) <= set(LABEL_COLORS) - {"missing"}


def test_run_status(tmp_path):
    plan = plan_sweep("modular", "mlp", {}, seeds=1, out=tmp_path, **SMALL)[0]
    assert run_status(plan) == "new"


# ----------------------------------------------------------------------------- CLI
def _parser():
    from grokscope.cli_sweep import add_sweep_parsers

    p = argparse.ArgumentParser(prog="grokscope")
    add_sweep_parsers(p.add_subparsers(dest="command", required=True))
    return p


def test_cli_parsing():
    from grokscope.cli_sweep import parse_grid, parse_seeds

    assert parse_grid(["weight_decay=0,0.1,1", "op=+,-", "lr=[1e-3, 1e-2]",
                       "model.width=8"]) == {
        "weight_decay": [0, 0.1, 1], "op": ["+", "-"], "lr": [1e-3, 1e-2], "model.width": [8]}
    assert parse_seeds("3") == 3 and parse_seeds("0,5") == [0, 5]
    with pytest.raises(ConfigError):
        parse_grid(["weight_decay"])
    with pytest.raises(ConfigError):
        parse_seeds("a")
    args = _parser().parse_args(["sweep", "--grid", "lr=1,2", "-o", "x", "--workers", "2"])
    assert args.workers == 2 and args.scheduler is None
    with pytest.raises(SystemExit):
        _parser().parse_args(["sweep", "--grid", "lr=1", "-o", "x", "--workers", "2",
                              "--scheduler", "tcp://a:1"])


def test_cli_phase_diagram_writes_figures_and_data(fake_sweep, tmp_path, capsys):
    args = _parser().parse_args(["phase-diagram", str(fake_sweep), "-x", "weight_decay",
                                 "-y", "train_frac", "-o", str(tmp_path / "fig.png")])
    plt.close("all")
    assert args.func(args) == 0
    assert plt.get_fignums() == []
    for name in ("fig.png", "fig.pdf", "phase_diagram.nc"):
        assert (tmp_path / name).stat().st_size > 0
    assert "grokking" in capsys.readouterr().out
    back = xr.open_dataset(tmp_path / "phase_diagram.nc")
    assert back.attrs["x"] == "weight_decay"
    back.close()


def test_cli_sweep_end_to_end(tmp_path, capsys):
    out = tmp_path / "cli_sweep"
    args = _parser().parse_args([
        "sweep", "--task-kwargs", '{"p": 5}', "--grid", "weight_decay=0.5", "--seeds", "1",
        "--set", "steps=2", "--set", "model.width=4", "--set", "device=cpu", "-o", str(out),
        "-q",
    ])
    assert args.func(args) == 0
    assert "1 runs" in capsys.readouterr().out
    manifest = json.loads((out / MANIFEST).read_text())
    run = gs.open_run(out / manifest["runs"][0]["path"])
    assert run.config["weight_decay"] == 0.5
    assert run.config["task"]["p"] == 5
    assert run.config["model"]["kwargs"]["width"] == 4


def test_manifest_accumulates_over_calls():
    from grokscope.sweep import _merge_manifest

    old = {"grid": {"lr": [1, 2]}, "seeds": [0], "fixed": {"steps": 5},
           "runs": [{"path": "a"}, {"path": "b"}]}
    new = {"grid": {"lr": [2, 3]}, "seeds": [1], "fixed": {"steps": 9},
           "runs": [{"path": "b"}, {"path": "c"}]}
    merged = _merge_manifest(old, new)
    assert merged["grid"] == {"lr": [1, 2, 3]}
    assert merged["seeds"] == [0, 1]
    assert [r["path"] for r in merged["runs"]] == ["a", "b", "c"]
    assert merged["fixed"] == {"steps": 9}
    assert _merge_manifest(None, new) is new


def test_finished_run_with_other_defaults_or_model_is_not_reused():
    """Review finding: an omitted hyperparameter means train()'s default, and the model counts."""
    from grokscope.sweep import _mismatches

    stored = {"lr": 1e-2, "weight_decay": 1.0, "model": {"name": "mlp", "kwargs": {}},
              "task": {"name": "modular", "p": 11}}
    bad = _mismatches(stored, {"model": "transformer", "weight_decay": 1.0})
    assert any(b.startswith("lr:") for b in bad) and any(b.startswith("model:") for b in bad)
    assert _mismatches(stored, {"model": "mlp", "lr": 1e-2, "weight_decay": 1.0}) == []
