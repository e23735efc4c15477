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


def test_default_registry_warm_up_imports_the_xanes_tracker() -> None:
    # in a fresh interpreter: the tracker is not imported by building the registry, only by
    # its warm-up (which the consumer runs at start, before its threads)
    code = textwrap.dedent(
        """
        import sys, tempfile
        from pathlib import Path
        from services.analysis.registry import default_registry
        registry = default_registry(Path(tempfile.mkdtemp()))
        before = "pipelines.xanes.tracker" in sys.modules
        registry.warm_up()
        print(before, "pipelines.xanes.tracker" in sys.modules)
        registry.close()
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["False", "True"]
