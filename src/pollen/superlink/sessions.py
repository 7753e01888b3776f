"""Authenticated sessions: one-time challenges, session keys, replay protection."""

from __future__ import annotations

import hmac
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from pollen.errors import RequestRejected, RequestThrottled
from pollen.superlink.challenges import Challenges
from pollen.transport.retry_policy import DISPLACED
from pollen.transport.session_crypto import (
    NONCE_BYTES,
    WINDOW_SECONDS,
    is_nonce,
    parse_auth_header,
    request_mac,
)

NONCES_PER_NODE_SESSION = 10_000
"""Nonces one SuperNode's session may have in the replay memory: about 170 requests a
second, sustained for the two windows (60 s) a nonce is kept. A SuperNode sends a
heartbeat and a few requests per task."""

NONCES_PER_SERVERAPP_SESSION = 60_000
"""The same for a ServerApp's session: 1000 requests a second; a ServerApp sends about
one per node and round."""

NONCES_TOTAL = 300_000
"""Nonces all sessions of one API may have in the replay memory together (about
100 bytes each)."""

SWEEP_SECONDS = 1.0
"""How often the nonces of every session are purged (on whichever request comes)."""


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
    nonces: dict[int, float] = field(default_factory=dict)
    """Nonces used (as numbers: a third of the memory of their text) -> when they may be
    forgotten, in the order used."""

    def forget_nonces(self, now: float) -> int:
        """Forget the nonces that can no longer pass the time window; how many."""
        nonces = self.nonces
        expired = list(itertools.takewhile(lambda nonce: nonces[nonce] <= now, nonces))
        for nonce in expired:
            del nonces[nonce]
        return len(expired)


IDLE_SECONDS = 3600.0
"""A session unused this long is dropped; its client joins again when it returns."""

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
        self.challenges = Challenges(clock)
        self._sessions: dict[bytes, Session] = {}
        self._displaced: dict[bytes, str] = {}  # session id -> why, in the order displaced
        self._nonces = 0  # in all sessions together
        self._swept_at = 0.0

    @property
    def nonces(self) -> int:
        """Nonces in the replay memory, all sessions together."""
        return self._nonces

    def __len__(self) -> int:
        return len(self._sessions)

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
        for session in [s for s in self._sessions.values() if s.last_used < cutoff]:
            self._end(session)

    def revoke(self, fingerprint: str) -> list[Session]:
        """End every session of ``fingerprint``; return them, oldest first."""
        ended = [s for s in self._sessions.values() if s.fingerprint == fingerprint]
        for session in ended:
            self._end(session)
        return ended

    def _end(self, session: Session) -> None:
        del self._sessions[session.session_id]
        self._nonces -= len(session.nonces)
        session.nonces.clear()

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
        if not is_nonce(nonce):
            raise RequestRejected(
                f"request nonce is not {2 * NONCE_BYTES} lowercase hex digits; sign requests "
                "with a Pollen client of this version"
            )
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
        self._use_nonce(session, int(nonce, 16), now)
        session.last_used = now
        return session

    def _use_nonce(self, session: Session, nonce: int, now: float) -> None:
        """Remember ``nonce`` for as long as its request could pass the time window.

        Over a bound the request is refused, not an older nonce forgotten: forgetting
        would let the request of that nonce be replayed.
        """
        self._nonces -= session.forget_nonces(now)
        if now - self._swept_at >= SWEEP_SECONDS:
            self._sweep(now)
        if nonce in session.nonces:
            raise RequestRejected("request nonce was already used (replayed request)")
        most = NONCES_PER_NODE_SESSION if self.exclusive else NONCES_PER_SERVERAPP_SESSION
        if len(session.nonces) >= most:
            raise RequestThrottled(
                f"this session sent {most} requests within {2 * self.window:g} s, the most "
                "one session may; slow down and retry"
            )
        if self._nonces >= NONCES_TOTAL:
            raise RequestThrottled(
                f"the SuperLink holds {NONCES_TOTAL} recent requests of all sessions; retry "
                "in a few seconds"
            )
        # A nonce can pass the timestamp check for up to two windows after it arrives.
        session.nonces[nonce] = now + 2 * self.window
        self._nonces += 1

    def _sweep(self, now: float) -> None:
        """Purge every session's nonces, not only those of sessions that send again."""
        self._swept_at = now
        for session in self._sessions.values():
            self._nonces -= session.forget_nonces(now)
