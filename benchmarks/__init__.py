"""Ratio benchmarks against the naive alternative; run all with ``make bench``."""
