"""The Auth service: challenge, proof of possession, session key. One instance per API."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from pollen.errors import ConfigurationError
from pollen.proto import auth_pb2 as apb
from pollen.proto import auth_pb2_grpc
from pollen.superlink.allowlist import AllowList
from pollen.superlink.audit import Audit, peer_host
from pollen.superlink.rate_limit import FailureLimiter
from pollen.superlink.sessions import SessionStore
from pollen.transport import keys
from pollen.transport.session_crypto import (
    derive_session_key,
    join_transcript,
    new_ephemeral,
    server_transcript,
)

Context = grpc.aio.ServicerContext[Any, Any]


@dataclass
class AuthSettings:
    """Who may join one API, and how the SuperLink proves who it is."""

    api: str  # "fleet" or "driver"
    allowlist: AllowList
    sessions: SessionStore
    limiter: FailureLimiter
    audit: Audit
    server_key: keys.PrivateKey | None = None


class AuthService(auth_pb2_grpc.AuthServicer):
    def __init__(self, settings: AuthSettings, on_displaced: Any = None) -> None:
        self.settings = settings
        self.on_displaced = on_displaced

    async def _refuse(
        self,
        context: Context,
        fingerprint: str,
        reason: str,
        code: grpc.StatusCode = grpc.StatusCode.PERMISSION_DENIED,
    ) -> NoReturn:
        s = self.settings
        peer = peer_host(context.peer())
        s.limiter.record_failure((peer, fingerprint))
        s.audit.record(s.api, "reject", fingerprint, context.peer(), reason)
        await context.abort(code, f"{reason} (key {fingerprint})")
        raise AssertionError("context.abort returned")

    async def _admissible(self, public_key: str, context: Context) -> keys.PublicKey:
        """The client's key, if it is well formed, allowed and not rate-limited."""
        s = self.settings
        try:
            key = keys.parse_public_key(public_key, "the key sent")
        except ConfigurationError as exc:
            await self._refuse(context, "malformed", str(exc), grpc.StatusCode.INVALID_ARGUMENT)
        fingerprint = keys.fingerprint(key)
        wait = s.limiter.retry_after((peer_host(context.peer()), fingerprint))
        if wait > 0:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many failed attempts for key {fingerprint}; retry in {wait:.0f} s",
            )
        if fingerprint not in s.allowlist:
            # Unlisted keys cost nothing to invent: count them per address, so that
            # a flood of fresh keys cannot fill the audit trail.
            unlisted = (peer_host(context.peer()), "unlisted keys")
            if s.limiter.retry_after(unlisted) > 0:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "too many attempts with unlisted keys from this address; retry later",
                )
            s.limiter.record_failure(unlisted)
            await self._refuse(context, fingerprint, "key is not in the allow-list")
        return key

    async def Challenge(
        self, request: apb.ChallengeRequest, context: Context
    ) -> apb.ChallengeReply:
        key = await self._admissible(request.public_key, context)
        return apb.ChallengeReply(
            challenge=self.settings.sessions.issue_challenge(keys.fingerprint(key))
        )

    async def OpenSession(
        self, request: apb.OpenSessionRequest, context: Context
    ) -> apb.OpenSessionReply:
        s = self.settings
        key = await self._admissible(request.public_key, context)
        fingerprint = keys.fingerprint(key)
        if not s.sessions.take_challenge(request.challenge, fingerprint):
            await self._refuse(context, fingerprint, "challenge unknown, used or expired")
        if len(request.client_ephemeral) != 32:
            await self._refuse(context, fingerprint, "ephemeral key is not 32 bytes")
        join = join_transcript(
            s.api, keys.public_bytes(key), request.challenge, request.client_ephemeral
        )
        if not keys.verify(key, request.signature, join):
            await self._refuse(context, fingerprint, "signature does not prove the private key")
        ephemeral, ephemeral_public = new_ephemeral()
        session_id = secrets.token_bytes(16)
        accept = server_transcript(join, ephemeral_public, session_id)
        session_key = derive_session_key(ephemeral, request.client_ephemeral, accept)
        session, displaced = s.sessions.open(session_id, session_key, fingerprint, context.peer())
        s.audit.record(s.api, "join", fingerprint, context.peer())
        if displaced is not None:
            s.audit.record(
                s.api,
                "displaced",
                fingerprint,
                displaced.peer,
                "a newer session of the same key replaced it",
            )
            if self.on_displaced is not None:
                self.on_displaced(displaced)
        return apb.OpenSessionReply(
            session_id=session.session_id,
            server_ephemeral=ephemeral_public,
            server_signature=keys.sign(s.server_key, accept) if s.server_key else b"",
        )
