"""The client side of sessions: joining, and signing every request on a channel."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from pollen.errors import ServerIdentityError
from pollen.proto import auth_pb2 as apb
from pollen.proto.auth_pb2_grpc import AuthStub
from pollen.transport import keys
from pollen.transport.session_crypto import (
    AUTH_METHOD_PREFIX,
    EMPTY_BODY_DIGEST,
    META_AUTH,
    SessionKeys,
    auth_header,
    derive_session_key,
    join_transcript,
    new_ephemeral,
    new_nonce,
    server_transcript,
)


@dataclass
class ClientIdentity:
    """A client's key pair, and optionally the SuperLink public key it insists on."""

    private_key: keys.PrivateKey
    superlink_public_key: keys.PublicKey | None = None

    @property
    def public_line(self) -> bytes:
        return keys.public_bytes(self.private_key.public_key())

    @property
    def fingerprint(self) -> str:
        return keys.fingerprint(self.private_key.public_key())


class SessionHolder:
    """The current session of a channel; empty until `open_session` fills it."""

    def __init__(self) -> None:
        self.session: SessionKeys | None = None


async def open_session(
    channel: grpc.aio.Channel, identity: ClientIdentity, api: str, holder: SessionHolder
) -> SessionKeys:
    """Prove possession of the private key and derive a session key with the server."""
    stub = AuthStub(channel)  # type: ignore[no-untyped-call]
    public_line = identity.public_line
    challenge = (
        await stub.Challenge(apb.ChallengeRequest(public_key=public_line.decode()))
    ).challenge
    ephemeral, ephemeral_public = new_ephemeral()
    join = join_transcript(api, public_line, challenge, ephemeral_public)
    reply = await stub.OpenSession(
        apb.OpenSessionRequest(
            public_key=public_line.decode(),
            challenge=challenge,
            client_ephemeral=ephemeral_public,
            signature=keys.sign(identity.private_key, join),
        )
    )
    accept = server_transcript(join, reply.server_ephemeral, reply.session_id)
    pinned = identity.superlink_public_key
    if pinned is not None and not keys.verify(pinned, reply.server_signature, accept):
        raise ServerIdentityError(
            "the SuperLink did not sign the session with the pinned --superlink-public-key "
            f"({keys.fingerprint(pinned)}); check the address or the key"
        )
    session = SessionKeys(
        reply.session_id, derive_session_key(ephemeral, reply.server_ephemeral, accept)
    )
    holder.session = session
    return session


Metadata = tuple[tuple[str, str], ...]


class RequestAuth:
    """Signs the requests of one session: the one place where a request gets its MAC.

    Clients pass ``metadata=auth.request(method, request)`` on each call (cheaper
    than an interceptor); `request_signers` adapts it for generic channels.
    """

    def __init__(
        self, holder: SessionHolder | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.holder = holder or SessionHolder()
        self.clock = clock

    def sign(self, method: str, body_digest: str) -> Metadata | None:
        """The ``pollen-auth`` header for a call; None before the session is open."""
        session = self.holder.session
        if session is None or method.startswith(AUTH_METHOD_PREFIX):
            return None
        timestamp = int(self.clock() * 1000)
        return (
            (
                META_AUTH,
                auth_header(session, method, body_digest, timestamp, new_nonce()),
            ),
        )

    def request(self, method: str, request: Message) -> Metadata | None:
        """Sign a unary request (or a server stream's opening request), bound to its body."""
        return self.sign(method, _digest(request))

    def stream(self, method: str) -> Metadata | None:
        """Sign a client stream at open; its chunks are covered by the blob digest."""
        return self.sign(method, EMPTY_BODY_DIGEST)


def _signed(
    details: grpc.aio.ClientCallDetails,
    holder: SessionHolder,
    body_digest: str,
    clock: Callable[[], float],
) -> grpc.aio.ClientCallDetails:
    method = details.method.decode() if isinstance(details.method, bytes) else details.method
    signed = RequestAuth(holder, clock).sign(method, body_digest)
    if signed is None:
        return details
    metadata = [*(details.metadata or []), *signed]
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        grpc.aio.Metadata(*metadata),
        details.credentials,
        details.wait_for_ready,
    )


def _digest(request: Message) -> str:
    return hashlib.sha256(request.SerializeToString()).hexdigest()


class _Signer:
    def __init__(self, holder: SessionHolder, clock: Callable[[], float]) -> None:
        self.holder = holder
        self.clock = clock


class _UnaryUnarySigner(_Signer, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        details = _signed(client_call_details, self.holder, _digest(request), self.clock)
        return await continuation(details, request)


class _UnaryStreamSigner(_Signer, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        details = _signed(client_call_details, self.holder, _digest(request), self.clock)
        return await continuation(details, request)


class _StreamUnarySigner(_Signer, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Iterable[Any] | AsyncIterable[Any],
    ) -> Any:
        details = _signed(client_call_details, self.holder, EMPTY_BODY_DIGEST, self.clock)
        return await continuation(details, request_iterator)


def request_signers(
    holder: SessionHolder, clock: Callable[[], float] = time.time
) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that add session id, timestamp, nonce and MAC to every call.

    Unary requests are bound to their body's digest; client streams (blob uploads)
    are authenticated at open and their chunks are covered by the blob digest.
    Calls to the Auth service itself go out unsigned. (gRPC files each interceptor
    under one call type only, hence one object per type.)
    """
    return [
        _UnaryUnarySigner(holder, clock),
        _UnaryStreamSigner(holder, clock),
        _StreamUnarySigner(holder, clock),
    ]
