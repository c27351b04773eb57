"""Mutation testing of the measures' maths (``make mutate``): which lines does no test check?

For each module (default: every measure module), a copy of the tracked tree is made in a
temporary folder, mutmut mutates only that module and runs only its tests (the
``tests/test_measure_<name>.py`` file plus the any-model tests that exercise it), and the
outcome counts are printed as a table and written to ``reports/mutation/<module>.txt`` (the
surviving mutants, to read and kill by strengthening tests).

    python tools/mutate.py                         # every measure module (hours on 2 cores)
    python tools/mutate.py rqi phases              # a few modules
    python tools/mutate.py --max-children 2 nfa

Score = killed / (killed + survived + timeout-free survivors); mutants no test reaches
("no tests") count as survivors, timeouts as killed (mutmut's convention).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEASURES = ROOT / "grokscope" / "measures"
EXTRA_TESTS = {
    "fourier": ["tests/test_any_model_fourier.py"],
    "mixture": ["tests/test_any_model_fourier.py"],
    "rqi": ["tests/test_any_model_fourier.py"],
    "lmn": ["tests/test_any_model_lmn_curves.py"],
    "curves": ["tests/test_any_model_lmn_curves.py"],
    "_jacobian": ["tests/test_measure_alignment.py", "tests/test_measure_nfa.py"],
}


def modules() -> list[str]:
    return sorted(p.stem for p in MEASURES.glob("*.py")
                  if p.stem not in ("__init__", "_discover", "registry"))


def tests_for(name: str) -> list[str]:
    own = [f"tests/test_measure_{name}.py"] if (ROOT / f"tests/test_measure_{name}.py").exists() else []
    return own + EXTRA_TESTS.get(name, [])


def run_one(name: str, max_children: int, timeout: int) -> collections.Counter:
    tests = tests_for(name)
    if not tests:
        raise SystemExit(f"no tests found for measure module {name!r}")
    work = Path(tempfile.mkdtemp(prefix=f"grokscope-mutate-{name}-"))
    try:
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split()
        for f in files:
            dst = work / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst)
        with open(work / "pyproject.toml", "a") as fh:
            fh.write(
                "\n[tool.mutmut]\n"
                'source_paths = ["grokscope"]\n'
                f'only_mutate = ["grokscope/measures/{name}.py"]\n'
                f"pytest_add_cli_args_test_selection = {tests!r}\n"
                'also_copy = ["tests/"]\n'
                # a mutant that loops is cut at 3x the clean run (mutmut's default, 15x, lets
                # a few looping mutants dominate the run on a small machine)
                "timeout_multiplier = 3.0\n".replace("'", '"')
            )
        mutmut = [sys.executable, "-m", "mutmut"]
        subprocess.run(mutmut + ["run", "--max-children", str(max_children)], cwd=work,
                       timeout=timeout, capture_output=True)
        out = subprocess.run(mutmut + ["results", "--all", "true"], cwd=work,
                             capture_output=True, text=True).stdout
        status = collections.Counter()
        survivors = []
        for line in out.splitlines():
            if ": " not in line:
                continue
            mutant, state = line.strip().rsplit(": ", 1)
            status[state] += 1
            if state in ("survived", "no tests"):
                survivors.append(f"{state:10} {mutant}")
        report = ROOT / "reports" / "mutation" / f"{name}.txt"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(f"# mutmut on grokscope/measures/{name}.py with {tests}\n"
                          f"# {dict(status)}\n" + "\n".join(survivors) + "\n")
        return status
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", help=f"measure modules (default all: {modules()})")
    ap.add_argument("--max-children", type=int, default=1)
    ap.add_argument("--timeout", type=int, default=6 * 3600, help="seconds per module")
    args = ap.parse_args(argv)
    names = args.modules or modules()
    print(f"{'module':<12} {'mutants':>8} {'killed':>7} {'survived':>9} {'no tests':>9} "
          f"{'timeout':>8} {'score':>6}")
    for name in names:
        s = run_one(name, args.max_children, args.timeout)
        killed = s["killed"] + s["timeout"]
        total = killed + s["survived"] + s["no tests"]
        score = killed / total if total else float("nan")
        print(f"{name:<12} {sum(s.values()):>8} {s['killed']:>7} {s['survived']:>9} "
              f"{s['no tests']:>9} {s['timeout']:>8} {score:>6.0%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
