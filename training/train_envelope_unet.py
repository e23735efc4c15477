"""Entry point: ``python -m training.train_envelope_unet`` (``--help`` for the options).

The data, losses, training and checkpoint are those of :mod:`training.envelope_unet`.
"""

from training.envelope_unet import main

if __name__ == "__main__":
    raise SystemExit(main())
