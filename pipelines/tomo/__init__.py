"""Parallel-beam tomography: forward projection, normalisation, centring and FBP."""
