"""Analysis as pure functions of arrays (layer between services and models)."""

import models  # noqa: F401  (sets the OpenMP wait policy before torch loads)
