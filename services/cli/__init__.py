"""The ``beamwatch`` command line (entry point ``services.cli:main``) and its offline verbs."""

from services.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
