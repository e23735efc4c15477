"""Networks (architectures), their pre-processing and inference helpers, checkpoints and weights.

Their training lives in :mod:`training`, the synthetic data in :mod:`synthetic`.

Importing this package sets ``OMP_WAIT_POLICY=PASSIVE`` for the OpenMP runtime that torch
loads, unless the environment already sets it (so it must come before ``import torch``;
``pipelines``, ``benchmarks`` and the tests import it first). With the default (active)
policy, torch's idle threads spin; when another process holds a core (a Tiled server, a
consumer, a second job on a beamline node) a 2-thread forward pass then runs several times
slower than a 1-thread one. Measured on a 2-core VM with one core busy: flaw-slice
classification of a 128 x 512 x 512 volume 79 s with the active policy, 13 s passive, 11 s on
one thread; crack U-Net 0.45 s per 512^2 slice active, 0.10 s passive.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
