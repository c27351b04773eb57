"""Mutation testing of the measures' maths (``make mutate``): which lines does no test check?

For each module (default: every measure module), a copy of the tracked tree is made in a
temporary folder, mutmut mutates only that module and runs only its tests (the
``tests/test_measure_<name>.py`` file plus the any-model tests that exercise it), and the
outcome counts are printed as a table and written to ``reports/mutation/<module>.txt`` (the
surviving mutants, to read and kill by strengthening tests).

    python tools/mutate.py                         # every measure module (hours on 2 cores)
    python tools/mutate.py rqi phases              # a few modules
    python tools/mutate.py --max-children 2 nfa
    python tools/mutate.py --sample 80          # a seeded random sample of 80 mutants each

With ``--sample N`` every mutant is generated, N of them are drawn at random (seeded) and
only those are run; the table then gives the sample's score and its 95% Wilson interval,
an estimate of the whole module's score at a fraction of the cost.

Score = killed / (killed + survived + "no tests"): mutants no test reaches count as
survivors; a timeout is counted as killed by mutmut's convention, which the table shows
separately (on a busy machine a timeout may be a slow test, not a caught mutant).
"""

from __future__ import annotations

import argparse
import collections
import math
import random
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


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _mutant_states(mutmut: list[str], work: Path) -> dict[str, str]:
    out = subprocess.run(mutmut + ["results", "--all", "true"], cwd=work,
                         capture_output=True, text=True).stdout
    states = {}
    for line in out.splitlines():
        if ": " in line:
            mutant, state = line.strip().rsplit(": ", 1)
            states[mutant] = state
    return states


def run_one(name: str, max_children: int, timeout: int, sample: int = 0,
            seed: int = 0) -> tuple[collections.Counter, int]:
    """Mutate one module; returns (outcome counts of the mutants run, mutants generated)."""
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
                'also_copy = ["tests/", "analyses/"]\n'
                # a mutant is cut at 2 x 4 x (the clean run of its tests + 30 s): mutmut times
                # each test alone, so a module-scoped fixture's setup (a trained model) is
                # missing from the estimate and a plain multiplier cut correct mutants
                "timeout_multiplier = 4.0\n"
                "timeout_constant = 30.0\n".replace("'", '"')
            )
        mutmut = [sys.executable, "-m", "mutmut"]
        chosen: list[str] = []
        generated = 0
        if sample:
            # a filter that matches nothing makes mutmut generate every mutant and stop
            subprocess.run(mutmut + ["run", "grokscope.no_such_mutant__"], cwd=work,
                           capture_output=True)
            everything = sorted(_mutant_states(mutmut, work))
            generated = len(everything)
            chosen = sorted(random.Random(f"{seed}:{name}").sample(
                everything, min(sample, generated)))
        proc = subprocess.run(mutmut + ["run", "--max-children", str(max_children), *chosen],
                              cwd=work, timeout=timeout, capture_output=True, text=True)
        states = _mutant_states(mutmut, work)
        if states and set(states.values()) == {"not checked"}:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
            raise SystemExit(f"mutmut checked no mutant of {name} (does the clean test run "
                             f"pass under mutmut?):\n{tail}")
        if chosen:
            states = {m: states.get(m, "not checked") for m in chosen}
        generated = generated or len(states)
        status = collections.Counter(states.values())
        survivors = []
        for m, state in sorted(states.items()):
            if state in ("survived", "no tests"):
                diff = subprocess.run(mutmut + ["show", m], cwd=work, capture_output=True,
                                      text=True).stdout.strip()
                survivors.append(f"{state:10} {m}\n{diff}\n")
        report = ROOT / "reports" / "mutation" / f"{name}.txt"
        report.parent.mkdir(parents=True, exist_ok=True)
        how = f"a seeded sample (seed {seed}) of {len(chosen)}" if chosen else "all"
        report.write_text(f"# mutmut on grokscope/measures/{name}.py with {tests}\n"
                          f"# {how} of {generated} mutants: {dict(status)}\n"
                          + "\n".join(survivors) + "\n")
        return status, generated
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", help=f"measure modules (default all: {modules()})")
    ap.add_argument("--max-children", type=int, default=1)
    ap.add_argument("--timeout", type=int, default=6 * 3600, help="seconds per module")
    ap.add_argument("--sample", type=int, default=0,
                    help="run only this many mutants per module, drawn at random (0: all)")
    ap.add_argument("--seed", type=int, default=0, help="seed of --sample's draw")
    args = ap.parse_args(argv)
    names = args.modules or modules()
    print(f"{'module':<12} {'mutants':>8} {'run':>5} {'killed':>7} {'survived':>9} "
          f"{'no tests':>9} {'timeout':>8} {'score':>6} {'95% interval':>13}")
    for name in names:
        try:
            s, generated = run_one(name, args.max_children, args.timeout, args.sample, args.seed)
        except SystemExit as exc:  # one module's failure does not stop the others
            print(f"{name:<12} not run: {exc}", flush=True)
            continue
        killed = s["killed"] + s["timeout"]
        total = killed + s["survived"] + s["no tests"]
        score = killed / total if total else float("nan")
        lo, hi = wilson(killed, total)
        print(f"{name:<12} {generated:>8} {sum(s.values()):>5} {s['killed']:>7} "
              f"{s['survived']:>9} {s['no tests']:>9} {s['timeout']:>8} {score:>6.0%} "
              f"{lo:>6.0%}-{hi:.0%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
