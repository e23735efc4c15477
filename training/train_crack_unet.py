"""Entry point: ``python -m training.train_crack_unet`` (``--help`` for the options).

The data, losses, training and checkpoint are those of :mod:`training.crack_unet`.
"""

from training.crack_unet import main

if __name__ == "__main__":
    raise SystemExit(main())
