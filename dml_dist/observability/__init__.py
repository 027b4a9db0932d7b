"""Metrics sinks (Prometheus or null) and the run directory's JSONL log."""
