"""The ``grokscope`` command: errors are one message and a non-zero exit; commands work end to end."""

from __future__ import annotations

import json

import pytest

from grokscope.cli import main

from .conftest import record_tiny_run


def test_error_is_a_message_not_a_traceback(tmp_path, capsys):
    rc = main(["info", str(tmp_path / "nowhere.zarr")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("grokscope info: error:") and "Traceback" not in err


def test_unknown_task_is_a_clear_error(tmp_path, capsys):
    rc = main(["train", "--task", "no-such-task", "-o", str(tmp_path / "r.zarr"), "-q"])
    assert rc == 2 and "no-such-task" in capsys.readouterr().err


def test_bad_json_kwargs(tmp_path, capsys):
    rc = main(["train", "--task-kwargs", "{p: 3}", "-o", str(tmp_path / "r.zarr"), "-q"])
    assert rc == 2 and "JSON" in capsys.readouterr().err


def test_train_info_analyze(tmp_path, capsys):
    out = tmp_path / "r.zarr"
    rc = main([
        "train", "--task", "modular", "--task-kwargs", json.dumps({"p": 11, "train_frac": 0.5}),
        "--model-kwargs", json.dumps({"width": 16}), "-o", str(out), "--steps", "30",
        "--set", "num_threads=1", "-q",
    ])
    text = capsys.readouterr().out
    assert rc == 0 and "steps:" in text and "layers.0.weight" in text
    assert main(["info", str(out)]) == 0
    assert "size on disk" in capsys.readouterr().out
    rc = main(["analyze", str(out), "-m", "curves,phases", "--steps", "log:5", "-q"])
    text = capsys.readouterr().out
    assert rc == 0 and "curves" in text and "phases" in text


def test_analyze_bad_step_selection(tmp_path, capsys):
    run = record_tiny_run(tmp_path / "r.zarr")
    rc = main(["analyze", str(run.path), "-m", "curves", "--steps", "every:0", "-q"])
    assert rc == 2 and "step selection" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    rc = main(["demo", "-o", str(tmp_path / "demo"), "-q"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "generalisation (test acc >= 0.9): step" in text
    assert (tmp_path / "demo-report" / "index.html").exists()
