"""Entry point: ``python -m training.train_particle_unet`` (``--help`` for the options).

The data, losses, training and checkpoint are those of :mod:`training.particle_unet`.
"""

from training.particle_unet import main

if __name__ == "__main__":
    raise SystemExit(main())
