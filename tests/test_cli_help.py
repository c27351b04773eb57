"""The ``grokscope`` command documents itself: help on every subcommand and option, --version,
``grokscope measures``, and error messages that name flags rather than Python keywords."""

from __future__ import annotations

import argparse
import json

import pytest

from grokscope import _version
from grokscope.cli import KEYWORD_FLAGS, build_parser, cli_message, main
from grokscope.errors import ConfigError
from grokscope.measures import get, names


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


SUBCOMMANDS = sorted(_subparsers())


def test_every_command_is_there():
    assert {"train", "import", "info", "verify", "analyze", "measures", "sweep",
            "phase-diagram", "report", "demo"} <= set(SUBCOMMANDS)


def test_top_level_help_is_plain_text(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out and "::" not in out and "`" not in out
    for command in SUBCOMMANDS:
        assert command in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"grokscope {_version.__version__}"



def test_python_dash_m_grokscope_is_the_command():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "grokscope", "--version"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"grokscope {_version.__version__}"


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_exits_0_and_documents_every_option(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out
    sub = _subparsers()[command]
    assert sub.description, f"{command} has no description"
    for action in sub._actions:
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help is not argparse.SUPPRESS, f"{command} {name}: no help"
        if not action.option_strings:  # positionals have an upper-case metavar (RUN, PATH ...)
            assert action.metavar and action.metavar == action.metavar.upper(), (command, name)
        elif action.nargs != 0:  # options taking a value name it (PATH, N, JSON ...)
            assert action.metavar or action.choices, f"{command} {name}: no metavar"


def _option(command: str, flag: str) -> argparse.Action:
    (action,) = [a for a in _subparsers()[command]._actions if flag in a.option_strings]
    return action


def test_progress_commands_take_quiet():
    for command in ("train", "import", "analyze", "sweep", "report", "demo"):
        action = _option(command, "--quiet")
        assert "-q" in action.option_strings and action.dest == "quiet", command


def test_steps_syntax_is_the_same_everywhere():
    from grokscope._cliargs import STEPS_HELP

    for command in ("analyze", "report", "demo"):
        action = _option(command, "--steps")
        assert action.metavar == "STEP-SPEC" and STEPS_HELP in action.help, command
    for form in ("all", "every:K", "log:N", "A:B:K", "S1,S2"):
        assert form in STEPS_HELP


def test_measures_lists_every_registered_measure(capsys):
    assert main(["measures"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for name in names():
        (line,) = [ln for ln in lines if ln.startswith(name + " ")]
        spec = get(name)
        assert ("per step" if spec.kind == "step" else "run") in line
    assert "n_samples=100" in out and "threshold=0.9" in out


def test_measures_lmn_shows_its_parameters_and_variables(capsys):
    assert main(["measures", "lmn"]) == 0
    out = capsys.readouterr().out
    for param, default in get("lmn").defaults.items():
        shown = json.dumps(default) if isinstance(default, str) else repr(default)
        assert f"  {param} = {shown}\n" in out
    assert "n_samples = 100" in out and 'cut = "auto"' in out
    assert "lmn_entropy" in out and "[bits]" in out  # units from measures/_variables.py
    assert "Linear mapping number" in out and "weighting : {" in out  # the full docstring


def test_measures_json_and_unknown(capsys):
    assert main(["measures", "--json", "phases"]) == 0
    info = json.loads(capsys.readouterr().out)["phases"]
    assert info["per_step"] is False and info["parameters"]["threshold"] == 0.9
    assert info["variables"]["gap"]["units"] == "steps"
    assert main(["measures", "no-such-measure"]) == 2
    assert "no-such-measure" in capsys.readouterr().err


def test_error_names_the_flag_not_the_keyword(monkeypatch, capsys):
    import grokscope.cli as cli

    def boom(args):
        raise ConfigError("r.zarr holds a run with other settings; pass overwrite=True to replace "
                          "it, or recompute=True, or trust_code=True (--trust-code)")

    parser = cli.build_parser()
    real = parser.parse_args

    def parse(argv=None):
        args = real(argv)
        args.func = boom
        return args

    monkeypatch.setattr(parser, "parse_args", parse)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert main(["info", "r.zarr"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("grokscope info: error:")
    assert "--overwrite" in err and "--recompute" in err and "overwrite=True" not in err
    assert err.count("--trust-code") == 1 and "trust_code" not in err


@pytest.mark.parametrize(("message", "expected"), [
    ("pass overwrite=True to replace it", "pass --overwrite to replace it"),
    ("load it with trust_pickle=True (CLI: --trust-pickle) only", "load it with --trust-pickle only"),
    ("pass results='PATH' / --results PATH to write elsewhere", "pass --results PATH to write elsewhere"),
    ("pass the model yourself (model=...)", "pass the model yourself (--model)"),
    ("set anatomy={'output': 'all'}", "set --anatomy '{\"output\": \"all\"}'"),
    ("choose step_from='name' (CLI: --step-from name)", "choose --step-from name"),
    ("pass step_key=, or skip_unknown=True", "pass --step-key, or --skip-unknown"),
    ("the weights: state_key= (CLI: --state-key; dotted paths work)",
     "the weights: --state-key (dotted paths work)"),
    ("pass either workers=N or scheduler=ADDRESS", "pass either --workers N or --scheduler ADDRESS"),
    ("with steps= a selection", "with --steps a selection"),
    ("report(..., analyze=True)", "report(..., analyze=True)"),  # a Python call is left alone
    ("gs.open_run(path, model=...) or model=...", "gs.open_run(path, model=...) or --model"),
    ("unknown model='mlp2'", "unknown model='mlp2'"),  # a value, not advice: kept
])
def test_cli_message(message, expected):
    assert cli_message(message) == expected


def test_every_table_keyword_is_translated():
    for pattern, flag in KEYWORD_FLAGS:
        if not pattern.replace("_", "").replace("=", "").isalnum():
            continue  # a pattern with regex syntax: covered above
        assert cli_message(f"pass {pattern} to do it").startswith(f"pass {flag.split()[0]}")


def test_import_errors_name_flags(tmp_path, capsys):
    import torch

    from grokscope.models import build_model

    ck = tmp_path / "ck"
    ck.mkdir()
    net = build_model("mlp", in_dim=4, out_dim=3, width=8)
    for name in ("foo.pt", "bar.pt"):  # no step in the name or inside: the message advises
        torch.save(net.state_dict(), ck / name)
    rc = main(["import", str(ck), "-o", str(tmp_path / "r.zarr"), "--model", "mlp",
               "--model-kwargs", '{"in_dim": 4, "out_dim": 3, "width": 8}', "-q"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("grokscope import: error:")
    assert "--step-key" in err and "--skip-unknown" in err
    assert "skip_unknown" not in err and "step_key=" not in err
