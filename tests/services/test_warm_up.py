"""The analysis consumer prepares the live pipelines at start-up, before a run's first frame."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from services.analysis.router import PipelineRegistry


def test_registry_warm_up_calls_every_warmer_and_survives_a_failing_one(caplog) -> None:
    registry = PipelineRegistry()
    calls: list[str] = []

    def broken() -> None:
        calls.append("broken")
        raise RuntimeError("no such module")

    registry.on_warm_up(broken)
    registry.on_warm_up(lambda: calls.append("second"))
    registry.warm_up()
    assert calls == ["broken", "second"]
    assert "warm-up of the live pipelines failed" in caplog.text


def test_default_registry_warm_up_imports_the_xanes_tracker_and_the_tomogram_params() -> None:
    # in a fresh interpreter: the tracker (and the tomogram's parameter models, torch with
    # them) are not imported by building the registry, only by its warm-up (which the
    # consumer runs at start, before its threads)
    code = textwrap.dedent(
        """
        import sys, tempfile
        from pathlib import Path
        from services.analysis.registry import default_registry
        registry = default_registry(Path(tempfile.mkdtemp()))
        live = ("pipelines.xanes.tracker", "pipelines.cracks.segment", "pipelines.tomo.fbp")
        before = any(name in sys.modules for name in live)
        registry.warm_up()
        print(before, all(name in sys.modules for name in live))
        registry.close()
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["False", "True"]
