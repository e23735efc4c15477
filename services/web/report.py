"""``beamwatch report``: a self-contained HTML report of a finished run, for sharing.

Everything is read from Tiled (``raw/<uid>`` and ``analysis/<uid>/*``); figures are embedded as
PNG data URIs, so the file opens offline and can be mailed as it is.
"""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

import numpy as np

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.2em; margin-top: 1.5em; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #f0f0f0; } .status-failed { color: #b00; } .status-complete { color: #070; }
figure { display: inline-block; margin: 0.5em; } img { max-width: 560px; }
"""


def _png_data_uri(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _metadata_table(md: dict[str, Any]) -> str:
    rows = []
    for key, value in md.items():
        if key in ("traceback", "parameters", "figures"):
            continue
        text = json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)
        rows.append(f"<tr><th>{html.escape(key)}</th><td>{html.escape(text[:300])}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _frame_table(df: Any, limit: int = 50) -> str:
    head = df.head(limit)
    cells = "".join(f"<th>{html.escape(str(c))}</th>" for c in head.columns)
    body = []
    for row in head.itertuples(index=False):
        body.append(
            "<tr>"
            + "".join(
                f"<td>{v:.4g}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>"
                for v in row
            )
            + "</tr>"
        )
    more = f"<p>{len(df) - limit} more rows in Tiled.</p>" if len(df) > limit else ""
    return f"<table><tr>{cells}</tr>{''.join(body)}</table>{more}"


def build_report(client: Any, uid: str) -> str:
    """The HTML text of the report of run ``uid`` (raises KeyError if the run is unknown)."""
    raw = client["raw"][uid]
    start = dict(raw.metadata.get("start") or {})
    stop = dict(raw.metadata.get("stop") or {})
    parts = [
        f"<h1>beamwatch report: {html.escape(str(start.get('plan_name', 'run')))} "
        f"{html.escape(uid)}</h1>",
        f"<p>scan_id {html.escape(str(start.get('scan_id', '?')))}, exit status "
        f"{html.escape(str(stop.get('exit_status', 'running')))}, "
        f"events {html.escape(json.dumps(stop.get('num_events', {})))}</p>",
    ]
    analysis = client["analysis"][uid] if uid in client["analysis"] else {}
    for name in analysis:
        node = analysis[name]
        md = dict(node.metadata)
        status = str(md.get("status", "?"))
        parts.append(
            f"<h2>{html.escape(name)} <span class='status-{html.escape(status)}'>"
            f"({html.escape(status)})</span></h2>"
        )
        if md.get("error"):
            parts.append(f"<pre>{html.escape(str(md['error']))}</pre>")
        parts.append(_metadata_table(md))
        if "figures" in node:
            for fig_name in node["figures"]:
                uri = _png_data_uri(node["figures"][fig_name].read())
                parts.append(
                    f"<figure><img alt='{html.escape(fig_name)}' src='{uri}'>"
                    f"<figcaption>{html.escape(fig_name)}</figcaption></figure>"
                )
        for table_name in ("frames", "table", "deformation"):
            if table_name in node:
                parts.append(f"<h3>{html.escape(table_name)}</h3>")
                parts.append(_frame_table(node[table_name].read()))
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>beamwatch {html.escape(uid)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )
