"""Entry point: ``python -m training.train_phase_net`` (``--help`` for the options).

The data, losses, training and checkpoint are those of :mod:`training.phase_net`.
"""

from training.phase_net import main

if __name__ == "__main__":
    raise SystemExit(main())
