"""Shared timing helpers for the benchmarks: medians and ratios, never absolute claims."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


def median_time(fn: Callable[[], object], *, repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeat`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@dataclass
class Row:
    """One benchmark line: ``ours`` vs ``naive`` (median seconds), and the target ratio."""

    benchmark: str
    ours_label: str
    ours_s: float
    naive_label: str
    naive_s: float
    target: str = ""

    @property
    def ratio(self) -> float:
        return self.naive_s / self.ours_s if self.ours_s > 0 else float("inf")


def format_ratio(ratio: float) -> str:
    """A speed-up as the table prints it: two decimals below 10x, so ratios either side of a
    target such as 0.91 (0.88x, 0.93x) do not both read "0.9x"; one decimal above."""
    return f"{ratio:.2f}x" if abs(ratio) < 10 else f"{ratio:.1f}x"


def format_table(rows: list[Row]) -> str:
    """A plain-text table of rows (markdown-compatible)."""
    head = "| benchmark | ours | median s | naive | median s | speed-up | target |"
    sep = "|---|---|---:|---|---:|---:|---|"
    lines = [head, sep]
    for r in rows:
        lines.append(
            f"| {r.benchmark} | {r.ours_label} | {r.ours_s:.4g} | {r.naive_label} | "
            f"{r.naive_s:.4g} | {format_ratio(r.ratio)} | {r.target} |"
        )
    return "\n".join(lines)
