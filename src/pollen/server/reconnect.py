"""Riding out a SuperLink restart: retry calls that found it away, join again if needed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from pollen.errors import ConnectionFailed
from pollen.proto import driver_pb2 as dpb
from pollen.transport.connection_faults import Endpoint, FaultWatch, refused_join
from pollen.transport.request_signing import ClientIdentity, RequestAuth, open_session
from pollen.transport.retry_policy import DRIVER_PACE, classify, refusal, retry_later

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Reconnector:
    """Runs Driver API calls, retrying with backoff while the SuperLink is away or short.

    A restarted SuperLink has forgotten sessions: a call refused as
    unauthenticated after a break joins again with the operator key and is
    retried. Gives up after ``timeout`` seconds without the SuperLink
    (`ConnectionFailed`); a refusal is a `CallRefused` at once (`retry_policy`).
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        address: str,
        timeout: float,
        identity: ClientIdentity | None = None,
        auth: RequestAuth | None = None,
    ) -> None:
        self._channel = channel
        self.address = address
        self.timeout = timeout
        self.identity = identity
        self._auth = auth

    def attempts(self) -> Attempts:
        """Bookkeeping for one operation that may need several attempts."""
        return Attempts(self)

    async def call(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """``await attempt()``, again after each break, until it succeeds or time runs out.

        Raises Pollen errors only: `CallRefused`, `ConnectionFailed`, or the attempt's own.
        """
        attempts = self.attempts()
        while True:
            try:
                return await attempt()
            except grpc.aio.AioRpcError as exc:
                await attempts.failed(exc)

    async def rejoin(self, attempts: Attempts) -> None:
        assert self.identity is not None and self._auth is not None
        while True:
            try:
                await open_session(self._channel, self.identity, "driver", self._auth.holder)
                return
            except grpc.aio.AioRpcError as exc:
                if not retry_later(exc, joining=True):
                    raise refusal(self.address, exc) from exc
                await attempts.wait(exc)


class Attempts:
    """One operation's retries: a deadline, a backoff, at most one new join."""

    def __init__(self, reconnector: Reconnector) -> None:
        self._reconnector = reconnector
        self._deadline = asyncio.get_running_loop().time() + reconnector.timeout
        self._backoff = DRIVER_PACE.backoff()
        self._rejoined = False

    async def failed(self, exc: grpc.aio.AioRpcError) -> None:
        """Get ready for another attempt after ``exc``; what a retry cannot fix is raised
        as `CallRefused`."""
        verdict = classify(exc)
        reconnector = self._reconnector
        if verdict == "rejoin" and not self._rejoined and reconnector.identity is not None:
            self._rejoined = True  # a restarted SuperLink forgot our session
            await reconnector.rejoin(self)
            return
        if verdict not in ("away", "passing"):
            raise refusal(reconnector.address, exc) from exc
        await self.wait(exc)

    async def wait(self, exc: grpc.aio.AioRpcError) -> None:
        """Sleep before the next attempt; ConnectionFailed once the deadline has passed."""
        if asyncio.get_running_loop().time() > self._deadline:
            raise ConnectionFailed(
                f"SuperLink Driver API at {self._reconnector.address} has been unusable for "
                f"more than {self._reconnector.timeout:g} s ({exc.details()}); the run stopped"
            ) from None
        delay = self._backoff.next_delay()
        logger.warning(
            "SuperLink away (%s: %s); retrying in %.1f s",
            exc.code().name.lower(),
            exc.details(),
            delay,
        )
        await asyncio.sleep(delay)


DRIVER_PROBE = "/pollen.v1.Driver/GetNodes"
"""A Driver API call that tells the Driver API from the Fleet API (which does not know it)."""

_ANSWERED = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION})
"""What the Driver API answers a probe for run 0: it knows the call and let it through."""


async def reach_driver(
    channel: grpc.aio.Channel,
    endpoint: Endpoint,
    identity: ClientIdentity | None = None,
    auth: RequestAuth | None = None,
) -> None:
    """Return once the Driver API at ``endpoint`` answers (with ``identity``: has let it join).

    While nobody answers, try again with backoff (the caller bounds the wait). An
    answer that shows a misconfiguration (TLS against plaintext, another CA, the
    Fleet API's port, a missing operator key) raises `ConfigurationError` at once,
    or after a few attempts where a passing fault could give the same answer.
    """
    faults = FaultWatch(endpoint)
    backoff = DRIVER_PACE.backoff()
    while True:
        try:
            if identity is not None and auth is not None:
                await _join_driver(channel, endpoint, identity, auth)
            await _probe_driver(channel, auth)
            return
        except grpc.aio.AioRpcError as exc:
            faults.check(exc)
            if not retry_later(exc, joining=True):
                raise ConnectionFailed(
                    f"SuperLink Driver API at {endpoint.address}: "
                    f"{exc.code().name.lower()} ({exc.details()})"
                ) from None
            delay = backoff.next_delay()
            logger.debug("SuperLink Driver API not reached (%s); again in %.1f s", exc, delay)
            await asyncio.sleep(delay)


async def _join_driver(
    channel: grpc.aio.Channel, endpoint: Endpoint, identity: ClientIdentity, auth: RequestAuth
) -> None:
    try:
        await open_session(channel, identity, "driver", auth.holder)
    except grpc.aio.AioRpcError as exc:
        refusal = await refused_join(channel, endpoint, exc, DRIVER_PROBE)
        raise ConnectionFailed(
            f"SuperLink Driver API at {endpoint.address} refused the operator key: "
            f"{refusal.details()}"
        ) from None


async def _probe_driver(channel: grpc.aio.Channel, auth: RequestAuth | None) -> None:
    """Ask the Driver API for the nodes of run 0: an answer shows it is there, and that
    it is the Driver API (the Fleet API does not know the call)."""
    request = dpb.GetNodesRequest(run_id=0)
    probe = channel.unary_unary(
        DRIVER_PROBE,
        request_serializer=dpb.GetNodesRequest.SerializeToString,
        response_deserializer=dpb.GetNodesReply.FromString,
    )
    try:
        await probe(request, metadata=auth.request(DRIVER_PROBE, request) if auth else None)
    except grpc.aio.AioRpcError as exc:
        if exc.code() not in _ANSWERED:
            raise
