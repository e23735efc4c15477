"""The registry used by ``beamwatch up``: which pipelines consume which runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.analysis.router import FrameStatsPipeline, PipelineRegistry
from services.core.identifiers import confined_path


def default_registry(
    figures_dir: Path | None = None,
    feedback: Any = None,
    slabs: Any = None,
    series_dir: Path | None = None,
    references_dir: Path | None = None,
    metrics: Any = None,
    child_stages: Any = None,
) -> PipelineRegistry:
    """The registry used by ``beamwatch up``; analysis modules are imported when first used.

    ``slabs`` (a :class:`services.analysis.tomo_slabs.SlabConfig`) sends tomograms larger
    than its threshold slab by slab to a Dask cluster; None keeps every one in memory.
    ``series_dir`` keeps the operando series state (what later scans of a series need) on disk,
    so that it survives a restart of the consumer; without it the state goes to a temporary
    directory that :meth:`PipelineRegistry.close` removes.
    ``references_dir`` (the data dir) is where a start document's ``lcf_references`` and
    ``crack_weights`` / ``particle_weights`` file names point; ``metrics``
    (:class:`services.core.metrics.Metrics`) counts refused start options.
    ``child_stages`` (a :class:`services.analysis.child_stage.ChildStages`) runs a tomogram's
    in-memory after-scan stage in a child process; None runs it on the calling thread.
    """
    registry = PipelineRegistry()
    registry.register("frames", lambda start: True, FrameStatsPipeline)
    figures = figures_dir or Path("figures")

    def figures_for(start: dict[str, Any]) -> Path:
        # The pipelines write figures under figures/<run uid>; a uid that would leave the
        # figures directory fails the pipeline instead (uids are also checked on arrival).
        confined_path(figures, str(start["uid"]))
        return figures

    from services.analysis import xanes_live

    series = xanes_live.SeriesStore(directory=series_dir)
    registry.on_warm_up(xanes_live.warm_up)
    registry.on_close(series.close)  # without series_dir: removes its temporary directory

    def rejected(option: str) -> None:
        if metrics is not None:
            metrics.start_options_rejected.labels(metrics.service, option).inc()

    registry.register(
        "xanes",
        xanes_live.select,
        lambda start: xanes_live.XanesLivePipeline(
            start,
            feedback=feedback,
            figures_dir=figures_for(start),
            series=series,
            references_dir=references_dir,
            on_rejected=rejected,
        ),
    )
    from services.analysis import tomo_live

    registry.on_warm_up(tomo_live.warm_up)
    registry.register(
        "cracks",
        tomo_live.select,
        lambda start: tomo_live.CracksPipeline(
            start,
            figures_dir=figures_for(start),
            slabs=slabs,
            data_dir=references_dir,
            on_rejected=rejected,
            child=child_stages,
        ),
    )
    return registry
