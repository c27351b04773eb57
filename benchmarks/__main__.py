"""Run every ``benchmarks/bench_*.py`` and print one table of ratios.

Each module defines ``run(quick: bool = False) -> list[Row]``. Usage::

    python -m benchmarks            # all
    python -m benchmarks store agop # only modules whose name contains a word
    python -m benchmarks --quick    # smaller sizes (smoke test)
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

from ._common import format_table


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in argv
    words = [a for a in argv if not a.startswith("--")]
    here = Path(__file__).parent
    rows = []
    for info in sorted(pkgutil.iter_modules([str(here)]), key=lambda m: m.name):
        if not info.name.startswith("bench_"):
            continue
        if words and not any(w in info.name for w in words):
            continue
        mod = importlib.import_module(f"benchmarks.{info.name}")
        print(f"# {info.name} ...", file=sys.stderr, flush=True)
        rows.extend(mod.run(quick=quick))
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
