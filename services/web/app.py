"""The live page: a small static web app that reads everything from Tiled, in the browser.

The server only hands out the page, its ES modules, the Plotly bundle (from the installed
``plotly`` package, so the page works with no internet), ``config.json`` (where Tiled is) and
``layout.json`` (the result keys and statuses of ``services.core.layout``, which the analysis
writes by). The browser
then reads runs and results from Tiled's HTTP API and listens on Tiled's websocket subscriptions
(``/api/v1/stream/single/...``) for new frames, rows and slices, so the page shows the same thing
whether the analysis ran a second ago or last month. The embedded Tiled server allows anonymous
reads and lists this page's origin in ``allow_origins`` (``services.tiled.server``).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from services.core.layout import layout_json
from services.core.settings import BeamwatchSettings

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")


def plotly_bundle() -> Path:
    """``plotly.min.js`` as shipped inside the ``plotly`` Python package.

    Raises
    ------
    FileNotFoundError
        If the ``plotly`` package (a declared dependency) is missing or has no bundle.
    """
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the plotly package is not installed (pip install -e .)")
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: reinstall plotly")
    return path


def create_app(settings: BeamwatchSettings, tiled_url: str | None = None) -> Starlette:
    """The ASGI app of the live page for the Tiled server at ``tiled_url``."""
    bundle = plotly_bundle()
    config = {
        "tiled_url": (tiled_url or settings.tiled_url).rstrip("/"),
        "poll_seconds": settings.web.poll_seconds,
        "feedback_address": settings.bus.feedback_address,
        "bus_address": settings.bus.in_address,
    }

    async def index(_request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-cache"})

    async def config_json(_request: Request) -> Response:
        return JSONResponse(config, headers={"cache-control": "no-cache"})

    async def layout(_request: Request) -> Response:
        return JSONResponse(layout_json(), headers={"cache-control": "no-cache"})

    async def plotly_js(_request: Request) -> Response:
        return FileResponse(bundle, media_type="text/javascript")

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/", index),
            Route("/config.json", config_json),
            Route("/layout.json", layout),
            Route("/vendor/plotly.min.js", plotly_js),
            Route("/healthz", healthz),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ]
    )


def serve(settings: BeamwatchSettings, tiled_url: str | None = None) -> None:
    """Serve the live page until SIGINT/SIGTERM (uvicorn handles both)."""
    import uvicorn

    app = create_app(settings, tiled_url)
    logger.info(
        "live page on %s (reading Tiled at %s)", settings.web_url, tiled_url or settings.tiled_url
    )
    uvicorn.run(
        app,
        host=settings.web.host,
        port=settings.web.port,
        log_level="warning",
        access_log=False,
        log_config=None,
    )
