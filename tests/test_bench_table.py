"""The benchmark table prints ratios precisely enough to judge them against their targets."""

from __future__ import annotations

from benchmarks._common import Row, format_ratio, format_table


def test_ratios_either_side_of_a_target_read_differently():
    assert format_ratio(0.88) == "0.88x" and format_ratio(0.93) == "0.93x"
    assert format_ratio(1.0) == "1.00x" and format_ratio(12.34) == "12.3x"
    table = format_table([Row("writer", "with a watcher", 1.0 / 0.88, "alone", 1.0, ">= 0.91")])
    assert "| 0.88x | >= 0.91 |" in table
