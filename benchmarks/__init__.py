"""Benchmarks: standalone entry points, run as `python -m benchmarks.<name>`."""
