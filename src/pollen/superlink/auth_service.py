"""The Auth service: challenge, proof of possession, session key. One instance per API.

Public keys are public: a join that fails before it proves possession of its key
counts against the address it came from, never against the key it named, so a
forger cannot lock a listed node out. Over the limit, such failures are refused
before any audit row is written, while a join that does prove its key still gets in.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc

from pollen.errors import ChallengeRefused, ConfigurationError
from pollen.proto import auth_pb2 as apb
from pollen.proto import auth_pb2_grpc
from pollen.superlink.allowlist import AllowList
from pollen.superlink.audit import Audit
from pollen.superlink.peers import source_of
from pollen.superlink.rate_limit import FailureLimiter, proven, unproven
from pollen.superlink.sessions import SessionStore
from pollen.superlink.telemetry import JoinRefusal, Telemetry
from pollen.transport import keys
from pollen.transport.session_crypto import (
    derive_session_key,
    join_transcript,
    new_ephemeral,
    server_transcript,
)

Context = grpc.aio.ServicerContext[Any, Any]

MAX_KEY_CHARS = 4096
"""A public key sent to join is refused unread beyond this length (keys are < 1000)."""

THROTTLED = "too many failed joins from this address"

JOINS_PAUSED = (
    "the SuperLink's allow-list file is missing or unreadable, so it admits no new joins "
    "until its operator restores the file; retry later"
)


@dataclass
class AuthSettings:
    """Who may join one API, and how the SuperLink proves who it is."""

    api: str  # "fleet" or "driver"
    allowlist: AllowList
    sessions: SessionStore
    limiter: FailureLimiter
    audit: Audit
    server_key: keys.PrivateKey | None = None
    telemetry: Telemetry = field(default_factory=Telemetry)
    """Counts refused joins; the SuperLink puts its own here."""


class AuthService(auth_pb2_grpc.AuthServicer):
    def __init__(self, settings: AuthSettings, on_displaced: Any = None) -> None:
        self.settings = settings
        self.on_displaced = on_displaced

    async def _unproven_failure(
        self,
        context: Context,
        fingerprint: str,
        reason: str,
        refusal: JoinRefusal,
        code: grpc.StatusCode = grpc.StatusCode.PERMISSION_DENIED,
    ) -> NoReturn:
        """Refuse a join that proved nothing: it counts against its source address.

        Over the limit it is answered "retry later" and only counted in the audit
        trail's one row for the address, before anything else is written.
        """
        s = self.settings
        limit = unproven(source_of(context.peer()))
        wait = s.limiter.retry_after(limit)
        s.limiter.record_failure(limit)  # a flood keeps its address limited
        if wait > 0:
            s.telemetry.join_refused("throttled")
            s.audit.record(s.api, "throttled", "-", context.peer(), THROTTLED)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{THROTTLED} ({s.limiter.max_failures} within {s.limiter.window:g} s); "
                f"retry in {wait:.0f} s",
            )
        await self._reject(context, fingerprint, reason, refusal, code)

    async def _proven_failure(
        self, context: Context, fingerprint: str, reason: str, code: grpc.StatusCode
    ) -> NoReturn:
        """Refuse a join that failed after proving its key: only its holder can cause that."""
        self.settings.limiter.record_failure(proven(source_of(context.peer()), fingerprint))
        await self._reject(context, fingerprint, reason, "bad-proof", code)

    async def _reject(
        self,
        context: Context,
        fingerprint: str,
        reason: str,
        refusal: JoinRefusal,
        code: grpc.StatusCode,
    ) -> NoReturn:
        s = self.settings
        s.telemetry.join_refused(refusal)
        s.audit.record(s.api, "reject", fingerprint, context.peer(), reason)
        await context.abort(code, f"{reason} (key {fingerprint})")
        raise AssertionError("context.abort returned")

    async def _admissible(self, public_key: str, context: Context) -> tuple[keys.PublicKey, str]:
        """The client's key and its fingerprint, if it is well formed, allowed and not
        rate-limited.

        While the allow-list file is missing no join is admitted, and none is counted
        or audited: UNAVAILABLE, not PERMISSION_DENIED, since the key may well be
        listed; nodes and ServerApps retry with backoff until the file is back.
        """
        s = self.settings
        if s.allowlist.missing:
            s.telemetry.join_refused("joins-paused")
            await context.abort(grpc.StatusCode.UNAVAILABLE, JOINS_PAUSED)
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        if len(public_key) > MAX_KEY_CHARS:
            await self._unproven_failure(
                context,
                "malformed",
                f"the key sent is {len(public_key)} characters long; a public key has "
                f"fewer than {MAX_KEY_CHARS}",
                "malformed-key",
                invalid,
            )
        try:
            key = keys.parse_public_key(public_key, "the key sent")
        except ConfigurationError as exc:
            await self._unproven_failure(context, "malformed", str(exc), "malformed-key", invalid)
        fingerprint = keys.fingerprint(key)
        if fingerprint not in s.allowlist:
            await self._unproven_failure(
                context, fingerprint, "key is not in the allow-list", "not-allowed"
            )
        wait = s.limiter.retry_after(proven(source_of(context.peer()), fingerprint))
        if wait > 0:
            reason = "too many failed joins of this key from this address after proving it"
            s.telemetry.join_refused("throttled")
            s.audit.record(s.api, "throttled", fingerprint, context.peer(), reason)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{reason}; retry in {wait:.0f} s (key {fingerprint})",
            )
        return key, fingerprint

    async def Challenge(
        self, request: apb.ChallengeRequest, context: Context
    ) -> apb.ChallengeReply:
        s = self.settings
        _, fingerprint = await self._admissible(request.public_key, context)
        try:
            challenge = s.sessions.challenges.issue(fingerprint, source_of(context.peer()))
        except ChallengeRefused as exc:
            s.telemetry.join_refused("throttled")
            s.audit.record(s.api, "throttled", fingerprint, context.peer(), str(exc))
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{exc}; retry in {exc.retry_after:.0f} s (key {fingerprint})",
            )
        return apb.ChallengeReply(challenge=challenge)

    async def OpenSession(
        self, request: apb.OpenSessionRequest, context: Context
    ) -> apb.OpenSessionReply:
        s = self.settings
        key, fingerprint = await self._admissible(request.public_key, context)
        if not s.sessions.challenges.take(request.challenge, fingerprint):
            await self._unproven_failure(
                context, fingerprint, "challenge unknown, used or expired", "bad-proof"
            )
        if len(request.client_ephemeral) != 32:
            await self._unproven_failure(
                context, fingerprint, "ephemeral key is not 32 bytes", "bad-proof"
            )
        join = join_transcript(
            s.api, keys.public_bytes(key), request.challenge, request.client_ephemeral
        )
        if not keys.verify(key, request.signature, join):
            await self._unproven_failure(
                context, fingerprint, "signature does not prove the private key", "bad-proof"
            )
        ephemeral, ephemeral_public = new_ephemeral()
        session_id = secrets.token_bytes(16)
        accept = server_transcript(join, ephemeral_public, session_id)
        try:
            session_key = derive_session_key(ephemeral, request.client_ephemeral, accept)
        except ValueError:  # a low-order point: no shared secret
            await self._proven_failure(
                context,
                fingerprint,
                "ephemeral key is not a usable X25519 public key",
                grpc.StatusCode.INVALID_ARGUMENT,
            )
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
