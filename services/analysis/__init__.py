"""The analysis path: pipeline registry, per-run analysis router, live pipelines, figures."""
