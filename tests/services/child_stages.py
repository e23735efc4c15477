"""After-scan stages that run in a child process (``services.analysis.child_stage``) for the
tests: the child imports this module by name."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np


def held_stage(stage_dir: Path, params: dict[str, Any], out: Any) -> None:
    """Writes a large array and announces a second stage, says it started (its pid in the file
    ``params["started"]``), then holds until the file ``params["release"]`` exists."""
    out.sibling("second").container({"status": "queued"})
    big = np.arange(params["big_rows"] * 256, dtype=np.float32).reshape(-1, 256)
    out.array("big", big, dims=["row", "col"])
    out.rows("grown", np.ones((2, 3), dtype=np.uint8))
    Path(params["started"]).write_text(str(os.getpid()))
    release = Path(params["release"])
    deadline = time.monotonic() + 120
    while not release.exists():  # a file: the test process and this child share no memory
        if time.monotonic() > deadline:
            raise TimeoutError("the test never released the stage")
        time.sleep(0.05)
    out.sibling("second").metadata({"status": "complete"})
    out.metadata({"stage_done": True, "pid": os.getpid()})


def failing_stage(stage_dir: Path, params: dict[str, Any], out: Any) -> None:
    out.metadata({"started": True})
    raise ValueError("no particles in this volume")
