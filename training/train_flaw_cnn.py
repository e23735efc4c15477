"""Entry point: ``python -m training.train_flaw_cnn`` (``--help`` for the options).

The data, losses, training and checkpoint are those of :mod:`training.flaw_cnn`.
"""

from training.flaw_cnn import main

if __name__ == "__main__":
    raise SystemExit(main())
