"""What changed in the SuperLink, told to whoever watches (the dashboard's live pages).

`Telemetry` publishes here from the places that count things (a node came or went, a
task was answered, a join was refused, a run changed or moved blob bytes, a key was
revoked or a dashboard token refused); each `Watcher` keeps the events it has not
taken yet, each distinct one once, so that a burst (a round of a thousand nodes)
costs it one entry, and at most `QUEUE_SIZE` of them: a watcher that does not keep
up loses events rather than holding memory (what it shows is read again from the
State anyway, so a later event brings it up to date). Everything runs on the
SuperLink's event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

EventKind = Literal["nodes", "task", "join-refused", "run", "security"]
"""``nodes``: a node connected or left; ``task``: an instruction was answered;
``join-refused``: a join was refused; ``run``: a run was created, reported a round,
finished, failed or resumed, or a blob stream of it ended; ``security``: keys were
revoked or a dashboard request was refused."""

MAX_WATCHERS = 64
QUEUE_SIZE = 256
"""The most distinct events a watcher keeps untaken (kinds x runs)."""


@dataclass(frozen=True)
class Event:
    kind: EventKind
    run_id: int = 0
    """The run it concerns (0: none)."""


@dataclass(eq=False)
class Watcher:
    """One watcher's events not taken yet: each distinct event once, in arrival order
    (a thousand answered tasks wait as one), at most `QUEUE_SIZE` of them."""

    pending: dict[Event, None] = field(default_factory=dict)
    dropped: int = 0
    ended: bool = False
    """The SuperLink stops: no event will come any more."""
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, event: Event) -> None:
        if event in self.pending:
            return
        if len(self.pending) >= QUEUE_SIZE:
            self.dropped += 1
            return
        self.pending[event] = None
        self._wake.set()

    def end(self) -> None:
        self.ended = True
        self._wake.set()

    async def take(self) -> list[Event]:
        """The events offered since the last take (waits for one); [] once ended."""
        await self._wake.wait()
        self._wake.clear()
        if self.ended:
            return []
        events = list(self.pending)
        self.pending.clear()
        return events


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
