"""Synthetic data generators used for training and benchmarks."""
