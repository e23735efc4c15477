"""Entry point: ``python -m training.train_txm_particle_net`` (``--help`` for the options).

The data, losses, training and checkpoint are those of :mod:`training.txm_particle_net`.
"""

from training.txm_particle_net import main

if __name__ == "__main__":
    raise SystemExit(main())
