"""Benchmark scripts (not part of the package; run as ``python -m benchmarks.<name>``)."""
