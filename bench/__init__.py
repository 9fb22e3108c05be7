"""Benchmarks: rerunnable measurements behind every performance figure in BENCHMARKS.md."""
