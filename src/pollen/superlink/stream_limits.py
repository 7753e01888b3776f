"""The blob streams each party holds open on the SuperLink: how many, how long idle,
and cutting them all when a key loses access.

An open upload holds a file descriptor, a partial file and up to a flow-control
window of received bytes; an open download holds a descriptor, the chunk read from
disk and gRPC's copy of it. Unbounded, one node opening hundreds of them ran the
SuperLink out of descriptors (no other node could join) and memory. So, per API:

- a party holds at most ``limit`` blob streams at once; one more is refused as
  RESOURCE_EXHAUSTED, naming the limit and its option. A party is a key on an API
  with authentication (a node's on the Fleet API, an operator's on the Driver API),
  else the node id a Fleet request names; a Driver API without operator keys
  listens on loopback only and its streams are not counted (whoever reaches it
  may start runs anyway);
- a stream that makes no progress for ``idle_timeout`` seconds is cut: an upload
  that delivers no chunk, a download whose receiver accepts none. Its file is
  closed at once (a partial upload is deleted);
- every stream of a key is cut when the key is revoked, and those of a session
  when another process joins with its key.

A stream counts until its gRPC call has ended. A download whose receiver stops
reading cannot be ended from this side while gRPC waits on the receiver's
flow-control window: its status follows the chunk already handed to gRPC, and the
call ends when the receiver reads on or goes away. It holds no descriptor meanwhile,
and the limit bounds how many such calls one party keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from pollen.superlink.dispatch import Clock
from pollen.superlink.supervisor import Step

logger = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

DEFAULT_TRANSFERS_PER_NODE = 4
"""A SuperNode moves one blob at a time (its task's model, then its result); four
leave room for a retry and for streams of a connection that broke unnoticed."""

DEFAULT_TRANSFERS_PER_OPERATOR = 32
"""An operator may run several ServerApps at once, each moving one blob at a time."""

DEFAULT_IDLE_TIMEOUT = 30.0
"""Seconds a blob stream may go without moving a chunk (1 MiB) before it is cut."""


@dataclass(frozen=True)
class Party:
    """Who holds a stream: what the limit counts by and revocation cuts by (``key``: a key
    fingerprint, or ``node N`` without authentication), and how messages name it."""

    key: str
    name: str


@dataclass(eq=False)
class Transfer:
    """One open blob stream (upload or download) of one gRPC call."""

    kind: str
    context: Context
    clock: Clock
    session: object | None = None
    """The session that opened it (None without authentication)."""
    party: Party | None = None
    last_progress: float = 0.0
    cut_status: tuple[grpc.StatusCode, str] | None = None
    """Why the stream was cut, once it is."""
    _closers: list[Callable[[], None]] = field(default_factory=list)
    _abort: asyncio.Future[Any] | None = None

    def progressed(self) -> None:
        """A chunk moved: the idle timeout starts again."""
        self.last_progress = self.clock()

    def on_cut(self, close: Callable[[], None]) -> None:
        """Call ``close`` when the stream is cut (to close its file at once)."""
        self._closers.append(close)

    @property
    def is_cut(self) -> bool:
        return self.cut_status is not None

    def cut(self, code: grpc.StatusCode, message: str) -> None:
        """End the stream with ``code`` and ``message``; its file closes now.

        An upload's handler waits for the sender's next chunk, which may never come:
        its call is ended from here. A download's handler waits for gRPC to take its
        last chunk, and a status cannot overtake that chunk: the handler ends the call
        as soon as it is taken (`end_if_cut`), or the call ends when its receiver goes.
        """
        if self.cut_status is not None or self.context.done():
            return
        self.cut_status = (code, message)
        for close in self._closers:
            close()
        if self.kind == "upload":
            abort: asyncio.Future[Any] = asyncio.ensure_future(self.context.abort(code, message))
            abort.add_done_callback(_retrieved)
            self._abort = abort

    async def end_if_cut(self) -> None:
        """If the stream was cut, end its handler with the status of the cut."""
        if self._abort is not None:
            await asyncio.shield(self._abort)  # raises the call's AbortError
        elif self.cut_status is not None:
            await self.context.abort(*self.cut_status)


def _retrieved(abort: asyncio.Future[Any]) -> None:
    # The abort always raises (AbortError, or a failed batch when the sender left
    # first); the handler's next read raises it too. Nothing to report here.
    if not abort.cancelled():
        abort.exception()


class BlobStreams:
    """The open blob streams of one API, counted per party."""

    def __init__(
        self,
        limit: int | None,
        option: str,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        clock: Clock = time.time,
    ) -> None:
        self.limit = limit
        self.option = option
        self.idle_timeout = idle_timeout
        self.clock = clock
        self._open: set[Transfer] = set()
        self._held: dict[str, set[Transfer]] = {}
        self._refusing: set[str] = set()  # parties at their limit, logged once

    def held_by(self, key: str) -> int:
        """How many streams the party ``key`` holds open."""
        return len(self._held.get(key, ()))

    @contextlib.asynccontextmanager
    async def open(
        self,
        kind: str,
        context: Context,
        party: Party | None = None,
        session: object | None = None,
    ) -> AsyncIterator[Transfer]:
        """A stream for the duration of the block, refused if ``party`` holds its limit.

        The slot frees when the block exits or the call ends, whichever comes first.
        """
        transfer = Transfer(kind, context, self.clock, session, last_progress=self.clock())
        if party is not None:
            await self.admit(transfer, party)
        self._open.add(transfer)

        def ended(_: Context) -> None:
            self._close(transfer)

        # the stubs want their own callable class; any callable taking the context works
        context.add_done_callback(ended)  # type: ignore[arg-type]
        try:
            yield transfer
        finally:
            self._close(transfer)

    async def admit(self, transfer: Transfer, party: Party) -> None:
        """Count ``transfer`` against ``party``; refuse it if the party holds its limit."""
        held = self._held.get(party.key, set())
        if self.limit is not None and len(held) >= self.limit:
            message = (
                f"{party.name} has {len(held)} blob transfers open, the most allowed "
                f"({self.option} {self.limit}); wait for one to end before starting "
                f"another, or ask the SuperLink's operator to raise {self.option}"
            )
            if party.key not in self._refusing:  # once per episode, not per refusal
                self._refusing.add(party.key)
                logger.warning("refusing blob transfers: %s", message)
            await transfer.context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        self._held.setdefault(party.key, set()).add(transfer)
        transfer.party = party

    def _close(self, transfer: Transfer) -> None:
        self._open.discard(transfer)
        party = transfer.party
        if party is None:
            return
        held = self._held.get(party.key)
        if held is not None:
            held.discard(transfer)
            if not held:
                del self._held[party.key]
            self._refusing.discard(party.key)

    def cut(
        self, key: str, code: grpc.StatusCode, message: str, session: object | None = None
    ) -> int:
        """Cut every stream of the party ``key`` (only those of ``session`` if given)."""
        streams = [t for t in self._held.get(key, ()) if session is None or t.session is session]
        for transfer in streams:
            transfer.cut(code, message)
        if streams:
            logger.info("cut %d blob transfers of %s: %s", len(streams), key, message)
        return len(streams)

    def expire_idle(self) -> int:
        """Cut the streams idle for longer than the idle timeout; return how many."""
        now = self.clock()
        idle = [t for t in self._open if not t.is_cut and now - t.last_progress > self.idle_timeout]
        for transfer in idle:
            transfer.cut(grpc.StatusCode.DEADLINE_EXCEEDED, self._idle_message(transfer))
        return len(idle)

    def _idle_message(self, transfer: Transfer) -> str:
        what = (
            "the upload delivered no chunk"
            if transfer.kind == "upload"
            else "the download's receiver accepted no chunk"
        )
        holder = f" of {transfer.party.name}" if transfer.party else ""
        return (
            f"blob {transfer.kind}{holder} cut: {what} for {self.idle_timeout:g} s "
            "(--transfer-idle-timeout); start it again"
        )


def idle_cut_step(streams: Sequence[BlobStreams], interval: float) -> Step:
    """Cut idle streams of every API after ``interval`` seconds (run by the SuperLink's
    supervisor, over and over)."""

    async def cut() -> None:
        await asyncio.sleep(interval)
        for registry in streams:
            registry.expire_idle()

    return cut
