"""The web console (docs/console.md): server-rendered pages at ``/`` of ``marketprism api``, progressively enhanced
with the vendored htmx and its SSE extension (``static/VENDORED.md``); no Node build, no network.

``routes`` (thin page and fragment routes), ``session`` (cookie session and CSRF), ``pages`` (what the pages
show, from the live views), ``charts`` (server-side SVG geometry), ``series`` (topic-tail series and detector
replay). :func:`mount` adds it to the API application.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")


def mount(app: FastAPI) -> None:
    """Add the console's routes, its static files (``/static``) and its login redirect to ``app``."""
    from pipeline.api.console import routes  # type: ignore[attr-defined]

    app.include_router(routes.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_exception_handler(routes.LoginRequired, routes.login_required)
