"""Shared basics of every service: settings, logging, metrics, the wire codec, HDF5 input."""
