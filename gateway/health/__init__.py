"""GET /health (liveness), /ready (router loaded and upstream answering), /metrics (Prometheus)."""
