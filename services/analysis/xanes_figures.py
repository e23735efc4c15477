"""Figures and their numbers for a XANES scan (the tracking paper's Fig. 3 and the maps).

Called by :mod:`services.analysis.xanes_live` after the scan. Writes under
``analysis/<uid>/xanes`` (displacements in px, as ``particle_shift``; the figures show um when
the pixel size is known):

``scan_cumulative_distance``  float64 (P, N) path length of each particle since frame 0
``scan_velocity``             float64 (P, N, 2) per frame (row, col), NaN at frame 0
``scan_acceleration``         float64 (P, N, 2) per frame^2, NaN at frames 0 and 1
``scan_nonrigid``             float64 (P, N, 2) displacement minus the global (median) drift
``ssim_frame_mean``           float64 (N,) mean SSIM of the particles found in each frame
``particle_motion``           table, one row per particle: particle, known, rigid,
                              nonrigid_peak_px, frames_found, ssim_mean, ssim_std, ssim_min,
                              ssim_low_fraction
figures                       drift, tracks, edge_energy, whiteline_energy, kinematics, ssim
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from services.analysis.figures import (
    Drawer,
    draw_map,
    finite_or_none,
    length_unit,
    map_extent,
    publish_figures,
)
from services.analysis.results import ResultWriter

#: Largest non-rigid displacement (px) of a particle still called rigid: the registration noise.
RIGID_TOLERANCE_PX = 1.0
#: SSIM below which a frame of a particle counts as poorly aligned.
SSIM_LOW = 0.5


def pixel_size(value: Any) -> float | None:
    """The start document's ``pixel_size_um`` as a positive float, None when unknown."""
    try:
        size = float(value)
    except (TypeError, ValueError):
        return None
    return size if np.isfinite(size) and size > 0 else None


#: Why a pixel of the edge / white-line map has no value (pipelines.xanes.tracker).
WHY_NO_ENERGY = (
    "NaN everywhere: no particle found in 8 frames or more, no frame in the pre- or post-edge "
    "window, or an edge jump below the masking thresholds"
)


def energy_map(values: np.ndarray, title: str, extent: list[float], unit: str) -> Drawer:
    """Figure of an (H, W) energy map in eV (edge or white line); a map without any value
    shows why instead of an empty colour bar."""

    def draw(fig: Any) -> None:
        ax = fig.add_subplot(111)
        draw_map(
            fig,
            ax,
            values,
            extent=extent,
            label=f"{title} (eV)",
            why_empty=WHY_NO_ENERGY,
            cmap="viridis",
        )
        ax.set_xlabel(f"x ({unit})")
        ax.set_ylabel(f"y ({unit})")
        finite = values[np.isfinite(values)]
        spread = f"mean {finite.mean():.2f} eV, sd {finite.std():.2f} eV" if finite.size else "none"
        ax.set_title(f"{title}: {spread}", fontsize=9)

    return draw


def xanes_figures(
    final: Any,
    out: ResultWriter,
    *,
    pixel_um: float | None,
    figures_dir: Path,
    run_uid: str,
) -> dict[str, Any]:
    """Numbers and figures of a finished scan ``final`` (a XanesResult); returns metadata."""
    from pipelines.xanes.deformation import deformation_series, rigid_split
    from pipelines.xanes.quality import ssim_summary

    unit = length_unit(pixel_um)
    scale = float(pixel_um) if pixel_um else 1.0
    kinematics = deformation_series(final.particle_shift)
    split = rigid_split(kinematics, tolerance=RIGID_TOLERANCE_PX)
    quality = ssim_summary(final.ssim, low=SSIM_LOW)
    n_p = final.particle_shift.shape[0]
    for key, values in (
        ("scan_velocity", kinematics.velocity),
        ("scan_acceleration", kinematics.acceleration),
        ("scan_nonrigid", kinematics.nonrigid),
    ):
        out.array(key, values, dims=["particle", "frame", "axis"], units="px")
    out.array(
        "scan_cumulative_distance",
        kinematics.cumulative_distance,
        dims=["particle", "frame"],
        units="px",
    )
    out.array("ssim_frame_mean", quality.frame_mean, dims=["frame"])
    if n_p:
        out.table_rows(
            "particle_motion",
            {
                "particle": list(range(1, n_p + 1)),
                "known": split.known.tolist(),
                "rigid": split.rigid.tolist(),
                "nonrigid_peak_px": split.nonrigid_peak.tolist(),
                "frames_found": quality.particle_found.tolist(),
                "ssim_mean": quality.particle_mean.tolist(),
                "ssim_std": quality.particle_std.tolist(),
                "ssim_min": quality.particle_min.tolist(),
                "ssim_low_fraction": quality.particle_low_fraction.tolist(),
            },
        )
    frames = np.arange(final.particle_shift.shape[1])
    extent = map_extent(final.labels.shape, pixel_um)

    def drift(fig: Any) -> None:
        ax = fig.add_subplot(111)
        ax.plot(final.global_shift[:, 0] * scale, label="dy")
        ax.plot(final.global_shift[:, 1] * scale, label="dx")
        ax.set_xlabel("frame")
        ax.set_ylabel(f"global drift ({unit})")
        ax.legend()

    def tracks(fig: Any) -> None:
        ax = fig.add_subplot(111)
        ax.imshow(final.labels > 0, cmap="gray_r", alpha=0.3, extent=extent)
        for k in range(n_p):
            com = final.particle_com[k] * scale
            ax.plot(com[:, 1], com[:, 0], lw=1)
            ax.annotate(str(k + 1), com[0, ::-1], fontsize=8)
        ax.set_xlabel(f"x ({unit})")
        ax.set_ylabel(f"y ({unit})")
        ax.set_title("particle tracks (frame-0 geometry)")

    def motion(fig: Any) -> None:
        axes = fig.subplots(2, 2, sharex=True).ravel()
        panels = [
            (kinematics.cumulative_distance * scale, f"cumulative displacement ({unit})"),
            (kinematics.velocity[..., 0] * scale, f"vertical velocity ({unit}/frame)"),
            (kinematics.velocity[..., 1] * scale, f"horizontal velocity ({unit}/frame)"),
            (
                np.linalg.norm(kinematics.acceleration, axis=2) * scale,
                f"|acceleration| ({unit}/frame²)",
            ),
        ]
        for ax, (values, label) in zip(axes, panels, strict=True):
            for k in range(n_p):
                if not split.known[k]:
                    continue
                rigid = bool(split.rigid[k])
                ax.plot(
                    frames,
                    values[k],
                    color="k" if rigid else None,
                    lw=1.8 if rigid else 1.0,
                    label=f"{k + 1}{' (rigid)' if rigid else ''}",
                )
            ax.set_ylabel(label, fontsize=8)
        for ax in axes[2:]:
            ax.set_xlabel("frame")
        n_rigid = int(split.rigid.sum())
        fig.suptitle(
            f"{n_rigid} rigid (black: non-rigid part <= {RIGID_TOLERANCE_PX:g} px), "
            f"{int((split.known & ~split.rigid).sum())} non-rigid particles",
            fontsize=9,
        )
        if 0 < n_p <= 12 and axes[0].get_legend_handles_labels()[0]:
            axes[0].legend(fontsize=6, ncol=2)

    def ssim(fig: Any) -> None:
        ax = fig.add_subplot(111)
        for k in range(n_p):
            ax.plot(frames, final.ssim[k], color="0.75", lw=0.8)
        ax.plot(frames, quality.frame_mean, "k-", lw=2, label="mean over particles")
        ax.axhline(SSIM_LOW, color="r", lw=0.8, ls="--", label=f"low ({SSIM_LOW:g})")
        ax.set_xlabel("frame")
        ax.set_ylabel("similarity to the template (SSIM)")
        ax.set_title(
            f"mean {quality.overall_mean:.3f}, median {quality.overall_median:.3f}", fontsize=9
        )
        ax.legend(fontsize=8)

    drawers: list[tuple[str, Drawer]] = [
        ("drift", drift),
        ("tracks", tracks),
        (
            "edge_energy",
            energy_map(final.edge_energy, "edge energy at 50 % of the jump", extent, unit),
        ),
        ("whiteline_energy", energy_map(final.whiteline_energy, "white-line energy", extent, unit)),
        ("kinematics", (motion, (8.0, 6.0))),
        ("ssim", ssim),
    ]
    paths = publish_figures(out, figures_dir, "xanes", drawers, run_uid=run_uid)
    return {
        "figures": paths,
        "length_unit": unit,
        "pixel_size_um": pixel_um,
        "rigid_split": {
            "tolerance_px": RIGID_TOLERANCE_PX,
            "n_rigid": int(split.rigid.sum()),
            "n_nonrigid": int((split.known & ~split.rigid).sum()),
            "peak_ratio_vertical": finite_or_none(split.peak_ratio[0]),
            "peak_ratio_horizontal": finite_or_none(split.peak_ratio[1]),
        },
        "ssim_quality": {
            "mean": finite_or_none(quality.overall_mean),
            "median": finite_or_none(quality.overall_median),
            "low": SSIM_LOW,
            "low_fraction": finite_or_none(
                np.mean(final.ssim[np.isfinite(final.ssim)] < SSIM_LOW)
                if np.isfinite(final.ssim).any()
                else float("nan")
            ),
        },
    }
