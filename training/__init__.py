"""Training of the networks in :mod:`models`: datasets, losses, metrics and the training loop.

Above :mod:`pipelines` (and :mod:`synthetic`), so training reconstructs and pre-processes
with the code inference uses. Importing :mod:`models` first sets the OpenMP wait policy
before torch loads.
"""

import models  # noqa: F401
