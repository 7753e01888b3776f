"""A cap on the connections one source address holds open before they make a call.

Anyone who can reach a port can open connections to it, with no key and no TLS,
and each one holds a file descriptor of the SuperLink until its handshake times
out (`connection_limits.HANDSHAKE_SECONDS`). gRPC offers no hook between accept
and handshake, so the cap works beside gRPC instead of inside it: the kernel's
socket table (`socket_table`) lists the connections to both APIs, every second, or
every `SCAN_SECONDS` while many are waiting; those that have made no call yet
(every call marks its connection, see `ConnectionCap.registrar`) are counted per
source address (`peers.source_of`: an IPv4 address, an IPv6 /64), and an address
over the cap has its newest such connections shut down, the oldest `limit` kept. A
connection that has made a call is never counted: many SuperNodes behind one
gateway hold any number of working connections; only connections that are still
opening, or that never call, are. Nor is one whose bytes the SuperLink has not
read yet: when a thousand nodes behind one gateway start at once, their hellos
queue at the SuperLink, which is not their doing.

A connection counts once it has waited `GRACE_SECONDS`, and a scan that finds the
SuperLink busy closes nothing (`LAG_SECONDS`): a call may have arrived whose handler
has not marked it yet. One address therefore holds at most ``limit`` waiting
connections, plus what it opens within the grace and one scan. Where the socket
table cannot be read (not Linux), the cap is off, and says so once at start.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

import grpc

from pollen.superlink import socket_table
from pollen.superlink.audit import Audit
from pollen.superlink.peers import endpoint_of, source_of_address
from pollen.superlink.socket_table import Connection, SocketTable
from pollen.superlink.supervisor import Step

DEFAULT_CONNECTIONS_PER_ADDRESS = 64
"""Connections one source address may hold that have made no call yet."""

SCAN_SECONDS = 0.2
"""How often the socket table is read and the cap applied while many connections (over
half the cap) have made no call."""

GRACE_SECONDS = 0.5
"""How long a connection may wait on its peer before it counts against its address."""

LAG_SECONDS = 0.1
"""A scan that starts this late finds the SuperLink busy: calls may have arrived whose
handlers have not run yet, so it shuts nothing down."""

CALM_SECONDS = 1.0
"""How often otherwise: reading the table costs the kernel a walk over all its
connections (1.2 ms here with 10 connections, 3.6 ms with 1000), so a calm SuperLink
reads it once a second."""

_Endpoint = tuple[bytes, int]  # a remote address, packed as in `Connection`, and port


class ConnectionCap:
    """Which connections to shut down: those of an address over ``limit`` that have waited
    on their peer for `GRACE_SECONDS`, newest first. A connection waits on its peer when
    it has made no call and the SuperLink has read all it sent: one with bytes not read
    yet (a TLS hello in the queue of a busy SuperLink) waits on the SuperLink. The grace
    covers a call that arrived but whose handler has not run yet (and so not marked it)."""

    def __init__(self, limit: int, grace: float = GRACE_SECONDS) -> None:
        self.limit = limit
        self.grace = grace
        self._marked: set[str] = set()  # peers of calls since the last scan, as gRPC names them
        self._called: set[_Endpoint] = set()
        self._first_seen: dict[int, float] = {}  # inode -> when a scan first listed it
        self.waiting = 0
        """Connections that waited on their peer at the last scan, however briefly."""
        self.shut = 0
        """Connections shut down so far."""

    def called(self, peer: str) -> None:
        """A call arrived from ``peer`` (``context.peer()``): its connection is in use."""
        self._marked.add(peer)

    def take_marks(self) -> set[str]:
        """The peers marked since the last call; read before the socket table, so that
        every connection they name is in it."""
        marked, self._marked = self._marked, set()
        return marked

    def over(
        self, marks: Iterable[str], connections: Sequence[Connection], now: float
    ) -> list[Connection]:
        """The connections to shut down, of these established ones listed at ``now``
        (seconds, monotonic), given the peers that made calls (`take_marks`) before."""
        live = {(c.address, c.port) for c in connections}
        self._called = {e for e in self._called | _endpoints(marks) if e in live}
        seen = {c.inode: self._first_seen.get(c.inode, now) for c in connections}
        self._first_seen = seen
        waiting = [
            c for c in connections if not c.unread and (c.address, c.port) not in self._called
        ]
        self.waiting = len(waiting)
        waiting = [c for c in waiting if now - seen[c.inode] >= self.grace]
        if len(waiting) <= self.limit:
            return []
        by_source: defaultdict[str, list[Connection]] = defaultdict(list)
        for connection in waiting:
            by_source[_source(connection.address)].append(connection)
        excess: list[Connection] = []
        for held in by_source.values():
            if len(held) > self.limit:
                held.sort(key=lambda c: (seen[c.inode], c.inode))
                excess.extend(held[self.limit :])
        return excess

    def registrar(self, server: grpc.aio.Server) -> Any:
        """A stand-in for ``server`` that registers services whose every call marks its
        connection (see `called`); pass it where the server would go."""
        return _Marking(server, self.called)


def _endpoints(peers: Iterable[str]) -> set[_Endpoint]:
    endpoints = set()
    for peer in peers:
        endpoint = endpoint_of(peer)
        if endpoint is not None:
            endpoints.add((endpoint[0].packed, endpoint[1]))
    return endpoints


def _source(packed: bytes) -> str:
    return source_of_address(ipaddress.ip_address(packed))


def _peer(connection: Connection) -> str:
    """``connection``'s remote end, named as gRPC names a peer."""
    address = ipaddress.ip_address(connection.address)
    if isinstance(address, ipaddress.IPv4Address):
        return f"ipv4:{address}:{connection.port}"
    return f"ipv6:[{address}]:{connection.port}"


def cap_step(
    cap: ConnectionCap,
    table: SocketTable,
    apis: Mapping[int, str],
    audit: Audit,
) -> Step:
    """Apply ``cap`` to the connections to the ports of ``apis`` (port -> "fleet" or
    "driver"), over and over (run by the SuperLink's supervisor): every `SCAN_SECONDS`
    while over half the cap of connections wait on their peer, else every
    `CALM_SECONDS`; not while the SuperLink is busy (`LAG_SECONDS`). Each connection
    shut down is audited as "throttled", so a flood leaves a row per API and source
    with its count, and a log line when it starts and when it ends."""
    reason = f"over --max-connections-per-address {cap.limit} (connections that made no call)"
    families = table.listening(apis.keys())

    async def apply() -> None:
        loop = asyncio.get_running_loop()
        interval = SCAN_SECONDS if cap.waiting > cap.limit // 2 else CALM_SECONDS
        woke = loop.time() + interval
        await asyncio.sleep(interval)
        now = loop.time()
        excess = cap.over(cap.take_marks(), table.established(apis.keys(), families), now)
        if not excess or now - woke > LAG_SECONDS:
            return
        shut = socket_table.shut_down({c.inode for c in excess})
        cap.shut += len(shut)
        for c in excess:
            if c.inode in shut:
                audit.record(apis[c.local_port], "throttled", "-", _peer(c), reason)

    return apply


class _Marking:
    """Stands in for the server while generated code registers a service."""

    def __init__(self, server: grpc.aio.Server, mark: Callable[[str], None]) -> None:
        self._server = server
        self._mark = mark

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_MarkingGeneric(handler, self._mark) for handler in handlers)
        )

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        marked = {name: _marked(h, self._mark) for name, h in handlers.items()}
        self._server.add_registered_method_handlers(service, marked)


class _MarkingGeneric(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, mark: Callable[[str], None]) -> None:
        self._inner = inner
        self._mark = mark

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = self._inner.service(handler_call_details)
        return None if handler is None else _marked(handler, self._mark)


def _marked(handler: Any, mark: Callable[[str], None]) -> Any:
    """``handler``, marking the peer of each call before it runs."""
    if handler.unary_unary is not None:
        unary: Any = handler.unary_unary

        async def unary_unary(request: object, context: Any) -> Any:
            mark(context.peer())
            return await unary(request, context)

        return handler._replace(unary_unary=unary_unary)
    if handler.unary_stream is not None:
        streaming: Any = handler.unary_stream

        async def unary_stream(request: object, context: Any) -> AsyncIterator[Any]:
            mark(context.peer())
            async for reply in streaming(request, context):
                yield reply

        return handler._replace(unary_stream=unary_stream)
    if handler.stream_unary is not None:
        receiving: Any = handler.stream_unary

        async def stream_unary(requests: AsyncIterator[Any], context: Any) -> Any:
            mark(context.peer())
            return await receiving(requests, context)

        return handler._replace(stream_unary=stream_unary)
    both: Any = handler.stream_stream

    async def stream_stream(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        mark(context.peer())
        async for reply in both(requests, context):
            yield reply

    return handler._replace(stream_stream=stream_stream)
