"""Live XANES particle tracking, registration and chemical maps for TXM (issue 3).

Pure array code: no I/O, no transport. The live entry point is :class:`XanesTracker`
(one frame at a time); :func:`align_stack` is the batch equivalent.

The learned detector (:func:`detect_particles_learned`, :func:`particle_probability`) is loaded
on first use, so importing this package does not import torch.
"""

from typing import Any

from pipelines.xanes.deformation import (
    Deformation,
    deformation_rows,
    deformation_series,
    per_scan_positions,
)
from pipelines.xanes.detect import detect_particles
from pipelines.xanes.match import Matching, match_labels, match_particles
from pipelines.xanes.params import (
    DetectParams,
    MatchParams,
    PrepareParams,
    SpectraParams,
    TrackParams,
    XanesParams,
)
from pipelines.xanes.prepare import optical_density, remove_background
from pipelines.xanes.register import phase_correlation_displacement, robust_global_shift
from pipelines.xanes.spectra import SpectraAnalysis, analyse_spectra
from pipelines.xanes.tracker import FrameResult, XanesResult, XanesTracker, align_stack

__all__ = [
    "Deformation",
    "DetectParams",
    "FrameResult",
    "MatchParams",
    "Matching",
    "PrepareParams",
    "SpectraAnalysis",
    "SpectraParams",
    "TrackParams",
    "XanesParams",
    "XanesResult",
    "XanesTracker",
    "align_stack",
    "analyse_spectra",
    "deformation_rows",
    "deformation_series",
    "detect_particles",
    "detect_particles_learned",
    "match_labels",
    "match_particles",
    "optical_density",
    "particle_probability",
    "per_scan_positions",
    "phase_correlation_displacement",
    "remove_background",
    "robust_global_shift",
]

_LAZY = {"detect_particles_learned", "particle_probability"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from pipelines.xanes import detect_learned

        return getattr(detect_learned, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
