"""Simulated beamline devices and Bluesky plans (no imports from services)."""
