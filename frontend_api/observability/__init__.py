"""Metrics (Prometheus), structured logs with request ids, per-generation timings and system figures."""
