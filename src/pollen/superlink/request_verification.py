"""Checking every request before a service sees it: well-formed, and (with
authentication) bound to its session, method and exact body bytes."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from pollen.errors import RequestRejected, RequestThrottled, StorageError
from pollen.superlink.sessions import Session, SessionStore
from pollen.superlink.storage_faults import refuse
from pollen.transport.chunk_codec import without_protobuf_copies
from pollen.transport.session_crypto import EMPTY_BODY_DIGEST, META_AUTH

logger = logging.getLogger(__name__)

current_session: ContextVar[Session | None] = ContextVar("pollen_session", default=None)
"""The session of the request being served, set by `RequestVerifier`."""

Context = grpc.aio.ServicerContext[Any, Any]


@dataclass
class _Raw:
    """A request with the digest of the bytes it arrived as (``message`` None: malformed)."""

    digest: str
    message: Any


def _raw_deserializer(
    deserialize: Callable[[bytes], Any] | None, digest: bool
) -> Callable[[bytes], _Raw]:
    """Parse a request, keeping the digest of its bytes when requests are verified."""

    def parse(raw: bytes) -> _Raw:
        try:
            message = deserialize(raw) if deserialize else raw
        except DecodeError:
            message = None
        return _Raw(hashlib.sha256(raw).hexdigest() if digest else "", message)

    return parse


async def _well_formed(raw: _Raw, method: str, context: Context) -> Any:
    if raw.message is None:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"{method}: the request is not a valid message"
        )
    return raw.message


def _auth_header(context: Context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == META_AUTH and isinstance(value, str):
            return value
    return None


class RequestVerifier:
    """Wraps each method handler of a service so that a call runs only with a valid MAC.

    Handlers are wrapped once, when the service is registered (see `registrar`),
    not per call: per call the cost is one header lookup, one sha256 of the
    body and one HMAC.
    """

    def __init__(self, sessions: SessionStore | None) -> None:
        """``sessions`` None: only refuse malformed requests (an API without authentication,
        or the Auth service itself)."""
        self.sessions = sessions

    def registrar(self, server: grpc.aio.Server) -> _Registrar:
        """Pass this instead of ``server`` to a generated ``add_*Servicer_to_server``."""
        return _Registrar(server, self)

    async def _authenticate(self, method: str, digest: str, context: Context) -> None:
        if self.sessions is None:
            return
        try:
            session = self.sessions.verify(method, _auth_header(context), digest)
        except RequestRejected as exc:
            logger.warning("refused %s from %s: %s", method, context.peer(), exc)
            code = (
                grpc.StatusCode.RESOURCE_EXHAUSTED
                if isinstance(exc, RequestThrottled)
                else grpc.StatusCode.UNAUTHENTICATED
            )
            await context.abort(code, str(exc))
        current_session.set(session)

    def wrap(self, method: str, handler: Any) -> Any:
        if handler.unary_unary is not None:
            return self._unary_unary(handler, method)
        if handler.unary_stream is not None:
            return self._unary_stream(handler, method)
        if handler.stream_unary is not None:
            return self._stream_unary(handler, method)
        raise RuntimeError(f"{method}: bidirectional streams are not part of Pollen's APIs")

    def _unary_unary(self, handler: Any, method: str) -> Any:
        inner: Any = handler.unary_unary

        async def behaviour(raw: _Raw, context: Context) -> Any:
            message = await _well_formed(raw, method, context)
            await self._authenticate(method, raw.digest, context)
            try:
                return await inner(message, context)
            except StorageError as exc:
                await refuse(exc, method, context)

        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=_raw_deserializer(
                handler.request_deserializer, self.sessions is not None
            ),
            response_serializer=handler.response_serializer,
        )

    def _unary_stream(self, handler: Any, method: str) -> Any:
        inner: Any = handler.unary_stream

        async def behaviour(raw: _Raw, context: Context) -> AsyncIterator[Any]:
            message = await _well_formed(raw, method, context)
            await self._authenticate(method, raw.digest, context)
            try:
                async for item in inner(message, context):
                    yield item
            except StorageError as exc:
                await refuse(exc, method, context)

        return grpc.unary_stream_rpc_method_handler(
            behaviour,
            request_deserializer=_raw_deserializer(
                handler.request_deserializer, self.sessions is not None
            ),
            response_serializer=handler.response_serializer,
        )

    def _stream_unary(self, handler: Any, method: str) -> Any:
        inner: Any = handler.stream_unary

        async def behaviour(requests: AsyncIterator[_Raw], context: Context) -> Any:
            # Authenticated at open; the chunks then travel on that session's TLS
            # connection, and the SuperLink names the blob by the digest it computes.
            await self._authenticate(method, EMPTY_BODY_DIGEST, context)

            async def messages() -> AsyncIterator[Any]:
                async for raw in requests:
                    yield await _well_formed(raw, method, context)

            try:
                return await inner(messages(), context)
            except StorageError as exc:
                await refuse(exc, method, context)

        return grpc.stream_unary_rpc_method_handler(
            behaviour,
            # no digest per message: the stream was authenticated when it opened
            request_deserializer=_raw_deserializer(handler.request_deserializer, False),
            response_serializer=handler.response_serializer,
        )


class _Registrar:
    """Stands in for the server while generated code registers a service."""

    def __init__(self, server: grpc.aio.Server, verifier: RequestVerifier) -> None:
        self._server = server
        self._verifier = verifier

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored: `add_registered_method_handlers` registers the wrapped handlers."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        wrapped = {
            name: self._verifier.wrap(f"/{service}/{name}", without_protobuf_copies(name, handler))
            for name, handler in handlers.items()
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, wrapped),)
        )
        self._server.add_registered_method_handlers(service, wrapped)
