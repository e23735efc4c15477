"""The one result layout: names the writers, the report and the page share."""

from __future__ import annotations

import asyncio
import json
from dataclasses import fields
from pathlib import Path

import httpx

from services.core import layout
from services.core.settings import load_settings
from services.web.app import create_app

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_key_is_its_own_name():
    # a key constant spelled differently from its field (a copy-paste slip) would send the
    # writer and the page to two different nodes
    for group in (layout.FRAMES, layout.XANES, layout.CRACKS, layout.PARTICLES):
        for f in fields(group):
            if f.name != "pipeline":
                assert getattr(group, f.name) == f.name
    assert {s.value for s in layout.FINAL_STATUSES} < {s.value for s in layout.Status}
    assert layout.Status.RUNNING not in layout.FINAL_STATUSES


def test_readme_documents_every_result_key():
    text = README.read_text()
    section = text[text.index("## Layout in Tiled") : text.index("### Reading results from Python")]
    for group in (layout.FRAMES, layout.XANES, layout.CRACKS, layout.PARTICLES):
        for f in fields(group):
            assert getattr(group, f.name) in section, f"README layout lacks {f.name}"
    for status in layout.Status:
        assert status.value in section, f"README layout lacks status {status.value}"


def test_live_page_serves_the_layout_as_json(tmp_path):
    app = create_app(load_settings(data_dir=str(tmp_path)), "http://127.0.0.1:1")

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://page") as client:
            return await client.get("/layout.json")

    resp = asyncio.run(get())
    assert resp.status_code == 200
    served = resp.json()
    assert served == json.loads(json.dumps(layout.layout_json()))
    assert served["xanes"]["global_shift"] == "global_shift"
    assert served["status"]["failed"] == "failed"
    assert served["particles"]["pipeline"] == "particles"
    assert set(served["final_statuses"]) == {"complete", "incomplete", "failed", "interrupted"}
