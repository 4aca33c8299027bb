"""Benchmark harness: timing and memory measurement, report building and figures."""
