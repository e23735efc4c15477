"""Benchmarks: ``python -m benchmarks.<name>``; ``make benchmark`` runs them all."""

import models  # noqa: F401  (sets the OpenMP wait policy before torch loads)
