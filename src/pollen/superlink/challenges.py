"""Outstanding join challenges, bounded per source address, per key and in total.

A challenge lives from the moment a client asks for it until it answers (one
round trip, a signature) or `CHALLENGE_SECONDS` pass. Public keys are public, so
anyone can ask for challenges in a listed node's name: the bounds are set so that
a flood from one address costs that address, never another one.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pollen.errors import ChallengeRefused

K = TypeVar("K")

CHALLENGE_SECONDS = 30.0
"""A challenge not answered within this many seconds is forgotten."""

PER_KEY = 4
"""Outstanding challenges of one key from one address (an honest node holds one)."""

PER_SOURCE = 256
"""Outstanding challenges of one address, all keys together: room for the nodes of a
site behind one gateway joining at once."""

TOTAL = 10_000
"""Outstanding challenges at most, all addresses together."""


@dataclass(frozen=True)
class _Issued:
    fingerprint: str
    source: str
    at: float


Group = dict[bytes, float]
"""Challenges of one address (or one key from one address) -> when issued, in that order."""


class Challenges:
    """The challenges issued and not yet answered.

    Over `PER_KEY` or `PER_SOURCE` a new challenge is refused rather than an older
    one evicted: whoever holds an older one (perhaps the key's owner, mid-join)
    keeps it. Only when `TOTAL` is reached does a challenge make room for another,
    and then only for an address that holds none: the oldest outstanding one goes,
    and a flood of unanswered challenges is always older than an honest node's,
    which is answered within one round trip.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._issued: dict[bytes, _Issued] = {}  # in the order issued
        self._by_source: dict[str, Group] = {}
        self._by_key: dict[tuple[str, str], Group] = {}

    def __len__(self) -> int:
        return len(self._issued)

    def issue(self, fingerprint: str, source: str) -> bytes:
        """A fresh challenge for ``fingerprint``, asked for from ``source``.

        Raises `ChallengeRefused` when the address or the key is at its bound.
        """
        now = self.clock()
        self._forget_expired(now)
        self._make_room(fingerprint, source, now)
        challenge = secrets.token_bytes(32)
        self._issued[challenge] = _Issued(fingerprint, source, now)
        self._by_source.setdefault(source, {})[challenge] = now
        self._by_key.setdefault((source, fingerprint), {})[challenge] = now
        return challenge

    def take(self, challenge: bytes, fingerprint: str) -> bool:
        """True once per challenge, if it was issued to ``fingerprint`` and is fresh."""
        issued = self._issued.get(challenge)
        if issued is None:
            return False
        self._drop(challenge)
        return issued.fingerprint == fingerprint and self.clock() - issued.at < CHALLENGE_SECONDS

    def _make_room(self, fingerprint: str, source: str, now: float) -> None:
        same_key = self._by_key.get((source, fingerprint), {})
        if len(same_key) >= PER_KEY:
            raise ChallengeRefused(
                f"{PER_KEY} joins of this key from this address are already under way",
                _retry_after(same_key, now),
            )
        same_source = self._by_source.get(source, {})
        if len(same_source) >= PER_SOURCE:
            raise ChallengeRefused(
                f"{PER_SOURCE} joins from this address are already under way",
                _retry_after(same_source, now),
            )
        if len(self._issued) >= TOTAL:
            if same_source:
                raise ChallengeRefused(
                    f"{TOTAL} joins are under way at the SuperLink",
                    _retry_after(same_source, now),
                )
            self._drop(next(iter(self._issued)))

    def _forget_expired(self, now: float) -> None:
        # Issued in order: expired ones are at the front.
        while self._issued:
            oldest = next(iter(self._issued))
            if now - self._issued[oldest].at < CHALLENGE_SECONDS:
                return
            self._drop(oldest)

    def _drop(self, challenge: bytes) -> None:
        issued = self._issued.pop(challenge)
        _forget(self._by_source, issued.source, challenge)
        _forget(self._by_key, (issued.source, issued.fingerprint), challenge)


def _retry_after(group: Group, now: float) -> float:
    """Seconds until the oldest challenge of ``group`` expires."""
    oldest = next(iter(group.values()), now)
    return max(0.0, oldest + CHALLENGE_SECONDS - now)


def _forget(groups: dict[K, Group], key: K, challenge: bytes) -> None:
    group = groups[key]
    del group[challenge]
    if not group:
        del groups[key]
