"""``beamwatch report``: a self-contained HTML report of finished runs, for sharing.

Everything is read from Tiled (``raw/<uid>`` and ``analysis/<uid>/*``); figures are embedded as
PNG data URIs, so the file opens offline and can be mailed as it is.

With several runs the report opens with a comparison ("1C vs 0.1C", "pristine vs cycled"):
their particle size, detachment and edge-energy distributions, flawed fractions (also against
the number of flawed slices required) and damage against depth overlaid in one figure each,
and a table of their numbers. Each run's own section follows.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.2em; margin-top: 1.5em; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #f0f0f0; } .status-failed { color: #b00; } .status-complete { color: #070; }
figure { display: inline-block; margin: 0.5em; } img { max-width: 560px; }
img.wide { max-width: 1000px; }
"""

#: Tables shown (first rows) in each run's section.
RESULT_TABLES = ("frames", "table", "deformation", "layer_correlation", "particle_motion")
#: Figures shown wide (many panels).
WIDE_FIGURES = ("flaw_gallery", "kinematics")
#: Bins of the overlaid edge-energy distributions.
EDGE_BINS = 40


def _png_data_uri(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(name: str, uri: str) -> str:
    wide = " class='wide'" if name in WIDE_FIGURES or name.startswith("compare_") else ""
    return (
        f"<figure><img{wide} alt='{html.escape(name)}' src='{uri}'>"
        f"<figcaption>{html.escape(name)}</figcaption></figure>"
    )


def _metadata_table(md: dict[str, Any]) -> str:
    rows = []
    for key, value in md.items():
        if key in ("traceback", "parameters", "figures"):
            continue
        text = json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)
        rows.append(f"<tr><th>{html.escape(key)}</th><td>{html.escape(text[:300])}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _cell(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return f"<td>{value:.4g}</td>"
    return f"<td>{html.escape(str(value))}</td>"


def _frame_table(df: Any, limit: int = 50) -> str:
    head = df.head(limit)
    cells = "".join(f"<th>{html.escape(str(c))}</th>" for c in head.columns)
    body = [
        "<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in head.itertuples(index=False)
    ]
    more = f"<p>{len(df) - limit} more rows in Tiled.</p>" if len(df) > limit else ""
    return f"<table><tr>{cells}</tr>{''.join(body)}</table>{more}"


def _run_section(client: Any, uid: str, *, level: int) -> list[str]:
    raw = client["raw"][uid]
    start = dict(raw.metadata.get("start") or {})
    stop = dict(raw.metadata.get("stop") or {})
    h, h2, h3 = f"h{level}", f"h{level + 1}", f"h{level + 2}"
    parts = [
        f"<{h} id='run-{html.escape(uid)}'>{html.escape(str(start.get('plan_name', 'run')))} "
        f"{html.escape(uid)}</{h}>",
        f"<p>{html.escape(run_label(start, uid))}: scan_id "
        f"{html.escape(str(start.get('scan_id', '?')))}, exit status "
        f"{html.escape(str(stop.get('exit_status', 'running')))}, "
        f"events {html.escape(json.dumps(stop.get('num_events', {})))}</p>",
    ]
    analysis = client["analysis"][uid] if uid in client["analysis"] else {}
    for name in analysis:
        node = analysis[name]
        md = dict(node.metadata)
        status = str(md.get("status", "?"))
        parts.append(
            f"<{h2}>{html.escape(name)} <span class='status-{html.escape(status)}'>"
            f"({html.escape(status)})</span></{h2}>"
        )
        if md.get("error"):
            parts.append(f"<pre>{html.escape(str(md['error']))}</pre>")
        parts.append(_metadata_table(md))
        if "figures" in node:
            for fig_name in node["figures"]:
                parts.append(_figure(fig_name, _png_data_uri(node["figures"][fig_name].read())))
        for table_name in RESULT_TABLES:
            if table_name in node:
                parts.append(f"<{h3}>{html.escape(table_name)}</{h3}>")
                parts.append(_frame_table(node[table_name].read()))
    return parts


# ------------------------------------------------------------------------------- comparison
def run_label(start: dict[str, Any], uid: str) -> str:
    """How a run is named in the comparison: its sample name, else its scan id, else (an
    import, which has neither) the file or folder it was read from, else its plan; and uid."""
    name = start.get("sample_name") or start.get("sample")
    if not name and start.get("scan_id") is not None:
        name = f"scan {start['scan_id']}"
    if not name:
        source = start.get("beamwatch_source") or {}
        files = source.get("files") or []
        if len(files) == 1:
            name = str(files[0])
        elif source.get("folder"):
            name = f"{Path(str(source['folder'])).name}/"
    name = name or start.get("plan_name") or "run"
    return f"{name} [{uid[:8]}]"


def latest_result(analysis: Any, pipeline: str) -> Any | None:
    """The newest complete container of ``pipeline`` (``name`` or a re-analysis ``name-rN``)."""
    found: list[tuple[int, str]] = []
    for key in analysis:
        match = re.fullmatch(rf"{re.escape(pipeline)}(?:-r(\d+))?", key)
        if match:
            found.append((int(match.group(1) or 0), key))
    for _, key in sorted(found, reverse=True):
        node = analysis[key]
        if node.metadata.get("status") == "complete":
            return node
    return None


def probability(counts: np.ndarray) -> np.ndarray:
    """Counts as a probability distribution; NaN everywhere when there is nothing."""
    values = np.asarray(counts, dtype=np.float64)
    total = values.sum()
    return values / total if total > 0 else np.full(values.shape, np.nan)


@dataclass
class RunNumbers:
    """What the comparison overlays for one run (None where the run has no such result)."""

    uid: str
    label: str
    size_unit: str | None = None
    size_edges: np.ndarray | None = None
    size_probability: np.ndarray | None = None
    detachment_edges: np.ndarray | None = None
    detachment_probability: np.ndarray | None = None
    particles: int | None = None
    flawed_fraction: float | None = None
    mean_detachment: float | None = None
    flawed_fraction_by_slices: np.ndarray | None = None
    depth_unit: str | None = None
    slice_depth: np.ndarray | None = None
    depth_profile: np.ndarray | None = None
    crack_fraction: float | None = None
    layer_fit_summary: dict[str, Any] = field(default_factory=dict)
    edge_energy: np.ndarray | None = None  # finite values of the map (eV)


def run_numbers(client: Any, uid: str) -> RunNumbers:
    """Read from Tiled what the comparison needs of run ``uid`` (KeyError if unknown)."""
    start = dict(client["raw"][uid].metadata.get("start") or {})
    numbers = RunNumbers(uid=uid, label=run_label(start, uid))
    if uid not in client["analysis"]:
        return numbers
    analysis = client["analysis"][uid]
    particles = latest_result(analysis, "particles")
    if particles is not None:
        md = particles.metadata
        unit = "um" if "size_edges_um" in particles else "px"
        # a distribution of no particle (every one cut by the volume border) is not drawn
        if f"size_edges_{unit}" in particles and "size_counts" in particles:
            counts = particles["size_counts"].read()
            if np.sum(counts) > 0:
                numbers.size_unit = unit
                numbers.size_edges = particles[f"size_edges_{unit}"].read()
                numbers.size_probability = probability(counts)
        if "detachment_counts" in particles:
            counts = particles["detachment_counts"].read()
            if np.sum(counts) > 0:
                numbers.detachment_edges = particles["detachment_edges"].read()
                numbers.detachment_probability = probability(counts)
        if "flawed_fraction_by_slices" in particles:
            numbers.flawed_fraction_by_slices = particles["flawed_fraction_by_slices"].read()
        numbers.particles = md.get("particles")
        numbers.flawed_fraction = md.get("flawed_fraction")
        numbers.mean_detachment = md.get("mean_detachment")
    cracks = latest_result(analysis, "cracks")
    if cracks is not None and "depth_profile" in cracks:
        md = cracks.metadata
        numbers.depth_profile = cracks["depth_profile"].read()
        if "slice_depth" in cracks:
            numbers.slice_depth = cracks["slice_depth"].read()
            numbers.depth_unit = md.get("length_unit", "px")
        else:
            numbers.slice_depth = np.arange(numbers.depth_profile.size, dtype=np.float64)
            numbers.depth_unit = "px"
        numbers.crack_fraction = md.get("crack_fraction")
        numbers.layer_fit_summary = dict(md.get("layer_fit_summary") or {})
    xanes = latest_result(analysis, "xanes")
    if xanes is not None and "edge_energy" in xanes:
        edge = np.asarray(xanes["edge_energy"].read(), dtype=np.float64)
        numbers.edge_energy = edge[np.isfinite(edge)]
    return numbers


def edge_energy_distributions(
    runs: Sequence[RunNumbers], bins: int = EDGE_BINS
) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """Common bin edges over every run's edge energies and each run's probabilities."""
    values = [r.edge_energy for r in runs if r.edge_energy is not None and r.edge_energy.size]
    if not values:
        return None
    low = min(float(v.min()) for v in values)
    high = max(float(v.max()) for v in values)
    if high <= low:
        high = low + 1.0
    edges = np.linspace(low, high, bins + 1)
    out = []
    for r in runs:
        if r.edge_energy is None or r.edge_energy.size == 0:
            out.append(np.full(bins, np.nan))
        else:
            out.append(probability(np.histogram(r.edge_energy, bins=edges)[0]))
    return edges, out


def _comparison_figures(
    runs: Sequence[RunNumbers],
) -> list[tuple[str, Callable[[Any], None], list[str]]]:
    """(name, drawer, labels of the runs the figure has nothing of) per overlay figure."""
    drawers: list[tuple[str, Callable[[Any], None], list[str]]] = []

    def without(shown: Sequence[RunNumbers]) -> list[str]:
        return [r.label for r in runs if not any(r is s for s in shown)]

    sized = [r for r in runs if r.size_probability is not None]
    if sized:
        units = sorted({str(r.size_unit) for r in sized})

        def sizes(fig: Any) -> None:
            axes = np.atleast_1d(fig.subplots(1, len(units)))
            for ax, unit in zip(axes, units, strict=True):
                for r in sized:
                    if r.size_unit == unit:
                        ax.stairs(r.size_probability, r.size_edges, label=r.label)
                ax.set_xlabel(f"equivalent diameter ({unit})")
                ax.set_ylabel("probability")
                ax.legend(fontsize=8)

        drawers.append(("compare_sizes", sizes, without(sized)))
    detached = [r for r in runs if r.detachment_probability is not None]
    if detached:

        def detachment(fig: Any) -> None:
            ax = fig.add_subplot(111)
            for r in detached:
                ax.stairs(r.detachment_probability, r.detachment_edges, label=r.label)
            ax.set_xlabel("degree of detachment")
            ax.set_ylabel("probability")
            ax.legend(fontsize=8)

        drawers.append(("compare_detachment", detachment, without(detached)))
    flawed = [
        r for r in runs if r.flawed_fraction is not None or r.flawed_fraction_by_slices is not None
    ]
    if flawed:

        def flaws(fig: Any) -> None:
            ax1, ax2 = fig.subplots(1, 2)
            ax1.bar(
                range(len(flawed)),
                [np.nan if r.flawed_fraction is None else r.flawed_fraction for r in flawed],
            )
            ax1.set_xticks(range(len(flawed)), [r.label for r in flawed], fontsize=7, rotation=20)
            ax1.set_ylabel("flawed fraction")
            ax1.set_ylim(0, 1)
            for r in flawed:
                if r.flawed_fraction_by_slices is not None:
                    k = np.arange(1, r.flawed_fraction_by_slices.size + 1)
                    ax2.plot(k, r.flawed_fraction_by_slices, "o-", label=r.label)
            ax2.set_xlabel("flawed slices required")
            ax2.set_ylabel("flawed fraction")
            ax2.set_ylim(0, 1)
            ax2.legend(fontsize=7)

        drawers.append(("compare_flawed", flaws, without(flawed)))
    damaged = [r for r in runs if r.depth_profile is not None]
    if damaged:
        units = sorted({str(r.depth_unit) for r in damaged})

        def damage(fig: Any) -> None:
            axes = np.atleast_1d(fig.subplots(1, len(units)))
            for ax, unit in zip(axes, units, strict=True):
                for r in damaged:
                    if r.depth_unit == unit:
                        ax.plot(r.slice_depth, r.depth_profile, "o-", ms=3, label=r.label)
                ax.set_xlabel(f"depth from the separator ({unit})")
                ax.set_ylabel("crack area / particle area")
                ax.legend(fontsize=8)

        drawers.append(("compare_damage_depth", damage, without(damaged)))
    edge = edge_energy_distributions(runs)
    if edge is not None:
        edges, dists = edge

        def edge_energy(fig: Any) -> None:
            ax = fig.add_subplot(111)
            for r, d in zip(runs, dists, strict=True):
                if np.isfinite(d).any():
                    ax.stairs(d, edges, label=r.label)
            ax.set_xlabel("edge energy (eV)")
            ax.set_ylabel("probability (pixels)")
            ax.legend(fontsize=8)

        with_edge = [r for r, d in zip(runs, dists, strict=True) if np.isfinite(d).any()]
        drawers.append(("compare_edge_energy", edge_energy, without(with_edge)))
    return drawers


def comparison_rows(runs: Sequence[RunNumbers]) -> list[dict[str, Any]]:
    """One row of numbers per run, as the comparison table shows them (None = no result)."""
    rows = []
    for r in runs:
        edge = r.edge_energy if r.edge_energy is not None and r.edge_energy.size else None
        rows.append(
            {
                "run": r.label,
                "particles": r.particles,
                "flawed_fraction": r.flawed_fraction,
                "mean_detachment": r.mean_detachment,
                "crack_fraction": r.crack_fraction,
                "slope_separator": r.layer_fit_summary.get("slope_separator"),
                "slope_collector": r.layer_fit_summary.get("slope_collector"),
                "edge_energy_mean_eV": None if edge is None else float(edge.mean()),
                "edge_energy_sd_eV": None if edge is None else float(edge.std()),
            }
        )
    return rows


def _comparison_section(client: Any, uids: Sequence[str]) -> list[str]:
    from services.analysis.figures import png_bytes

    runs = [run_numbers(client, uid) for uid in uids]
    parts = ["<h2 id='comparison'>Comparison</h2>"]
    rows = comparison_rows(runs)
    header = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(_cell("-" if v is None else v) for v in row.values()) + "</tr>"
        for row in rows
    )
    parts.append(f"<table class='comparison'><tr>{header}</tr>{body}</table>")
    drawers = _comparison_figures(runs)
    if not drawers:
        parts.append("<p>These runs have no distributions to overlay.</p>")
    for name, draw, missing in drawers:
        data = png_bytes(draw, size=(8.0, 4.0))
        parts.append(_figure(name, "data:image/png;base64," + base64.b64encode(data).decode()))
        if missing:
            parts.append(f"<p>{name}: not available for {html.escape(', '.join(missing))}</p>")
    return parts


def build_report(client: Any, uids: str | Sequence[str]) -> str:
    """The HTML text of the report of one run or several (raises KeyError for an unknown run).

    Parameters
    ----------
    client : tiled client
        The catalog root (holding ``raw`` and ``analysis``).
    uids : str or sequence of str
        One run uid, or several: the report then starts with their comparison.
    """
    runs = [uids] if isinstance(uids, str) else list(uids)
    if not runs:
        raise ValueError("give at least one run uid")
    for uid in runs:
        if uid not in client["raw"]:
            raise KeyError(uid)
    if len(runs) == 1:
        start = dict(client["raw"][runs[0]].metadata.get("start") or {})
        title = f"{start.get('plan_name', 'run')} {runs[0]}"
        parts = [f"<h1>beamwatch report: {html.escape(title)}</h1>"]
        parts += _run_section(client, runs[0], level=1)[1:]
    else:
        title = f"{len(runs)} runs"
        parts = [f"<h1>beamwatch report: comparison of {len(runs)} runs</h1>"]
        parts += _comparison_section(client, runs)
        for uid in runs:
            parts += _run_section(client, uid, level=2)
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>beamwatch {html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )
