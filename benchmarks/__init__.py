"""Benchmarks that print figures side by side: run from a checkout (``python -m benchmarks.NAME``), not installed."""
