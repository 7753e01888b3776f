"""Authenticating every request of an API against its session, method and exact body bytes."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc

from pollen.superlink.sessions import RequestRejected, Session, SessionStore
from pollen.transport.session_crypto import AUTH_METHOD_PREFIX, EMPTY_BODY_DIGEST

logger = logging.getLogger(__name__)

current_session: ContextVar[Session | None] = ContextVar("pollen_session", default=None)
"""The session of the request being served, set by `AuthInterceptor`."""

Context = grpc.aio.ServicerContext[Any, Any]


@dataclass
class _Raw:
    """A request with the digest of the bytes it arrived as."""

    digest: str
    message: Any


def _raw_deserializer(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], _Raw]:
    def parse(raw: bytes) -> _Raw:
        message = deserialize(raw) if deserialize else raw
        return _Raw(hashlib.sha256(raw).hexdigest(), message)

    return parse


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses any call outside the Auth service without a valid session MAC."""

    def __init__(self, sessions: SessionStore) -> None:
        self.sessions = sessions

    async def _authenticate(
        self, method: str, metadata: dict[str, str], digest: str, context: Context
    ) -> Session:
        try:
            session = self.sessions.verify(method, metadata, digest)
        except RequestRejected as exc:
            logger.warning("refused %s from %s: %s", method, context.peer(), exc)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        current_session.set(session)
        return session

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler: Any = await continuation(handler_call_details)
        method = handler_call_details.method
        method = method.decode() if isinstance(method, bytes) else method
        if handler is None or method.startswith(AUTH_METHOD_PREFIX):
            return handler
        metadata = {
            key: value
            for key, value in (handler_call_details.invocation_metadata or ())
            if isinstance(value, str)
        }
        if handler.unary_unary is not None:
            return self._unary_unary(handler, method, metadata)
        if handler.unary_stream is not None:
            return self._unary_stream(handler, method, metadata)
        if handler.stream_unary is not None:
            return self._stream_unary(handler, method, metadata)
        raise RuntimeError(f"{method}: bidirectional streams are not part of Pollen's APIs")

    def _unary_unary(self, handler: Any, method: str, metadata: dict[str, str]) -> Any:
        inner: Any = handler.unary_unary

        async def behaviour(raw: _Raw, context: Context) -> Any:
            await self._authenticate(method, metadata, raw.digest, context)
            return await inner(raw.message, context)

        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=_raw_deserializer(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _unary_stream(self, handler: Any, method: str, metadata: dict[str, str]) -> Any:
        inner: Any = handler.unary_stream

        async def behaviour(raw: _Raw, context: Context) -> AsyncIterator[Any]:
            await self._authenticate(method, metadata, raw.digest, context)
            async for item in inner(raw.message, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            behaviour,
            request_deserializer=_raw_deserializer(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _stream_unary(self, handler: Any, method: str, metadata: dict[str, str]) -> Any:
        inner: Any = handler.stream_unary

        async def behaviour(requests: AsyncIterator[Any], context: Context) -> Any:
            # Authenticated at open; every chunk is then covered by the blob's digest.
            await self._authenticate(method, metadata, EMPTY_BODY_DIGEST, context)
            return await inner(requests, context)

        return grpc.stream_unary_rpc_method_handler(
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
