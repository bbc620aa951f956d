"""Benchmarks: `python -m benchmarks.run` (what `make bench` runs) and the bench_*.py sections."""
