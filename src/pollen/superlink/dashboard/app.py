"""The dashboard's routes: pages of the federation, a run and security; a run's
figures per round as JSON (its charts); ``/events`` (live updates); ``/metrics``;
static files shipped in the package.

State reads (and the formatting of ``/metrics``) run on a thread of the dashboard's
own, one at a time, so that a page never holds the event loop that serves nodes,
and a browser reloading pages never takes the worker threads that write blobs.
A request with the header ``X-Pollen-Part: main`` gets only the page's ``<main>``:
what a live page swaps in when an event concerns it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from pollen.records.run_reports import RunDetails
from pollen.superlink.dashboard import pages
from pollen.superlink.dashboard.guard import Guard, TokenCheck
from pollen.superlink.dashboard.html import Page
from pollen.superlink.dashboard.live import EventStream
from pollen.superlink.dispatch import Dispatcher
from pollen.superlink.request_ids import LARGEST
from pollen.superlink.telemetry import EXPOSITION_TYPE

STATIC = Path(__file__).parent / "static"
MAX_RUNS_SHOWN = 200
MAX_AUDIT_ROWS = 1000

T = TypeVar("T")

PART_HEADER = "x-pollen-part"
"""``X-Pollen-Part: main``: only the page's ``<main>`` (a live page refreshing)."""


class Readings:
    """Calls of the State for the pages, on one thread of their own."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pollen-dashboard")

    async def __call__(self, read: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(read, *args))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def dashboard_app(dispatcher: Dispatcher, read: Readings, check: TokenCheck | None) -> Guard:
    """The whole HTTP application: `Guard` in front of the routes."""
    state, clock, telemetry = dispatcher.state, dispatcher.clock, dispatcher.telemetry

    async def federation(request: Request) -> Response:
        nodes = await read(state.node_summaries)
        runs = await read(state.list_runs)
        moved, addresses = telemetry.blob_bytes(), dispatcher.addresses()  # in memory, here
        page = pages.federation(nodes, runs[-MAX_RUNS_SHOWN:], clock(), moved, addresses)
        return _html(request, page)

    async def run_details(request: Request) -> RunDetails:
        run_id = request.path_params["run_id"]
        details = await read(state.run_details, run_id) if run_id <= LARGEST else None
        if details is None:
            raise HTTPException(404, f"Run {run_id} does not exist on this SuperLink.")
        return details

    async def run(request: Request) -> Response:
        details = await run_details(request)
        moved = telemetry.run_bytes.of(details.summary.run_id)  # in memory, here
        return _html(request, pages.run(details, clock(), moved))

    async def run_rounds(request: Request) -> Response:
        return JSONResponse(pages.chart_data(await run_details(request)))

    async def security(request: Request) -> Response:
        events = await read(state.list_audit, MAX_AUDIT_ROWS)
        return _html(request, pages.security(events, clock()))

    async def metrics(request: Request) -> Response:
        # ~3 ms for ~450 lines: formatted beside the state reads, off the event loop
        return Response(await read(telemetry.exposition), media_type=EXPOSITION_TYPE)

    async def not_found(request: Request, exc: Exception) -> Response:
        detail = exc.detail if isinstance(exc, HTTPException) else ""
        if not detail or detail == "Not Found":
            detail = "There is no page at this address."
        return _html(request, pages.not_found(detail), 404)

    routes: list[BaseRoute] = [
        Route("/", federation),
        Route("/runs/{run_id:int}", run),
        Route("/api/runs/{run_id:int}/rounds", run_rounds),
        Route("/security", security),
        Route("/events", EventStream(telemetry.events)),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found})
    return Guard(app, check, telemetry.security_changed)


def _html(request: Request, page: Page, status: int = 200) -> Response:
    if request.headers.get(PART_HEADER) == "main":
        return HTMLResponse(page.main(), status, headers={"Vary": "X-Pollen-Part"})
    return HTMLResponse(page.document(), status, headers={"Vary": "X-Pollen-Part"})
