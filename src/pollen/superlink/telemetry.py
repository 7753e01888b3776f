"""The SuperLink's Prometheus metrics: their definitions and the calls that update them.

Each SuperLink has its own `Telemetry` (its own ``CollectorRegistry``, never the
global one), so two SuperLinks in one process count apart. The places where
things happen call it: the Dispatcher (nodes connected, replies), the Auth
service (refused joins), the gRPC handlers as registered (`measured`: call
durations and blob bytes of both APIs), the Driver service (rounds reported, runs
changed). ``/metrics`` on the dashboard's address serves `Telemetry.exposition`.
The same calls tell the dashboard's live pages what changed (`Telemetry.events`),
as do the allow-list reload and the dashboard's guard (keys revoked, tokens
refused); blob streams count their bytes per run as well (`Telemetry.run_bytes`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Literal, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from pollen.records.messages import MESSAGE_TYPES
from pollen.superlink.events import Events
from pollen.superlink.run_bytes import RunBytes
from pollen.transport.chunk_codec import Chunk

disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: half the text for a timestamp nobody reads

JoinRefusal = Literal["not-allowed", "malformed-key", "bad-proof", "throttled", "joins-paused"]
"""Why a join was refused, as the label of ``pollen_joins_refused_total``: a bounded
set, whatever a client sends (the full reason is in the audit trail)."""

Direction = Literal["in", "out"]
"""Blob bytes received by the SuperLink (uploads) or sent by it (downloads)."""

EXPOSITION_TYPE = CONTENT_TYPE_LATEST
"""The Content-Type of `Telemetry.exposition` (Prometheus text format)."""

ROUND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60)


class Telemetry:
    """One SuperLink's metrics. Every method is cheap (a lock and an addition)."""

    def __init__(self, events: Events | None = None) -> None:
        self.events = events or Events()
        """Where each change is published as well (see `pollen.superlink.events`)."""
        self.run_bytes = RunBytes()
        """Blob bytes in and out of each run (in memory only, see `pollen.superlink.run_bytes`)."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._nodes = Gauge(
            "pollen_nodes_connected", "SuperNodes with an open task stream.", registry=r
        )
        self._rounds = Counter(
            "pollen_rounds_completed", "Rounds that ServerApps reported finished.", registry=r
        )
        self._tasks = Counter(
            "pollen_tasks",
            "Instructions answered, by message kind and outcome (an error reply, or one the "
            "SuperLink wrote for a node that went away or ran out of time, is an error).",
            ["kind", "outcome"],
            registry=r,
        )
        self._refused = Counter(
            "pollen_joins_refused", "Joins refused, by reason.", ["reason"], registry=r
        )
        self._blob_bytes = Counter(
            "pollen_blob_bytes",
            "Blob bytes moved over both APIs: in (uploads), out (downloads).",
            ["direction"],
            registry=r,
        )
        self._round_seconds = Histogram(
            "pollen_round_duration_seconds",
            "Wall time of each finished round, as its ServerApp reported it.",
            buckets=ROUND_BUCKETS,
            registry=r,
        )
        self._rpc_seconds = Histogram(
            "pollen_rpc_duration_seconds",
            "Time a gRPC call of the Fleet or Driver API took in the SuperLink (a stream: "
            "its whole life).",
            ["method"],
            buckets=RPC_BUCKETS,
            registry=r,
        )
        for kind in MESSAGE_TYPES:  # known series start at 0 rather than appear later
            for outcome in ("ok", "error"):
                self._tasks.labels(kind, outcome)
        for reason in get_args(JoinRefusal):
            self._refused.labels(reason)
        for direction in get_args(Direction):
            self._blob_bytes.labels(direction)

    def nodes_connected(self, count: int) -> None:
        self._nodes.set(count)
        self.events.publish("nodes")

    def task_answered(self, message_type: str, failed: bool) -> None:
        """A reply was stored for an instruction of ``message_type`` (``query.x``: query)."""
        kind = message_type.partition(".")[0]
        self._tasks.labels(kind, "error" if failed else "ok").inc()
        self.events.publish("task")

    def join_refused(self, reason: JoinRefusal) -> None:
        self._refused.labels(reason).inc()
        self.events.publish("join-refused")

    def round_reported(self, seconds: float) -> None:
        """A ServerApp finished a round that took ``seconds``."""
        self._rounds.inc()
        self._round_seconds.observe(seconds)

    def run_changed(self, run_id: int) -> None:
        """A run was created, reported a round, finished, failed, was resumed or abandoned
        (no metric: the dashboard's live pages only)."""
        self.events.publish("run", run_id)

    def security_changed(self) -> None:
        """Keys were revoked or a dashboard request was refused: the audit trail grew
        (no metric: the dashboard's security page only)."""
        self.events.publish("security")

    def blobs_of_run(self, run_id: int, digests: Iterable[str]) -> None:
        """``run_id`` sent these blobs in instructions: their downloads count for it."""
        self.run_bytes.uses(run_id, digests)

    def blob_received(self, run_id: int, count: int, digest: str) -> None:
        """An upload for ``run_id`` (0: none) ended after ``count`` bytes (``digest``: the
        blob stored, "" when it was not)."""
        if digest:
            self.run_bytes.uses(run_id, (digest,))
        self._run_moved(run_id, count, 0)

    def blob_sent(self, digest: str, count: int) -> None:
        """A download of ``digest`` ended after sending ``count`` bytes."""
        self._run_moved(self.run_bytes.run_of(digest), 0, count)

    def _run_moved(self, run_id: int, received: int, sent: int) -> None:
        if run_id and (received or sent):
            self.run_bytes.add(run_id, received, sent)
            self.events.publish("run", run_id)

    def blob_bytes(self) -> tuple[float, float]:
        """Blob bytes moved so far: (in, out)."""
        sample = self.registry.get_sample_value
        name = "pollen_blob_bytes_total"
        return (
            sample(name, {"direction": "in"}) or 0.0,
            sample(name, {"direction": "out"}) or 0.0,
        )

    def rpc_timer(self, method: str) -> Callable[[float], None]:
        """What records one call of ``method`` and its seconds (its series looked up once)."""
        return self._rpc_seconds.labels(method).observe

    def blob_counter(self, direction: Direction) -> Callable[[float], None]:
        """What adds bytes moved in ``direction`` (its series looked up once)."""
        return self._blob_bytes.labels(direction).inc

    def exposition(self) -> bytes:
        """Every metric, in Prometheus text format (see `EXPOSITION_TYPE`)."""
        return generate_latest(self.registry)


def measured(registrar: Any, telemetry: Telemetry) -> Any:
    """Pass this instead of ``registrar`` to a generated ``add_*Servicer_to_server`` (or to
    `ids_checked`): each handler reports its duration, and blob streams their bytes."""
    return _Measuring(registrar, telemetry)


class _Measuring:
    def __init__(self, registrar: Any, telemetry: Telemetry) -> None:
        self._registrar = registrar
        self._telemetry = telemetry

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored, as by the registrar: `add_registered_method_handlers` registers."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        api = service.rsplit(".", 1)[-1]
        timed = {
            name: _timed(handler, f"{api}.{name}", self._telemetry)
            for name, handler in handlers.items()
        }
        self._registrar.add_registered_method_handlers(service, timed)


def _timed(handler: Any, method: str, telemetry: Telemetry) -> Any:
    """``handler``, reporting how long each call took (and, for blobs, the bytes moved)."""
    observe = telemetry.rpc_timer(method)
    if handler.unary_unary is not None:
        unary: Any = handler.unary_unary

        async def unary_unary(request: object, context: Any) -> Any:
            started = time.perf_counter()
            try:
                return await unary(request, context)
            finally:
                observe(time.perf_counter() - started)

        return handler._replace(unary_unary=unary_unary)
    if handler.unary_stream is not None:
        if method.endswith(".DownloadBlob"):
            return handler._replace(
                unary_stream=_download(handler.unary_stream, observe, telemetry)
            )
        streaming: Any = handler.unary_stream

        async def unary_stream(request: object, context: Any) -> AsyncIterator[Any]:
            started = time.perf_counter()
            try:
                async for reply in streaming(request, context):
                    yield reply
            finally:
                observe(time.perf_counter() - started)

        return handler._replace(unary_stream=unary_stream)
    if handler.stream_unary is not None:
        return handler._replace(stream_unary=_upload(handler.stream_unary, observe, telemetry))
    return handler


def _download(
    streaming: Any, observe: Callable[[float], None], telemetry: Telemetry
) -> Callable[[Any, Any], AsyncIterator[Any]]:
    """A download handler that counts its bytes: each chunk SuperLink-wide, the whole
    stream for its blob's run at its end."""
    sent = telemetry.blob_counter("out")

    async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
        started = time.perf_counter()
        moved = 0
        try:
            async for reply in streaming(request, context):
                sent(len(reply))
                moved += len(reply)
                yield reply
        finally:
            observe(time.perf_counter() - started)
            telemetry.blob_sent(request.digest, moved)

    return unary_stream


def _upload(
    receiving: Any, observe: Callable[[float], None], telemetry: Telemetry
) -> Callable[[AsyncIterator[Any], Any], Awaitable[Any]]:
    """An upload handler that counts its bytes: each chunk SuperLink-wide, the whole
    stream for the run its first chunk names at its end."""
    received = telemetry.blob_counter("in")

    async def stream_unary(requests: AsyncIterator[Any], context: Any) -> Any:
        run_id = moved = 0

        async def counted() -> AsyncIterator[Any]:
            nonlocal run_id, moved
            async for request in requests:
                if isinstance(request, Chunk):
                    received(len(request.data))
                    moved += len(request.data)
                    run_id = run_id or request.run_id
                yield request

        started = time.perf_counter()
        digest = ""
        try:
            reply = await receiving(counted(), context)
            digest = getattr(reply, "digest", "")
            return reply
        finally:
            observe(time.perf_counter() - started)
            telemetry.blob_received(run_id, moved, digest)

    return stream_unary
