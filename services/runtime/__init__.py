"""Processes: the consumers, the supervisor of ``beamwatch up`` and the demo."""
