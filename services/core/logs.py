"""One logging set-up for every beamwatch entry point."""

from __future__ import annotations

import logging
import sys


class _RunUidFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        run_uid = getattr(record, "run_uid", None)
        record.run_tag = f" [run {run_uid[:8]}]" if isinstance(run_uid, str) else ""
        return super().format(record)


def configure_logging(level: str | int = "INFO", service: str = "beamwatch") -> None:
    """Log to stderr as ``time level service module [run uid]: message``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _RunUidFormatter(f"%(asctime)s %(levelname)-7s {service} %(name)s%(run_tag)s: %(message)s")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "uvicorn.access", "numba", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
