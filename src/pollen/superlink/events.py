"""What changed in the SuperLink, told to whoever watches (the dashboard's live pages).

`Telemetry` publishes here from the places that count things (a node came or went, a
task was answered, a join was refused, a run changed); each `Watcher` gets the events
in a bounded queue of its own. A watcher that does not keep up loses events rather
than holding memory: what it shows is read again from the State anyway, so one
later event brings it up to date. Everything runs on the SuperLink's event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

EventKind = Literal["nodes", "task", "join-refused", "run"]
"""``nodes``: a node connected or left; ``task``: an instruction was answered;
``join-refused``: a join was refused; ``run``: a run was created, reported a round,
finished, failed or resumed."""

MAX_WATCHERS = 64
QUEUE_SIZE = 256


@dataclass(frozen=True)
class Event:
    kind: EventKind
    run_id: int = 0
    """The run it concerns (0: none)."""


@dataclass(eq=False)
class Watcher:
    """One watcher's events; ``None`` in the queue: the SuperLink stops."""

    queue: asyncio.Queue[Event | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_SIZE + 1)  # + 1: room for the None
    )
    dropped: int = 0

    def offer(self, event: Event) -> None:
        if self.queue.qsize() >= QUEUE_SIZE:
            self.dropped += 1
        else:
            self.queue.put_nowait(event)

    def end(self) -> None:
        self.queue.put_nowait(None)


class Events:
    """Fan-out of events to at most ``max_watchers`` watchers."""

    def __init__(self, max_watchers: int = MAX_WATCHERS) -> None:
        self.max_watchers = max_watchers
        self._watchers: set[Watcher] = set()
        self.closed = False

    def publish(self, kind: EventKind, run_id: int = 0) -> None:
        if not self._watchers:
            return
        event = Event(kind, run_id)
        for watcher in self._watchers:
            watcher.offer(event)

    def watch(self) -> Watcher | None:
        """A new watcher (None: there are already as many as allowed, or the SuperLink
        stops)."""
        if self.closed or len(self._watchers) >= self.max_watchers:
            return None
        watcher = Watcher()
        self._watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    @property
    def watching(self) -> int:
        return len(self._watchers)

    def close(self) -> None:
        """The SuperLink stops: every watcher is told, none is taken any more."""
        self.closed = True
        for watcher in self._watchers:
            watcher.end()
        self._watchers.clear()
