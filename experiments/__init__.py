"""Reproducible scripts behind the figures in BENCHMARKS.md."""
