"""Figures and their numbers for a tomogram: the crack paper's and the particle papers'.

Called by :mod:`services.analysis.tomo_live` after the crack map and after the particle stage.
Each function writes the numbers behind its figures as Tiled arrays / tables through the result
writer, renders the figures (``figures/<name>``) and returns the metadata to add. Lengths are in
um when the voxel size is known, in px otherwise (never "um" for pixels).

``analysis/<uid>/cracks``:

``slice_depth``                    float64 (Z,) depth of each slice centre from the separator
                                   side, ``(z + 0.5) * voxel``
``layer_correlation``              table, one row per layer: layer, z_start, z_stop,
                                   depth_start, depth_stop, slope, intercept, pearson_r,
                                   n_samples (damage vs particle density, seed Fig. 5f)
``damage_distribution_top_bottom`` float64 (2, bins): pooled damage distribution of the layer
                                   at the separator (row 0) and at the collector (row 1), on
                                   ``histogram_edges`` (seed Fig. 4f)
figures                            damage_top, damage_bottom, particle_density_top,
                                   particle_density_bottom, depth_profile, correlation,
                                   layer_correlation, damage_distribution_top_bottom

``analysis/<uid>/particles``:

``flawed_fraction_by_slices``      float64 (10,) flawed fraction when k = 1..10 flawed slices
                                   are required (particles not touching the border)
``detachment_by_size``             float64 (2, bins) detachment probability of the small (row 0)
                                   and large (row 1) particles (only with a known voxel size)
``detachment_by_size_counts``      int64 (2, bins) the same as counts
``detachment_vs_volume``           float64 (n, 2) volume (um^3 or voxels), detachment
``flaw_gallery``                   float32 (n, 10, 64, 64) scored slices of the flagged
                                   particles (NaN outside the particle), ``flaw_gallery_labels``
                                   (n,), ``flaw_gallery_scores`` (n, 10)
figures                            sizes, detachment, flawed, detachment_by_size,
                                   detachment_vs_volume, flawed_vs_required_slices, flaw_gallery
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

#: Flagged particles shown in the gallery at most.
GALLERY_PARTICLES = 6
GALLERY_SIZE = 64


def crack_figures(
    q: Any,
    out: ResultWriter,
    *,
    n_layers: int,
    voxel_um: float | None,
    figures_dir: Path,
    run_uid: str,
) -> dict[str, Any]:
    """Numbers and figures of the damage quantification ``q``; returns metadata to add."""
    from pipelines.cracks.layers import layer_correlation, pooled_distribution

    unit = length_unit(voxel_um)
    scale = float(voxel_um) if voxel_um else 1.0
    n_z = q.damage_density.shape[0]
    n_layers = min(n_layers, n_z)
    depth = (np.arange(n_z, dtype=np.float64) + 0.5) * scale  # slice centres
    stride = max(1, q.window // 2)
    layers = layer_correlation(
        q.particle_density, q.damage_density, n_layers=n_layers, stride=stride
    )
    top = pooled_distribution(
        q.damage_histogram, q.particle_area, int(layers.z_start[0]), int(layers.z_stop[0])
    )
    bottom = pooled_distribution(
        q.damage_histogram, q.particle_area, int(layers.z_start[-1]), int(layers.z_stop[-1])
    )
    out.array("slice_depth", depth, dims=["z"], units=unit)
    out.table_rows(
        "layer_correlation",
        {
            "layer": list(range(n_layers)),
            "z_start": layers.z_start.tolist(),
            "z_stop": layers.z_stop.tolist(),
            "depth_start": (layers.z_start * scale).tolist(),
            "depth_stop": (layers.z_stop * scale).tolist(),
            "slope": layers.slope.tolist(),
            "intercept": layers.intercept.tolist(),
            "pearson_r": layers.pearson_r.tolist(),
            "n_samples": layers.n_samples.tolist(),
        },
    )
    out.array(
        "damage_distribution_top_bottom",
        np.stack([top, bottom]),
        dims=["layer", "bin"],
        layers=["separator", "collector"],
        z_ranges=[
            [int(layers.z_start[0]), int(layers.z_stop[0])],
            [int(layers.z_start[-1]), int(layers.z_stop[-1])],
        ],
    )
    window = f"{q.window} px" + (f" ({q.window * scale:.3g} um)" if voxel_um else "")
    extent = map_extent(q.damage_density.shape, voxel_um)
    z_top, z_bottom = 0, n_z - 1

    def density_map(values: np.ndarray, z: int, what: str, cmap: str) -> Drawer:
        def draw(fig: Any) -> None:
            ax = fig.add_subplot(111)
            draw_map(
                fig,
                ax,
                values[z],
                extent=extent,
                label=f"{what} share of the {window} window",
                why_empty="NaN everywhere in this slice",
                cmap=cmap,
                vmin=0,
            )
            side = "separator" if z == z_top else "current collector"
            ax.set_title(f"{what} density, slice {z} ({depth[z]:.3g} {unit}, {side} side)")
            ax.set_xlabel(f"x ({unit})")
            ax.set_ylabel(f"y ({unit})")

        return draw

    def profile(fig: Any) -> None:
        ax = fig.add_subplot(111)
        ax.plot(depth, q.depth_profile, "o-", ms=3)
        ax.set_xlabel(f"depth from the separator ({unit})")
        ax.set_ylabel("crack area / particle area")

    def scatter(fig: Any) -> None:
        ax = fig.add_subplot(111)
        x = q.particle_density[::2, ::4, ::4].ravel()
        y = q.damage_density[::2, ::4, ::4].ravel()
        ax.plot(x, y, ",", alpha=0.3)
        xs = np.linspace(0, 1, 20)
        fit = q.volume_fit
        ax.plot(xs, fit.slope * xs + fit.intercept, "r-", label=f"r = {fit.pearson_r:.2f}")
        ax.set_xlabel("particle density")
        ax.set_ylabel("damage density")
        ax.legend()

    def by_layer(fig: Any) -> None:
        centre = 0.5 * (layers.z_start + layers.z_stop) * scale
        ax1, ax2 = fig.subplots(2, 1, sharex=True)
        ax1.plot(depth, q.layer_slope, color="0.7", lw=1, label="per slice")
        ax1.plot(centre, layers.slope, "o-", label=f"per layer ({n_layers})")
        ax1.axhline(0.0, color="k", lw=0.5)
        ax1.set_ylabel("slope of damage\nvs particle density")
        ax1.legend(fontsize=8)
        ax2.plot(depth, q.layer_pearson_r, color="0.7", lw=1)
        ax2.plot(centre, layers.pearson_r, "o-")
        ax2.axhline(0.0, color="k", lw=0.5)
        ax2.set_ylim(-1.05, 1.05)
        ax2.set_ylabel("Pearson r")
        ax2.set_xlabel(f"depth ({unit}): separator at 0, current collector at {depth[-1]:.3g}")

    def top_bottom(fig: Any) -> None:
        ax = fig.add_subplot(111)
        edges = q.histogram_edges
        for values, name, z in ((top, "separator", 0), (bottom, "collector", -1)):
            a, b = layers.z_start[z] * scale, layers.z_stop[z] * scale
            ax.stairs(values, edges, label=f"{name} layer ({a:.3g}-{b:.3g} {unit})")
        ax.set_xlabel(f"damage density (crack share of the {window} window)")
        ax.set_ylabel("probability (particle pixels)")
        ax.legend(fontsize=8)

    drawers: list[tuple[str, Drawer]] = [
        ("damage_top", density_map(q.damage_density, z_top, "crack", "inferno")),
        ("damage_bottom", density_map(q.damage_density, z_bottom, "crack", "inferno")),
        ("particle_density_top", density_map(q.particle_density, z_top, "particle", "viridis")),
        (
            "particle_density_bottom",
            density_map(q.particle_density, z_bottom, "particle", "viridis"),
        ),
        ("depth_profile", profile),
        ("correlation", scatter),
        ("layer_correlation", (by_layer, (6.0, 5.0))),
        ("damage_distribution_top_bottom", top_bottom),
    ]
    paths = publish_figures(out, figures_dir, "cracks", drawers, run_uid=run_uid)
    return {
        "figures": paths,
        "length_unit": unit,
        "voxel_size_um": voxel_um,
        "layer_fit_summary": {
            "n_layers": n_layers,
            "slope_separator": finite_or_none(layers.slope[0]),
            "pearson_r_separator": finite_or_none(layers.pearson_r[0]),
            "slope_collector": finite_or_none(layers.slope[-1]),
            "pearson_r_collector": finite_or_none(layers.pearson_r[-1]),
        },
    }


def particle_figures(
    stats: Any,
    table: np.ndarray,
    out: ResultWriter,
    *,
    volume: np.ndarray,
    labels: np.ndarray,
    voxel_um: float | None,
    size_threshold_um: float,
    min_flawed_slices: int,
    figures_dir: Path,
    run_uid: str,
) -> dict[str, Any]:
    """Numbers and figures of the particle stage; returns metadata to add (incl. figures)."""
    from pipelines.particles.gallery import gallery_order, particle_slice_crops
    from pipelines.particles.stats import detachment_by_size, flawed_fraction_by_required_slices

    unit = length_unit(voxel_um)
    scale = float(voxel_um) if voxel_um else 1.0
    inner = table[~np.asarray(table["touches_border"], dtype=bool)]
    n_slices = int(table["slice_scores"].shape[1]) if table["slice_scores"].ndim == 2 else 10
    by_slices = flawed_fraction_by_required_slices(inner["flawed_slices"], n_slices)
    out.array("flawed_fraction_by_slices", by_slices, dims=["required_slices"], first=1)
    volume_unit = f"{unit}^3" if voxel_um else "voxels"
    volumes = np.asarray(inner["volume_voxels"], dtype=np.float64) * scale**3
    detachment = np.asarray(inner["detachment"], dtype=np.float64)
    diameter = np.asarray(inner["equivalent_diameter_px"], dtype=np.float64) * scale
    if len(inner):
        out.array(
            "detachment_vs_volume",
            np.stack([volumes, detachment], axis=1),
            dims=["particle", "volume_detachment"],
            units=[volume_unit, "1"],
        )
    groups = None
    if voxel_um:
        groups = detachment_by_size(
            diameter, detachment, threshold=size_threshold_um, bins=len(stats.detachment_counts)
        )
        out.array(
            "detachment_by_size",
            np.stack([groups.small_probability, groups.large_probability]),
            dims=["group", "bin"],
            groups=["small", "large"],
            threshold_um=size_threshold_um,
        )
        out.array(
            "detachment_by_size_counts",
            np.stack([groups.small_counts, groups.large_counts]),
            dims=["group", "bin"],
        )
    rows = gallery_order(table["flawed"], table["slice_scores"], GALLERY_PARTICLES)
    crops = [
        particle_slice_crops(
            volume, labels, int(table["label"][r]), table["slice_z"][r], size=GALLERY_SIZE
        )
        for r in rows
    ]
    if crops:
        out.array("flaw_gallery", np.stack(crops), dims=["particle", "slice", "row", "col"])
        out.array("flaw_gallery_labels", table["label"][rows].astype(np.int32), dims=["particle"])
        out.array(
            "flaw_gallery_scores",
            table["slice_scores"][rows].astype(np.float32),
            dims=["particle", "slice"],
        )

    def sizes(fig: Any) -> None:
        ax = fig.add_subplot(111)
        ax.stairs(stats.size_counts, stats.size_edges_um)
        ax.set_xlabel(f"equivalent diameter ({unit})")
        ax.set_ylabel("particles")

    def detachment_histogram(fig: Any) -> None:
        ax = fig.add_subplot(111)
        ax.stairs(stats.detachment_counts, stats.detachment_edges)
        ax.set_xlabel("degree of detachment (surface share facing pore)")
        ax.set_ylabel("particles")

    def flawed(fig: Any) -> None:
        ax = fig.add_subplot(111)
        bars = [("all", stats.overall)]
        if voxel_um:
            bars += [("small", stats.small), ("large", stats.large)]
        ax.bar([g for g, _ in bars], [np.nan_to_num(s.flawed_fraction) for _, s in bars])
        ax.set_ylabel("flawed fraction")
        ax.set_ylim(0, 1)

    def size_groups(fig: Any) -> None:
        ax = fig.add_subplot(111)
        edges = stats.detachment_edges
        if groups is None:
            total = stats.detachment_counts.sum()
            ax.stairs(stats.detachment_counts / max(total, 1), edges, label="all particles")
            ax.set_title("voxel size unknown: no small / large split", fontsize=9)
        else:
            thr = f"{size_threshold_um:g} um"
            n_small, n_large = int(groups.small_counts.sum()), int(groups.large_counts.sum())
            ax.stairs(groups.small_probability, edges, label=f"small (< {thr}), n = {n_small}")
            ax.stairs(groups.large_probability, edges, label=f"large (>= {thr}), n = {n_large}")
        ax.set_xlabel("degree of detachment")
        ax.set_ylabel("probability")
        ax.legend(fontsize=8)

    def against_volume(fig: Any) -> None:
        ax = fig.add_subplot(111)
        if groups is None:
            ax.plot(volumes, detachment, "o", ms=3)
        else:
            small = diameter < size_threshold_um
            ax.plot(volumes[small], detachment[small], "o", ms=3, label="small")
            ax.plot(volumes[~small], detachment[~small], "s", ms=3, label="large")
            ax.legend(fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(f"particle volume ({volume_unit})")
        ax.set_ylabel("degree of detachment")
        ax.set_ylim(-0.02, 1.02)

    def required_slices(fig: Any) -> None:
        ax = fig.add_subplot(111)
        k = np.arange(1, n_slices + 1)
        ax.plot(k, by_slices, "o-")
        rule = by_slices[min_flawed_slices - 1]
        ax.plot([min_flawed_slices], [rule], "r*", ms=12, label=f"rule: >= {min_flawed_slices}")
        ax.set_xticks(k)
        ax.set_xlabel(f"flawed slices required (of {n_slices})")
        ax.set_ylabel("flawed fraction")
        ax.set_ylim(0, 1)
        ax.set_title(f"{len(inner)} particles not touching the border", fontsize=9)
        ax.legend(fontsize=8)

    def gallery(fig: Any) -> None:
        if not crops:
            ax = fig.add_subplot(111)
            ax.axis("off")
            ax.text(0.5, 0.5, "no particle flagged as flawed", ha="center", va="center")
            return
        axes = np.atleast_2d(fig.subplots(len(crops), n_slices))
        for i, (row, stack) in enumerate(zip(rows, crops, strict=True)):
            finite = stack[np.isfinite(stack)]
            lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
            for j in range(n_slices):
                ax = axes[i, j]
                ax.imshow(stack[j], cmap="gray", vmin=lo, vmax=hi)
                ax.set_xticks([])
                ax.set_yticks([])
                score = float(table["slice_scores"][row, j])
                ax.set_title(f"z{int(table['slice_z'][row, j])} {score:.2f}", fontsize=6)
            axes[i, 0].set_ylabel(f"particle {int(table['label'][row])}", fontsize=7)

    gallery_size = (1.0 * n_slices, 1.1 * max(1, len(crops)) + 0.3)
    drawers: list[tuple[str, Drawer]] = [
        ("sizes", sizes),
        ("detachment", detachment_histogram),
        ("flawed", flawed),
        ("detachment_by_size", size_groups),
        ("detachment_vs_volume", against_volume),
        ("flawed_vs_required_slices", required_slices),
        ("flaw_gallery", (gallery, gallery_size)),
    ]
    paths = publish_figures(out, figures_dir, "particles", drawers, run_uid=run_uid)
    return {"figures": paths, "flaw_gallery_particles": len(crops)}
