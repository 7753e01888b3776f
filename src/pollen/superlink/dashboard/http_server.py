"""uvicorn inside the SuperLink's event loop, on a socket bound beforehand."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn

from pollen.superlink.dashboard.guard import App
from pollen.transport.tls import ServerTls

GRACE_SECONDS = 1
"""At shutdown, how long open requests may take to finish before they are cut."""


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signals to its host: the SuperLink shuts it down."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """A running HTTP server; `stop` ends it."""

    def __init__(self, app: App, listener: socket.socket, tls: ServerTls | None) -> None:
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            proxy_headers=False,  # the address counted for wrong tokens is the peer's own
            server_header=False,
            ws="none",
            http="h11",
            timeout_graceful_shutdown=GRACE_SECONDS,
            ssl_certfile=str(tls.cert) if tls else None,
            ssl_keyfile=str(tls.key) if tls else None,
        )
        self._server = _EmbeddedServer(config)
        self._listener = listener
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serve on the listener; returns once requests are accepted."""
        self._task = asyncio.create_task(self._server.serve([self._listener]), name="dashboard")
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.005)
        if self._task.done():
            self._task.result()  # it failed to start: say why

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        self._listener.close()
