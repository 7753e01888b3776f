"""``/events``: the SuperLink's events as Server-Sent Events, for the live pages.

Each open stream is a `Watcher` of the SuperLink's `Events`: what arrived since the
last write is sent at once, each distinct event once (a round of 1000 answered
tasks is one ``task`` line, not 1000), at most one write every `PACE_SECONDS`. A
comment every `HEARTBEAT_SECONDS` keeps proxies from closing an idle stream; the
stream ends when the browser leaves or the SuperLink stops (`Events.close`), so that
a shutdown never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Coroutine
from typing import Any

from starlette.responses import Response

from pollen.superlink.dashboard.guard import Receive, Scope, Send
from pollen.superlink.events import Event, Events, Watcher

HEARTBEAT_SECONDS = 15.0
PACE_SECONDS = 0.25
"""The shortest time between two writes on one stream: a browser is told of a busy
federation four times a second, not at every answered task."""
RECONNECT_MS = 1000
"""How soon a browser reconnects after the stream broke (the SuperLink restarted)."""

TOO_MANY = (
    "Too many live pages are open on this dashboard; close some, or reload this page "
    "later (it is still readable without live updates).\n"
)


class EventStream:
    """The ASGI app of ``/events``."""

    def __init__(self, events: Events, heartbeat: float = HEARTBEAT_SECONDS) -> None:
        self.events = events
        self.heartbeat = heartbeat

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = self.events.watch()
        if watcher is None:
            refusal = Response(
                TOO_MANY, 503, headers={"Retry-After": "10"}, media_type="text/plain"
            )
            await refusal(scope, receive, send)
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"x-accel-buffering", b"no"),
                    ],
                }
            )
            if scope["method"] == "HEAD":
                await send({"type": "http.response.body", "body": b""})
                return
            await _chunk(send, f"retry: {RECONNECT_MS}\n: connected\n\n")
            await _until_first(self._relay(watcher, send), _disconnected(receive))
            await send({"type": "http.response.body", "body": b""})
        finally:
            self.events.unwatch(watcher)

    async def _relay(self, watcher: Watcher, send: Send) -> None:
        """Write what the watcher gets until the SuperLink stops, at most one write a
        `PACE_SECONDS` (what arrives meanwhile is written together)."""
        while True:
            try:
                events = await asyncio.wait_for(watcher.take(), self.heartbeat)
            except TimeoutError:
                await _chunk(send, ": heartbeat\n\n")
                continue
            if not events:
                return
            await _chunk(send, "".join(_message(e) for e in events))
            await asyncio.sleep(PACE_SECONDS)


def _message(event: Event) -> str:
    return f"data: {json.dumps({'kind': event.kind, 'run': event.run_id})}\n\n"


async def _chunk(send: Send, text: str) -> None:
    await send({"type": "http.response.body", "body": text.encode(), "more_body": True})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _until_first(*waits: Coroutine[Any, Any, None]) -> None:
    """Run the coroutines ``waits`` until one returns; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    for task in done:
        task.result()
