"""The registry used by ``beamwatch up``: which pipelines consume which runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.analysis.router import FrameStatsPipeline, PipelineRegistry


def default_registry(figures_dir: Path | None = None, feedback: Any = None) -> PipelineRegistry:
    """The registry used by ``beamwatch up``; analysis modules are imported when first used."""
    registry = PipelineRegistry()
    registry.register("frames", lambda start: True, FrameStatsPipeline)
    figures = figures_dir or Path("figures")

    from services.analysis import xanes_live

    series = xanes_live.SeriesStore()
    registry.register(
        "xanes",
        xanes_live.select,
        lambda start: xanes_live.XanesLivePipeline(
            start, feedback=feedback, figures_dir=figures, series=series
        ),
    )
    from services.analysis import tomo_live

    registry.register(
        "cracks",
        tomo_live.select,
        lambda start: tomo_live.CracksPipeline(start, figures_dir=figures),
    )
    return registry
