"""Authenticated sessions: one-time challenges, session keys, replay protection."""

from __future__ import annotations

import hmac
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pollen.transport.session_crypto import (
    WINDOW_SECONDS,
    parse_auth_header,
    request_mac,
)
from pollen.transport.statuses import DISPLACED

CHALLENGE_SECONDS = 30.0


@dataclass(eq=False)
class Session:
    """One joined client: its key, the derived MAC key and the nonces it has used."""

    session_id: bytes
    key: bytes
    fingerprint: str
    peer: str
    node_id: int = 0
    last_used: float = 0.0
    ended: str = ""
    """Why the session is over, once it is (what its client is told)."""
    nonces: set[str] = field(default_factory=set)
    nonce_expiry: deque[tuple[float, str]] = field(default_factory=deque)

    def use_nonce(self, nonce: str, now: float, keep: float) -> bool:
        """Remember ``nonce`` for ``keep`` seconds; False if it is already remembered."""
        expiry = self.nonce_expiry
        while expiry and expiry[0][0] <= now:
            self.nonces.discard(expiry.popleft()[1])
        if nonce in self.nonces:
            return False
        self.nonces.add(nonce)
        expiry.append((now + keep, nonce))
        return True


class RequestRejected(Exception):
    """A request failed authentication; the message says why (logged, not sent in full)."""


IDLE_SECONDS = 3600.0
"""A session unused this long is dropped; its client joins again when it returns."""

MAX_CHALLENGES = 10_000
"""Outstanding challenges kept at most; the oldest go first under a flood."""

MAX_DISPLACED = 10_000
"""Displaced sessions remembered at most (to tell their clients why), the oldest go first."""


class SessionStore:
    """Sessions of one API (Fleet or Driver).

    With ``exclusive`` (the Fleet API: a key is one node), a newer session of a key
    replaces the older one. Without (the Driver API: one operator may run several
    ServerApps at once), a key may hold several sessions.
    """

    def __init__(
        self, clock: Callable[[], float], window: float = WINDOW_SECONDS, exclusive: bool = True
    ) -> None:
        self.clock = clock
        self.window = window
        self.exclusive = exclusive
        self._challenges: dict[bytes, tuple[str, float]] = {}
        self._sessions: dict[bytes, Session] = {}
        self._displaced: dict[bytes, str] = {}  # session id -> why, in the order displaced

    def issue_challenge(self, fingerprint: str) -> bytes:
        now = self.clock()
        # Challenges are kept in the order issued: expired ones are at the front.
        while self._challenges:
            oldest = next(iter(self._challenges))
            if now - self._challenges[oldest][1] < CHALLENGE_SECONDS and (
                len(self._challenges) < MAX_CHALLENGES
            ):
                break
            del self._challenges[oldest]
        challenge = secrets.token_bytes(32)
        self._challenges[challenge] = (fingerprint, now)
        return challenge

    def take_challenge(self, challenge: bytes, fingerprint: str) -> bool:
        """True once per challenge, if it was issued to ``fingerprint`` and is fresh."""
        issued = self._challenges.pop(challenge, None)
        if issued is None:
            return False
        return issued[0] == fingerprint and self.clock() - issued[1] < CHALLENGE_SECONDS

    def open(
        self, session_id: bytes, key: bytes, fingerprint: str, peer: str
    ) -> tuple[Session, Session | None]:
        """A new session for ``fingerprint``; returns it and the session it displaced.

        A displaced session's client is told why on its next request (and its task
        stream): another process joined with the same key, so that two processes
        sharing a key do not keep displacing each other unawares.
        """
        displaced = self.revoke(fingerprint) if self.exclusive else []
        self._forget_idle()
        session = Session(session_id, key, fingerprint, peer, last_used=self.clock())
        for old in displaced:
            old.ended = f"{DISPLACED} ({fingerprint}), which joined from {peer}"
            self._remember_displaced(old)
        if displaced:
            session.node_id = displaced[-1].node_id
        self._sessions[session.session_id] = session
        return session, displaced[-1] if displaced else None

    def _remember_displaced(self, session: Session) -> None:
        while len(self._displaced) >= MAX_DISPLACED:
            del self._displaced[next(iter(self._displaced))]
        self._displaced[session.session_id] = session.ended

    def _forget_idle(self) -> None:
        # A session unused for an hour is over (a ServerApp that ended joins anew).
        cutoff = self.clock() - IDLE_SECONDS
        for session_id in [k for k, v in self._sessions.items() if v.last_used < cutoff]:
            del self._sessions[session_id]

    def revoke(self, fingerprint: str) -> list[Session]:
        """End every session of ``fingerprint``; return them, oldest first."""
        ended = [s for s in self._sessions.values() if s.fingerprint == fingerprint]
        for session in ended:
            del self._sessions[session.session_id]
        return ended

    def is_current(self, session: Session) -> bool:
        return self._sessions.get(session.session_id) is session

    def verify(self, method: str, header: str | None, body_digest: str) -> Session:
        """The session a request belongs to, if its MAC, timestamp and nonce hold."""
        try:
            if header is None:
                raise ValueError("no pollen-auth header")
            session_id, timestamp, nonce, mac = parse_auth_header(header)
            sent_at = int(timestamp) / 1000
        except ValueError:
            raise RequestRejected("request is not authenticated; join first") from None
        session = self._sessions.get(session_id)
        if session is None:
            if session_id in self._displaced:
                raise RequestRejected(self._displaced[session_id])
            raise RequestRejected("unknown or expired session; join again")
        expected = request_mac(session.key, method, timestamp, nonce, body_digest)
        if not hmac.compare_digest(expected, mac):
            raise RequestRejected("request signature does not match its method and body")
        now = self.clock()
        if abs(now - sent_at) > self.window:
            raise RequestRejected(
                f"request timestamp is {now - sent_at:+.0f} s off the SuperLink's clock "
                f"(allowed ±{self.window:g} s); sync the clock or stop replaying"
            )
        # A nonce can pass the timestamp check for up to two windows after it arrives.
        if not session.use_nonce(nonce, now, 2 * self.window):
            raise RequestRejected("request nonce was already used (replayed request)")
        session.last_used = now
        return session
