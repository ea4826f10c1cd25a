"""Serving benchmarks for radixrt and other OpenAI-compatible servers.

    python -m bench.run_suite --quick     # the whole comparison, writes docs/benchmarks.md
"""
